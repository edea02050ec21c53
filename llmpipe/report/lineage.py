"""The records behind the numbers: documents a rule removed and documents kept into the token shards,
each with the input file and record it came from (the `path`, `line`/`offset` ingest writes on every row).

Removed documents come from a step's rejected/ parts (written when keep_rejected = true), a few per
reason. Kept documents come from a tokenize step's input documents artifacts: tokenize encodes every
document of an input whose weight is 1 or more into the train or val shards (bos + text + eos), so
the first rows of such an input are documents in the shards. (tokenize records no per-document
index, so the shard and offset of a document are not shown.)
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

TEXT_PREVIEW = 300  # characters of each document's text shown
COLUMNS = ("id", "text", "reason", "source", "path", "line", "offset", "url")


def collect(steps: list[dict], by_name: dict, names: dict, samples_per_reason: int, kept_samples: int) -> tuple[dict, str | None]:
    from llmpipe.report.collect import name_of

    removed, kept = [], []
    for s in steps:
        path, m = by_name[s["name"]]
        if m.get("output_kind") == "documents" and (path / "rejected").is_dir():
            removed += _removed(s["name"], path, m, samples_per_reason)
        if m.get("output_kind") == "tokens":
            kept += _kept(s["name"], m, names, kept_samples, name_of)
    no_rejected = [s["name"] for s in steps if by_name[s["name"]][1].get("output_kind") == "documents"
                   and by_name[s["name"]][1].get("stats", {}).get("dropped") and not (by_name[s["name"]][0] / "rejected").is_dir()]
    data = {"removed": removed, "kept": kept, "steps_without_rejected": no_rejected}
    return data, None if steps else "No steps."


def _removed(step: str, path: Path, m: dict, n: int) -> list[dict]:
    """One entry per removal reason the step counted, with up to n of the documents it removed."""
    rules = {}  # reason as rejected rows name it -> the key the stats count it under (filter's "family/reason")
    for key, count in m.get("stats", {}).get("dropped", {}).items():
        if count:
            rules[key.rpartition("/")[2]] = (key, count)
    found: dict[str, list[dict]] = {reason: [] for reason in rules}
    for part in sorted((path / "rejected").glob("*.parquet")):
        # the reason column alone picks the rows; only their row groups are read whole (texts can be gigabytes)
        picked = []
        for index, reason in enumerate(pq.read_table(part, columns=["reason"]).column(0).to_pylist()):
            docs = found.setdefault(reason or "", [])
            if len(docs) < n:
                docs.append(index)  # the row's place, filled with the document below
                picked.append(index)
        rows = dict(_read_rows(part, picked))
        for reason, docs in found.items():
            found[reason] = [_document(rows[d], part, d, path) if isinstance(d, int) else d for d in docs]
        if all(len(v) >= n for v in found.values()):
            break
    out = []
    for reason, docs in found.items():
        key, count = rules.get(reason, (reason, len(docs)))
        out.append({"step": step, "rule": key, "reason": reason, "documents_removed": count, "documents": docs,
                    "anchor": anchor("removed", step, key)})
    return sorted(out, key=lambda e: -e["documents_removed"])


def _kept(step: str, m: dict, names: dict, n: int, name_of) -> list[dict]:
    """The first documents of each documents input that tokenize encodes whole (weight of 1 or more)."""
    from llmpipe.artifacts.manifest import read_manifest

    weights = m.get("params", {}).get("weights") or []
    out = []
    for k, inp in enumerate(m.get("inputs", [])):
        weight = weights[k] if k < len(weights) else 1.0
        if inp.get("kind") != "artifact" or weight < 1 or not Path(inp["path"], "_manifest.json").is_file():
            continue
        source = read_manifest(Path(inp["path"]))
        if source.get("output_kind") != "documents":
            continue
        docs = []
        for f in source.get("files", []):
            for row_index, row in _rows(Path(inp["path"]) / f):
                docs.append(_document(row, Path(inp["path"]) / f, row_index, Path(inp["path"])))
                if len(docs) >= n:
                    break
            if len(docs) >= n:
                break
        out.append({"step": step, "input": name_of(inp["path"], names) or inp["path"], "input_path": inp["path"], "weight": weight,
                    "documents": docs, "anchor": anchor("kept", step, str(k))})
    return out


def _read_rows(part: Path, indices: list[int]) -> list[tuple[int, dict]]:
    """(row index, row) of the given rows of a Parquet part, in the order given, reading only their row groups."""
    pf = pq.ParquetFile(part)
    columns = [c for c in COLUMNS if c in pf.schema_arrow.names]
    starts, groups = [0], {}
    for g in range(pf.num_row_groups):
        starts.append(starts[-1] + pf.metadata.row_group(g).num_rows)
    out = []
    for index in indices:
        g = next(k for k in range(pf.num_row_groups) if starts[k] <= index < starts[k + 1])
        if g not in groups:
            groups[g] = pf.read_row_group(g, columns=columns)
        out.append((index, groups[g].slice(index - starts[g], 1).to_pylist()[0]))
    return out


def _rows(part: Path):
    """(row index, row) of a Parquet part, with the lineage columns it has."""
    from llmpipe.artifacts.documents import iter_batches

    columns = [c for c in COLUMNS if c in pq.read_schema(part).names]
    index = 0
    for batch in iter_batches(part, columns, batch_size=256):
        for row in batch.to_pylist():
            yield index, row
            index += 1


def _document(row: dict, part: Path, row_index: int, artifact: Path) -> dict:
    """A document as the report shows it: where it came from (input file and record) and where it sits now."""
    text = row.get("text") or ""
    doc = {"id": row.get("id"), "source": row.get("source"), "path": row.get("path"), "line": row.get("line"),
           "offset": row.get("offset"), "url": row.get("url"), "text": text[:TEXT_PREVIEW], "text_chars": len(text),
           "artifact_file": str(part.relative_to(artifact)), "row": row_index}
    return {k: v for k, v in doc.items() if v is not None}


def anchor(*parts: str) -> str:
    """An HTML id from names: letters, digits, - and _ only."""
    import re

    return re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(parts)).strip("-")
