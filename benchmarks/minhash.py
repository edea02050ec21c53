"""MinHash signatures: llmpipe vs datasketch (per document, update_batch) vs datatrove, and the dedup
stage's peak memory at N and 2N documents.

Corpus recipe (generated into a temporary directory, never committed): every paragraph of at least
8 words from ../shared/data/text (Gutenberg books and tinyshakespeare split on blank lines,
wikitext-2 and wiki_demo lines, C4 and Dolma documents split on newlines) forms a pool; document k
joins 3-8 paragraphs drawn from it by numpy's default_rng(seed=k) (~2.2 kB, ~390 words); one
document in 20 is followed by a near copy (one paragraph dropped, one word changed). Documents
are written as Parquet parts of 10,000 (the artifact layout dedup reads).

Speeds are documents per CPU-second (time.process_time): 128 permutations, word 5-gram shingles,
seed 1, for all three. llmpipe runs on every document (text normalised and split with Arrow,
signatures and band keys with numpy, as dedup's signatures phase does per batch of 4,096);
datasketch (MinHash + update_batch, sha1 per shingle, Python shingling of lowercased words) and
datatrove (MinhashDedupSignature, 16 buckets x 8 hashes: spaCy words, xxhash, mod 2^61-1) on an
even sample of --peer-docs, because they take minutes per 10,000. Memory: `llmpipe dedup
--near-dedup` (all phases, one worker, in a fresh subprocess) on the first N and on all 2N documents;
the peak RSS is the subprocess's VmHWM (Linux).

    nice python benchmarks/minhash.py                  # N = 100,000 (2N = 200,000): ~10 min here
    nice python benchmarks/minhash.py --docs 20000 --peer-docs 2000 --datatrove-docs 500
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# `python benchmarks/minhash.py` puts benchmarks/ first on sys.path, where tokenize.py (the tokenize
# benchmark) would shadow the standard library's tokenize that inspect (numpy.ma) imports lazily.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"
PART_DOCS = 10_000
NUM_PERM, NGRAM, SEED = 128, 5, 1


def paragraph_pool() -> list[str]:
    blocks: list[str] = []
    for f in sorted((TEXT / "gutenberg").glob("*.txt")) + [TEXT / "tinyshakespeare.txt"]:
        blocks += [" ".join(p.split()) for p in re.split(r"\n\s*\n", f.read_text(encoding="utf-8-sig"))]
    for f in sorted((TEXT / "wikitext-2").glob("*.txt")) + [TEXT / "wiki_demo.txt"]:
        blocks += f.read_text(encoding="utf-8").splitlines()
    docs = [json.loads(line)["text"] for line in (TEXT / "c4_demo.jsonl").read_text().splitlines()]
    for f in sorted((TEXT / "dolma").glob("*.jsonl.gz")):
        docs += [json.loads(line)["text"] for line in gzip.open(f, "rt", encoding="utf-8")]
    blocks += [line for d in docs for line in d.split("\n")]
    return [b.strip() for b in blocks if len(b.split()) >= 8]


def make_corpus(n: int, dest: Path) -> list[Path]:
    """n documents by the recipe above, as Parquet parts of PART_DOCS."""
    from llmpipe.artifacts.documents import BASE_SCHEMA, DocumentWriter

    pool = paragraph_pool()
    texts: list[str] = []
    k = 0
    while len(texts) < n:
        rng = np.random.default_rng(k)
        paragraphs = [pool[i] for i in rng.integers(0, len(pool), rng.integers(3, 9))]
        texts.append("\n".join(paragraphs))
        if k % 20 == 19 and len(texts) < n:  # a near copy: one paragraph dropped, one word changed
            words = "\n".join(paragraphs[1:]).split(" ")
            words[len(words) // 2] = "changed"
            texts.append(" ".join(words))
        k += 1
    parts = []
    for p in range(0, n, PART_DOCS):
        path = dest / f"part-{p // PART_DOCS:05d}.parquet"
        chunk = texts[p:p + PART_DOCS]
        with DocumentWriter(path) as w:
            w.write_rows([{"id": f"doc-{p + i}", "text": t, "source": "benchmark"} for i, t in enumerate(chunk)])
        parts.append(path)
    assert BASE_SCHEMA.names[:2] == ["id", "text"]
    return parts


def cpu_rate(fn, n_docs: int) -> tuple[float, float]:
    t0, w0 = time.process_time(), time.perf_counter()
    fn()
    return n_docs / (time.process_time() - t0), time.perf_counter() - w0


def bench_llmpipe(texts: list[str]) -> None:
    from llmpipe.text.lsh import band_keys
    from llmpipe.text.minhash import MinHasher
    from llmpipe.text.normalize import TextNorm, join_words, prepare, split_words

    hasher = MinHasher(NUM_PERM, SEED, NGRAM)
    for i in range(0, len(texts), 4096):
        words = split_words(prepare(pa.array(texts[i:i + 4096], pa.string()), TextNorm()))
        sig, _ = hasher.signatures(join_words(*words), words)
        band_keys(sig, 16, 8)


def bench_datasketch(texts: list[str]) -> None:
    from datasketch import MinHash

    template = MinHash(num_perm=NUM_PERM, seed=SEED)  # permutations drawn once, as MinHash.bulk does
    for text in texts:
        words = text.lower().split()
        m = template.copy()
        m.update_batch([" ".join(words[i:i + NGRAM]).encode("utf-8") for i in range(max(1, len(words) - NGRAM + 1))])


def bench_datatrove(texts: list[str], out: Path) -> None:
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature

    step = MinhashDedupSignature(output_folder=str(out), config=MinhashConfig(n_grams=NGRAM, num_buckets=16, hashes_per_bucket=8, seed=SEED))
    step.run((Document(text=t, id=str(i)) for i, t in enumerate(texts)), rank=0, world_size=1)


# Peak RSS is VmHWM of the subprocess's own address space: ru_maxrss survives fork + exec on Linux,
# so a child's ru_maxrss reports at least the parent's peak (here: the benchmark holding the corpus).
STAGE_RUN = """
import json, re, sys, time
import llmpipe
t0 = time.perf_counter()
m = llmpipe.run_stage("dedup", sys.argv[1:-1], sys.argv[-1], near_dedup=True, workers=1)
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
print(json.dumps({"peak_mb": peak_kb / 1024, "seconds": time.perf_counter() - t0, "dedup": m["dedup"], "task_seconds": m["timings"]["task_seconds"]}))
"""


def stage_memory(parts: list[Path], out: Path) -> dict:
    res = subprocess.run([sys.executable, "-c", STAGE_RUN, *map(str, parts), str(out)], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"dedup run failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100_000, help="N: documents for llmpipe signatures and the first memory run (2N for the second)")
    ap.add_argument("--peer-docs", type=int, default=10_000, help="datasketch sample (even over the N documents)")
    ap.add_argument("--datatrove-docs", type=int, default=2_000, help="datatrove sample (even over the N documents)")
    ap.add_argument("--no-memory", action="store_true", help="skip the dedup stage runs at N and 2N")
    args = ap.parse_args()
    if not TEXT.is_dir():
        sys.exit(f"data not found: {TEXT} (the shared data folder sits beside the repository)")
    with tempfile.TemporaryDirectory(prefix="llmpipe-minhash-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        parts = make_corpus(2 * args.docs if not args.no_memory else args.docs, tmp / "corpus")
        import pyarrow.parquet as pq

        texts = [t for p in parts[: -(-args.docs // PART_DOCS)] for t in pq.read_table(p, columns=["text"]).column(0).to_pylist()][: args.docs]
        mb = sum(len(t.encode()) for t in texts) / 1e6
        print(f"corpus: {len(texts):,} documents, {mb:.0f} MB, {np.mean([len(t.split()) for t in texts]):.0f} words/doc "
              f"(+{len(parts) * PART_DOCS - len(texts):,} for the 2N run), made in {time.perf_counter() - t0:.0f}s\n")

        rows = []
        rate, wall = cpu_rate(lambda: bench_llmpipe(texts), len(texts))
        rows.append(("llmpipe MinHasher.signatures (+ band keys)", len(texts), rate, wall))
        sample = [texts[i] for i in np.linspace(0, len(texts) - 1, min(args.peer_docs, len(texts))).astype(int)]
        rate, wall = cpu_rate(lambda: bench_datasketch(sample), len(sample))
        rows.append(("datasketch 2.0 MinHash.update_batch per document", len(sample), rate, wall))
        try:
            dt_sample = [texts[i] for i in np.linspace(0, len(texts) - 1, min(args.datatrove_docs, len(texts))).astype(int)]
            bench_datatrove(dt_sample[:50], tmp / "dt-warmup")  # loads spaCy once, outside the timing
            rate, wall = cpu_rate(lambda: bench_datatrove(dt_sample, tmp / "dt"), len(dt_sample))
            rows.append(("datatrove 0.10.1 MinhashDedupSignature", len(dt_sample), rate, wall))
        except ImportError as e:
            print(f"datatrove not importable ({e}): skipped (pip install datatrove spacy orjson 'xxhash<4')")
        ours = rows[0][2]
        print("| signatures (128 perms, word 5-grams) | documents | docs per CPU-s | llmpipe is | wall s |")
        print("|---|---:|---:|---:|---:|")
        for name, n, rate, wall in rows:
            print(f"| {name} | {n:,} | {rate:,.0f} | {ours / rate:.1f}x | {wall:.1f} |")

        if not args.no_memory:
            print("\n| `dedup --near-dedup` (all phases, 1 worker) | documents | peak RSS MB | wall s | docs/s | near dups | clusters |")
            print("|---|---:|---:|---:|---:|---:|---:|")
            n_parts = -(-args.docs // PART_DOCS)
            for label, use in (("N", parts[:n_parts]), ("2N", parts)):
                r = stage_memory(use, tmp / f"out-{label}")
                n = r["dedup"]["documents_in"]
                print(f"| {label} | {n:,} | {r['peak_mb']:.0f} | {r['seconds']:.0f} | {n / r['seconds']:,.0f} | "
                      f"{r['dedup']['near_duplicates']:,} | {r['dedup']['clusters']:,} |")
                print(f"|  phases (task s) | {json.dumps({k: round(v) for k, v in r['task_seconds'].items()})} | | | | | |")


if __name__ == "__main__":
    main()
