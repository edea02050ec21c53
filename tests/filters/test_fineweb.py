"""FineWeb quality: one hand-written document per rule, asserting the exact reason datatrove gives."""

from __future__ import annotations

from llmpipe.filters.fineweb import Params, apply

GOOD = (
    "This is a well-written paragraph that ends with proper punctuation.\n"
    "The content here is substantial and has meaningful information.\n"
    "Quality filtering ensures that only the best documents pass through.\n"
    "Each line here is long enough and ends with a terminal punctuation mark.\n"
    "This document should pass all the quality checks applied by the filter."
)


def reason(text: str, p: Params = Params()) -> str | None:
    out, r = apply(text, p)
    assert out == text
    return r


def test_good_text_is_kept():
    assert reason(GOOD) is None


def test_empty():
    assert reason("") == "empty"
    assert reason(" \n\t\n") == "empty"


def test_line_punctuation_ratio():
    assert reason("No punctuation here\nAnother line without any\nStill nothing", Params(min_line_punct_ratio=0.5)) == "line_punct_ratio"
    menu = "Home\nAbout us\nProducts and services\nContact\nImprint\nPrivacy\nNews\nBlog\nShop of the week."
    assert reason(menu) == "line_punct_ratio"  # 1 of 9 lines punctuated: 0.11 < 0.12
    # Terminal punctuation of other scripts counts ("。"), a trailing space does not.
    assert reason(GOOD.replace(".", "。")) is None
    assert reason(GOOD.replace(".\n", ". \n").replace("filter.", "filter. ")) == "line_punct_ratio"
    # Exempting documents with no punctuated line at all (datatrove's line_punct_exclude_zero).
    assert reason("a long line without any final mark at all here\n" * 3, Params(exempt_unpunctuated_docs=True)) == "char_dup_ratio"


def test_short_lines():
    assert reason("hi.\nbye.\nok.\nno.\nyes.", Params(max_short_line_ratio=0.5)) == "short_line_ratio"
    # With short meaning "at most 2 characters" no line is short; the 4 newlines per 10 tokens then fail list_ratio.
    assert reason("hi.\nbye.\nok.\nno.\nyes.", Params(max_short_line_ratio=0.5, short_line_length=2)) == "list_ratio"


def test_duplicate_line_characters():
    assert reason(GOOD + "\n" + GOOD.splitlines()[0]) == "char_dup_ratio"


def test_list_ratio():
    assert reason("\n".join(["a."] * 50), Params(max_short_line_ratio=1, max_char_dup_ratio=1)) == "list_ratio"
    # Many newlines between few words: blank lines count too.
    assert reason(GOOD.replace("\n", "\n\n\n\n\n\n\n\n")) == "list_ratio"
