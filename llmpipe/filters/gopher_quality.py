"""Gopher quality rules (Rae et al. 2021, "Scaling Language Models", appendix A.1.1, Table A1).

Drops documents whose word count, mean word length, symbol-to-word ratio, bullet or ellipsis
lines, share of alphabetic words or stop words fall outside the published ranges. Words are
spaCy-style tokens, punctuation tokens included, as datatrove's GopherQualityFilter counts them.

    apply("the cat sat on the mat ...", Params())  ->  (text, "gopher_short_doc")
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from llmpipe.filters.words import SYMBOL_CHARS, WORD_TOKENIZER_HELP, Doc, WordTokenizer

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
OFF = " None or 0 switches the rule off."


@dataclass(frozen=True)
class Params:
    min_doc_words: int | None = field(default=50, metadata={"help": "Drop documents with fewer words, symbols not counted (Gopher: 50)." + OFF})
    max_doc_words: int | None = field(default=100_000, metadata={"help": "Drop documents with more words, symbols not counted (Gopher: 100,000)." + OFF})
    min_avg_word_length: float | None = field(default=3, metadata={"help": "Drop documents whose mean word length in characters is below this (Gopher: 3)." + OFF})
    max_avg_word_length: float | None = field(default=10, metadata={"help": "Drop documents whose mean word length in characters is above this (Gopher: 10)." + OFF})
    max_symbol_word_ratio: float | None = field(default=0.1, metadata={"help": 'Drop documents with more "#" per word, or more "..."/"…" per word, than this (Gopher: 0.1).' + OFF})
    max_bullet_lines_ratio: float | None = field(default=0.9, metadata={"help": 'Drop documents where more than this share of lines start with "•" or "-" (Gopher: 0.9).' + OFF})
    max_ellipsis_lines_ratio: float | None = field(default=0.3, metadata={"help": 'Drop documents where more than this share of lines end with "..." or "…" (Gopher: 0.3).' + OFF})
    min_alpha_words_ratio: float | None = field(default=0.8, metadata={"help": "Drop documents where a smaller share of words (punctuation tokens included) contain a letter (Gopher: 0.8; datatrove's max_non_alpha_words_ratio)." + OFF})
    min_stop_words: int | None = field(default=2, metadata={"help": "Drop documents containing fewer of the distinct stop words, matched case-sensitively (Gopher: 2)." + OFF})
    stop_words: tuple[str, ...] = field(default=STOP_WORDS, metadata={"help": "The stop words counted by min_stop_words (Gopher's eight)."})
    word_tokenizer: WordTokenizer = field(default="builtin", metadata={"help": WORD_TOKENIZER_HELP})


# Per distinct word: (is a real word, i.e. has a non-symbol character; contains a letter).
_WORD_FLAGS: dict[str, tuple[bool, bool]] = {}


def _flags(word: str) -> tuple[bool, bool]:
    flags = _WORD_FLAGS.get(word)
    if flags is None:
        if len(_WORD_FLAGS) > 1_000_000:
            _WORD_FLAGS.clear()
        flags = _WORD_FLAGS[word] = (not set(word) <= SYMBOL_CHARS, any(c.isalpha() for c in word))
    return flags


def apply(text: str, p: Params, doc: Doc | None = None) -> tuple[str, str | None]:
    doc = Doc.of(text, doc, p.word_tokenizer)
    counts = Counter(doc.words)
    n_words = len(doc.words)
    n_real = real_chars = n_alpha = 0
    for word, count in counts.items():
        is_real, has_alpha = _flags(word)
        if is_real:
            n_real += count
            real_chars += len(word) * count
        if has_alpha:
            n_alpha += count

    if (p.min_doc_words and n_real < p.min_doc_words) or n_words == 0:
        return text, "gopher_short_doc"
    if p.max_doc_words and n_real > p.max_doc_words:
        return text, "gopher_long_doc"
    if n_real:  # a document of symbols only has no mean word length (datatrove: NaN, never out of range)
        mean_length = real_chars / n_real
        if p.min_avg_word_length and mean_length < p.min_avg_word_length:
            return text, "gopher_below_avg_threshold"
        if p.max_avg_word_length and mean_length > p.max_avg_word_length:
            return text, "gopher_above_avg_threshold"
    if p.max_symbol_word_ratio and text.count("#") / n_words > p.max_symbol_word_ratio:
        return text, "gopher_too_many_hashes"
    if p.max_symbol_word_ratio and (text.count("...") + text.count("…")) / n_words > p.max_symbol_word_ratio:
        return text, "gopher_too_many_ellipsis"
    lines = doc.splitlines
    if p.max_bullet_lines_ratio and sum(line.lstrip().startswith(("•", "-")) for line in lines) / len(lines) > p.max_bullet_lines_ratio:
        return text, "gopher_too_many_bullets"
    if p.max_ellipsis_lines_ratio and sum(line.rstrip().endswith(("...", "…")) for line in lines) / len(lines) > p.max_ellipsis_lines_ratio:
        return text, "gopher_too_many_end_ellipsis"
    if p.min_alpha_words_ratio and n_alpha / n_words < p.min_alpha_words_ratio:
        return text, "gopher_below_alpha_threshold"
    if p.min_stop_words and sum(1 for w in set(p.stop_words) if w in counts) < p.min_stop_words:
        return text, "gopher_enough_stop_words"  # datatrove's name for "not enough stop words"
    return text, None
