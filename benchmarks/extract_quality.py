"""Main-text extraction: quality and speed of the candidates for llmpipe's `ingest` stage.

What it measures, for every candidate extractor that is installed (a missing one is skipped
with a note):

* AEB precision / recall / F1 on scrapinghub's article-extraction-benchmark (120 pages),
  scored exactly as its evaluate.py does: per page, TP/FP/FN over 4-word shingles of
  case-sensitive ``\\w+`` tokens, normalised to sum to 1; precision is the mean over the pages
  with a non-empty prediction, recall the mean over the pages with a non-empty truth, and
  F1 the harmonic mean of those two means.
* trafilatura-eval precision / recall / accuracy / F1 on trafilatura's evaluation set (260
  pages, mostly German), scored as trafilatura's tests/eval_common.py does: a "with" snippet
  found in the whitespace-normalised output is a TP (else FN), a "without" snippet found is an
  FP (else TN); counts are pooled over all pages; an exception counts as empty output.
* Speed: pages per CPU-second over all 380 pages, process pinned to one core, median of
  ``--runs`` passes (default 3, taken round-robin over the extractors), extraction calls only;
  plus the ratio to trafilatura default.

Every extractor gets the SAME decoded ``str`` per page (see ``decode_html``: BOM, then the
``<meta charset>`` (latin-1/ascii read as cp1252, as browsers do), then strict UTF-8, then
charset_normalizer, then cp1252 with replacement).

Candidates (both trafilatura rows use ``include_comments=False``, as the AEB's and
trafilatura's own runners do):
  trafilatura default, trafilatura favor_precision=True,
  resiliparse ``extract_plain_text(main_content=True)``,
  readability-lxml ``Document.summary()`` converted to text with html_text,
  jusText (stoplist = union of all its languages, trafilatura's evaluation parameters),
  inscriptis ``get_text`` on the whole page (baseline: no boilerplate removal).

Data is read from ``<repo>/../shared/data/web/{aeb,trafilatura}`` (never copied into the repo).

Run from the repository root:
    python benchmarks/extract_quality.py            # about 3-4 minutes on 1 core
    python benchmarks/extract_quality.py --runs 1 --only trafilatura,resiliparse
Install the candidates (separate commands: pip 23's resolver crashes on the lxml extras
when trafilatura and readability-lxml are installed together):
    pip install -c .ci/constraints.txt trafilatura resiliparse inscriptis html-text
    pip install -c .ci/constraints.txt readability-lxml
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from _machine import pin_to_one_core  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from typing import Callable

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "web"

# --------------------------------------------------------------------------------------------
# Decoding: one str per page, shared by every extractor.
# --------------------------------------------------------------------------------------------

# llmpipe's own decoding (BOM, HTTP/meta charset, strict UTF-8, detection), so the figures are
# those of the ingest stage.
from llmpipe.readers.html import decode_html, extract_main_text  # noqa: E402


# --------------------------------------------------------------------------------------------
# Data sets
# --------------------------------------------------------------------------------------------


@dataclass
class Page:
    source: str  # "aeb" or "traf"
    key: str
    html: str
    truth: dict = field(repr=False)


def load_pages() -> tuple[list[Page], Counter]:
    aeb, traf = DATA / "aeb", DATA / "trafilatura"
    for path in (aeb / "ground-truth.json", aeb / "html", traf / "evaldata.json", traf / "html"):
        if not path.exists():
            sys.exit(f"extract_quality: missing {path}\n  (expects the shared data folder beside the repo: ../shared/data/web)")
    pages, routes = [], Counter()
    truth_aeb = json.loads((aeb / "ground-truth.json").read_text(encoding="utf-8"))
    for key in sorted(truth_aeb):
        text, route = decode_html(gzip.decompress((aeb / "html" / f"{key}.html.gz").read_bytes()))
        pages.append(Page("aeb", key, text, truth_aeb[key]))
        routes[route] += 1
    truth_traf = json.loads((traf / "evaldata.json").read_text(encoding="utf-8"))
    for url in sorted(truth_traf):
        text, route = decode_html(gzip.decompress((traf / "html" / truth_traf[url]["file"]).read_bytes()))
        pages.append(Page("traf", url, text, truth_traf[url]))
        routes[route] += 1
    return pages, routes


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------

# evaluate.py compiles r'\w+' with IGNORECASE too; findall keeps the case, so tokens stay case-sensitive
_TOKEN_RE = re.compile(r"\w+", re.UNICODE | re.MULTILINE | re.IGNORECASE | re.DOTALL)


def _shingles(text: str | None, n: int = 4) -> Counter:
    tokens = _TOKEN_RE.findall(text or "")
    # as evaluate.py: a text shorter than n tokens is one short shingle; an empty text has none
    return Counter(tuple(tokens[i:i + n]) for i in range(max(1, len(tokens) - n + 1)) if tokens[i:i + n])


def aeb_tp_fp_fn(truth: str, pred: str | None) -> tuple[float, float, float]:
    true_sh, pred_sh = _shingles(truth), _shingles(pred)
    tp = sum((true_sh & pred_sh).values())
    fp = sum((pred_sh - true_sh).values())
    fn = sum((true_sh - pred_sh).values())
    total = tp + fp + fn
    return (tp / total, fp / total, fn / total) if total else (0.0, 0.0, 0.0)


def aeb_scores(per_page: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    def prec(tp, fp, fn):
        return 1.0 if fp == fn == 0 else (0.0 if tp == fp == 0 else tp / (tp + fp))

    def rec(tp, fp, fn):
        return 1.0 if fp == fn == 0 else (0.0 if tp == fn == 0 else tp / (tp + fn))

    precision = statistics.mean(prec(*c) for c in per_page if c[0] + c[1] > 0)
    recall = statistics.mean(rec(*c) for c in per_page if c[0] + c[2] > 0)
    return precision, recall, 2 * precision * recall / (precision + recall)


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def traf_counts(item: dict, pred: str | None) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) for one page, as trafilatura's eval_common.count_item."""
    out = _norm(pred) if isinstance(pred, str) else None
    tp = sum(_norm(w) in out for w in item["with"]) if out is not None else 0
    fp = sum(_norm(w) in out for w in item["without"]) if out is not None else 0
    return tp, fp, len(item["with"]) - tp, len(item["without"]) - fp


def traf_scores(counts: list[tuple[int, int, int, int]]) -> tuple[float, float, float, float]:
    tp, fp, fn, tn = (sum(c[i] for c in counts) for i in range(4))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    accuracy = (tp + tn) / (tp + fp + fn + tn)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return precision, recall, accuracy, f1


# --------------------------------------------------------------------------------------------
# Candidates: each factory imports its library and returns a function str -> str | None.
# --------------------------------------------------------------------------------------------


def make_trafilatura(**options) -> Callable[[str], str | None]:
    import trafilatura

    return lambda html: trafilatura.extract(html, include_comments=False, **options)


def make_resiliparse() -> Callable[[str], str]:
    from resiliparse.extract.html2text import extract_plain_text

    return lambda html: extract_plain_text(html, main_content=True)


def make_readability() -> Callable[[str], str]:
    import html_text  # the AEB's readability runner converts the summary with html_text too
    from readability import Document

    return lambda html: html_text.extract_text(Document(html).summary(html_partial=True))


def make_justext() -> Callable[[str], str]:
    import justext

    # language-independent: the union of all stoplists, as trafilatura's evaluation does
    stoplist = frozenset(word for lang in justext.get_stoplists() for word in justext.get_stoplist(lang))

    def run(html: str) -> str:
        paragraphs = justext.justext(html, stoplist, 50, 200, 0.1, 0.2, 0.2, 200, True)
        return "\n".join(p.text for p in paragraphs if not p.is_boilerplate)

    return run


def make_inscriptis() -> Callable[[str], str]:
    from inscriptis import get_text

    return get_text


# (row name, distributions to report, factory)
CANDIDATES: list[tuple[str, tuple[str, ...], Callable[[], Callable[[str], str | None]]]] = [
    ("llmpipe ingest (trafilatura)", ("trafilatura",), lambda: lambda html: extract_main_text(html, "trafilatura")),
    ("llmpipe ingest (resiliparse)", ("resiliparse",), lambda: lambda html: extract_main_text(html, "resiliparse")),
    ("trafilatura", ("trafilatura",), make_trafilatura),
    ("trafilatura precision", ("trafilatura",), lambda: make_trafilatura(favor_precision=True)),
    ("resiliparse main_content", ("resiliparse",), make_resiliparse),
    ("readability+html_text", ("readability-lxml", "html-text"), make_readability),
    ("justext", ("justext",), make_justext),
    ("inscriptis (whole page)", ("inscriptis",), make_inscriptis),
]
REFERENCE = "trafilatura"


@dataclass
class Result:
    name: str
    versions: str
    fn: Callable[[str], str | None]
    outputs: list[str | None] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    cpu_seconds: list[float] = field(default_factory=list)


def timed_pass(result: Result, pages: list[Page]) -> None:
    """Extract every page once; keep the first pass's outputs and errors, time every pass."""
    first = not result.cpu_seconds
    outputs = []
    start = time.process_time()
    for page in pages:
        try:
            outputs.append(result.fn(page.html))
        except Exception as exc:  # a crash is scored as empty output
            outputs.append(None)
            if first:
                result.errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
    result.cpu_seconds.append(time.process_time() - start)
    if first:
        result.outputs = outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed passes per extractor (median reported)")
    parser.add_argument("--only", default="", help="comma-separated substrings of extractor names to run")
    args = parser.parse_args()

    pages, routes = load_pages()
    n_aeb = sum(p.source == "aeb" for p in pages)
    mb = sum(len(p.html.encode("utf-8")) for p in pages) / 1e6
    print(f"pages: {n_aeb} AEB + {len(pages) - n_aeb} trafilatura-eval, {mb:.1f} MB of decoded HTML; "
          f"decoded by: {dict(routes)}; {pin_to_one_core()}; median of {args.runs} runs\n")

    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    results: list[Result] = []
    for name, dists, factory in CANDIDATES:
        if wanted and not any(w in name for w in wanted):
            continue
        try:
            fn = factory()
            fn("<html><body><p>warm up: lazy imports and one-time set-up</p></body></html>")
            results.append(Result(name, " ".join(version(d) for d in dists), fn))
        except (ImportError, PackageNotFoundError) as exc:
            print(f"skipping {name}: not installed ({exc})")

    # round-robin, so that load from other processes hits every extractor alike
    for run in range(1, args.runs + 1):
        print(f"run {run}/{args.runs}: " + ", ".join(r.name for r in results), flush=True)
        for result in results:
            timed_pass(result, pages)
    for r in results:
        for message, count in r.errors.most_common():
            print(f"  {r.name}: {count} page(s) raised {message}")

    ref = next((r for r in results if r.name == REFERENCE), None)
    header = ("| extractor | version | AEB P | AEB R | AEB F1 | traf P | traf R | traf acc | traf F1 "
              "| empty/err | pages/s | vs trafilatura |")
    print("\n" + header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in results:
        aeb = [aeb_tp_fp_fn(p.truth.get("articleBody", ""), o) for p, o in zip(pages, r.outputs) if p.source == "aeb"]
        traf = [traf_counts(p.truth, o) for p, o in zip(pages, r.outputs) if p.source == "traf"]
        ap, ar, af = aeb_scores(aeb)
        tp_, tr_, ta_, tf_ = traf_scores(traf)
        empty = sum(not o for o in r.outputs)
        speed = len(pages) / statistics.median(r.cpu_seconds)
        ratio = f"{speed / (len(pages) / statistics.median(ref.cpu_seconds)):.1f}x" if ref else "n/a"
        print(f"| {r.name} | {r.versions} | {ap:.3f} | {ar:.3f} | {af:.3f} | {tp_:.3f} | {tr_:.3f} | {ta_:.3f} "
              f"| {tf_:.3f} | {empty}/{sum(r.errors.values())} | {speed:.1f} | {ratio} |")
    print("\nAEB: 4-word shingles of case-sensitive \\w+ tokens (its evaluate.py, without bootstrap); "
          "traf: with/without snippets, pooled counts (trafilatura tests/eval_common.py).\n"
          "pages/s: per CPU-second on one core, all pages, extraction only; empty/err: pages with "
          "empty output / pages that raised (scored as empty).")


if __name__ == "__main__":
    main()
