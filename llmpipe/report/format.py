"""How the report writes numbers, sizes and source records: shared by the HTML page and the Markdown twin."""

from __future__ import annotations


def number(value) -> str:
    """1,234 for counts; 4 significant digits for measurements; '' for a missing value."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.4g}"


def size(n: int | None) -> str:
    if n is None:
        return ""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def seconds(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def source_record(doc: dict) -> str:
    """Where a document came from: its input file and line (JSONL, text, Parquet row) or byte offset (WARC)."""
    where = doc.get("path") or doc.get("source") or "?"
    if doc.get("line") is not None:
        return f"{where}:{doc['line']}"
    if doc.get("offset") is not None:
        return f"{where}@{doc['offset']}"
    return where


def metrics(values: dict) -> str:
    return ", ".join(f"{k} {number(v)}" for k, v in values.items() if not isinstance(v, (dict, list)))


def one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
