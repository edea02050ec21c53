"""datatrove's implementation of each rule family, called the way llmpipe's are: text -> (text, reason).

For comparison only (tests and benchmarks/filters_vs_datatrove.py); llmpipe.filters never imports
datatrove. Needs `datatrove==0.10.1 "xxhash<4" spacy orjson`.
"""

from __future__ import annotations

from typing import Callable

Family = Callable[[str], "tuple[str, str | None]"]
ORDER = ("gopher_repetition", "gopher_quality", "c4", "fineweb")


def datatrove_families(fineweb_c4: bool = False) -> dict[str, Family]:
    """One callable per family with datatrove's defaults (fineweb_c4: C4 as the FineWeb pipeline sets it)."""
    from datatrove.data import Document
    from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.formatters import PIIFormatter

    def wrap(step) -> Family:
        def call(text: str) -> tuple[str, str | None]:
            doc = Document(text=text, id="0")
            try:
                result = step.filter(doc)
            except Exception as e:  # noqa: BLE001 - datatrove crashes on some degenerate texts
                return text, f"error:{type(e).__name__}"
            if result is True:
                return doc.text, None
            return text, result[1] if isinstance(result, tuple) else "dropped"

        return call

    def pii(text: str) -> tuple[str, str | None]:
        # A fresh formatter per document: its stand-in turn then restarts per document, as llmpipe's does.
        return PIIFormatter().format(text), None

    c4 = C4QualityFilter(filter_no_terminal_punct=False) if fineweb_c4 else C4QualityFilter()
    return {
        "gopher_repetition": wrap(GopherRepetitionFilter()),
        "gopher_quality": wrap(GopherQualityFilter()),
        "c4": wrap(c4),
        "fineweb": wrap(FineWebQualityFilter()),
        "pii": pii,
    }


def run_chain(families: dict[str, Family], text: str, order=ORDER + ("pii",)) -> tuple[str, str | None]:
    """Run families in order until one drops the document: (final text, reason or None)."""
    for name in order:
        text, reason = families[name](text)
        if reason is not None:
            return text, f"{name}:{reason}"
    return text, None


def _outputs_of(texts: list[str]) -> list[dict]:
    theirs = datatrove_families()
    theirs_fineweb = datatrove_families(fineweb_c4=True)
    out = []
    for text in texts:
        # gopher_* and fineweb first: datatrove caches its word split per text between them.
        row = {name: theirs[name](text) for name in ("gopher_repetition", "gopher_quality", "fineweb", "c4", "pii")}
        row["chain"] = run_chain(theirs_fineweb, text)
        out.append(row)
    return out


def datatrove_outputs(texts: list[str], workers: int = 2) -> list[dict]:
    """Every family's and the FineWeb chain's output per text, datatrove's work split over processes."""
    if workers <= 1 or len(texts) < 2 * workers:
        return _outputs_of(texts)
    import multiprocessing

    from datatrove.utils.text import split_into_words

    split_into_words("Load spaCy once, before forking.")  # ~5 s; the workers inherit the loaded tokenizer
    shares = [texts[i::workers] for i in range(workers)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        results = pool.map(_outputs_of, shares)
    merged: list[dict] = [{}] * len(texts)
    for i, rows in enumerate(results):
        merged[i::workers] = rows
    return merged
