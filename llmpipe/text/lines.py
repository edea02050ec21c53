"""Line-level duplicate removal across documents: hash each normalised line, drop frequent ones.

Boilerplate (navigation, cookie banners, licence footers) repeats line for line across pages, so a
line found in more than k documents is removed wherever it occurs, as Dolma's paragraph dedup and
FineWeb's line dedup do. Blank lines never count and are never removed.

    new_texts, removed = remove_frequent_lines(pa.array(texts), frequent, TextNorm(), where=np.ones(len(texts), bool))
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmpipe.text.minhash import string_hashes
from llmpipe.text.normalize import TextNorm, normalize

BLANK = np.uint64(0)  # the hash given to lines that are empty after normalisation


def line_hashes(texts: pa.Array, norm: TextNorm) -> tuple[np.ndarray, np.ndarray]:
    """A 64-bit hash of every line of every text (BLANK for blank lines) and each text's line offsets."""
    lists = pc.split_pattern(texts, "\n")
    lines = normalize(pc.list_flatten(lists), norm)
    if not norm.enabled:  # raw lines still ignore surrounding whitespace, so "x" and "x  " are one line
        lines = pc.utf8_trim_whitespace(lines)
    hashes = np.full(len(lines), BLANK, dtype=np.uint64)
    nonblank = pc.greater(pc.binary_length(lines), 0).to_numpy(zero_copy_only=False)
    if nonblank.any():
        hashes[nonblank] = string_hashes(lines.filter(pa.array(nonblank)))
        hashes[nonblank & (hashes == BLANK)] = np.uint64(1)  # keep BLANK meaning blank
    counts = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return hashes, offsets


def distinct_per_document(hashes: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(document index, hash) of each distinct non-blank line of each document: a line counts once per document."""
    doc = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    keep = hashes != BLANK
    pairs = np.unique(np.stack([doc[keep].astype(np.uint64), hashes[keep]], axis=1), axis=0)
    return pairs[:, 0].astype(np.int64), pairs[:, 1]


def remove_frequent_lines(texts: pa.Array, frequent: np.ndarray, norm: TextNorm, where: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """Texts without their lines whose hash is in `frequent` (sorted), in the documents `where` is True;
    and how many lines each document lost."""
    hashes, offsets = line_hashes(texts, norm)
    doc = np.repeat(np.arange(len(texts), dtype=np.int64), np.diff(offsets))
    drop = np.isin(hashes, frequent, assume_unique=False) & (hashes != BLANK) & where[doc]
    removed = np.bincount(doc[drop], minlength=len(texts))
    if not removed.any():
        return texts, removed
    out = texts.to_pylist()
    for i in np.flatnonzero(removed):
        mask = drop[offsets[i]:offsets[i + 1]]
        out[i] = "\n".join(line for line, d in zip(out[i].split("\n"), mask) if not d)
    return pa.array(out, pa.string()), removed
