"""The contract stages/filter.py relies on: family order, Params shape and help, apply(), purity."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest

from llmpipe import filters

FAMILY_NAMES = ("gopher_repetition", "gopher_quality", "c4", "fineweb", "pii")


def test_default_order_is_finewebs():
    assert tuple(filters.FAMILIES) == FAMILY_NAMES
    assert filters.FINEWEB_OVERRIDES == {"c4": {"filter_no_terminal_punct": False}}


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_params_are_frozen_typed_and_documented(name):
    module = filters.FAMILIES[name]
    assert module.__doc__ and module.__doc__.strip()
    params = module.Params()
    assert dataclasses.is_dataclass(params)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(params, dataclasses.fields(params)[0].name, None)
    hints = typing.get_type_hints(module.Params)
    for f in dataclasses.fields(params):
        assert f.metadata.get("help"), f"{name}.{f.name} has no help text"
        assert f.name in hints
        assert not isinstance(getattr(params, f.name), list), f"{name}.{f.name}: use a tuple"


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_apply_returns_text_and_reason(name):
    module = filters.FAMILIES[name]
    text = "A short line."
    out, reason = module.apply(text, module.Params())
    assert isinstance(out, str)
    assert reason is None or (isinstance(reason, str) and reason.replace("_", "").isalnum())


def test_apply_chain_stops_at_the_first_drop_and_passes_rewrites_on():
    good = (
        "The history of the town goes back to the twelfth century, when a small group of farmers settled near the river.\n"
        "They built a mill and a church, and over the years the village grew into a market town with a busy square.\n"
        "Today it is known for its old houses, its quiet streets and the annual fair that brings many visitors.\n"
        "People come from all over the region to see the parade and to taste the local food and drink.\n"
        "You can write to the town office at info@town-office.org with any of your questions."
    )
    text, reason, family = filters.apply_chain("Menu\n" + good)
    assert (reason, family) == (None, None)
    assert text == good.replace("info@town-office.org", "email@example.com")  # C4 removed "Menu", PII redacted
    assert filters.apply_chain("hello world") == ("hello world", "top_2_gram", "gopher_repetition")
    assert filters.apply_chain("hello world", families=("fineweb",))[1:] == ("line_punct_ratio", "fineweb")


def test_importing_filters_needs_no_peer_library():
    code = "import sys, llmpipe.filters; bad = {'datatrove', 'spacy', 'numpy', 'torch'} & set(sys.modules); print(sorted(bad))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
