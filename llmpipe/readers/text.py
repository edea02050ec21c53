"""JSONL (plain, .gz, .zst), Parquet and plain-text inputs; bad records are counted, never fatal."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
from typing import IO, Iterator

from llmpipe.stats import TaskStats


def open_maybe_compressed(path: str) -> IO[bytes]:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True)
    return open(path, "rb")


def iter_jsonl(path: str, text_key: str, stats: TaskStats) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each valid line holding a string under text_key."""
    try:
        with open_maybe_compressed(path) as raw:
            for lineno, line in enumerate(io.BufferedReader(raw) if path.endswith(".zst") else raw, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except (UnicodeDecodeError, ValueError):
                    stats.skip("bad_json", f"{os.path.basename(path)}:{lineno}")
                    continue
                if not isinstance(obj, dict) or not isinstance(obj.get(text_key), str):
                    stats.skip("no_text", f"{os.path.basename(path)}:{lineno}")
                    continue
                yield lineno, obj
    except (EOFError, OSError) as e:  # truncated gzip/zstd: keep what was read
        stats.skip("truncated_file", f"{os.path.basename(path)}: {e}")


def iter_parquet(path: str, text_key: str, stats: TaskStats) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        stats.skip("bad_parquet", f"{os.path.basename(path)}: {e}")
        return
    if text_key not in pf.schema_arrow.names:
        stats.skip("no_text", f"{os.path.basename(path)}: no column {text_key!r}")
        return
    row = 0
    for batch in pf.iter_batches(batch_size=2048):
        for obj in batch.to_pylist():
            row += 1
            if isinstance(obj.get(text_key), str):
                yield row, obj
            else:
                stats.skip("no_text", f"{os.path.basename(path)}:{row}")


def iter_plain_text(path: str, split: str, stats: TaskStats) -> Iterator[tuple[int, str]]:
    """The file as one document, or one per blank-line-separated block, or one per line."""
    with open_maybe_compressed(path) as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        stats.skip("bad_utf8", os.path.basename(path))
        return
    if "\x00" in text:
        stats.skip("binary", os.path.basename(path))
        return
    if split == "file":
        yield 1, text
    elif split == "line":
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                yield i, line
    else:
        for i, block in enumerate(re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")), 1):
            if block.strip():
                yield i, block.strip("\n")
