"""A document's words, lines and paragraphs, split once and shared by every rule family.

`Doc(text)` computes each split on first use; the families take it as an optional argument so a
chain of families tokenizes a document once (again only after C4 rewrote its text). Word tokens
come from the spaCy-compatible tokenizer (tokenizer.py) or, with `word_tokenizer="spacy"`, from
spaCy itself (optional dependency, memoized the same way).

    doc = Doc("Hello world.\\nHello again.")
    doc.words  ->  ['Hello', 'world', '.', 'Hello', 'again', '.']
"""

from __future__ import annotations

import string
from typing import Literal

from llmpipe.filters.tokenizer import SENTENCE_END_CHARS, split_chunk, split_words

WordTokenizer = Literal["builtin", "spacy"]
WORD_TOKENIZER_HELP = (
    'How words are split: "builtin" reproduces spaCy\'s English tokenizer (the splitter datatrove\'s '
    'filters use) without depending on it; "spacy" calls spaCy itself (pip install spacy).'
)

# Sentence-terminal punctuation of all scripts (Unicode's Sentence_Terminal characters as datatrove
# lists them): the spaCy sentencizer's characters plus Arabic, Samaritan, Khmer, Balinese, medieval,
# Sogdian, Old Uyghur, Dives Akuru, Makasar, Kawi and Medefaidrin ones.
TERMINAL_PUNCTUATION = SENTENCE_END_CHARS | frozenset(
    chr(c)
    for c in (0x61D, 0x61E, 0x837, 0x839, 0x83D, 0x83E, 0x17D4, 0x17D5, 0x17D6, 0x17D9, 0x17DA, 0x1B7D, 0x1B7E,
              0x2E53, 0x2E54, 0x10F55, 0x10F56, 0x10F57, 0x10F58, 0x10F59, 0x10F86, 0x10F87, 0x10F88, 0x10F89,
              0x11944, 0x11946, 0x11EF7, 0x11EF8, 0x11F43, 0x11F44, 0x16E98)
)
# Characters that make a "symbol": a word made only of these is not counted as a word by Gopher
# quality. ASCII punctuation, typographic and full-width punctuation (and datatrove's full-width
# "１"), the C0/C1 control characters except tab and newline, and every sentence terminal above
# (datatrove's PUNCTUATION_SET).
SYMBOL_CHARS = frozenset(
    string.punctuation
    + "—”％１〈、━【「」，】；“《„’∶´．（–？！：～«〉》）。…►»"
    + "".join(chr(c) for c in (*range(0, 9), 11, 12, *range(13, 32), *range(127, 160)))
) | TERMINAL_PUNCTUATION


def _spacy_split_chunk():
    try:
        import spacy
    except ImportError:
        raise ImportError('word_tokenizer = "spacy" needs spaCy: pip install spacy (or use "builtin")') from None
    tokenizer = spacy.blank("en").tokenizer
    memo: dict[str, tuple[str, ...]] = {}

    def split(chunk: str) -> tuple[str, ...]:
        tokens = memo.get(chunk)
        if tokens is None:
            if len(memo) > 1_000_000:
                memo.clear()
            tokens = memo[chunk] = tuple(t.text for t in tokenizer(chunk))
        return tokens

    return split


_SPACY_SPLIT = None


def chunk_splitter(word_tokenizer: WordTokenizer):
    """The function that splits one whitespace-free chunk into word tokens."""
    global _SPACY_SPLIT
    if word_tokenizer == "builtin":
        return split_chunk
    if _SPACY_SPLIT is None:
        _SPACY_SPLIT = _spacy_split_chunk()
    return _SPACY_SPLIT


def words_of(text: str, word_tokenizer: WordTokenizer = "builtin") -> list[str]:
    if word_tokenizer == "builtin":
        return split_words(text)
    split = chunk_splitter(word_tokenizer)
    return [t for chunk in text.split() for t in split(chunk)]


class Doc:
    """One document's text with its word and line splits, each computed on first use."""

    __slots__ = ("text", "_words", "_splitlines", "_tokenizer")

    def __init__(self, text: str, word_tokenizer: WordTokenizer = "builtin"):
        self.text = text
        self._tokenizer = word_tokenizer
        self._words: list[str] | None = None
        self._splitlines: list[str] | None = None

    @classmethod
    def of(cls, text: str, doc: Doc | None, word_tokenizer: WordTokenizer = "builtin") -> Doc:
        """doc when it holds this text and tokenizer, else a fresh Doc."""
        if doc is not None and doc.text == text and doc._tokenizer == word_tokenizer:
            return doc
        return cls(text, word_tokenizer)

    @property
    def words(self) -> list[str]:
        """Word tokens, punctuation tokens included, whitespace dropped."""
        if self._words is None:
            self._words = words_of(self.text, self._tokenizer)
        return self._words

    @property
    def splitlines(self) -> list[str]:
        """str.splitlines() of the text (every Unicode line break)."""
        if self._splitlines is None:
            self._splitlines = self.text.splitlines()
        return self._splitlines


def find_duplicates(items: list[str]) -> tuple[int, int]:
    """(number of items equal to an earlier item, total characters of those repeats)."""
    seen: set[str] = set()
    n_dup = chars_dup = 0
    for item in items:
        if item in seen:
            n_dup += 1
            chars_dup += len(item)
        else:
            seen.add(item)
    return n_dup, chars_dup
