"""Remove duplicate documents: exact (same normalised text) and near duplicates (MinHash LSH, on by default).

Phases, each fanning out: `signatures` (one task per input part: text hash, MinHash signature and
LSH band keys per document), `buckets` (one task per band: documents sharing a band key are
candidates, verified by their signatures' estimated Jaccard), `clusters` (one task: union-find over
exact and verified pairs; one document kept per cluster by `keep`), `lines` (line dedup only: one
task per hash partition counts in how many kept documents each line occurs), `filter` (one task
per input part: kept rows, lines removed). A task holds one part's or one band's arrays, never the
corpus's text. Output: kept documents (same schema) plus `clusters/part-*.parquet` (id, cluster,
cluster_size, kept, reason) for every document in a cluster of two or more.

    llmpipe dedup --input runs/pretrain/filter --output runs/deduped --threshold 0.8
    [steps.dedup]
    inputs = ["filter"]
    threshold = 0.8          # near_dedup = false: exact duplicates only
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import numpy as np

from llmpipe.artifacts.layout import part_name, read_rows, save_array
from llmpipe.registry import Plan, Stage
from llmpipe.text.normalize import TextNorm, UnicodeForm

# Params that only near-duplicate removal reads.
NEAR_DEDUP_PARAMS = ("threshold", "num_perm", "ngram", "shingle", "bands", "rows", "seed", "minhash_scheme", "verify_candidates")
LINE_PARTITIONS = 16  # at most this many `lines` tasks; each counts the line hashes of 1/16 of the space


@dataclass(frozen=True)
class Params:
    normalize: bool = field(default=True, metadata={"help": "Compare texts after normalisation (unicode form, lowercase, punctuation, whitespace) rather than raw."})
    lowercase: bool = field(default=True, metadata={"help": "Normalisation: lowercase."})
    remove_punctuation: bool = field(default=False, metadata={"help": "Normalisation: turn Unicode punctuation into spaces."})
    unicode_form: UnicodeForm = field(default="NFKC", metadata={"help": "Normalisation: Unicode normal form (NFKC folds full-width and ligature forms), or none."})
    near_dedup: bool = field(default=True, metadata={"help": "Also remove near duplicates: MinHash LSH over n-gram shingles, verified by estimated Jaccard (off: exact duplicates only)."})
    threshold: float = field(default=0.8, metadata={"help": "Near duplicates: estimated Jaccard similarity of shingle sets at or above this."})
    num_perm: int = field(default=128, metadata={"help": "MinHash permutations (signature length)."})
    ngram: int = field(default=5, metadata={"help": "Shingle size in words (or characters with shingle = char); 5 words as in datatrove and FineWeb."})
    shingle: Literal["word", "char"] = field(default="word", metadata={"help": "Shingles of words or of characters."})
    bands: int = field(default=0, metadata={"help": "LSH bands (0: derived from threshold and num_perm; 0.8 and 128 give 16 bands of 8 rows)."})
    rows: int = field(default=0, metadata={"help": "LSH rows per band (0: derived with bands)."})
    seed: int = field(default=1, metadata={"help": "Seed of the MinHash permutations (numpy RandomState, as datasketch draws them)."})
    minhash_scheme: Literal["affine32", "legacy"] = field(default="affine32", metadata={"help": "Permutation scheme: affine32 (datasketch 2 default) or legacy (mod 2^61-1, datasketch 1 and datatrove)."})
    verify_candidates: bool = field(default=True, metadata={"help": "Link LSH candidates only when their signatures' estimated Jaccard reaches threshold (otherwise ~45% of pairs are below it)."})
    keep: Literal["first", "longest", "quality"] = field(default="first", metadata={"help": "Which document of a near-duplicate cluster stays: first in input order, longest text, or highest quality_column."})
    quality_column: str = field(default="quality", metadata={"help": "Column read by keep = quality (classify's score column)."})
    line_dedup_max_docs: int = field(default=0, metadata={"help": "Remove lines found in more than this many kept documents (boilerplate, as Dolma and FineWeb do); 0: off."})
    keep_rejected: bool = field(default=False, metadata={"help": "Write removed documents to rejected/ with a reason column."})

    def __post_init__(self):
        if not self.near_dedup:  # a near-dedup knob set while near-dedup is off would be silently ignored
            changed = [f.name for f in fields(self) if f.name in NEAR_DEDUP_PARAMS and getattr(self, f.name) != f.default]
            if changed:
                raise ValueError(f"{changed[0]}: only used by near-duplicate removal, which near_dedup = false turns off; drop {changed[0]} or turn near_dedup back on")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold: expected a number in (0, 1], got {self.threshold}")
        for key, low in (("num_perm", 1), ("ngram", 1), ("line_dedup_max_docs", 0)):
            if getattr(self, key) < low:
                raise ValueError(f"{key}: expected an integer >= {low}, got {getattr(self, key)}")
        if (self.bands == 0) != (self.rows == 0):
            raise ValueError(f"{'rows' if self.rows == 0 else 'bands'}: give bands and rows together (or neither, to derive them)")
        if self.bands < 0 or self.rows < 0 or self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands: bands x rows = {self.bands} x {self.rows} must be positive and at most num_perm={self.num_perm}")

    @property
    def norm(self) -> TextNorm:
        return TextNorm(self.normalize, self.lowercase, self.remove_punctuation, self.unicode_form)

    def lsh(self) -> tuple[int, int]:
        from llmpipe.text.lsh import lsh_params

        return (self.bands, self.rows) if self.bands else lsh_params(self.threshold, self.num_perm)


def plan(params: Params, inputs) -> Plan:
    parts = [f for inp in inputs for f in inp.files]
    if params.keep == "quality" and parts and Path(parts[0]).exists():
        import pyarrow.parquet as pq

        if params.quality_column not in pq.read_schema(parts[0]).names:
            raise ValueError(f'quality_column: keep = "quality" needs a column "{params.quality_column}" in the input; run classify with mode = "score" first')
    per_part = [{"part": p} for p in parts]
    steps = [("signatures", per_part)]
    if params.near_dedup:
        steps.append(("buckets", [{"band": j} for j in range(params.lsh()[0])]))
    steps.append(("clusters", [{}]))
    if params.line_dedup_max_docs:
        steps.append(("lines", [{"partition": j} for j in range(min(len(parts), LINE_PARTITIONS) or 1)]))
    steps.append(("filter", per_part))
    return Plan(phases=steps, files=[part_name(i) for i in range(len(parts))])


# --- phases: work files are <work>/<phase>/<part>-<what>.npy, each written atomically ----------


def _load(ctx, phase: str, part: int, what: str, mmap: bool = False) -> np.ndarray:
    return np.load(ctx.work_dir(phase) / f"{part:05d}-{what}.npy", mmap_mode="r" if mmap else None)


def _n_parts(ctx) -> int:
    return len(ctx.run["phases"][0]["tasks"])


def _concat(ctx, what: str) -> np.ndarray:
    """One per-document array of the signatures phase over all parts, in input order."""
    return np.concatenate([_load(ctx, "signatures", i, what) for i in range(_n_parts(ctx))])


def _part_starts(ctx) -> np.ndarray:
    """Global index of each part's first document (input order), from the hash files."""
    sizes = [len(_load(ctx, "signatures", i, "hash", mmap=True)) for i in range(_n_parts(ctx))]
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def signatures_task(ctx, task: dict) -> dict:
    """Per document: hash of the normalised text, length, score, and with near_dedup its MinHash signature and band keys.

    Each batch's arrays are appended to their files as it is done, so a task holds one batch, not
    its part (a part of a million documents has 512 MB of signatures at 128 permutations).
    """
    import contextlib
    import hashlib

    import pyarrow as pa
    import pyarrow.compute as pc

    from llmpipe.artifacts.documents import count_rows, iter_batches
    from llmpipe.artifacts.layout import ArrayWriter
    from llmpipe.text.lines import distinct_per_document, line_hashes
    from llmpipe.text.lsh import band_keys
    from llmpipe.text.minhash import MinHasher
    from llmpipe.text.normalize import join_words, prepare, split_words

    p: Params = ctx.params
    hasher = MinHasher(p.num_perm, p.seed, p.ngram, p.shingle, p.minhash_scheme) if p.near_dedup else None
    columns = ["text"] + ([p.quality_column] if p.keep == "quality" else [])
    work, i, n_docs = ctx.work_dir(), ctx.task_index, count_rows(task["part"])
    lines: list[np.ndarray] = []
    n = 0
    with contextlib.ExitStack() as stack:
        def writer(what: str, dtype, row_shape: tuple[int, ...] = ()) -> ArrayWriter:
            return stack.enter_context(ArrayWriter(work / f"{i:05d}-{what}.npy", n_docs, dtype, row_shape))

        hashes, lengths = writer("hash", np.uint64), writer("length", np.int64)
        quality = writer("quality", np.float64) if p.keep == "quality" else None
        if hasher is not None:  # band keys one file per band: a buckets task reads one of them
            sigs, shingle_counts = writer("sig", np.uint32, (p.num_perm,)), writer("shingles", np.int64)
            keys = [writer(f"keys-{j:03d}", np.uint64) for j in range(p.lsh()[0])]
        for batch in iter_batches(task["part"], columns, batch_size=1024):  # bounds the numpy temporaries
            texts = batch.column("text")
            words = split_words(prepare(texts, p.norm))
            normalized = join_words(*words) if p.normalize else texts
            hashes.append(np.array([int.from_bytes(hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
                                    for t in normalized.to_pylist()], dtype=np.uint64))
            lengths.append(pc.utf8_length(texts).to_numpy(zero_copy_only=False).astype(np.int64))
            if quality is not None:
                quality.append(pc.cast(batch.column(p.quality_column), "float64").to_numpy(zero_copy_only=False))
            if hasher is not None:
                sig, shingles = hasher.signatures(normalized, words if p.shingle == "word" else None)
                sigs.append(sig)
                shingle_counts.append(shingles)
                for band, key in zip(keys, band_keys(sig, *p.lsh())):
                    band.append(key)
            if p.line_dedup_max_docs:
                doc, h = distinct_per_document(*line_hashes(texts, p.norm))
                lines.append(np.stack([(doc + n).astype(np.uint64), h], axis=1))
            n += batch.num_rows
            del batch, texts, words, normalized  # freed before the next batch is read: one batch's arrays at a time
    if p.line_dedup_max_docs:  # (document, line hash) pairs, split by hash so each lines task reads one slice
        pairs = np.concatenate(lines) if lines else np.zeros((0, 2), np.uint64)
        n_partitions = next(len(ph["tasks"]) for ph in ctx.run["phases"] if ph["name"] == "lines")
        for j in range(n_partitions):
            save_array(work / f"{i:05d}-lines-{j:03d}.npy", pairs[pairs[:, 1] % np.uint64(n_partitions) == j])
    pa.default_memory_pool().release_unused()  # the next task in this worker starts from a small pool
    return {"counts": {"documents": n}}


def buckets_task(ctx, task: dict) -> dict:
    """Band j: documents with equal keys are candidates; verified pairs become edges."""
    from llmpipe.text.clusters import first_occurrence
    from llmpipe.text.lsh import buckets, verified_edges

    p: Params = ctx.params
    n_parts, band = _n_parts(ctx), task["band"]
    starts = _part_starts(ctx)
    hashes, shingled = _concat(ctx, "hash"), _concat(ctx, "shingles") > 0
    keys = np.concatenate([_load(ctx, "signatures", i, f"keys-{band:03d}") for i in range(n_parts)])
    # exact duplicates are settled already, and documents without shingles all share the empty signature
    eligible = np.flatnonzero(shingled & (first_occurrence(hashes) == np.arange(len(hashes))))
    bucket, ids = buckets(keys[eligible], eligible)
    sigs = [ctx.work_dir("signatures") / f"{i:05d}-sig.npy" for i in range(n_parts)]

    def rows_of(ids: np.ndarray) -> np.ndarray:  # signatures of sorted global ids, read from the parts' files
        part = np.searchsorted(starts, ids, side="right") - 1
        return np.concatenate([read_rows(sigs[k], ids[part == k] - starts[k]) for k in np.unique(part)])

    edges = verified_edges(bucket, ids, rows_of, p.threshold if p.verify_candidates else 0.0)
    save_array(ctx.work_dir() / f"{band:05d}-edges.npy", edges)
    candidates = len(ids) - len(np.unique(bucket))
    return {"counts": {"candidate_pairs": int(candidates), "verified_pairs": int(len(edges))}}


def clusters_task(ctx, task: dict) -> dict:
    """One task: union-find over exact and verified pairs, then one keeper per cluster."""
    from llmpipe.text.clusters import EXACT, NEAR, decide, size_histogram

    p: Params = ctx.params
    starts, hashes = _part_starts(ctx), _concat(ctx, "hash")
    quality = _concat(ctx, "quality") if p.keep == "quality" else None
    edges = [np.load(f) for f in sorted(ctx.work_dir("buckets").glob("*-edges.npy"))] if p.near_dedup else []
    edges = np.concatenate(edges) if edges else np.zeros((0, 2), np.int64)
    code, cluster, size = decide(hashes, edges, p.keep, _concat(ctx, "length"), quality)
    for i in range(len(starts) - 1):
        save_array(ctx.work_dir() / f"{i:05d}-decision.npy", np.stack([code, cluster, size], axis=1)[starts[i]:starts[i + 1]])
    in_clusters = size >= 2
    counts = {"documents_in": len(hashes), "clusters": int(len(np.unique(cluster[in_clusters]))),
              "near_duplicate_clusters": int(len(np.unique(cluster[code == NEAR]))), "exact_duplicates": int((code == EXACT).sum())}
    counts.update({f"size_{k}": v for k, v in size_histogram(cluster[in_clusters]).items()})
    return {"counts": counts}


def lines_task(ctx, task: dict) -> dict:
    """Partition j of line hashes: those in more than line_dedup_max_docs kept documents are frequent."""
    from llmpipe.text.clusters import KEPT

    j, found = task["partition"], []
    for i in range(_n_parts(ctx)):
        pairs = np.load(ctx.work_dir("signatures") / f"{i:05d}-lines-{j:03d}.npy")
        kept = _load(ctx, "clusters", i, "decision", mmap=True)[:, 0] == KEPT
        found.append(pairs[kept[pairs[:, 0].astype(np.int64)], 1] if len(pairs) else pairs[:, 1])
    hashes, docs = np.unique(np.concatenate(found), return_counts=True)
    frequent = hashes[docs > ctx.params.line_dedup_max_docs]
    save_array(ctx.work_dir() / f"{j:05d}-frequent.npy", frequent)
    return {"counts": {"frequent_lines": int(len(frequent))}}


def filter_task(ctx, task: dict) -> dict:
    """Part i: write the kept rows (frequent lines removed), the rejected rows and this part's cluster rows."""
    import contextlib

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from llmpipe.artifacts.documents import DocumentWriter, iter_batches
    from llmpipe.stats import TaskStats
    from llmpipe.text.clusters import KEPT, REASONS
    from llmpipe.text.lines import remove_frequent_lines

    p: Params = ctx.params
    decision = _load(ctx, "clusters", ctx.task_index, "decision")
    frequent = np.sort(np.concatenate([np.load(f) for f in sorted(ctx.work_dir("lines").glob("*-frequent.npy"))])) if p.line_dedup_max_docs else None
    schema = pq.read_schema(task["part"])
    cluster_schema = pa.schema([("id", pa.string()), ("cluster", pa.int64()), ("cluster_size", pa.int64()), ("kept", pa.bool_()), ("reason", pa.string())])
    stats, offset = TaskStats(), 0
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(DocumentWriter(ctx.out / part_name(ctx.task_index), schema))
        clusters = stack.enter_context(DocumentWriter(ctx.out / "clusters" / part_name(ctx.task_index), cluster_schema))
        rejected = None
        if p.keep_rejected:
            rejected = stack.enter_context(DocumentWriter(ctx.out / "rejected" / part_name(ctx.task_index), schema.append(pa.field("reason", pa.string()))))
        for batch in iter_batches(task["part"]):
            d = decision[offset:offset + batch.num_rows]
            offset += batch.num_rows
            reasons = [REASONS.get(c) for c in d[:, 0].tolist()]
            keep = d[:, 0] == KEPT
            if frequent is not None and keep.any():
                texts, removed = remove_frequent_lines(batch.column("text"), frequent, p.norm, where=keep)
                stats.count("lines_removed", int(removed.sum()))
                batch = batch.set_column(batch.schema.get_field_index("text"), "text", texts)
                blank = pc.equal(pc.utf8_trim_whitespace(texts), "").to_numpy(zero_copy_only=False)
                for k in np.flatnonzero(keep & (removed > 0) & blank):  # nothing but boilerplate was left
                    keep[k], reasons[k] = False, "duplicate_lines_only"
            writer.write_batch(batch.filter(pa.array(keep)))
            stats.count("documents", int(keep.sum()))
            for r in reasons:
                if r:
                    stats.drop(r)
            in_cluster = d[:, 2] >= 2
            if in_cluster.any():
                ids = batch.column("id").filter(pa.array(in_cluster))
                clusters.write_batch(pa.RecordBatch.from_arrays(
                    [ids, pa.array(d[in_cluster, 1]), pa.array(d[in_cluster, 2]), pa.array(keep[in_cluster]),
                     pa.array([reasons[k] for k in np.flatnonzero(in_cluster)], pa.string())], schema=cluster_schema))
            if rejected is not None and not keep.all():
                dropped = batch.filter(pa.array(~keep))
                why = pa.array([reasons[k] for k in np.flatnonzero(~keep)], pa.string())
                rejected.write_batch(pa.RecordBatch.from_arrays([*dropped.columns, why], schema=rejected.schema))
    pa.default_memory_pool().release_unused()  # tasks run one after another in a worker: do not let the pool grow
    return stats.to_json()


def finalize(ctx, stats: dict, records: dict) -> dict:
    from llmpipe.stats import merge

    clusters = merge([r["stats"] for r in records["clusters"]]).get("counts", {})
    buckets = merge([r["stats"] for r in records.get("buckets", [])]).get("counts", {})
    dropped = stats.get("dropped", {})
    kept = stats.get("counts", {}).get("documents", 0)
    summary = {
        "documents_in": clusters.get("documents_in", 0),
        "documents_out": kept,
        "exact_duplicates": dropped.get("exact_duplicate", 0),
        "near_duplicates": dropped.get("near_duplicate", 0),
        "clusters": clusters.get("clusters", 0),
        "near_duplicate_clusters": clusters.get("near_duplicate_clusters", 0),
        "cluster_sizes": {k.removeprefix("size_"): v for k, v in clusters.items() if k.startswith("size_")},
        "clusters_table": "clusters/",
    }
    if ctx.params.near_dedup:
        bands, rows = ctx.params.lsh()
        summary.update(bands=bands, rows=rows, candidate_pairs=buckets.get("candidate_pairs", 0), verified_pairs=buckets.get("verified_pairs", 0))
    if ctx.params.line_dedup_max_docs:
        summary.update(lines_removed=stats.get("counts", {}).get("lines_removed", 0), documents_emptied=dropped.get("duplicate_lines_only", 0))
    return {"counts": {"documents": kept, "removed": sum(dropped.values())}, "dedup": summary, "stats": stats}


STAGE = Stage(
    name="dedup", version=3, params=Params, doc=__doc__, plan=plan, finalize=finalize, output_kind="documents",
    run_task={"signatures": signatures_task, "buckets": buckets_task, "clusters": clusters_task, "lines": lines_task, "filter": filter_task},
)
