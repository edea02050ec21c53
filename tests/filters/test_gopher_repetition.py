"""Gopher repetition: hand-written repeats per rule, asserting the exact reason datatrove gives."""

from __future__ import annotations

from llmpipe.filters.gopher_repetition import Params, apply, repeated_ngram_chars, top_ngram_chars

TEXT_LF_1 = (  # datatrove's test text
    "I wish it need not have happened in my time,' said Frodo. 'So do I,' said Gandalf, 'and so do all who live to "
    "see such times. But that is not for them to decide. All we have to decide is what to do with the time that is "
    "given us.'"
)


def reason(text: str, p: Params = Params()) -> str | None:
    out, r = apply(text, p)
    assert out == text
    return r


def test_duplicate_lines_and_paragraphs():
    assert reason("I am your father.\n" * 4) == "dup_line_frac"
    assert reason("I am your father.\n\n" * 4) == "dup_para_frac"
    text = "I am groot.\n\n" + "You are a wizard.\n\n" + "I am your father.\n\n" + f"{'x' * 30}.\n\n" * 2
    assert reason(text) == "dup_para_char_frac"
    text = "I am groot.\n" + "You are a wizard.\n" + "I am your father.\n" + f"{'x' * 40}.\n" * 2
    assert reason(text) == "dup_line_char_frac"


def test_top_ngrams():
    assert reason("I am Frank, I am Frank, I am Frank") == "top_2_gram"
    assert reason("I am Frank, you are Jhon. I am Frank. I am Frank you are Jhon") == "top_3_gram"
    # A two-word document: its only 2-gram is the whole text, so it is "repetitive".
    assert reason("hello world") == "top_2_gram"


def test_duplicated_ngrams():
    assert reason("I am a solo traveller " * 4 + TEXT_LF_1) == "duplicated_5_n_grams"
    assert reason(TEXT_LF_1) is None


def test_empty_document():
    assert reason("") == "empty"


def test_ngram_counting_matches_the_definition():
    words = "a b c a b c a b".split()
    # the most frequent 2-gram is "a b" (3 times, 3 characters joined by a space)
    assert top_ngram_chars(words, 2) == 3 * 3
    # ties go to the n-gram seen first
    assert top_ngram_chars(["x", "yy", "x", "zz"], 2) == len("x yy")
    assert top_ngram_chars(["x"], 2) == 0
    # 2-grams ab bc ca ab bc ca ab: "ab" at 3 repeats (+2, jump to 5), "ca" at 5 repeats (+2, jump past the end)
    assert repeated_ngram_chars(words, 2) == 4
    # n-grams are compared joined without spaces, as datatrove does
    assert repeated_ngram_chars(["ab", "c", "a", "bc"], 2) == len("abc")


def test_thresholds_switch_off():
    off = Params(max_dup_para_frac=None, max_dup_para_char_frac=None, max_dup_line_frac=None,
                 max_dup_line_char_frac=None, max_top_2gram_char_frac=None, max_top_3gram_char_frac=None,
                 max_top_4gram_char_frac=None, max_dup_5gram_char_frac=None, max_dup_6gram_char_frac=None,
                 max_dup_7gram_char_frac=None, max_dup_8gram_char_frac=None, max_dup_9gram_char_frac=None,
                 max_dup_10gram_char_frac=None)
    assert reason("I am your father.\n" * 4, off) is None
    assert reason("hello world", Params(max_top_2gram_char_frac=None)) is None
