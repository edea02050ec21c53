"""Heuristic filters: llmpipe.filters against datatrove 0.10.1 on the same real documents, same run.

For each rule family alone (on the raw text) and for the whole FineWeb chain (Gopher repetition ->
Gopher quality -> C4 keeping unpunctuated lines -> FineWeb -> PII), it times llmpipe (builtin
tokenizer, and spaCy tokenizer) and datatrove (its filters' own run() loop, chained as datatrove's
executor chains steps), takes the median of --runs runs, prints docs/s and the ratio, then the
keep/drop agreement of the first run.

Fairness: llmpipe's per-chunk word memo is emptied before every timed run, so each run starts cold
(its compiled rules, ~0.5 s once per process, and spaCy's model load are warmed up before timing,
for both tools). datatrove keeps spaCy's internal tokenizer cache between runs, as it would.

    pip install -c .ci/constraints.txt "datatrove==0.10.1" "xxhash<4" spacy orjson trafilatura warcio
    python benchmarks/filters_vs_datatrove.py            # all ~955 documents, 3 runs (~10 min)
    python benchmarks/filters_vs_datatrove.py --stride 4 --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llmpipe import filters  # noqa: E402
from llmpipe.filters import Doc, gopher_quality, tokenizer, words  # noqa: E402
from tests.filters.corpus import load_corpus  # noqa: E402

FAMILIES = ("gopher_repetition", "gopher_quality", "c4", "fineweb", "pii")


def cold_start() -> None:
    """Forget every memo llmpipe keeps between documents, so a run pays for all its tokenization."""
    tokenizer._MEMO.clear()
    tokenizer._PUNCT_TOKEN.clear()
    gopher_quality._WORD_FLAGS.clear()
    words._SPACY_SPLIT = None


def llmpipe_params(word_tokenizer: str, fineweb_chain: bool) -> dict:
    params = {}
    for name, module in filters.FAMILIES.items():
        extra = {"word_tokenizer": word_tokenizer} if name != "pii" else {}
        if fineweb_chain and name == "c4":
            extra["filter_no_terminal_punct"] = False
        params[name] = module.Params(**extra)
    return params


def run_llmpipe(texts: list[str], family: str, word_tokenizer: str) -> list[tuple[str, str | None]]:
    if family == "chain":
        params = llmpipe_params(word_tokenizer, fineweb_chain=True)
        return [(t, r) for t, r, _ in (filters.apply_chain(text, params) for text in texts)]
    module, p = filters.FAMILIES[family], llmpipe_params(word_tokenizer, False)[family]
    return [module.apply(text, p, Doc(text, word_tokenizer)) for text in texts]


def datatrove_steps(family: str) -> list:
    from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.formatters import PIIFormatter

    make = {"gopher_repetition": GopherRepetitionFilter, "gopher_quality": GopherQualityFilter, "c4": C4QualityFilter,
            "fineweb": FineWebQualityFilter, "pii": PIIFormatter}
    if family == "chain":
        return [GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(filter_no_terminal_punct=False),
                FineWebQualityFilter(), PIIFormatter()]
    return [make[family]()]


def run_datatrove(texts: list[str], family: str) -> list[tuple[str, str | None]]:
    """Chain the steps' run() generators as datatrove's executor does; dropped documents yield a reason."""
    from datatrove.data import Document

    docs = [Document(text=text, id=str(i)) for i, text in enumerate(texts)]
    stream = iter(docs)
    for step in datatrove_steps(family):
        stream = step.run(stream)
    kept = {doc.id: doc.text for doc in stream}
    return [(kept[d.id], None) if d.id in kept else (texts[i], "dropped") for i, d in enumerate(docs)]


def timed(fn, *args) -> tuple[float, list]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="the shared data folder")
    ap.add_argument("--stride", type=int, default=1, help="use every k-th page only (1 = all documents)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per tool and family; the median is shown")
    ap.add_argument("--cache-dir", default="/tmp", help="where the extracted corpus is cached")
    args = ap.parse_args()

    texts = [text for _, _, text in load_corpus(args.data, args.cache_dir, stride=args.stride)]
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    print(f"{len(texts)} documents, {megabytes:.1f} MB, {args.runs} runs each, median docs/s (single process)")

    # Warm-up outside the timings: spaCy's model load (both tools) and llmpipe's rule compilation.
    run_datatrove(texts[:2], "chain")
    run_llmpipe(texts[:2], "chain", "spacy")
    run_llmpipe(texts[:2], "chain", "builtin")

    rows, agreement = [], []
    for family in (*FAMILIES, "chain"):
        seconds: dict[str, list[float]] = {"builtin": [], "spacy": [], "datatrove": []}
        outputs: dict[str, list] = {}
        for _ in range(args.runs):
            for tool in ("builtin", "spacy", "datatrove"):
                cold_start()
                if tool == "datatrove":
                    s, out = timed(run_datatrove, texts, family)
                else:
                    s, out = timed(run_llmpipe, texts, family, tool)
                seconds[tool].append(s)
                outputs.setdefault(tool, out)
        speed = {tool: len(texts) / statistics.median(s) for tool, s in seconds.items()}
        rows.append((family, speed))
        theirs = outputs["datatrove"]
        for tool in ("builtin", "spacy"):
            pairs = list(zip(outputs[tool], theirs))
            same = sum((a[1] is None) == (b[1] is None) for a, b in pairs) / len(texts)
            both_kept = [(a[0], b[0]) for a, b in pairs if a[1] is None and b[1] is None]
            same_text = sum(a == b for a, b in both_kept) / max(len(both_kept), 1)
            agreement.append((family, tool, same, same_text, sum(r is not None for _, r in theirs) / len(texts)))
        print(f"  {family}: done", file=sys.stderr)

    print(f"\n{'family':<18} | {'llmpipe docs/s':>14} | {'llmpipe+spaCy':>13} | {'datatrove docs/s':>16} | {'ratio':>6} | {'ratio spaCy':>11}")
    print("-" * 94)
    for family, speed in rows:
        print(f"{family:<18} | {speed['builtin']:>14.0f} | {speed['spacy']:>13.0f} | {speed['datatrove']:>16.1f} | "
              f"{speed['builtin'] / speed['datatrove']:>5.1f}x | {speed['spacy'] / speed['datatrove']:>10.1f}x")
    print(f"\n{'family':<18} | {'tokenizer':<9} | {'same keep/drop':>14} | {'same text when kept':>19} | {'datatrove drops':>15}")
    print("-" * 88)
    for family, tool, same, same_text, dropped in agreement:
        print(f"{family:<18} | {tool:<9} | {same:>14.2%} | {same_text:>19.2%} | {dropped:>15.1%}")
    print("(datatrove's PIIFormatter hands out stand-ins in turn across documents, llmpipe's per document: a\n"
          " document redacted after another one can get a different stand-in; tests/filters compare per document)")


if __name__ == "__main__":
    main()
