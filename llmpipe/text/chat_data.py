"""Instruction data in the formats users have -> conversations [{"role", "content"}, ...], bad rows counted.

    for key, messages in read_chat(["data/alpaca.json", "chats.jsonl.zst"], stats=stats):
        ...  # key "data/alpaca.json:17"; messages [{"role": "user", ...}, {"role": "assistant", ...}]

Files: JSON (a list of rows, an object holding one list, or JSONL saved as .json), JSONL, Parquet;
.gz/.zst as the other readers. Rows are numbered from 1 (a JSONL row's number is its line).
Formats, detected per row from its fields (so mixed files work), or forced with `format`:

- alpaca: instruction, input, output (+ optional system, history [[user, assistant], ...]); also
  the spellings LitGPT's fixtures use: Dolly's context/response, LongForm's input/output without
  an instruction, and Self-Instruct seed tasks (instruction + instances [{input, output}], one
  conversation per instance, keyed row#k).
- messages: OpenAI style [{role, content}], multi-turn, optional system; content may be a list of
  {"type": "text", "text": ...} parts.
- sharegpt: conversations [{from, value}] (human/gpt/system, or user/assistant), optional system;
  a preference row's `chosen` reply (LLaMA-Factory's ranking data) becomes the final assistant turn.
- prompt_response: prompt + response (LLM Foundry), or TRL's prompt + completion (strings or messages).
- multiple_choice: query, choices, gold (LLM Foundry's ICL rows, turned into a question whose
  answer is the gold choice as its finetune example's preprocessing does).

A row that fits no format or breaks a rule is skipped and counted in `stats.skipped` by reason
(REASONS), with a few "file:row: detail" samples; `stats.counts` holds rows, conversations and
format_<name> per row read. Contents are kept exactly as written (no stripping): the template and
the loss see what the data says. Empty system prompts are dropped (they mean "no system prompt").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

from llmpipe.stats import TaskStats
from llmpipe.text.chat_formats import FORMATS, REASONS, BadRow, expand_instances, detect_format, to_messages

__all__ = ["FORMATS", "REASONS", "BadRow", "detect_format", "to_messages", "read_chat", "read_chat_file", "iter_rows", "file_kind"]
SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


def file_kind(path: str | Path) -> str:
    """json, jsonl or parquet from the file name (a .gz/.zst suffix is read through); ValueError otherwise."""
    name = os.fspath(path).lower()
    stem = name[: -len(".gz")] if name.endswith(".gz") else name[: -len(".zst")] if name.endswith(".zst") else name
    kind = SUFFIXES.get(os.path.splitext(stem)[1])
    if kind is None:
        raise ValueError(f"chat data: {path}: expected a .json, .jsonl or .parquet file (optionally .gz or .zst)")
    return kind


def iter_rows(path: str | Path, stats: TaskStats, detect: Callable[[object], str | None] = detect_format) -> Iterator[tuple[int, object]]:
    """(row number from 1, parsed row) for every row of a file; unreadable rows are counted in stats.

    `detect` tells a JSON file holding one row (an object with a format's fields) from an object
    holding the list of rows: preference_data passes its own.
    """
    from llmpipe.readers.text import iter_json_lines, open_maybe_compressed

    if os.fspath(path).startswith("embedded:"):  # fine-tuning rows that ship with Python (readers/embedded.py)
        from llmpipe.readers.embedded import iter_embedded_rows

        yield from enumerate(iter_embedded_rows(os.fspath(path).removeprefix("embedded:")), 1)
        return
    path, kind = os.fspath(path), file_kind(path)
    if kind == "jsonl":
        yield from iter_json_lines(path, stats)
    elif kind == "parquet":
        yield from _parquet_rows(path, stats)
    else:
        from llmpipe.readers.charset import decode

        with open_maybe_compressed(path) as f:
            text = decode(f.read())[0]
        try:
            data = json.loads(text)
        except ValueError as e:
            if "Extra data" not in str(e):
                stats.skip("bad_json", f"{path}: {e}")
                return
            yield from iter_json_lines(path, stats)  # JSON Lines saved as .json, as many datasets are
            return
        rows = _rows_of(data, detect)
        if rows is None:
            stats.skip("bad_json", f"{path}: an object without one list of rows (fields: {', '.join(list(data)[:12])})")
            return
        yield from enumerate(rows, 1)


def _rows_of(data, detect: Callable[[object], str | None]) -> list | None:
    """The rows of a JSON document: a list, one row (an object with a format's fields), or an object's only list."""
    if isinstance(data, list):
        return data
    if detect(data):
        return [data]
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        return lists[0] if len(lists) == 1 else None
    return [data]  # a lone number or string: one row, counted as not an object


def _parquet_rows(path: str, stats: TaskStats) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        stats.skip("bad_parquet", f"{path}: {e}")
        return
    row = 0
    for batch in pf.iter_batches(batch_size=1024):
        for obj in batch.to_pylist():
            row += 1
            yield row, obj


def read_chat_file(path: str | Path, format: str = "auto", stats: TaskStats | None = None) -> Iterator[tuple[str, list[dict]]]:
    """(key "path:row", messages) for each good row of one file; bad rows go to stats (see the module docstring).

    With format="auto" each row is read as the format its fields name; a row whose fields name none
    is read as the format of the row before it (so an Alpaca row without `output` is reported as
    no_assistant_turn, not as no_format).
    """
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"chat data format: expected auto or one of {', '.join(FORMATS)}, got {format!r}")
    stats = stats if stats is not None else TaskStats()
    last = None
    for row_no, row in iter_rows(path, stats):
        stats.count("rows")
        parts = expand_instances(row)
        for k, part in enumerate(parts, 1):
            key = f"{os.fspath(path)}:{row_no}" + (f"#{k}" if len(parts) > 1 else "")
            fmt = format if format != "auto" else (detect_format(part) or last)
            try:
                if fmt is None:
                    fields = ", ".join(list(part)[:12]) if isinstance(part, dict) else ""
                    raise BadRow("no_format" if isinstance(part, dict) else "not_an_object", fields or f"a JSON {type(part).__name__}")
                last = fmt if isinstance(part, dict) else last
                stats.count(f"format_{fmt}")
                messages = to_messages(part, fmt)
            except BadRow as bad:
                stats.skip(bad.reason, f"{key}: {bad.detail}")
                continue
            stats.count("conversations")
            yield key, messages


def read_chat(paths: Iterable[str | Path], format: str = "auto", stats: TaskStats | None = None) -> Iterator[tuple[str, list[dict]]]:
    """read_chat_file over several files, in order, into one stats."""
    stats = stats if stats is not None else TaskStats()
    for path in paths:
        yield from read_chat_file(path, format, stats)
