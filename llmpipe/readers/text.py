"""JSONL (plain, .gz, .zst), Parquet and plain-text inputs; bad records are counted, never fatal.

Text files and JSONL lines are decoded as browsers decode pages (llmpipe/readers/charset.py):
strict UTF-8 (with a byte-order mark), else a fallback (cp1252 for Western legacy files), or
an encoding the user names. Each record counts the codec it was read with (`decoded_cp1252`).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from typing import IO, Iterator

import zstandard

from llmpipe.readers.charset import codec_name, decode, legacy_codec, mostly_utf8, strip_bom
from llmpipe.stats import TaskStats


def open_maybe_compressed(path: str) -> IO[bytes]:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True))
    return open(path, "rb")


# A compressed stream that ends early (EOFError, or gzip's OSError) or holds corrupt blocks (zlib's and zstd's own errors)
COMPRESSION_ERRORS = (EOFError, OSError, zlib.error, zstandard.ZstdError)


def skip_broken_stream(name: str, e: Exception, stats: TaskStats) -> None:
    """Count a file whose compressed stream is cut (`truncated_file`) or corrupt (`corrupt_file`); what was read stays."""
    stats.skip("corrupt_file" if isinstance(e, (zlib.error, zstandard.ZstdError)) else "truncated_file", f"{name}: {e}")


def read_decompressed(path: str, stats: TaskStats) -> bytes | None:
    """A whole file's bytes, decompressed; None, counted, when its compressed stream is cut or corrupt."""
    try:
        with open_maybe_compressed(path) as f:
            return f.read()
    except COMPRESSION_ERRORS as e:
        skip_broken_stream(os.path.basename(path), e, stats)
        return None


def _json(line: str):
    """The JSON value of a line; ValueError for a broken one, and for one nested too deep for Python's parser."""
    try:
        return json.loads(line)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _decoded_lines(raw: IO[bytes], encoding: str) -> Iterator[tuple[int, str, str]]:
    """(line number, text, codec) per line. "auto" reads each line as strict UTF-8, and a line that
    is not as the file's legacy codec (chosen once, from the first such line) unless it is UTF-8
    with a few stray bytes."""
    bom = strip_bom(raw.peek(4)[:4])[1]
    if encoding != "auto" or bom not in (None, "utf-8"):  # a named codec, or UTF-16: lines are not bytes split at \n
        enc = codec_name(encoding) if encoding != "auto" else bom
        text = io.TextIOWrapper(raw, encoding="utf-16" if bom and enc.startswith("utf-16") else enc, errors="replace", newline="\n")
        for lineno, line in enumerate(text, 1):
            yield lineno, line.lstrip("\ufeff") if lineno == 1 else line, enc
        return
    legacy = None
    for lineno, line in enumerate(raw, 1):
        if lineno == 1:
            line = strip_bom(line)[0]
        try:
            text, enc = line.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            enc = "utf-8" if mostly_utf8(line) else (legacy := legacy or legacy_codec(line))
            text = line.decode(enc, "replace")
        # hold neither the bytes nor the text while the caller works on this line (it may be 100 MB)
        record = [(lineno, text, enc)]
        del line, text
        yield record.pop()


def iter_jsonl(path: str, text_key: str, stats: TaskStats, encoding: str = "auto") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each valid line holding a string under text_key."""
    name = os.path.basename(path)
    try:
        with open_maybe_compressed(path) as raw:
            for lineno, line, enc in _decoded_lines(raw, encoding):
                if not line.strip():
                    continue
                try:
                    obj = _json(line)
                except ValueError:
                    stats.skip("bad_json", f"{name}:{lineno}")
                    continue
                del line  # the parsed object alone stays while the caller works on it
                if not isinstance(obj, dict) or not isinstance(obj.get(text_key), str):
                    stats.skip("no_text", f"{name}:{lineno}: {_no_text_reason(obj, text_key)}")
                    continue
                stats.count(f"decoded_{enc}")
                yield lineno, obj
    except COMPRESSION_ERRORS as e:  # truncated or corrupt gzip/zstd: keep what was read
        skip_broken_stream(name, e, stats)


def iter_json_lines(path: str, stats: TaskStats, encoding: str = "auto") -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for each non-blank line that is JSON, whatever it holds (chat data
    judges the rows itself); broken lines and truncated files are counted as in iter_jsonl."""
    name = os.path.basename(path)
    try:
        with open_maybe_compressed(path) as raw:
            for lineno, line, _ in _decoded_lines(raw, encoding):
                if not line.strip():
                    continue
                try:
                    value = _json(line)
                except ValueError:
                    stats.skip("bad_json", f"{name}:{lineno}")
                    continue
                yield lineno, value
    except COMPRESSION_ERRORS as e:
        skip_broken_stream(name, e, stats)


def _no_text_reason(obj, text_key: str) -> str:
    """What the record holds instead, so the user can name the right text field."""
    if not isinstance(obj, dict):
        return f"a JSON {type(obj).__name__}, not an object"
    if text_key in obj:
        return f'"{text_key}" is a {type(obj[text_key]).__name__}, not a string'
    return f'no "{text_key}" field, has {", ".join(list(obj)[:12]) or "no fields"}'


def iter_parquet(path: str, text_key: str, stats: TaskStats) -> Iterator[tuple[int, dict]]:
    """(row number, from 1, row) for each row holding a string under text_key."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = os.path.basename(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        stats.skip("bad_parquet", f"{name}: {e}")
        return
    if text_key not in pf.schema_arrow.names:
        stats.skip("no_text", f'{name}: no column "{text_key}", has {", ".join(pf.schema_arrow.names[:12])}')
        return
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=2048):
            for obj in batch.to_pylist():
                row += 1
                if isinstance(obj.get(text_key), str):
                    yield row, obj
                else:
                    stats.skip("no_text", f"{name}:{row}: {_no_text_reason(obj, text_key)}")
    except (OSError, pa.ArrowException) as e:  # a corrupt page or row group: keep the rows read before it
        stats.skip("bad_parquet", f"{name}: after row {row}: {e}")


def iter_plain_text(path: str, split: str, stats: TaskStats, encoding: str = "auto") -> Iterator[tuple[int, str]]:
    """(line number where it starts, text): the file as one document, or one per blank-line-separated
    block, or one per line. Blocks and lines are read as a stream: memory holds one record, not the file."""
    if split == "file":
        data = read_decompressed(path, stats)
        if data is None:
            return
        text, enc = decode(data, encoding)
        if "\x00" in text:
            stats.skip("binary", os.path.basename(path))
            return
        stats.count(f"decoded_{enc}")
        yield 1, text
        return
    try:
        with open_maybe_compressed(path) as raw:
            if b"\x00" in raw.peek(1 << 16)[: 1 << 16] and strip_bom(raw.peek(4)[:4])[1] is None:
                stats.skip("binary", os.path.basename(path))  # NUL bytes in a file without a UTF-16/32 mark: not text
                return
            lines = _decoded_lines(raw, encoding)
            records = _lines(lines, stats) if split == "line" else _blocks(lines)
            for n, record, enc in records:
                stats.count(f"decoded_{enc}")
                yield n, record
    except COMPRESSION_ERRORS as e:  # truncated or corrupt gzip/zstd: the records read before it stay
        skip_broken_stream(os.path.basename(path), e, stats)


def _lines(lines: Iterator[tuple[int, str, str]], stats: TaskStats) -> Iterator[tuple[int, str, str]]:
    """Non-blank lines, split as str.splitlines splits them (form feeds, \\r, U+2028 too), numbered in that order."""
    n = 0
    for _, line, enc in lines:
        for piece in line.splitlines() or [""]:
            n += 1
            if "\x00" in piece:
                stats.skip("binary", f"line {n}")
            elif piece.strip():
                yield n, piece, enc


def _blocks(lines: Iterator[tuple[int, str, str]]) -> Iterator[tuple[int, str, str]]:
    """Blocks of lines separated by blank lines (spaces and tabs only), with their first line's number."""
    start, block, enc = 0, [], "utf-8"
    for i, line, line_enc in lines:
        line = line.rstrip("\n").removesuffix("\r")
        if line.strip(" \t"):
            if not block:
                start, enc = i, line_enc
            block.append(line)
        elif block:
            yield start, "\n".join(block), enc
            block = []
    if block:
        yield start, "\n".join(block), enc
