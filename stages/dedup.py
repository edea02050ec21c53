"""Remove exact duplicate documents (same text after optional normalisation), keeping the first.

Three phases, each fanning out: `hash` (one task per input part: 64-bit hash per document),
`select` (one task: the first occurrence of each hash wins, in input order), `filter` (one task
per input part: write the kept rows). Removed documents can be kept beside with a reason.

    llmpipe dedup --input runs/docs --output runs/deduped
    [steps.dedup]
    inputs = ["ingest"]
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from llmpipe.artifacts.documents import DocumentWriter, iter_batches
from llmpipe.artifacts.layout import part_name
from llmpipe.registry import Plan, Stage
from llmpipe.stats import TaskStats


@dataclass(frozen=True)
class Params:
    normalize: bool = field(default=True, metadata={"help": "Lowercase and collapse whitespace before comparing texts."})
    keep_rejected: bool = field(default=False, metadata={"help": "Write removed documents to rejected/ with a reason column."})


def plan(params: Params, inputs) -> Plan:
    parts = [f for inp in inputs for f in inp.files]
    per_part = [{"part": p} for p in parts]
    return Plan(phases=[("hash", per_part), ("select", [{}]), ("filter", per_part)], files=[part_name(i) for i in range(len(parts))])


def text_hash(text: str, normalize: bool) -> int:
    if normalize:
        text = " ".join(text.lower().split())
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def hash_task(ctx, task: dict) -> dict:
    hashes = [text_hash(t, ctx.params.normalize) for b in iter_batches(task["part"], ["text"]) for t in b.column(0).to_pylist()]
    _save(ctx.work_dir() / f"{ctx.task_index:05d}.npy", np.array(hashes, dtype=np.uint64))
    return {"counts": {"documents": len(hashes)}}


def select_task(ctx, task: dict) -> dict:
    n_parts = len(ctx.run["phases"][0]["tasks"])
    arrays = [np.load(ctx.work_dir("hash") / f"{i:05d}.npy") for i in range(n_parts)]
    all_hashes = np.concatenate(arrays) if arrays else np.zeros(0, np.uint64)
    _, first = np.unique(all_hashes, return_index=True)  # index of the first occurrence of each hash
    keep = np.zeros(len(all_hashes), dtype=bool)
    keep[first] = True
    offset = 0
    for i, a in enumerate(arrays):
        _save(ctx.work_dir() / f"{i:05d}.npy", keep[offset:offset + len(a)])
        offset += len(a)
    return {"counts": {"documents": int(len(all_hashes)), "unique": int(len(first))}}


def filter_task(ctx, task: dict) -> dict:
    keep = np.load(ctx.work_dir("select") / f"{ctx.task_index:05d}.npy")
    stats = TaskStats()
    rejected = None
    offset = 0
    with DocumentWriter(ctx.out / part_name(ctx.task_index), _schema(task["part"])) as writer:
        if ctx.params.keep_rejected:
            rejected = DocumentWriter(ctx.out / "rejected" / part_name(ctx.task_index), _schema(task["part"], with_reason=True)).__enter__()
        for batch in iter_batches(task["part"]):
            mask = keep[offset:offset + batch.num_rows]
            offset += batch.num_rows
            writer.write_batch(batch.filter(mask))
            stats.count("documents", int(mask.sum()))
            stats.drop("exact_duplicate", int((~mask).sum()))
            if rejected is not None and (~mask).any():
                dropped = batch.filter(~mask)
                import pyarrow as pa

                reason = pa.array(["exact_duplicate"] * dropped.num_rows)
                rejected.write_batch(pa.RecordBatch.from_arrays([*dropped.columns, reason], schema=rejected.schema))
        if rejected is not None:
            rejected.__exit__(None, None, None)
    return stats.to_json()


def _schema(part: str, with_reason: bool = False):
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(part)
    return schema.append(pa.field("reason", pa.string())) if with_reason else schema


def _save(path, array: np.ndarray) -> None:
    from llmpipe.artifacts.layout import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


def finalize(ctx, stats: dict, records: dict) -> dict:
    counts = stats.get("counts", {})
    return {"counts": {"documents": counts.get("documents", 0), "removed": stats.get("dropped", {}).get("exact_duplicate", 0)}, "stats": stats}


STAGE = Stage(
    name="dedup", version=1, params=Params, doc=__doc__, plan=plan,
    run_task={"hash": hash_task, "select": select_task, "filter": filter_task}, finalize=finalize, output_kind="documents",
)
