"""ingest: JSONL/Parquet/text/embedded inputs, stable ids, bad records counted and skipped."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import os
import pytest
import zstandard

import llmpipe
from llmpipe.errors import DataError
from tests.test_resume import rows


def test_jsonl_plain_gz_zst_parquet_text(tmp_path):
    lines = [json.dumps({"text": f"document number {i}", "url": f"https://x/{i}"}) for i in range(3)]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))
    pq.write_table(pa.table({"text": ["from parquet"], "id": ["own-id"]}), tmp_path / "d.parquet")
    (tmp_path / "e.txt").write_text("first block\n\nsecond block\n")
    m = llmpipe.run_stage("ingest", [str(tmp_path / "*.*")], tmp_path / "out", text_split="blank_line")
    docs = rows(tmp_path / "out")
    assert m["counts"]["documents"] == 12 and len(docs) == 12
    assert [d["text"] for d in docs[-3:]] == ["from parquet", "first block", "second block"]
    assert docs[0]["url"] == "https://x/0" and docs[0]["source"] == str(tmp_path / "*.*")  # the input as given
    assert (docs[0]["path"], docs[0]["line"]) == (str(tmp_path / "a.jsonl"), 1)
    assert [(d["path"], d["line"]) for d in docs[-2:]] == [(str(tmp_path / "e.txt"), 1), (str(tmp_path / "e.txt"), 3)]
    assert docs[9]["id"] == "own-id"
    ids = [d["id"] for d in docs]
    assert len(set(ids)) == 12
    again = llmpipe.run_stage("ingest", [str(tmp_path / "*.*")], tmp_path / "out2", text_split="blank_line")
    assert [d["id"] for d in rows(tmp_path / "out2")] == ids and again["fingerprint"] == m["fingerprint"]


def test_bad_records_are_counted_not_fatal(tmp_path):
    good = [json.dumps({"text": f"doc {i}"}) for i in range(20)]
    (tmp_path / "a.jsonl").write_text("\n".join(good[:10] + ['{"text": broken', '{"no_text": 1}', "[1, 2]"] + good[10:]) + "\n")
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(("\n".join(good) + "\n").encode())[:-30])  # truncated gzip
    (tmp_path / "c.txt").write_bytes(b"binary \x00\x01\x02 payload")
    (tmp_path / "d.pdf").write_bytes(b"%PDF-1.4")  # a type ingest does not read: counted, not bad data
    m = llmpipe.run_stage("ingest", [str(tmp_path)], tmp_path / "../out", max_bad_fraction=0.5)
    skipped = m["stats"]["skipped"]
    assert skipped == {"bad_json": 1, "no_text": 2, "truncated_file": 1, "binary": 1}
    assert m["stats"]["counts"]["skipped_unknown_type"] == 1
    assert m["counts"]["documents"] == len(rows(tmp_path / "../out")) >= 20  # a, plus what b held before its cut
    assert m["stats"]["samples"]["bad_json"] == ["a.jsonl:11"]


def test_too_many_bad_records_fail_the_stage_without_a_manifest(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\nnot json\nnot json\n')
    with pytest.raises(DataError, match=r"2 of 3 records were bad \(bad_json=2\), more than max_bad_fraction=0.1"):
        llmpipe.run_stage("ingest", [str(tmp_path / "a.jsonl")], tmp_path / "out")
    assert not (tmp_path / "out" / "_manifest.json").exists()


def test_length_bounds_are_drops_not_bad_data(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ["x", "   ", "long enough text", "y" * 50]) + "\n")
    m = llmpipe.run_stage("ingest", [str(tmp_path / "a.jsonl")], tmp_path / "out", min_chars=5, max_chars=40)
    assert m["counts"]["documents"] == 1
    assert m["stats"]["dropped"] == {"too_short": 2, "too_large": 1} and m["stats"]["skipped"] == {}


def test_embedded_sources_are_real_text_with_no_download(tmp_path):
    m = llmpipe.run_stage("ingest", ["embedded:python-docs", "embedded:package-docs"], tmp_path / "out", min_chars=200)
    docs = rows(tmp_path / "out")
    sources = {d["source"] for d in docs}
    assert sources == {"python-docs", "package-docs"}
    by_id = {d["id"]: d["text"] for d in docs}
    assert "assert" in by_id["python-docs/assert"]
    assert any(i.startswith("package-docs/") for i in by_id)
    assert m["counts"]["chars"] > 300_000


def test_real_c4_sample(tmp_path, shared_data):
    m = llmpipe.run_stage("ingest", [str(shared_data / "text/c4_demo.jsonl")], tmp_path / "out")
    assert m["counts"]["documents"] == 300 and m["stats"]["skipped"] == {}


def test_documents_reach_the_writer_in_batches_bounded_by_rows_and_by_text():
    from stages.ingest import _batches

    docs = [{"text": "x" * n} for n in (10, 30, 5, 50, 1, 1, 1)]
    sizes = [[len(d["text"]) for d in b] for b in _batches(iter(docs), max_rows=3, max_chars=40)]
    assert sizes == [[10, 30], [5, 50], [1, 1, 1]]  # a list closes at 40 characters or at 3 documents
    assert list(_batches(iter([]))) == []


@pytest.mark.parametrize("text", ["", "   ", "\n\t ", "a", "  a b  ", " " * 300 + "word" + "\n" * 700, "\u3000x\u3000", "x" * 1000])
def test_stripped_length_is_the_length_of_the_stripped_text(text):
    from stages.ingest import _stripped_length

    assert _stripped_length(text) == len(text.strip())


@pytest.mark.parametrize("split", ["line", "blank_line"])
def test_plain_text_lines_and_blocks_are_read_as_a_stream(tmp_path, split):
    """A record is handed on before the rest of the file is read (memory holds a record, not the file): through a
    named pipe, the first record arrives while the writer still holds the pipe open."""
    import threading

    from llmpipe.readers.text import iter_plain_text
    from llmpipe.stats import TaskStats

    fifo = tmp_path / "stream.v2.txt"
    os.mkfifo(fifo)
    first_seen, closed = threading.Event(), threading.Event()

    def writer():
        with open(fifo, "w") as f:
            f.write("first record\n\n")
            f.flush()
            first_seen.wait(timeout=10)
            f.write("second record\n")
        closed.set()

    threading.Thread(target=writer, daemon=True).start()
    records = iter_plain_text(str(fifo), split, TaskStats())
    assert next(records) == (1, "first record")
    assert not closed.is_set()
    first_seen.set()
    assert list(records) == [(3, "second record")]
