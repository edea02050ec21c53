"""Heuristic quality filtering as FineWeb does it: Gopher repetition, Gopher quality, C4, FineWeb rules, PII.

Rules run in `rules` order (FineWeb's by default); each family's thresholds are params named
`<family>_<threshold>` with the published defaults (llmpipe/filters/ has the rules and their
sources). C4 rewrites pages line by line and PII redacts emails and IP addresses, so later rules
see the cleaned text. Before the rules: a URL domain blocklist and length bounds. The manifest
holds the funnel (documents in, removed by each rule, documents out) and `funnel.png` draws it;
removed documents can be kept beside in rejected/ with their reason.

    llmpipe filter --input runs/pretrain/language --output runs/filtered --keep-rejected
    [steps.filter]
    inputs = ["language"]
    gopher_quality_min_doc_words = 30
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import field

from llmpipe.artifacts.layout import part_name
from llmpipe.filters import FAMILIES, FINEWEB_OVERRIDES, apply_chain
from llmpipe.registry import Plan, Stage

SHARED = ("word_tokenizer",)  # one stage-level param, passed to every family that has it


def _family_fields() -> list[tuple[str, typing.Any, dataclasses.Field]]:
    """`<family>_<name>` fields for every family threshold, with FineWeb's overrides as defaults."""
    out, shared = [], {}
    for family, module in FAMILIES.items():
        hints = typing.get_type_hints(module.Params)
        for f in dataclasses.fields(module.Params):
            default = FINEWEB_OVERRIDES.get(family, {}).get(f.name, f.default)
            if f.name in SHARED:
                shared.setdefault(f.name, (hints[f.name], field(default=default, metadata=dict(f.metadata))))
                continue
            out.append((f"{family}_{f.name}", hints[f.name], field(default=default, metadata=dict(f.metadata))))
    return [(name, tp, fld) for name, (tp, fld) in shared.items()] + out


def _validate(self) -> None:
    unknown = [r for r in self.rules if r not in FAMILIES]
    if unknown:
        from llmpipe.errors import did_you_mean

        raise ValueError(f'rules: unknown rule family "{unknown[0]}"{did_you_mean(unknown[0], FAMILIES)}; known: {", ".join(FAMILIES)}')
    if self.max_chars and self.min_chars > self.max_chars:
        raise ValueError(f"min_chars: {self.min_chars} is above max_chars={self.max_chars}")


Params = dataclasses.make_dataclass(
    "Params",
    [
        ("rules", tuple[str, ...], field(default=tuple(FAMILIES), metadata={"help": "Rule families to run, in order: " + ", ".join(FAMILIES) + "."})),
        ("url_blocklist", str, field(default="", metadata={"help": "File of blocked domains, one per line (# comments); subdomains match too."})),
        ("min_chars", int, field(default=0, metadata={"help": "Drop documents shorter than this many characters (0: off)."})),
        ("max_chars", int, field(default=0, metadata={"help": "Drop documents longer than this many characters (0: off)."})),
        ("keep_rejected", bool, field(default=False, metadata={"help": "Write removed documents to rejected/ with a reason column."})),
        *_family_fields(),
    ],
    frozen=True,
    namespace={"__post_init__": _validate, "__module__": __name__},
)


def family_params(p, family: str):
    """Rebuild one family's own Params from the flat stage params."""
    module = FAMILIES[family]
    values = {}
    for f in dataclasses.fields(module.Params):
        values[f.name] = getattr(p, f.name if f.name in SHARED else f"{family}_{f.name}")
    return module.Params(**values)


def plan(params, inputs) -> Plan:
    parts = [f for inp in inputs for f in inp.files]
    return Plan(phases=[("filter", [{"part": p} for p in parts])], files=[part_name(i) for i in range(len(parts))])


def load_blocklist(path: str) -> frozenset[str]:
    if not path:
        return frozenset()
    with open(path, encoding="utf-8") as f:
        return frozenset(line.split("#")[0].strip().lower().lstrip(".") for line in f if line.split("#")[0].strip())


def blocked(url: str | None, domains: frozenset[str]) -> bool:
    if not url or not domains:
        return False
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").lower()
    parts = host.split(".")
    return any(".".join(parts[i:]) in domains for i in range(len(parts)))


def filter_task(ctx, task: dict) -> dict:
    import contextlib

    import pyarrow as pa

    from llmpipe.artifacts.documents import DocumentWriter, iter_batches
    from llmpipe.stats import TaskStats

    p = ctx.params
    families = {name: family_params(p, name) for name in p.rules}
    domains = load_blocklist(p.url_blocklist)
    stats = TaskStats()
    import pyarrow.parquet as pq

    schema = pq.read_schema(task["part"])
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(DocumentWriter(ctx.out / part_name(ctx.task_index), schema))
        rejected = None
        if p.keep_rejected:
            rejected = stack.enter_context(DocumentWriter(ctx.out / "rejected" / part_name(ctx.task_index), schema.append(pa.field("reason", pa.string()))))
        for batch in iter_batches(task["part"]):
            kept_rows, dropped_rows = [], []
            for row in batch.to_pylist():
                stats.count("documents_in")
                reason, family = _check(row, p, families, domains)
                if reason is None:
                    kept_rows.append(row)
                else:
                    stats.drop(f"{family}/{reason}")
                    if rejected is not None:
                        dropped_rows.append({**row, "reason": reason})
            writer.write_rows(kept_rows)
            stats.count("documents", len(kept_rows))
            if rejected is not None:
                rejected.write_rows(dropped_rows)
    return stats.to_json()


def _check(row: dict, p, families: dict, domains: frozenset[str]) -> tuple[str | None, str | None]:
    """Apply the pre-checks and the rule chain to one row in place; (reason, family) when dropped."""
    if blocked(row.get("url"), domains):
        return "url_blocklist", "url"
    n = len(row["text"])
    if p.min_chars and n < p.min_chars:
        return "too_short", "length"
    if p.max_chars and n > p.max_chars:
        return "too_long", "length"
    text, reason, family = apply_chain(row["text"], families, p.rules)
    if reason is None:
        row["text"] = text
    return reason, family


def finalize(ctx, stats: dict, records: dict) -> dict:
    from llmpipe.plots import funnel_png

    counts = stats.get("counts", {})
    dropped = stats.get("dropped", {})
    by_family: dict[str, int] = {}
    for key, n in dropped.items():
        by_family[key.split("/")[0]] = by_family.get(key.split("/")[0], 0) + n
    order = ["url", "length", *ctx.params.rules]
    funnel = [(fam, by_family.get(fam, 0)) for fam in order if by_family.get(fam, 0) or fam in ctx.params.rules]
    documents_in = counts.get("documents_in", 0)
    funnel_png(ctx.out / "funnel.png", f"filter: {counts.get('documents', 0):,} of {documents_in:,} documents kept", documents_in, funnel)
    return {
        "counts": {"documents": counts.get("documents", 0), "removed": documents_in - counts.get("documents", 0)},
        # a list, not a dict: the manifest's JSON is key-sorted and the funnel's order is the point
        "funnel": {"documents_in": documents_in, "removed_by": [[fam, n] for fam, n in funnel],
                   "removed_by_reason": dict(sorted(dropped.items())), "documents_out": counts.get("documents", 0)},
        "figures": ["funnel.png"],
        "stats": stats,
    }


STAGE = Stage(
    name="filter", version=1, params=Params, doc=__doc__, plan=plan, run_task={"filter": filter_task},
    finalize=finalize, output_kind="documents", path_params=("url_blocklist",),
)
