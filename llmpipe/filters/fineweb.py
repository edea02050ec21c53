"""FineWeb quality rules (Penedo et al. 2024, "The FineWeb Datasets", section 3.3, custom filters).

Drops documents where too few lines end in terminal punctuation, too many lines are short, too many
characters sit in duplicate lines, or there are too many newlines per word (list-like pages), as
datatrove's FineWebQualityFilter computes them.

    apply("Menu\\nHome\\nAbout\\nContact", Params())  ->  (text, "line_punct_ratio")
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmpipe.filters.words import TERMINAL_PUNCTUATION, WORD_TOKENIZER_HELP, Doc, WordTokenizer, find_duplicates


@dataclass(frozen=True)
class Params:
    min_line_punct_ratio: float = field(default=0.12, metadata={"help": "Drop documents where a smaller share of non-empty lines end in terminal punctuation (FineWeb: 0.12)."})
    exempt_unpunctuated_docs: bool = field(default=False, metadata={"help": "Keep documents where no line at all ends in terminal punctuation (datatrove's line_punct_exclude_zero)."})
    stop_chars: tuple[str, ...] | None = field(default=None, metadata={"help": "Line endings that count as terminal punctuation; None means every Unicode sentence terminal (. ? ! 。 ...)."})
    max_short_line_ratio: float = field(default=0.67, metadata={"help": "Drop documents where a larger share of non-empty lines are short (FineWeb: 0.67)."})
    short_line_length: int = field(default=30, metadata={"help": "A line of at most this many characters is short (FineWeb: 30)."})
    max_char_dup_ratio: float = field(default=0.01, metadata={"help": "Drop documents where characters in lines repeating an earlier line exceed this share of the non-newline characters (FineWeb: 0.01)."})
    max_newline_word_ratio: float = field(default=0.3, metadata={"help": "Drop documents with more newlines per word than this, i.e. lists (FineWeb: 0.3)."})
    word_tokenizer: WordTokenizer = field(default="builtin", metadata={"help": WORD_TOKENIZER_HELP})


def apply(text: str, p: Params, doc: Doc | None = None) -> tuple[str, str | None]:
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return text, "empty"
    if p.stop_chars is None:
        punctuated = sum(1 for line in lines if line[-1] in TERMINAL_PUNCTUATION)
    else:
        punctuated = sum(1 for line in lines if line.endswith(p.stop_chars))
    ratio = punctuated / len(lines)
    if ratio < p.min_line_punct_ratio and not (ratio == 0 and p.exempt_unpunctuated_docs):
        return text, "line_punct_ratio"
    if sum(1 for line in lines if len(line) <= p.short_line_length) / len(lines) > p.max_short_line_ratio:
        return text, "short_line_ratio"
    if find_duplicates(lines)[1] / (len(text) - text.count("\n")) > p.max_char_dup_ratio:
        return text, "char_dup_ratio"
    words = Doc.of(text, doc, p.word_tokenizer).words
    if text.count("\n") / len(words) > p.max_newline_word_ratio:
        return text, "list_ratio"
    return text, None
