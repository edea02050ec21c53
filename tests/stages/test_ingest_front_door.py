"""ingest on inputs real corpora contain (issue 12): lone surrogates, legacy encodings, mislabelled
HTML, misspelled embedded sources, a wrong text key, stray files and symlink loops, and documents
that say which input record they came from."""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from pathlib import Path

import pytest

import llmpipe
from tests.conftest import run_cli, write
from tests.test_errors import _one_line_error
from tests.test_resume import rows

FRENCH = "Très naïve, la crème brûlée du café était “parfaite”, dit-il — c’était l’été."
ENGLISH = "He said “hello” and it’s fine — the café was naïve. " * 3


# ---------------------------------------------------------------- 1. lone surrogates


def test_lone_surrogate_escapes_are_repaired_and_counted(tmp_path):
    # valid JSON as surrogateescape decoders write it: \udce9 was the byte 0xe9 of a latin-1 "é"
    lines = ['{"text": "caf\\udce9 au lait", "url": "https://x/caf\\udce9"}', '{"text": "a clean document"}',
             '{"text": "two \\udcff\\ud800 in one", "author": "\\udc80"}']
    write(tmp_path / "crawl.jsonl", "\n".join(lines) + "\n")
    m = llmpipe.run_stage("ingest", [str(tmp_path / "crawl.jsonl")], tmp_path / "out")
    docs = rows(tmp_path / "out")
    assert [d["text"] for d in docs] == ["caf\ufffd au lait", "a clean document", "two \ufffd\ufffd in one"]
    assert docs[0]["url"] == "https://x/caf\ufffd" and json.loads(docs[2]["metadata"]) == {"author": "\ufffd"}
    assert m["stats"]["counts"]["repaired_surrogates"] == 2 and m["stats"]["skipped"] == {}


# ---------------------------------------------------------------- 2. legacy encodings


def test_latin1_and_cp1252_text_and_jsonl_keep_every_record(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("Le café naïve de l’été".replace("’", "'").encode("latin-1"))
    (tmp_path / "cp1252.txt").write_bytes(ENGLISH.encode("cp1252"))
    records = [{"text": FRENCH, "id": "fr"}, {"text": "plain ascii", "id": "ascii"}, {"text": ENGLISH, "id": "en"}]
    (tmp_path / "cp1252.jsonl").write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("cp1252"))
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + FRENCH.encode())
    m = llmpipe.run_stage("ingest", [str(tmp_path / "*")], tmp_path / "../out")
    docs = {os.path.basename(d["path"]) + ":" + d["id"][:5]: d["text"] for d in rows(tmp_path / "../out")}
    assert sorted(docs.values()) == sorted([ENGLISH, "Le café naïve de l'été", FRENCH, "plain ascii", ENGLISH, FRENCH])
    assert docs["cp1252.jsonl:fr"] == FRENCH and docs["cp1252.jsonl:en"] == ENGLISH
    assert m["stats"]["skipped"] == {}
    counts = m["stats"]["counts"]
    assert (counts["decoded_cp1252"], counts["decoded_utf-8"]) == (4, 2), "every record counts the codec it was read with"


def test_encoding_param_forces_a_codec_and_is_checked(tmp_path):
    write(tmp_path / "ok.txt", "x")
    (tmp_path / "koi8.txt").write_bytes("Привет, как дела?".encode("koi8-r"))
    m = llmpipe.run_stage("ingest", [str(tmp_path / "koi8.txt")], tmp_path / "out", encoding="koi8-r")
    assert rows(tmp_path / "out")[0]["text"] == "Привет, как дела?" and m["stats"]["counts"]["decoded_koi8-r"] == 1
    line = _one_line_error(tmp_path, "ingest", "--input", "ok.txt", "--output", "out2", "--encoding", "latin-9000")
    assert line == 'error: ingest --encoding: unknown codec "latin-9000"; give auto or a codec name such as utf-8, cp1252, latin-1'


def test_real_gutenberg_books_in_legacy_encodings(tmp_path, shared_data):
    books = ["frankenstein", "alice_in_wonderland", "pride_and_prejudice"]
    texts = {b: (shared_data / f"text/gutenberg/{b}.txt").read_text(encoding="utf-8-sig") for b in books}
    for b, text in texts.items():
        (tmp_path / f"{b}.cp1252.txt").write_bytes(text.encode("cp1252"))
        plain = text.translate(str.maketrans("“”‘’—", "\"\"''-"))  # what a latin-1 edition holds
        (tmp_path / f"{b}.latin1.txt").write_bytes(plain.encode("latin-1"))
    m = llmpipe.run_stage("ingest", [str(tmp_path)], tmp_path / "../out")
    got = {os.path.basename(d["path"]): d["text"] for d in rows(tmp_path / "../out")}
    legacy = sum(1 for f in tmp_path.iterdir() if not f.read_bytes().isascii())  # an all-ASCII file is UTF-8 too
    assert len(got) == 6 and m["stats"]["counts"]["decoded_cp1252"] == legacy >= 4 and m["stats"]["skipped"] == {}
    for b, text in texts.items():
        assert got[f"{b}.cp1252.txt"] == text
        assert got[f"{b}.latin1.txt"] == text.translate(str.maketrans("“”‘’—", "\"\"''-"))


@pytest.mark.parametrize("data,expected", [
    ("café crème ".encode() * 5 + b"\x93cut", ("café crème " * 5 + "\ufffdcut", "utf-8")),  # UTF-8 with a stray byte stays UTF-8
    ("Привет, как дела? Это обычный русский текст о погоде.".encode("cp1251"), ("Привет, как дела? Это обычный русский текст о погоде.", "cp1251")),
    ("Zażółć gęślą jaźń, to jest polski tekst o pogodzie.".encode("cp1250"), ("Zażółć gęślą jaźń, to jest polski tekst o pogodzie.", "cp1250")),
    (ENGLISH.encode("cp1252"), (ENGLISH, "cp1252")),  # the detector alone says cp1250
])
def test_decode_falls_back_as_browsers_do(data, expected):
    from llmpipe.readers.charset import decode

    assert decode(data) == expected


# ---------------------------------------------------------------- 3. HTML that says utf-8 but holds cp1252


def test_html_declared_utf8_with_cp1252_bytes_reads_as_cp1252(tmp_path):
    body = ("<p>" + FRENCH + " Il était très naïf.</p>") * 3
    page = f'<html><head><meta charset="utf-8"><title>t</title></head><body><article>{body}</article></body></html>'
    from llmpipe.readers.html import decode_html

    assert decode_html(page.encode("cp1252")) == (page, "cp1252")
    (tmp_path / "page.html").write_bytes(page.encode("cp1252"))
    m = llmpipe.run_stage("ingest", [str(tmp_path / "page.html")], tmp_path / "out")
    text = rows(tmp_path / "out")[0]["text"]
    assert "Très naïve, la crème brûlée" in text and "naďve" not in text
    assert m["stats"]["counts"]["decoded_cp1252"] == 1


# ---------------------------------------------------------------- 4. misspelled embedded source


def test_misspelled_embedded_source_is_one_line_before_anything_is_written(tmp_path):
    line = _one_line_error(tmp_path, "ingest", "--input", "embedded:python-doc", "--output", "out")
    assert line == 'error: ingest --input: unknown embedded source "embedded:python-doc"; did you mean "embedded:python-docs"?'
    write(tmp_path / "pipe.toml", '[pipeline]\nworkdir = "runs/p"\n\n[steps.ingest]\ninputs = ["embedded:wikipedia"]\n')
    from llmpipe.readers.embedded import CHAT_SOURCES, SOURCES

    assert _one_line_error(tmp_path, "run", "pipe.toml") == (
        'error: pipe.toml [steps.ingest] inputs: unknown embedded source "embedded:wikipedia"; '
        f"choose one of {', '.join('embedded:' + s for s in SOURCES + CHAT_SOURCES)}"
    )


# ---------------------------------------------------------------- 5. the text field under another name


def test_missing_text_key_names_the_fields_the_file_has_and_the_flag(tmp_path):
    write(tmp_path / "docs.jsonl", '{"content": "hello world", "meta": {"lang": "en"}}\n')
    res = run_cli("ingest", "--input", "docs.jsonl", "--output", "out", cwd=tmp_path, timeout=60)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        f"error: ingest {tmp_path.resolve()}/out: 1 of 1 records were bad (no_text=1), more than max_bad_fraction=0.1; "
        'docs.jsonl:1: no "text" field, has content, meta; name the text field with --text-key (text_key in a pipeline file)'
    )
    res = run_cli("ingest", "--input", "docs.jsonl", "--output", "out", "--text-key", "content", cwd=tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------- 6. stray files and symlink loops


def test_directory_with_a_symlink_loop_and_a_stray_pdf_is_read(tmp_path):
    data = tmp_path / "data"
    write(data / "a.jsonl", '{"text": "a document"}\n')
    write(data / "b.html", "<html><body><article><p>" + FRENCH * 3 + "</p></article></body></html>")
    (data / "report.pdf").write_bytes(b"%PDF-1.4 ...")
    os.symlink("loop2", data / "loop1")
    os.symlink("loop1", data / "loop2")
    os.symlink("missing.jsonl", data / "dangling.jsonl")
    res = run_cli("ingest", "--input", "data", "--output", "out", cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    warnings = [l for l in res.stderr.splitlines() if "warning" in l]
    assert len(warnings) == 1 and warnings[0].endswith(
        "warning: ingest skipped 1 file of a type it does not read (report.pdf) and "
        "3 broken, looping or unreadable entries (dangling.jsonl, loop1, loop2)"
    )
    m = json.loads((tmp_path / "out/_manifest.json").read_text())
    assert m["counts"]["documents"] == 2 and m["stats"]["skipped"] == {}
    assert m["stats"]["counts"]["skipped_unknown_type"] == 1 and m["stats"]["counts"]["skipped_unreadable"] == 3


def test_a_stray_pdf_no_longer_fails_the_directory(tmp_path):
    for name in ("a.jsonl", "b.jsonl", "c.jsonl"):
        write(tmp_path / "data" / name, '{"text": "a document"}\n')
    (tmp_path / "data/report.pdf").write_bytes(b"%PDF-1.4")
    m = llmpipe.run_stage("ingest", [str(tmp_path / "data")], tmp_path / "out")
    assert m["counts"]["documents"] == 3 and m["stats"]["counts"]["skipped_unknown_type"] == 1 and m["stats"]["skipped"] == {}


def test_directory_of_only_unknown_files_is_one_line(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/report.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "data/logo.png").write_bytes(b"\x89PNG")
    line = _one_line_error(tmp_path, "ingest", "--input", "data", "--output", "out")
    assert line == ("error: ingest inputs: no file ingest can read in data (logo.png, report.pdf); "
                    "it reads JSONL, Parquet, plain text (.txt, .md), HTML and WARC/WET/ARC files")


# ---------------------------------------------------------------- 7. provenance


def _warc(path: Path, pages: list[tuple[str, str]]) -> list[tuple[str, int]]:
    """Write a gzipped WARC of HTML responses with warcio; returns (record id, offset) per page."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    out = []
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, html in pages:
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            rec = writer.create_warc_record(url, "response", payload=io.BytesIO(html.encode()), http_headers=http)
            out.append((rec.rec_headers.get_header("WARC-Record-ID"), f.tell()))
            writer.write_record(rec)
    return out


def _page(words: str) -> str:
    return f"<html><head><title>t</title></head><body><article><p>{words}</p></article></body></html>"


def test_documents_name_their_input_file_and_record(tmp_path):
    site = tmp_path / "site"
    write(site / "1000things.at-Wellnessoasen.html", _page("Wellness oases of Austria, " * 20))
    write(site / "en/index.html", _page("The English home page of the site. " * 20))
    write(site / "de/index.html", _page("Die deutsche Startseite der Website. " * 20))
    write(site / "library/os.html", _page("The os module provides operating system interfaces. " * 20))
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    written = _warc(crawl / "part.warc.gz", [("https://a.example/", _page("First crawled page text. " * 20)),
                                             ("https://b.example/", _page("Second crawled page text. " * 20))])
    write(tmp_path / "docs.jsonl", '{"text": "line one"}\n\n{"text": "line three"}\n')
    inputs = ["site", "crawl/*.warc.gz", "docs.jsonl"]
    res = run_cli("ingest", *[a for i in inputs for a in ("--input", i)], "--output", "out", cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    docs = rows(tmp_path / "out")
    by_path = {(d["path"], d["line"], d["offset"]): d for d in docs}
    assert set(by_path) == {
        ("site/1000things.at-Wellnessoasen.html", None, None), ("site/de/index.html", None, None),
        ("site/en/index.html", None, None), ("site/library/os.html", None, None),
        ("crawl/part.warc.gz", None, written[0][1]), ("crawl/part.warc.gz", None, written[1][1]),
        ("docs.jsonl", 1, None), ("docs.jsonl", 3, None),
    }
    assert {d["source"] for d in docs} == {"site", "crawl/*.warc.gz", "docs.jsonl"}, "source names the input as given"
    assert "Startseite" in by_path[("site/de/index.html", None, None)]["text"]
    assert by_path[("docs.jsonl", 3, None)]["text"] == "line three"
    for record_id, offset in written:  # the id is the WARC-Record-ID and the offset finds that record in the file
        assert f"<{by_path[('crawl/part.warc.gz', None, offset)]['id']}>" == record_id
        head = zlib.decompressobj(31).decompress((crawl / "part.warc.gz").read_bytes()[offset:])
        assert f"WARC-Record-ID: {record_id}".encode() in head[:600]
    ids = [d["id"] for d in docs]
    assert len(set(ids)) == len(ids)
    run_cli("ingest", *[a for i in inputs for a in ("--input", i)], "--output", "again", cwd=tmp_path, check=True, timeout=120)
    assert [d["id"] for d in rows(tmp_path / "again")] == ids, "ids are stable from run to run"


def test_same_file_names_under_two_inputs_stay_distinct(tmp_path):
    for year in ("2023", "2024"):
        write(tmp_path / year / "part-0.jsonl", '{"text": "the same line"}\n')
    llmpipe.run_stage("ingest", [str(tmp_path / "2023"), str(tmp_path / "2024")], tmp_path / "out")
    docs = rows(tmp_path / "out")
    assert [d["path"] for d in docs] == [str(tmp_path / "2023/part-0.jsonl"), str(tmp_path / "2024/part-0.jsonl")]
    assert docs[0]["id"] != docs[1]["id"]


def test_provenance_survives_filter_and_dedup_also_for_rejected(tmp_path):
    lines = [json.dumps({"text": f"document {i} says something rather different from the others, number {i}."}) for i in range(6)]
    write(tmp_path / "docs.jsonl", "\n".join(lines + [lines[2]]) + "\n")  # line 7 repeats line 3
    llmpipe.run_stage("ingest", [str(tmp_path / "docs.jsonl")], tmp_path / "docs")
    llmpipe.run_stage("dedup", [str(tmp_path / "docs")], tmp_path / "deduped", keep_rejected=True)
    kept = rows(tmp_path / "deduped")
    rejected = [r for p in sorted((tmp_path / "deduped/rejected").glob("*.parquet")) for r in rows_of(p)]
    assert [d["line"] for d in kept] == [1, 2, 3, 4, 5, 6] and {d["path"] for d in kept} == {str(tmp_path / "docs.jsonl")}
    assert [(r["path"], r["line"]) for r in rejected] == [(str(tmp_path / "docs.jsonl"), 7)]


def rows_of(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
