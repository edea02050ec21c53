"""Inputs the fuzzer (tests/test_fuzz.py) found that crashed ingest with a traceback, minimized: each is now a counted skip
with a one-line sample, and the good records beside it are kept."""

from __future__ import annotations

import pytest

import llmpipe
from llmpipe.errors import ConfigError
from llmpipe.readers.text import iter_json_lines
from llmpipe.stats import TaskStats
from tests.test_resume import rows

GOOD = b'{"text": "a good document"}\n'


def _ingest(tmp_path, name: str, data: bytes, **params) -> dict:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_bytes(data)
    (tmp_path / "in" / "good.jsonl").write_bytes(GOOD)
    m = llmpipe.run_stage("ingest", [str(tmp_path / "in")], tmp_path / "out", max_bad_fraction=1.0, **params)
    return m["stats"]


def test_corrupt_deflate_block_in_jsonl_gz_is_a_corrupt_file(tmp_path):
    # was zlib.error (not an OSError) out of gzip's peek: "invalid block type"
    stats = _ingest(tmp_path, "a.jsonl.gz", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03\xff")
    assert stats["skipped"] == {"corrupt_file": 1} and stats["counts"]["documents"] == 1
    assert stats["samples"]["corrupt_file"] == ["a.jsonl.gz: Error -3 while decompressing data: invalid block type"]


def test_corrupt_zstd_frame_in_jsonl_zst_is_a_corrupt_file(tmp_path):
    # was zstandard.ZstdError out of the stream reader
    stats = _ingest(tmp_path, "a.jsonl.zst", b'(\xb5/\xfd\xff\x0eq\x00\x00{"text": "a"}\n')
    assert stats["skipped"] == {"corrupt_file": 1} and stats["counts"]["documents"] == 1
    assert stats["samples"]["corrupt_file"] == ["a.jsonl.zst: zstd decompress error: Unsupported frame parameter"]


def test_corrupt_gzip_html_and_text_are_corrupt_files(tmp_path):
    # .html.gz and .txt.gz are read whole: the same zlib.error came out of f.read()
    (tmp_path / "in").mkdir()
    for name in ("a.html.gz", "b.txt.gz"):
        (tmp_path / "in" / name).write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03\xff")
    (tmp_path / "in" / "good.jsonl").write_bytes(GOOD)
    stats = llmpipe.run_stage("ingest", [str(tmp_path / "in")], tmp_path / "out", max_bad_fraction=1.0)["stats"]
    assert stats["skipped"] == {"corrupt_file": 2} and stats["counts"]["documents"] == 1


def test_json_line_nested_too_deep_is_bad_json(tmp_path):
    # was RecursionError out of json.loads (Python's parser stops near 1,000 levels)
    stats = _ingest(tmp_path, "a.jsonl", b"[" * 100_000 + b"\n" + GOOD)
    assert stats["skipped"] == {"bad_json": 1} and stats["counts"]["documents"] == 2
    assert stats["samples"]["bad_json"] == ["a.jsonl:1"]


def test_json_line_nested_too_deep_is_bad_json_for_chat_data_too(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"{" * 100_000 + b"\n" + GOOD)
    stats = TaskStats()
    assert list(iter_json_lines(str(tmp_path / "a.jsonl"), stats)) == [(2, {"text": "a good document"})]
    assert dict(stats.skipped) == {"bad_json": 1}


# One text row written by pyarrow (no compression, no dictionary, no statistics), its first page header's byte broken:
# the footer opens, the page does not.
CORRUPT_PAGE_PARQUET = (
    b'PAR1\xff\x00\x15*\x15*,\x15\x02\x15\x00\x15\x06\x15\x06\x1c\x00\x00\x00\x02\x00\x00\x00\x02\x01\x0b\x00\x00\x00'
    b'hello world\x15\x04\x19,5\x00\x18\x06schema\x15\x02\x00\x15\x0c%\x02\x18\x04text%\x00L\x1c\x00\x00\x00\x16\x02'
    b'\x19\x1c\x19\x1c&\x00\x1c\x15\x0c\x19%\x06\x00\x19\x18\x04text\x15\x00\x16\x02\x16P\x16P&\x08I\x1c\x15\x00\x15'
    b'\x00\x15\x02\x00<\x16\x16\x19\x06\x19&\x00\x02\x00\x00\x00\x16P\x16\x02&\x08\x16P\x00( parquet-cpp-arrow version '
    b'26.0.1\x19\x1c\x1c\x00\x00\x00\x88\x00\x00\x00PAR1'
)


def test_corrupt_parquet_page_is_bad_parquet_in_one_line(tmp_path):
    # was OSError out of iter_batches (only opening the file was guarded), with a message of two lines
    stats = _ingest(tmp_path, "a.parquet", CORRUPT_PAGE_PARQUET)
    assert stats["skipped"] == {"bad_parquet": 1} and stats["counts"]["documents"] == 1
    assert stats["samples"]["bad_parquet"] == [
        "a.parquet: after row 0: Couldn't deserialize thrift: don't know what type: \x0f Deserializing page header failed."]


def test_arc_gz_compressed_as_one_stream_is_counted_in_one_line(tmp_path):
    # `gzip file.arc` makes one gzip stream, not one member per record; warcio refuses it in a message of 12 lines,
    # which became the bad_warc sample that `llmpipe inspect` prints
    import gzip

    arc = (b"filedesc://x.arc 0.0.0.0 20140216050221 text/plain 65\n1 0 Test\nURL IP-address Archive-date Content-type "
           b"Archive-length\n\nhttp://example.com/ 1.2.3.4 20140216050221 text/html 53\nHTTP/1.0 200 OK\r\n"
           b"Content-Type: text/html\r\n\r\n<p>hi</p>\n")
    stats = _ingest(tmp_path, "a.arc.gz", gzip.compress(arc, mtime=0))
    assert stats["skipped"] == {"bad_warc": 1}
    assert stats["samples"]["bad_warc"] == [
        "a.arc.gz: ERROR: non-chunked gzip file detected, gzip block continues beyond single record. This file is probably "
        "not a multi-member gzip but a single gzip file. To allow seek, a gzipped WARC/ARC must have each"]


def test_page_whose_charset_names_a_python_only_codec_is_read_as_undeclared(tmp_path):
    # <meta charset="undefined"> made bytes.decode("undefined") raise UnicodeError (not UnicodeDecodeError): a traceback
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.html").write_bytes(b'<html><meta charset="undefined"><body><p>' + b"Caf\xe9 ol\xe9, " * 20 + b"</p></body></html>")
    m = llmpipe.run_stage("ingest", [str(tmp_path / "in")], tmp_path / "out")
    assert m["counts"]["documents"] == 1 and m["stats"]["counts"]["decoded_cp1252"] == 1
    assert rows(tmp_path / "out")[0]["text"].startswith("Café olé, Café olé,")


def test_encoding_param_naming_a_python_only_codec_is_refused_in_one_line(tmp_path):
    (tmp_path / "a.txt").write_text("text")
    with pytest.raises(ConfigError) as e:
        llmpipe.run_stage("ingest", [str(tmp_path / "a.txt")], tmp_path / "out", encoding="undefined")
    assert str(e.value) == 'ingest encoding: unknown codec "undefined"; give auto or a codec name such as utf-8, cp1252, latin-1'
