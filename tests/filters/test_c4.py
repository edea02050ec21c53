"""C4: line-level cleaning and page drops, hand-written cases with the exact reasons and kept text."""

from __future__ import annotations

from llmpipe.filters.c4 import Params, apply

GOOD = (
    "This is a well-written paragraph with several sentences.\n"
    "The content continues with more good information here.\n"
    "Another important point is being made in this line.\n"
    "We can see that this document has quality content.\n"
    "Finally, the conclusion wraps everything up nicely.\n"
    "An additional sentence to ensure we pass the threshold."
)
NO_MIN = Params(min_num_sentences=None, min_words_per_line=None)


def test_quality_text_is_kept_unchanged():
    assert apply(GOOD, Params()) == (GOOD, None)


def test_lines_are_cleaned():
    text = (
        "  Menu  \n"  # no terminal punctuation
        "Too short.\n"  # fewer than 3 words
        "Please enable JavaScript to view the comments.\n"
        "This site uses cookies to improve your experience.\n"
        "Read our Privacy Policy for details.\n"
        "The war ended in 1945.[1] Peace followed soon.[citation needed]\n"
        "And then there were three...\n"  # ends with an ellipsis
        + GOOD
    )
    out, reason = apply(text, Params())
    assert reason is None
    assert out == "The war ended in 1945. Peace followed soon.\n" + GOOD


def test_page_drops():
    lorem = "This is a sentence with lorem ipsum dolor sit amet.\n" + GOOD
    assert apply(lorem, Params())[1] == "lorem_ipsum"
    code = "This is some code with a { bracket.\n" + GOOD
    assert apply(code, Params())[1] == "curly_bracket"
    assert apply("Just one sentence.", Params()) == ("Just one sentence.", "too_few_sentences")
    # A curly bracket on a line that is removed anyway does not drop the page.
    assert apply("function() { return 1 }\n" + GOOD, Params())[1] is None


def test_sentences_are_counted_like_spacys_sentencizer():
    # Two lines with 3 sentences each: "Dr." and "e.g." do not end sentences, "3.5" neither.
    text = "Dr. Smith came home. It was late. He slept.\nWe use e.g. tools here. Prices rose 3.5 times. That is all!"
    assert apply(text, Params(min_num_sentences=6))[1] is None
    assert apply(text, Params(min_num_sentences=7))[1] == "too_few_sentences"
    # "..." is not a sentence end character, "?!" is one end, and a closing quote stays in the sentence.
    assert apply("Wait... what is this? Really?! \"Yes.\" Fine.", Params(min_num_sentences=4))[1] is None
    assert apply("Wait... what is this? Really?! \"Yes.\" Fine.", Params(min_num_sentences=5))[1] == "too_few_sentences"


def test_fineweb_setting_keeps_unpunctuated_lines():
    p = Params(filter_no_terminal_punct=False)
    out, reason = apply("A heading without a period\n" + GOOD, p)
    assert reason is None and out.startswith("A heading without a period\n")


def test_switches():
    text = "Please enable javascript for this site to work.\nThis site uses cookies for tracking, sorry."
    out, reason = apply(text, NO_MIN)
    assert (out, reason) == ("", None)
    out, reason = apply(text, Params(min_num_sentences=None, filter_javascript=False, filter_policy=False))
    assert (out, reason) == (text, None)
    long_word = "This line has a " + "x" * 1001 + " inside it."
    assert apply(long_word, NO_MIN)[0] == ""
    assert apply(long_word, Params(min_num_sentences=None, max_word_length=None))[0] == long_word
    assert apply("Keep [1] marks.", Params(min_num_sentences=None, remove_citations=False))[0] == "Keep [1] marks."
