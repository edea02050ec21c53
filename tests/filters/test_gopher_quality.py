"""Gopher quality: one hand-written document per rule, asserting the exact reason datatrove gives."""

from __future__ import annotations

from llmpipe.filters import gopher_quality
from llmpipe.filters.gopher_quality import Params, apply

# A plain paragraph that passes every rule: 60+ words, mean length ~4.5, stop words present.
GOOD = (
    "The history of the town goes back to the twelfth century, when a small group of farmers settled near the "
    "river. They built a mill and a church, and over the years the village grew into a market town with a busy "
    "square. Today it is known for its old houses, its quiet streets and the annual fair that brings visitors "
    "from all over the region to see the parade and taste the local food."
)
SMALL = Params(min_doc_words=10, max_doc_words=1000)  # the thresholds datatrove's own tests use


def reason(text: str, p: Params = Params()) -> str | None:
    out, r = apply(text, p)
    assert out == text  # Gopher quality never rewrites
    return r


def test_good_paragraph_is_kept():
    assert reason(GOOD) is None


def test_word_count_bounds():
    assert reason("I am too small...", SMALL) == "gopher_short_doc"
    assert reason("the house of " * 16 + "the") == "gopher_short_doc"  # 49 words
    assert reason("the house of " * 16 + "the house") is None  # 50 words
    assert reason(GOOD, Params(max_doc_words=20)) == "gopher_long_doc"
    assert reason("") == "gopher_short_doc"


def test_symbols_are_not_words():
    # 49 words plus 30 punctuation tokens: still short (punctuation does not count towards the 50).
    text = " ".join(["house ,"] * 49)
    assert reason(text) == "gopher_short_doc"


def test_mean_word_length():
    assert reason("I am " * 20, SMALL) == "gopher_below_avg_threshold"
    assert reason("interconnection " * 20, SMALL) == "gopher_above_avg_threshold"


def test_hashes_and_ellipses_per_word():
    assert reason("# comment " * 20, SMALL) == "gopher_too_many_hashes"
    assert reason("... comment " * 20, SMALL) == "gopher_too_many_ellipsis"
    assert reason("… comment " * 20, SMALL) == "gopher_too_many_ellipsis"


def test_bullet_and_ellipsis_lines():
    bullets = "\n".join(f"- item number {i} of the list with the words and the things" for i in range(10))
    assert reason(bullets, SMALL) == "gopher_too_many_bullets"
    assert reason("• " + bullets.replace("\n- ", "\n• ")[2:], SMALL) == "gopher_too_many_bullets"
    trailing = "\n".join(f"and then the story of line {i} goes on and on ..." for i in range(4)) + "\n" + GOOD
    assert reason(trailing, Params(max_symbol_word_ratio=None)) == "gopher_too_many_end_ellipsis"


def test_alphabetic_words_count_punctuation_tokens():
    text = "the ./!*?<><> apple <?////> orange  ++ interconnection !<>??? have" * 20
    assert reason(text, SMALL) == "gopher_below_alpha_threshold"
    # Numbers are words without a letter: a price list fails the 80 % rule.
    prices = " ".join(f"item {i} costs {i}.99 $ and the tax of {i} %" for i in range(20))
    assert reason(prices) == "gopher_below_alpha_threshold"


def test_stop_words_are_case_sensitive():
    no_stop = ("Rivers flow quickly through green valleys, carrying water towards distant seas. " * 8).strip()
    assert reason(no_stop) == "gopher_enough_stop_words"
    assert reason(no_stop.replace("Rivers", "The rivers")) == "gopher_enough_stop_words"  # "The" is not "the"
    assert reason(no_stop + " the end of that story") is None


def test_every_rule_can_be_switched_off():
    off = Params(min_doc_words=None, max_doc_words=None, min_avg_word_length=None, max_avg_word_length=None,
                 max_symbol_word_ratio=None, max_bullet_lines_ratio=None, max_ellipsis_lines_ratio=None,
                 min_alpha_words_ratio=None, min_stop_words=None)
    for text in ("I am too small...", "# comment " * 20, "interconnection " * 20, "- a\n- b"):
        assert reason(text, off) is None


def test_doc_cache_is_reused_and_checked():
    from llmpipe.filters import Doc

    doc = Doc(GOOD)
    assert apply(GOOD, Params(), doc) == (GOOD, None)
    assert doc.words[:3] == ["The", "history", "of"]
    # A Doc holding another text is ignored, not trusted.
    assert apply("I am too small...", SMALL, doc)[1] == "gopher_short_doc"


def test_defaults_are_the_papers():
    p = gopher_quality.Params()
    assert (p.min_doc_words, p.max_doc_words, p.min_avg_word_length, p.max_avg_word_length) == (50, 100_000, 3, 10)
    assert (p.max_symbol_word_ratio, p.max_bullet_lines_ratio, p.max_ellipsis_lines_ratio) == (0.1, 0.9, 0.3)
    assert (p.min_alpha_words_ratio, p.min_stop_words) == (0.8, 2)
    assert p.stop_words == ("the", "be", "to", "of", "and", "that", "have", "with")
