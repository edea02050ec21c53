"""Gopher repetition rules (Rae et al. 2021, "Scaling Language Models", appendix A.1.1, Table A1).

Drops documents with too many duplicate lines or paragraphs (by count and by characters), too
much text in their most frequent 2-, 3- and 4-gram, or too much text in repeated 5- to 10-grams.
Character fractions are over the whole text, as in datatrove's GopherRepetitionFilter.

    apply("I am your father.\\n" * 4, Params())  ->  (text, "dup_line_frac")
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import Counter
from itertools import compress
from operator import itemgetter, ne
from dataclasses import dataclass, field

from llmpipe.filters.words import WORD_TOKENIZER_HELP, Doc, WordTokenizer, find_duplicates

OFF = " None or 0 switches the rule off."
_PARAGRAPH_BREAK = re.compile(r"\n{2,}")
_LINE_BREAK = re.compile(r"\n+")


def _frac(default: float, what: str) -> float | None:
    return field(default=default, metadata={"help": f"Drop documents where {what} exceeds this (Gopher Table A1: {default})." + OFF})


@dataclass(frozen=True)
class Params:
    max_dup_para_frac: float | None = _frac(0.3, "the share of paragraphs that repeat an earlier one")
    max_dup_para_char_frac: float | None = _frac(0.2, "the characters in repeated paragraphs, as a share of all characters,")
    max_dup_line_frac: float | None = _frac(0.3, "the share of lines that repeat an earlier one")
    max_dup_line_char_frac: float | None = _frac(0.2, "the characters in repeated lines, as a share of all characters,")
    max_top_2gram_char_frac: float | None = _frac(0.2, "the characters covered by the most frequent word 2-gram, as a share of all characters,")
    max_top_3gram_char_frac: float | None = _frac(0.18, "the same share for the most frequent 3-gram")
    max_top_4gram_char_frac: float | None = _frac(0.16, "the same share for the most frequent 4-gram")
    max_dup_5gram_char_frac: float | None = _frac(0.15, "the characters in repeated word 5-grams, as a share of all characters,")
    max_dup_6gram_char_frac: float | None = _frac(0.14, "the same share for repeated 6-grams")
    max_dup_7gram_char_frac: float | None = _frac(0.13, "the same share for repeated 7-grams")
    max_dup_8gram_char_frac: float | None = _frac(0.12, "the same share for repeated 8-grams")
    max_dup_9gram_char_frac: float | None = _frac(0.11, "the same share for repeated 9-grams")
    max_dup_10gram_char_frac: float | None = _frac(0.1, "the same share for repeated 10-grams")
    word_tokenizer: WordTokenizer = field(default="builtin", metadata={"help": WORD_TOKENIZER_HELP})


def top_ngram_chars(words: list[str], n: int) -> int:
    """Characters of the most frequent n-gram (words joined by spaces) times its count.

    Ties go to the n-gram seen first. Words hold no spaces, so tuples stand for joined strings."""
    grams = Counter(zip(*(words[i:] for i in range(n))))
    if not grams:
        return 0
    gram, count = max(grams.items(), key=itemgetter(1))  # max() keeps the first of equal counts
    return (sum(map(len, gram)) + n - 1) * count


def repeated_ngram_chars(words: list[str], n: int) -> int:
    """Characters (words joined without spaces) in n-grams equal to an earlier n-gram; after a
    repeat the scan jumps past it, so overlapping repeats are not counted twice.

    Same result as scanning every position (datatrove's loop), but only the positions whose n-gram
    occurred before are visited: an n-gram counts as seen when its first occurrence was not jumped
    over, or when a later occurrence was visited."""
    grams = list(map("".join, zip(*(words[i:] for i in range(n)))))
    first = dict(zip(reversed(grams), range(len(grams) - 1, -1, -1)))  # n-gram -> first position
    if len(first) == len(grams):
        return 0
    later = compress(range(len(grams)), map(ne, map(first.__getitem__, grams), range(len(grams))))
    skipped_starts: list[int] = []  # jumped-over position ranges [start, start + n - 1), in order
    visited: set[str] = set()  # n-grams of visited later occurrences
    repeated, next_pos = 0, 0
    for i in later:
        if i < next_pos:
            continue
        gram = grams[i]
        f = first[gram]
        k = bisect_right(skipped_starts, f) - 1
        first_seen = k < 0 or f >= skipped_starts[k] + n - 1
        if first_seen or gram in visited:
            repeated += len(gram)
            skipped_starts.append(i + 1)
            next_pos = i + n
        else:
            visited.add(gram)
            next_pos = i + 1
    return repeated


def apply(text: str, p: Params, doc: Doc | None = None) -> tuple[str, str | None]:
    if not text:
        return text, "empty"
    size = len(text)
    paragraphs = _PARAGRAPH_BREAK.split(text.strip())
    n_dup, chars_dup = find_duplicates(paragraphs)
    if p.max_dup_para_frac and n_dup / len(paragraphs) > p.max_dup_para_frac:
        return text, "dup_para_frac"
    if p.max_dup_para_char_frac and chars_dup / size > p.max_dup_para_char_frac:
        return text, "dup_para_char_frac"
    lines = _LINE_BREAK.split(text)
    n_dup, chars_dup = find_duplicates(lines)
    if p.max_dup_line_frac and n_dup / len(lines) > p.max_dup_line_frac:
        return text, "dup_line_frac"
    if p.max_dup_line_char_frac and chars_dup / size > p.max_dup_line_char_frac:
        return text, "dup_line_char_frac"

    words = Doc.of(text, doc, p.word_tokenizer).words
    for n, limit in ((2, p.max_top_2gram_char_frac), (3, p.max_top_3gram_char_frac), (4, p.max_top_4gram_char_frac)):
        if limit and top_ngram_chars(words, n) / size > limit:
            return text, f"top_{n}_gram"
    dup_limits = (p.max_dup_5gram_char_frac, p.max_dup_6gram_char_frac, p.max_dup_7gram_char_frac,
                  p.max_dup_8gram_char_frac, p.max_dup_9gram_char_frac, p.max_dup_10gram_char_frac)
    for n, limit in enumerate(dup_limits, start=5):
        if limit and repeated_ngram_chars(words, n) / size > limit:
            return text, f"duplicated_{n}_n_grams"
    return text, None
