"""Text normalisation for comparing documents (dedup, decontamination), vectorised over Arrow arrays.

The same steps, in this order, whatever the caller: Unicode normal form, lowercase, punctuation to
spaces, whitespace runs to one space (trimmed). Arrow's compute kernels (utf8proc, RE2) do most
of the work in C++, so a batch of documents is normalised without a Python loop over its words.

    normalize(pa.array(["Hello,  World!"]), TextNorm(remove_punctuation=True))  ->  ["hello world"]
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

UnicodeForm = Literal["none", "NFC", "NFKC", "NFD", "NFKD"]
PUNCTUATION = r"\p{P}+"  # every Unicode punctuation category (Pc Pd Ps Pe Pi Pf Po), RE2 syntax


@dataclass(frozen=True)
class TextNorm:
    """What counts as "the same text". `enabled=False` compares the raw text."""

    enabled: bool = True
    lowercase: bool = True
    remove_punctuation: bool = False
    unicode_form: UnicodeForm = "NFKC"


def normalize(texts: pa.Array, norm: TextNorm) -> pa.Array:
    """Normalised copies of `texts` (a string array), whitespace runs collapsed; the input itself when disabled."""
    if not norm.enabled:
        return texts
    return join_words(*split_words(prepare(texts, norm)))


def prepare(texts: pa.Array, norm: TextNorm) -> pa.Array:
    """Every normalisation step but whitespace, which splitting into words takes care of."""
    if not norm.enabled:
        return texts
    if norm.unicode_form != "none":
        # CPython's normalize has a quick check that skips already-normal text (most of it): 2-8x
        # faster here than Arrow's utf8_normalize, which rewrites every string.
        texts = pa.array([unicodedata.normalize(norm.unicode_form, t) for t in texts.to_pylist()], pa.string())
    if norm.lowercase:
        texts = pc.utf8_lower(texts)
    if norm.remove_punctuation:
        texts = pc.replace_substring_regex(texts, PUNCTUATION, " ")
    return texts


def split_words(texts: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """All words of all texts (split on Unicode whitespace) and each text's word offsets into them.

    Returns (words, offsets) with offsets of length len(texts) + 1: text i has words[offsets[i]:offsets[i+1]].
    """
    lists = pc.utf8_split_whitespace(texts)
    words = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists)
    nonempty = pc.not_equal(words, "")  # runs of whitespace and the text's ends give empty pieces
    words, parents = words.filter(nonempty), parents.filter(nonempty).to_numpy()
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.bincount(parents, minlength=len(texts)), out=offsets[1:])
    return words, offsets


def join_words(words: pa.Array, offsets: np.ndarray) -> pa.Array:
    lists = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), words)
    return pc.binary_join(lists, " ")
