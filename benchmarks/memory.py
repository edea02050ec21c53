"""Peak memory of the data stages while the input doubles: does it stay flat?

Each case writes its input into a temporary directory at size N and 2N (and 4N with --quadruple),
then runs the stages on it as a user would, one `python -m llmpipe <stage> --input ... --output ...
--workers 1` subprocess per stage, so every task runs in that one process. A stage's peak RSS is
the `ru_maxrss` that os.wait4 returns for its subprocess (the largest resident set it reached,
interpreter and imports included), or the largest peak its task records hold (each task resets
the high-water mark, see llmpipe/peak_memory.py, so ru_maxrss alone covers only the last task). A forked child starts with this process's
resident set, so the benchmark streams its inputs to disk and stays small (its own peak is printed
as the floor).

Cases (sizes at --scale 1; the text is real prose: paragraphs of ../shared/data/text):
  doc-jsonl    one document of 50 MB in a JSONL file -> ingest, then dedup and filter of that
  docs         50 MB of documents of 10 MB each in a JSONL file -> ingest
  docs-50      100 MB of documents of 50 MB each (2, then 4) in a JSONL file -> ingest, dedup, filter
  doc-txt      one document of 50 MB as a .txt file -> ingest (text_split=file)
  line         a 10 MB line among 2,000 short ones, .txt, text_split=line -> ingest
  lines        40 MB of 10 MB lines (4, then 8) among short ones, .txt, text_split=line -> ingest
The cases named in the singular double one record (memory follows the largest record: about 10
bytes per byte of text in ingest, more in dedup and filter); the plural ones double the number of
records of the issue's size, which is what must stay flat.
  tiny         JSONL of 1M tiny records (~40 bytes) -> ingest
  corpus       1M short documents (~300 bytes, 1 in 20 a near copy, 1 in 50 an exact copy) as
               JSONL files of 100k -> ingest, dedup
  filter       100k documents of 3-8 paragraphs (~2 kB) -> ingest, filter

    nice python benchmarks/memory.py --scale 0.1          # a few minutes
    nice python benchmarks/memory.py                      # the issue's sizes: ~30 min on 2 cores
    nice python benchmarks/memory.py --cases corpus --quadruple
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"
REPO = Path(__file__).resolve().parents[1]
HUGE = str(1 << 40)  # --max-chars / --max-page-bytes for the giant-document cases: keep them, as a user asking for them would
FLAT = 1.3  # the bound: peak RSS at 2N within 1.3x of N


def paragraph_pool() -> list[str]:
    """Paragraphs of at least 8 words from the Gutenberg books and C4 documents (real prose for the rules)."""
    blocks: list[str] = []
    for f in sorted((TEXT / "gutenberg").glob("*.txt")):
        blocks += [" ".join(p.split()) for p in re.split(r"\n\s*\n", f.read_text(encoding="utf-8-sig"))]
    for line in (TEXT / "c4_demo.jsonl").read_text(encoding="utf-8").splitlines():
        blocks += json.loads(line)["text"].split("\n")
    return [b.strip() for b in blocks if len(b.split()) >= 8]


# --- inputs: each writer streams to disk and returns the path to give --input ------------------------


def big_text(f, mb: float, pool: list[str], escape: bool) -> None:
    """About mb megabytes of paragraphs, written a paragraph at a time (JSON-escaped when asked)."""
    rng, left = random.Random(mb), int(mb * 1e6)
    while left > 0:
        p = pool[rng.randrange(len(pool))] + "\n"
        f.write(json.dumps(p)[1:-1] if escape else p)
        left -= len(p)


def doc_jsonl(size: float, dest: Path, pool: list[str]) -> Path:
    path = dest / "doc.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"id": "giant", "text": "')
        big_text(f, size, pool, escape=True)
        f.write('"}\n')
    return path


def giant_docs(size: float, dest: Path, pool: list[str], each: float = 10) -> Path:
    """size megabytes of documents of `each` MB (fewer if size is smaller) in one JSONL file."""
    path = dest / "docs.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for k in range(max(1, round(size / min(each, size)))):
            f.write(f'{{"id": "giant-{k}", "text": "')
            big_text(f, min(each, size) + k * 1e-6, pool, escape=True)  # another seed: another text
            f.write('"}\n')
    return path


def doc_txt(size: float, dest: Path, pool: list[str]) -> Path:
    path = dest / "doc.txt"
    with open(path, "w", encoding="utf-8") as f:
        big_text(f, size, pool, escape=False)
    return path


def long_line(size: float, dest: Path, pool: list[str]) -> Path:
    path = dest / "lines.txt"
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(p + "\n" for p in pool[:1000])
        rng, left = random.Random(size), int(size * 1e6)
        while left > 0:  # one line: paragraphs joined by spaces
            p = pool[rng.randrange(len(pool))] + " "
            f.write(p)
            left -= len(p)
        f.write("\n")
        f.writelines(p + "\n" for p in pool[1000:2000])
    return path


def long_lines(size: float, dest: Path, pool: list[str], each: float = 10) -> Path:
    """size megabytes of lines of `each` MB (paragraphs joined by spaces) among short ones, in a .txt file."""
    path = dest / "lines.txt"
    with open(path, "w", encoding="utf-8") as f:
        for k in range(max(1, round(size / min(each, size)))):
            f.writelines(p + "\n" for p in pool[k * 100:(k + 1) * 100])
            rng, left = random.Random(size + k), int(min(each, size) * 1e6)
            while left > 0:
                p = pool[rng.randrange(len(pool))] + " "
                f.write(p)
                left -= len(p)
            f.write("\n")
    return path


def tiny_records(n: float, dest: Path, pool: list[str]) -> Path:
    path, words = dest / "tiny.jsonl", " ".join(pool[:200]).split()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(int(n)):
            f.write(f'{{"text": "{words[i % len(words)]} {words[(i * 7) % len(words)]} {i}"}}\n')
    return path


def short_docs(n: float, dest: Path, pool: list[str], per_file: int = 100_000) -> Path:
    """n documents of ~50 words, 1 in 20 followed by a near copy and 1 in 50 by an exact one."""
    folder = dest / "corpus"
    folder.mkdir()
    rng, i, f, opened = random.Random(1), 0, None, -1
    while i < n:
        if i // per_file != opened:
            f and f.close()
            opened = i // per_file
            f = open(folder / f"docs-{opened:04d}.jsonl", "w", encoding="utf-8")
        words = []
        for _ in range(5):  # 10-word windows of 5 paragraphs: no two documents alike by chance
            para = pool[rng.randrange(len(pool))].split()
            start = rng.randrange(max(1, len(para) - 10))
            words += para[start:start + 10]
        docs = [words]
        if i % 20 == 19:
            docs.append(words[:25] + ["changed"] + words[26:])
        elif i % 50 == 7:
            docs.append(words)
        for d in docs[: int(n) - i]:
            f.write(json.dumps({"text": " ".join(d)}) + "\n")
            i += 1
    f.close()
    return folder


def long_docs(n: float, dest: Path, pool: list[str]) -> Path:
    """n documents of 3-8 paragraphs (~2 kB), as FineWeb-like pages for the filter rules."""
    path, rng = dest / "docs.jsonl", random.Random(2)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(int(n)):
            f.write(json.dumps({"text": "\n".join(pool[rng.randrange(len(pool))] for _ in range(rng.randint(3, 8)))}) + "\n")
    return path


@dataclass
class Case:
    what: str
    unit: str  # how the size is counted
    size: float  # at --scale 1
    make: Callable[[float, Path, list[str]], Path]
    stages: list[tuple[str, list[str]]]  # (stage, extra CLI options); the ones after ingest read its output


GIANT = ["--max-chars", HUGE]
CASES = {
    "doc-jsonl": Case("one document in a JSONL file", "MB", 50, doc_jsonl, [("ingest", GIANT), ("dedup", []), ("filter", [])]),
    "docs": Case("documents of 10 MB in one JSONL file", "MB", 50, giant_docs, [("ingest", GIANT)]),
    "docs-50": Case("documents of 50 MB in one JSONL file", "MB", 100, lambda n, d, p: giant_docs(n, d, p, each=50),
                    [("ingest", GIANT), ("dedup", []), ("filter", [])]),
    "doc-txt": Case("one document as a .txt file", "MB", 50, doc_txt, [("ingest", GIANT)]),
    "line": Case("one long line among 2,000, text_split=line", "MB", 10, long_line, [("ingest", GIANT + ["--text-split", "line"])]),
    "lines": Case("lines of 10 MB among short ones, .txt, text_split=line", "MB", 40, long_lines,
                  [("ingest", GIANT + ["--text-split", "line"])]),
    "tiny": Case("JSONL of tiny records (~40 B)", "records", 1_000_000, tiny_records, [("ingest", [])]),
    "corpus": Case("short documents (~300 B), JSONL files of 100k", "documents", 1_000_000, short_docs, [("ingest", []), ("dedup", [])]),
    "filter": Case("documents of 3-8 paragraphs (~2 kB)", "documents", 100_000, long_docs, [("ingest", []), ("filter", [])]),
}


# --- measuring -------------------------------------------------------------------------------------


def run_stage(stage: str, inp: Path, out: Path, extra: list[str], log: Path) -> dict:
    """One stage in a fresh subprocess: its peak RSS (wait4), wall time and the manifest's task peak."""
    cmd = [sys.executable, "-m", "llmpipe", stage, "--input", str(inp), "--output", str(out), "--workers", "1", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    manifest = json.loads((out / "_manifest.json").read_text())
    # Each task resets the process's high-water mark (llmpipe/peak_memory.py), so ru_maxrss covers only
    # the time since the last task started; the task records hold each task's own peak.
    phases = {}
    for record in sorted((out / "_tasks").glob("*/*.json")):
        peak = json.loads(record.read_text()).get("peak_rss_bytes", 0) / 2**20
        phases[record.parent.name] = max(phases.get(record.parent.name, 0), peak)
    return {"peak_mb": max([usage.ru_maxrss / 1024, *phases.values()]), "phases": phases,
            "seconds": time.perf_counter() - t0, "documents": manifest.get("counts", {}).get("documents")}


def run_case(name: str, case: Case, sizes: list[float], tmp: Path, pool: list[str]) -> list[dict]:
    """Every stage of a case at every size; the inputs of one size are removed before the next."""
    results: dict[str, list[dict]] = {stage: [] for stage, _ in case.stages}
    for size in sizes:
        work = tmp / f"{name}-{size:g}"
        work.mkdir()
        inp = case.make(size, work, pool)
        on_disk = sum(p.stat().st_size for p in ([inp] if inp.is_file() else inp.iterdir())) / 1e6
        for k, (stage, extra) in enumerate(case.stages):
            out = work / f"{k}-{stage}"
            r = run_stage(stage, inp, out, extra, work / f"{k}-{stage}.log")
            results[stage].append({**r, "size": size, "input_mb": on_disk})
            by_phase = ", ".join(f"{p} {mb:,.0f}" for p, mb in r["phases"].items())
            print(f"  {name} {stage} at {size:,g} {case.unit}: peak {r['peak_mb']:,.0f} MB (tasks' peaks by phase: {by_phase} MB), "
                  f"{r['seconds']:.0f} s, {r['documents']} documents out", file=sys.stderr, flush=True)
            if stage == "ingest":
                inp = out
        shutil.rmtree(work)
    return [{"case": name, "what": case.what, "unit": case.unit, "stage": stage, "runs": runs} for stage, runs in results.items()]


def table(rows: list[dict], quadruple: bool) -> str:
    head = "| input | stage | size N | peak RSS at N | at 2N | " + ("at 4N | " if quadruple else "") + \
           "2N / N | phase at its peak (N / 2N) | wall s at N / 2N | flat (<= 1.3x) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        runs = row["runs"]
        ratio = runs[1]["peak_mb"] / runs[0]["peak_mb"]
        cells = [f"{row['case']}: {row['what']}", row["stage"], f"{runs[0]['size']:,.0f} {row['unit']} ({runs[0]['input_mb']:,.0f} MB)",
                 *[f"{r['peak_mb']:,.0f} MB" for r in runs], f"{ratio:.2f}x",
                 " / ".join(max(r["phases"], key=r["phases"].get) for r in runs[:2]), f"{runs[0]['seconds']:,.0f} / {runs[1]['seconds']:,.0f}",
                 "yes" if ratio <= FLAT else "**no**"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every case's N (0.1: a quick look)")
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--quadruple", action="store_true", help="also run 4N")
    ap.add_argument("--tmp", default=None, help="where inputs and outputs go (default: the system temporary directory)")
    args = ap.parse_args()
    if not TEXT.is_dir():
        sys.exit(f"data not found: {TEXT} (the shared data folder sits beside the repository)")
    pool = paragraph_pool()
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmpipe-memory-bench-", dir=args.tmp) as tmp:
        for name in args.cases:
            case = CASES[name]
            n = case.size * args.scale
            rows += run_case(name, case, [n, 2 * n] + [4 * n] * args.quadruple, Path(tmp), pool)
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n`python benchmarks/memory.py --scale {args.scale:g}` on {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the end; "
          f"peak RSS of each stage's process (workers=1); this process's own peak (a child's floor): {floor:.0f} MB\n")
    print(table(rows, args.quadruple))


if __name__ == "__main__":
    main()
