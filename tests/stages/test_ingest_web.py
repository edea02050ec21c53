"""ingest of web data: WARC/WET/ARC records and HTML files, charset decoding, broken and fuzzed inputs."""

from __future__ import annotations

import gzip
import json
import random

import pytest

import llmpipe
from llmpipe.readers.html import decode_html
from tests.test_resume import rows

pytest.importorskip("fastwarc")
pytest.importorskip("trafilatura")


def test_common_crawl_warc_and_wet(tmp_path, shared_data):
    cc = shared_data / "warc/commoncrawl"
    m = llmpipe.run_stage("ingest", [str(cc / "whirlwind.warc.gz"), str(cc / "whirlwind.warc.wet.gz")], tmp_path / "docs")
    docs = rows(tmp_path / "docs")
    warc = [d for d in docs if d["content_type"] and "html" in d["content_type"]]
    wet = [d for d in docs if d["content_type"] == "text/plain"]
    assert len(warc) >= 1 and len(wet) >= 1 and m["stats"]["skipped"] == {}
    page = warc[0]
    assert page["url"] == "https://an.wikipedia.org/wiki/Escopete" and page["date"] == "2024-05-18T01:58:10Z"
    assert page["id"].startswith("urn:uuid:") and "Escopete" in page["text"]
    assert "Menú principal" not in page["text"], "the extractor drops navigation that the WET text keeps"
    assert "Menú principal" in wet[0]["text"]


def test_real_crawl_warcs_with_non_english_charsets(tmp_path, shared_data):
    m = llmpipe.run_stage("ingest", [str(shared_data / "warc/resiliparse/warcfile.warc.gz"), str(shared_data / "warc/dolma")], tmp_path / "docs")
    docs = rows(tmp_path / "docs")
    assert m["counts"]["documents"] == len(docs) > 10
    assert any("\u4e00" <= ch <= "\u9fff" for d in docs for ch in d["text"][:200]), "Chinese pages decode to Chinese text"
    assert not any("\ufffd" in d["text"][:500] for d in docs[:20]), "no replacement characters in decoded text"


def test_broken_warc_files_are_counted_never_fatal(tmp_path, shared_data):
    w = shared_data / "warc/warcio"
    files = [w / "example-trunc.warc", w / "bad.arc", w / "example-wrong-chunks.warc.gz", w / "example.arc.gz",
             shared_data / "warc/resiliparse/clipped.warc.gz", shared_data / "warc/copycat/cc-2009-small-sample.arc.gz"]
    m = llmpipe.run_stage("ingest", [str(f) for f in files], tmp_path / "docs", max_bad_fraction=1.0)
    skipped = m["stats"]["skipped"]
    assert skipped["truncated_record"] >= 1 and skipped["bad_warc"] >= 2
    assert m["counts"]["documents"] == len(rows(tmp_path / "docs")) >= 2


def test_fuzzed_and_truncated_inputs(tmp_path, shared_data):
    rng = random.Random(0)
    real = (shared_data / "warc/resiliparse/warcfile.warc.gz").read_bytes()
    (tmp_path / "half.warc.gz").write_bytes(real[: len(real) // 2])  # cut mid-stream
    (tmp_path / "noise.warc.gz").write_bytes(bytes(rng.randrange(256) for _ in range(5000)))
    (tmp_path / "noise.warc").write_bytes(b"WARC/1.0\r\n" + bytes(rng.randrange(256) for _ in range(3000)))
    french = ("Le café était fermé ce matin-là, et la crème brûlée que préparait le pâtissier attendait derrière la vitrine. "
              "Élodie s'arrêta devant la façade, hésita, puis décida de revenir à midi, après la réunion du comité. ") * 3
    (tmp_path / "page.html").write_bytes(b"<html><body><article><p>" + french.encode("latin-1") + b"</p></article></body></html>")
    (tmp_path / "junk.jsonl").write_bytes(b'{"text": "fine document"}\n\xff\xfe{"text": broken\n' + bytes(rng.randrange(256) for _ in range(200)) + b"\n")
    m = llmpipe.run_stage("ingest", [str(tmp_path / "*")], tmp_path / "../out", max_bad_fraction=1.0)
    s = m["stats"]["skipped"]
    assert s.get("bad_warc", 0) + s.get("bad_warc_record", 0) >= 2 and s.get("bad_json", 0) >= 2
    docs = rows(tmp_path / "../out")
    html_doc = [d for d in docs if d["path"] == str(tmp_path / "page.html")]
    assert html_doc and "la crème brûlée que préparait le pâtissier" in html_doc[0]["text"], "undeclared latin-1 is detected"
    from_half = [d for d in docs if d["path"] == str(tmp_path / "half.warc.gz")]
    assert len(from_half) >= 1, "records before the cut are kept"


@pytest.mark.parametrize("data,header,expected", [
    ("\ufeffhé".encode("utf-8"), None, ("hé", "utf-8")),
    (b'<meta charset="iso-8859-1">caf\xe9 \x93q\x94', None, ('<meta charset="iso-8859-1">café “q”', "cp1252")),
    ("привет".encode("koi8-r"), "text/html; charset=KOI8-R", ("привет", "koi8-r")),
    ('<meta charset="utf-16">ok'.encode(), None, ('<meta charset="utf-16">ok', "utf-8")),
    ("日本語".encode("utf-8"), "text/html; charset=bogus", ("日本語", "utf-8")),
])
def test_decode_html(data, header, expected):
    assert decode_html(data, header) == expected


def test_html_pages_with_ground_truth(tmp_path, shared_data):
    """Ten AEB pages through ingest: main text found, and close to the ground truth."""
    truth = json.loads((shared_data / "web/aeb/ground-truth.json").read_text())
    keys = sorted(truth)[:10]
    for k in keys:
        (tmp_path / f"{k}.html").write_bytes(gzip.decompress((shared_data / f"web/aeb/html/{k}.html.gz").read_bytes()))
    llmpipe.run_stage("ingest", [str(tmp_path / "*.html")], tmp_path / "../docs")
    docs = {d["path"].removeprefix(f"{tmp_path}/").removesuffix(".html"): d["text"] for d in rows(tmp_path / "../docs")}
    assert len(docs) == 10
    for k in keys:
        gold = set(truth[k]["articleBody"].split())
        got = set(docs[k].split())
        recall = len(gold & got) / len(gold)
        assert recall > 0.8, (k, recall)
