"""Language ID accuracy and speed on lingua's labelled sentences (../shared/data/langid/).

Runs llmpipe's classifier (fastText lid.176, shipped in llmpipe/assets, whole text with newlines
folded) and, where installed, pycld2 and langdetect on the same sentences in the same run, and
prints accuracy over the languages lid.176 knows, sentences per CPU-second (median of 5 runs)
and the speed ratio.

    python benchmarks/langid.py
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "langid" / "lingua_sentences_100_per_lang.jsonl"


def _safe(fn, text):
    try:
        return fn(text).split("-")[0]
    except Exception:  # langdetect raises on text without letters
        return "unknown"


def main() -> None:
    if not DATA.exists():
        sys.exit(f"data not found: {DATA} (the shared data folder sits beside the repository)")
    from llmpipe.text.classifier import load_classifier

    records = [json.loads(line) for line in DATA.read_text().splitlines()]
    clf = load_classifier("builtin:lid.176")
    known = set(clf.labels)
    sample = [r for r in records if r["lang"] in known]
    texts, gold = [r["text"] for r in sample], [r["lang"] for r in sample]

    def ours(batch):
        return [row[0] for row in clf.predict(batch, k=1)[0]]

    tools = {"llmpipe classify (lid.176)": ours}
    try:
        import pycld2

        tools["pycld2"] = lambda batch: [_safe(lambda t: pycld2.detect(t)[2][0][1], t) for t in batch]
    except ImportError:
        print("pycld2 not installed: skipped (pip install pycld2)")
    try:
        from langdetect import DetectorFactory, detect

        DetectorFactory.seed = 0
        tools["langdetect"] = lambda batch: [_safe(detect, t) for t in batch]
    except ImportError:
        print("langdetect not installed: skipped (pip install langdetect)")

    print(f"{len(sample)} sentences in {len(known & set(gold))} languages lid.176 knows "
          f"({len(records) - len(sample)} sentences of {len(set(r['lang'] for r in records) - known)} languages it does not are left out)\n")
    rows = []
    for name, fn in tools.items():
        predicted = fn(texts)
        accuracy = sum(p == g for p, g in zip(predicted, gold)) / len(gold)
        times = []
        for _ in range(5):
            t0 = time.process_time()
            fn(texts)
            times.append(time.process_time() - t0)
        rows.append((name, accuracy, len(texts) / statistics.median(times)))
    base = rows[0][2]
    print("| tool | accuracy | sentences per CPU-second | speed vs llmpipe |")
    print("|---|---|---|---|")
    for name, acc, speed in rows:
        print(f"| {name} | {acc:.4f} | {speed:,.0f} | {speed / base:.2f}x |")


if __name__ == "__main__":
    main()
