"""Many small files and one huge WARC through `llmpipe ingest`: tasks, parts, wall time, same documents.

What it measures:

1. A directory of `--files` small JSONL files (one C4 document each, from
   ``../shared/data/text/c4_demo.jsonl``, 1,000 files a folder): how long resolving the input and
   planning take (one stat per file), the tasks and Parquet parts ingest makes at `--task-bytes`,
   the size of `_run.json`, and the wall time of the step; then the same files as one task
   (task_bytes above their total) and whether the documents (every column, in order) are equal.
2. One `.warc.gz` of `--warc-mb` MB: the real WARC samples in ``../shared/data/warc`` (Dolma,
   resiliparse, Common Crawl) repeated, a gzip member per record as crawlers write it. Planning
   time (finding record boundaries), tasks and parts, wall time, and the same against one task.

Documents are compared by a hash of every row of every part in order, so a 1 GB run does not
hold its documents in memory twice. Files are written to a temporary directory (`--tmp`),
removed at the end.

Run from the repository root:
    python benchmarks/ingest_many_files.py        # 100,000 files, a 1 GB WARC: ~5 min on 2 idle cores (estimated)
    python benchmarks/ingest_many_files.py --files 20000 --warc-mb 64 --task-bytes 8388608   # under a minute
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # llmpipe, stages and the tests' WARC builder from this checkout

import pyarrow.parquet as pq  # noqa: E402

import llmpipe  # noqa: E402
from llmpipe.inputs import resolve_input  # noqa: E402
from stages.ingest import STAGE, Params  # noqa: E402
from tests.conftest import SHARED_DATA, make_big_warc  # noqa: E402


def make_small_files(dest: Path, n: int) -> int:
    """n JSONL files of one C4 document each; returns their bytes."""
    lines = (SHARED_DATA / "text/c4_demo.jsonl").read_text().splitlines()
    total = 0
    for i in range(n):
        folder = dest / f"batch.{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        doc = json.loads(lines[i % len(lines)])
        doc["id"] = f"doc-{i}"
        data = json.dumps(doc) + "\n"
        (folder / f"page.{i:06d}.jsonl").write_text(data)
        total += len(data.encode())
    return total


def documents_hash(artifact: Path) -> tuple[str, int]:
    """A hash of every row of every part in order, and the number of rows."""
    h, n = hashlib.sha256(), 0
    for part in sorted(artifact.glob("part-*.parquet")):
        for row in pq.read_table(part).to_pylist():
            h.update(json.dumps(row, sort_keys=True, default=str).encode())
            n += 1
    return h.hexdigest(), n


def cpu_seconds() -> float:
    """CPU time of this process (the pool's workers are the forkserver's children, not ours: a run
    with workers is timed by its tasks' seconds instead)."""
    t = os.times()
    return t.user + t.system


def measure(name: str, inp: Path, out: Path, task_bytes: int, total_bytes: int, workers: int, extractor: str) -> dict:
    c0, t0 = cpu_seconds(), time.perf_counter()
    resolved = resolve_input(str(inp), "benchmark")
    c1, t1 = cpu_seconds(), time.perf_counter()
    plan = STAGE.plan(Params(task_bytes=task_bytes), [resolved])
    c2, t2 = cpu_seconds(), time.perf_counter()
    llmpipe.run_stage("ingest", [str(inp)], out / "split", task_bytes=task_bytes, workers=workers, extractor=extractor)
    c3, t3 = cpu_seconds(), time.perf_counter()
    llmpipe.run_stage("ingest", [str(inp)], out / "one", task_bytes=total_bytes + 1, workers=1, extractor=extractor)
    c4, t4 = cpu_seconds(), time.perf_counter()
    split_hash, n_docs = documents_hash(out / "split")
    one_hash, _ = documents_hash(out / "one")
    task_seconds = json.loads((out / "split/_manifest.json").read_text())["timings"]["task_seconds"]["read"]
    return {"input": name, "task_bytes": task_bytes, "resolve": (t1 - t0, c1 - c0), "plan": (t2 - t1, c2 - c1), "tasks": len(plan.phases[0][1]),
            "parts": len(list((out / "split").glob("part-*.parquet"))), "run_json_kb": (out / "split/_run.json").stat().st_size / 1024,
            "run": (t3 - t2, task_seconds), "one_task": (t4 - t3, c4 - c3), "documents": n_docs, "same": split_hash == one_hash}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000, help="small JSONL files (0: skip)")
    ap.add_argument("--warc-mb", type=int, default=1024, help="size of the WARC in MB (0: skip)")
    ap.add_argument("--task-bytes", type=int, default=Params().task_bytes, help="ingest's task_bytes (default: ingest's own)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--extractor", default="resiliparse", help="HTML extractor for the WARC (trafilatura: ~10x the time)")
    ap.add_argument("--tmp", default=tempfile.gettempdir(), help="where the inputs and outputs are written")
    args = ap.parse_args()
    if not SHARED_DATA.is_dir():
        sys.exit(f"real data not found at {SHARED_DATA}")
    root = Path(tempfile.mkdtemp(prefix="ingest-many-", dir=args.tmp))
    results = []
    try:
        if args.files:
            t0 = time.perf_counter()
            total = make_small_files(root / "small", args.files)
            print(f"wrote {args.files:,} files, {total / 1e6:.1f} MB, in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            results.append(measure(f"{args.files:,} JSONL files", root / "small", root / "out-small", args.task_bytes, total, args.workers, args.extractor))
        if args.warc_mb:
            warc = make_big_warc(SHARED_DATA, root / "crawl" / "big.warc.gz", args.warc_mb * 1_000_000)
            size = warc.stat().st_size
            print(f"wrote {warc.name}, {size / 1e6:.1f} MB", file=sys.stderr)
            results.append(measure(f"{size / 1e6:,.0f} MB .warc.gz", warc, root / "out-warc", args.task_bytes, size, args.workers, args.extractor))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nllmpipe ingest, {args.workers} workers, extractor {args.extractor}; times are wall s / CPU s, for the ingest with workers wall s / its tasks' seconds summed\n")
    print("| input | task_bytes | resolve input | plan | tasks | parts | _run.json KB | ingest | as one task | documents | same documents as one task |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        wall_cpu = {k: f"{r[k][0]:.2f} / {r[k][1]:.2f}" for k in ("resolve", "plan", "run", "one_task")}
        print(f"| {r['input']} | {r['task_bytes']:,} | {wall_cpu['resolve']} | {wall_cpu['plan']} | {r['tasks']} | {r['parts']} | {r['run_json_kb']:,.0f} "
              f"| {wall_cpu['run']} | {wall_cpu['one_task']} | {r['documents']:,} | {'yes' if r['same'] else 'NO'} |")


if __name__ == "__main__":
    main()
