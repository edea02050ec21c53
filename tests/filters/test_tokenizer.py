"""The spaCy-compatible word tokenizer: hand-written cases, then exact parity with spaCy when installed."""

from __future__ import annotations

import pytest

from llmpipe.filters.tokenizer import count_sentences, split_words
from llmpipe.filters.words import Doc, words_of

CASES = {
    "Don't panic... it's 5pm!": ["Do", "n't", "panic", "...", "it", "'s", "5", "pm", "!"],
    "I can't, won't and dont.": ["I", "ca", "n't", ",", "wo", "n't", "and", "do", "nt", "."],
    "Mr. Smith paid $100 (about €90) on 3.5.2020.": ["Mr.", "Smith", "paid", "$", "100", "(", "about", "€", "90", ")", "on", "3.5.2020", "."],
    "e-mail state-of-the-art U.S. A. I. end.Next": ["e", "-", "mail", "state", "-", "of", "-", "the", "-", "art", "U.S.", "A.", "I.", "end", ".", "Next"],
    "Visit https://example.com/Path?q=1, or www.site.org/A/B.": ["Visit", "https://example.com/Path?q=1", ",", "or", "www.site.org/A/B."],
    "Mail jane.doe@gmail.com now": ["Mail", "jane.doe@gmail.com", "now"],
    "5km 10kg 50% 20°C. 4G": ["5", "km", "10", "kg", "50", "%", "20", "°", "C", ".", "4", "G"],
    "“Quoted,” she said—loudly :) (ok)": ["“", "Quoted", ",", "”", "she", "said", "—", "loudly", ":)", "(", "ok", ")"],
    "gonna gotta cannot y'all id Im": ["gon", "na", "got", "ta", "can", "not", "y'", "all", "i", "d", "I", "m"],
    "well were its ill": ["well", "were", "its", "ill"],  # words, not contractions
    "a/b and/or 1/2 x=y C++ #tag": ["a", "/", "b", "and/or", "1/2", "x", "=", "y", "C++", "#", "tag"],
    "numbers[:] (:) im.": ["numbers", "[:", "]", "(", ":)", "i", "m."],  # emoticons re-joined after splitting
    "  spaced \n\n out\t": ["spaced", "out"],
}


@pytest.mark.parametrize("text", list(CASES))
def test_tokens(text):
    assert split_words(text) == CASES[text]


def test_sentences_follow_the_sentencizer():
    assert count_sentences("One. Two! Three?") == 3
    assert count_sentences("Wait... really?! Yes.") == 2  # "..." is not a sentence end
    assert count_sentences('He said "Go." Then left.') == 2  # the closing quote stays with its sentence
    assert count_sentences("Dr. Who, e.g. the U.S. one. Fine.") == 2
    assert count_sentences("Price. $5 only.") == 2  # "$" is a symbol, not punctuation: it starts a sentence
    assert count_sentences("End.  .") == 2  # the extra space is a token and starts a sentence


def test_doc_splits_once():
    doc = Doc("a b\nc")
    assert doc.words is doc.words
    assert doc.splitlines == ["a b", "c"]
    assert Doc.of("a b\nc", doc) is doc
    assert Doc.of("other", doc) is not doc


def test_spacy_backend_error_is_clear(monkeypatch):
    import builtins

    import llmpipe.filters.words as words

    real_import = builtins.__import__

    def no_spacy(name, *args, **kwargs):
        if name == "spacy":
            raise ImportError("No module named 'spacy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(words, "_SPACY_SPLIT", None)
    monkeypatch.setattr(builtins, "__import__", no_spacy)
    with pytest.raises(ImportError, match=r'word_tokenizer = "spacy" needs spaCy: pip install spacy'):
        words_of("hello", "spacy")


def test_exception_table_equals_spacys():
    spacy = pytest.importorskip("spacy")
    from spacy.symbols import ORTH

    from llmpipe.filters.tokenizer_exceptions import SPECIAL_CASES

    theirs = {k: tuple(t[ORTH] for t in v) for k, v in spacy.blank("en").tokenizer.rules.items()}
    assert SPECIAL_CASES == theirs


def test_same_tokens_as_spacy():
    spacy = pytest.importorskip("spacy")
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    extra = [
        "Hello (world)! It's 10:30 a.m.; see p. 5, fig. 3-4 ... OK?", "He's, she's, they're + we'll; can't've",
        "http://a.b/C 192.168.1.1/admin 8.8.8.8/x user@host.com/path", "¯\\(ツ)/¯ ^_^ <3 :-) 8-) :P", "—dash– ‘single’ «guillemets»",
        "US$5 C$10 £3 ¥100 5$ 10€", "x--y a---b 1-2 3+4 a~b 2^3", "Ph.D. vs. v.s. N.Y. St. Louis", "don’t I’m we’ll",
        "naïve café Straße Œuvre ÀB.", "(a) [b] {c} <d> 'e' \"f\" `g`", "co-op e.g., i.e.: etc.", "🙂 emoji😀inside ✓done",
    ]
    for text in list(CASES) + extra:
        doc = nlp(text)
        assert words_of(text) == [t.text.strip() for t in doc if t.text.strip()], text
        assert count_sentences(text.strip()) == len(list(doc.sents)), text


def test_sentence_end_characters_are_the_sentencizers():
    pytest.importorskip("spacy")
    from spacy.pipeline.sentencizer import Sentencizer

    from llmpipe.filters.tokenizer import SENTENCE_END_CHARS

    assert SENTENCE_END_CHARS == set(Sentencizer.default_punct_chars)
