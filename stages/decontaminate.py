"""Remove (or flag) training documents that share word n-grams with evaluation sets.

Two phases: `index` (one task: every `ngram`-word window of every eval item, normalised: NFKC,
lowercase, no punctuation, as GPT-3's 13-gram overlap check does; items shorter than `ngram` words
but at least `min_ngram` are indexed whole) and `scan` (one task per input part: a document sharing
at least `min_matches` distinct n-grams with the index is contaminated). Eval sets come from
`reference`: JSONL/JSON (HellaSwag, multiple-choice, BLiMP and question/answer formats; context plus
gold answer), any document artifact, or a task that ships with evaluate (`builtin:blimp_mini`). The manifest lists every eval item found and in which documents.

    llmpipe decontaminate --input runs/pretrain/dedup --output runs/clean --reference hellaswag_val.jsonl
    [steps.decontaminate]
    inputs = ["dedup"]
    reference = "eval/hellaswag_val.jsonl"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from llmpipe.artifacts.layout import part_name, save_array
from llmpipe.registry import Plan, Stage
from llmpipe.text.normalize import TextNorm

NORM = TextNorm(lowercase=True, remove_punctuation=True, unicode_form="NFKC")


@dataclass(frozen=True)
class Params:
    reference: str = field(default="", metadata={"help": "Eval set(s) to protect: a JSONL/JSON file, a glob, a directory, a document artifact, or builtin:blimp_mini (ships with evaluate)."})
    ngram: int = field(default=13, metadata={"help": "Words per n-gram (13 as in GPT-3's and the Pile's decontamination)."})
    min_ngram: int = field(default=8, metadata={"help": "Eval items shorter than ngram words are indexed whole if they have at least this many words; shorter ones are skipped (counted)."})
    min_matches: int = field(default=1, metadata={"help": "Distinct shared n-grams that make a document contaminated."})
    action: Literal["remove", "flag"] = field(default="remove", metadata={"help": "remove contaminated documents, or keep all and add an eval_matches column (item keys)."})
    keep_rejected: bool = field(default=False, metadata={"help": "With action = remove: write removed documents to rejected/ with a reason column."})

    def __post_init__(self):
        for key in ("ngram", "min_ngram", "min_matches"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: expected an integer >= 1, got {getattr(self, key)}")
        if self.min_ngram > self.ngram:
            raise ValueError(f"min_ngram: {self.min_ngram} is above ngram={self.ngram}")


def plan(params: Params, inputs) -> Plan:
    if not params.reference:
        raise ValueError("reference: give the evaluation set to decontaminate against (a JSONL file or document artifact)")
    _check_reference(params.reference)
    parts = [f for inp in inputs for f in inp.files]
    return Plan(phases=[("index", [{}]), ("scan", [{"part": p} for p in parts])], files=[part_name(i) for i in range(len(parts))])


def _check_reference(reference: str) -> None:
    """Read the eval set once before anything runs: unreadable lines or no usable item stop the step here."""
    from llmpipe.text.eval_items import check_items

    files = reference_files(reference)
    try:
        check_items(files)
    except ValueError as e:
        raise ValueError(f"reference: {e}") from None


def reference_files(reference: str) -> list[str]:
    """The eval set's files: builtin:NAME for a task that ships with evaluate, else paths, globs or an artifact."""
    from llmpipe.evaluation.tasks import SHIPPED
    from llmpipe.inputs import BUILTIN_PREFIX, resolve_input

    if reference.startswith(BUILTIN_PREFIX):
        name = reference[len(BUILTIN_PREFIX):]
        if name not in SHIPPED:
            raise ValueError(f"reference: {reference} is not an eval set that ships with llmpipe; choose from "
                             + ", ".join(BUILTIN_PREFIX + n for n in sorted(SHIPPED)))
        return [str(SHIPPED[name])]
    return list(resolve_input(reference, where="reference").files)


def word_counts_and_grams(texts, lengths) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Normalised word count of each text, and for each gram length the (hash, text) of every full window."""
    import pyarrow as pa

    from llmpipe.text.minhash import shingle_hashes, string_hashes
    from llmpipe.text.normalize import prepare, split_words

    words, offsets = split_words(prepare(pa.array(texts, pa.string()) if isinstance(texts, list) else texts, NORM))
    units, counts = string_hashes(words), np.diff(offsets)
    grams = []
    for n in lengths:
        hashes, sh_offsets = shingle_hashes(units, offsets, n)
        doc = np.repeat(np.arange(len(counts)), np.diff(sh_offsets))
        full = counts[doc] >= n  # a text shorter than n gives one shorter window: the pass for its length has it
        grams.append((hashes[full], doc[full]))
    return counts, grams


def index_task(ctx, task: dict) -> dict:
    """All n-grams of all eval items -> sorted hashes with their item numbers."""
    from llmpipe.artifacts.layout import write_json_atomic
    from llmpipe.text.eval_items import read_items

    p: Params = ctx.params
    items = list(read_items(reference_files(p.reference)))
    keys, texts = [k for k, _ in items], [t for _, t in items]
    counts, _ = word_counts_and_grams(texts, [])
    # items shorter than ngram words are indexed whole, as one gram of their own length
    lengths = sorted({p.ngram} | {int(n) for n in counts if p.min_ngram <= n < p.ngram})
    _, grams = word_counts_and_grams(texts, lengths)
    hashes, owners = [], []
    for n, (h, d) in zip(lengths, grams):
        take = counts[d] >= n if n == p.ngram else counts[d] == n  # a short item: its one whole-length gram
        hashes.append(h[take])
        owners.append(d[take])
    hashes, owners = np.concatenate(hashes), np.concatenate(owners)
    order = np.argsort(hashes, kind="stable")
    save_array(ctx.work_dir() / "hashes.npy", hashes[order])
    save_array(ctx.work_dir() / "items.npy", owners[order].astype(np.int64))
    write_json_atomic(ctx.work_dir() / "index.json", {"keys": keys, "lengths": lengths})
    indexed = len(np.unique(owners))
    return {"counts": {"eval_items": len(keys), "eval_items_indexed": indexed, "eval_items_too_short": len(keys) - indexed, "ngrams": int(len(hashes))}}


def scan_task(ctx, task: dict) -> dict:
    """Part i: documents sharing >= min_matches distinct n-grams with the index are contaminated."""
    import contextlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmpipe.artifacts.documents import DocumentWriter, iter_batches
    from llmpipe.artifacts.layout import read_json
    from llmpipe.stats import TaskStats

    p: Params = ctx.params
    work = ctx.work_dir("index")
    index, owners, meta = np.load(work / "hashes.npy"), np.load(work / "items.npy"), read_json(work / "index.json")
    schema = pq.read_schema(task["part"])
    if p.action == "flag":
        schema = schema.append(pa.field("eval_matches", pa.list_(pa.string())))
    stats, found = TaskStats(), {}
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(DocumentWriter(ctx.out / part_name(ctx.task_index), schema))
        rejected = None
        if p.keep_rejected and p.action == "remove":
            rejected = stack.enter_context(DocumentWriter(ctx.out / "rejected" / part_name(ctx.task_index), schema.append(pa.field("reason", pa.string()))))
        for batch in iter_batches(task["part"]):
            matches = _matches(batch.column("text"), index, owners, meta, p)
            ids = batch.column("id").to_pylist()
            for k, items in enumerate(matches):
                for item in items:  # where each eval item was found: merged over tasks, the manifest keeps 5 places
                    place = found.setdefault(meta["keys"][item], {"documents": 0, "where": []})
                    place["documents"] += 1
                    if len(place["where"]) < 5:
                        place["where"].append(f"{part_name(ctx.task_index)}:{ids[k]}")
            dirty = np.array([bool(m) for m in matches], dtype=bool)
            stats.count("documents_contaminated", int(dirty.sum()))
            if p.action == "flag":
                column = pa.array([[meta["keys"][i] for i in m] for m in matches], pa.list_(pa.string()))
                writer.write_batch(pa.RecordBatch.from_arrays([*batch.columns, column], schema=schema))
                stats.count("documents", batch.num_rows)
                continue
            writer.write_batch(batch.filter(pa.array(~dirty)))
            stats.count("documents", int((~dirty).sum()))
            stats.drop("contaminated", int(dirty.sum()))
            if rejected is not None and dirty.any():
                gone = batch.filter(pa.array(dirty))
                rejected.write_batch(pa.RecordBatch.from_arrays([*gone.columns, pa.array(["contaminated"] * gone.num_rows)], schema=rejected.schema))
    return {**stats.to_json(), "found": found}


def _matches(texts, index: np.ndarray, owners: np.ndarray, meta: dict, p: Params) -> list[list[int]]:
    """For each document, the eval items it shares n-grams with (empty unless >= min_matches distinct n-grams)."""
    n_docs = len(texts)
    shared_docs, shared_hashes = [], []
    for hashes, doc in word_counts_and_grams(texts, meta["lengths"])[1]:
        hit = np.isin(hashes, index)
        shared_docs.append(doc[hit])
        shared_hashes.append(hashes[hit])
    doc, hashes = np.concatenate(shared_docs), np.concatenate(shared_hashes)
    pairs = np.unique(np.stack([doc.astype(np.uint64), hashes], axis=1), axis=0) if len(doc) else np.zeros((0, 2), np.uint64)
    distinct = np.bincount(pairs[:, 0].astype(np.int64), minlength=n_docs)
    out: list[list[int]] = [[] for _ in range(n_docs)]
    for d, h in pairs[distinct[pairs[:, 0].astype(np.int64)] >= p.min_matches].tolist():
        lo, hi = np.searchsorted(index, np.uint64(h), "left"), np.searchsorted(index, np.uint64(h), "right")
        out[d].extend(owners[lo:hi].tolist())
    return [sorted(set(items)) for items in out]


def finalize(ctx, stats: dict, records: dict) -> dict:
    index = records["index"][0]["stats"]["counts"]
    found = stats.pop("found", {})  # item key -> {"documents": how many, "where": up to 5 "part:id"}
    counts = stats.get("counts", {})
    summary = {**index, "documents_contaminated": counts.get("documents_contaminated", 0), "eval_items_found": len(found),
               "found": dict(sorted(found.items()))}
    return {"counts": {"documents": counts.get("documents", 0), "removed": sum(stats.get("dropped", {}).values())}, "decontamination": summary, "stats": stats}


STAGE = Stage(
    name="decontaminate", version=1, params=Params, doc=__doc__, plan=plan, run_task={"index": index_task, "scan": scan_task},
    finalize=finalize, output_kind="documents", path_params=("reference",),
)
