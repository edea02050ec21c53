"""Heuristic quality rules for web text, one module per rule family, as FineWeb/DCLM pipelines use them.

Each family module has a frozen `Params` dataclass (defaults = datatrove's, which are the papers')
and `apply(text, params, doc=None) -> (text, reason)`: the possibly rewritten text (C4 removes
lines, PII redacts) and a snake_case reason when the document is dropped, else None. Pass one
`Doc` along the chain so the text is split into words once (again only after a family rewrote it).
Pure functions: no I/O, no framework imports; stages/filter.py does Parquet, counts and rejects.

    from llmpipe import filters
    text, reason, family = filters.apply_chain(text)    # the FineWeb order, default thresholds
"""

from __future__ import annotations

from types import ModuleType

from llmpipe.filters import c4, fineweb, gopher_quality, gopher_repetition, pii
from llmpipe.filters.words import Doc

# Default order = datatrove's FineWeb pipeline (examples/fineweb.py): repetition, quality, C4,
# FineWeb; PII redaction last (FineWeb redacts at the end, after deduplication).
FAMILIES: dict[str, ModuleType] = {
    "gopher_repetition": gopher_repetition,
    "gopher_quality": gopher_quality,
    "c4": c4,
    "fineweb": fineweb,
    "pii": pii,
}
# FineWeb keeps C4's lines that lack terminal punctuation (datatrove's example sets this).
FINEWEB_OVERRIDES: dict[str, dict[str, object]] = {"c4": {"filter_no_terminal_punct": False}}


def apply_chain(text: str, params: dict[str, object] | None = None, families=None) -> tuple[str, str | None, str | None]:
    """Run families in order on one text: (final text, reason, family that dropped it) or (text, None, None).

    params maps a family name to its Params (default Params() otherwise); families defaults to all."""
    params = params or {}
    doc = None
    for name in families if families is not None else FAMILIES:
        module = FAMILIES[name]
        p = params.get(name) or module.Params()
        doc = Doc.of(text, doc, getattr(p, "word_tokenizer", "builtin"))
        text, reason = module.apply(text, p, doc)
        if reason is not None:
            return text, reason, name
    return text, None, None


__all__ = ["FAMILIES", "FINEWEB_OVERRIDES", "Doc", "apply_chain", "c4", "fineweb", "gopher_quality", "gopher_repetition", "pii"]
