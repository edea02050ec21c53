"""Duplicate clusters over a whole corpus from per-document arrays: exact groups, components, keepers.

Everything here works on arrays of one number per document (hashes, lengths, scores, labels), so
the clusters phase of dedup holds 8-40 bytes per document and none of their text.
"""

from __future__ import annotations

import numpy as np

from llmpipe.text.lsh import connected_components

KEPT, EXACT, NEAR = 0, 1, 2  # decision codes
REASONS = {EXACT: "exact_duplicate", NEAR: "near_duplicate"}


def first_occurrence(hashes: np.ndarray) -> np.ndarray:
    """For each document, the index of the first document with the same hash (itself if it is the first)."""
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)]


def decide(hashes: np.ndarray, near_edges: np.ndarray, keep: str, length: np.ndarray | None = None,
           quality: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(code, cluster, size) per document: KEPT/EXACT/NEAR, the index of the document its cluster
    keeps, and the cluster's size.

    Exact duplicates always lose to the first copy. Of the rest, one per connected component of
    (exact + near) pairs stays: the first, the longest or the best scored (ties go to the first).
    """
    n = len(hashes)
    first = first_occurrence(hashes)
    exact = first != np.arange(n)
    edges = np.concatenate([np.stack([first[exact], np.flatnonzero(exact)], axis=1), near_edges.reshape(-1, 2)])
    label = connected_components(n, edges)
    candidates = np.flatnonzero(~exact)
    if keep == "first":
        keeper_of = label  # a component's smallest index is never an exact duplicate: it is the first
    else:
        score = (length if keep == "longest" else np.nan_to_num(quality, nan=-np.inf)).astype(np.float64)
        # best score first, then input order; the first row of each label is its keeper
        order = candidates[np.lexsort((candidates, -score[candidates], label[candidates]))]
        is_first = np.ones(len(order), dtype=bool)
        is_first[1:] = label[order][1:] != label[order][:-1]
        keeper_of = np.empty(n, dtype=np.int64)
        keeper_of[label[order[is_first]]] = order[is_first]
        keeper_of = keeper_of[label]
    code = np.where(exact, EXACT, np.where(keeper_of == np.arange(n), KEPT, NEAR)).astype(np.int8)
    size = np.bincount(label, minlength=n)[label]
    return code, keeper_of, size


def size_histogram(cluster: np.ndarray) -> dict[str, int]:
    """Clusters of 2 or more by size: exact sizes up to 4, then power-of-two ranges (5-8, 9-16, ...)."""
    sizes = np.bincount(cluster)
    sizes = sizes[sizes >= 2]
    out: dict[str, int] = {}
    for s in sizes.tolist():
        if s <= 4:
            key = str(s)
        else:
            hi = 1 << (s - 1).bit_length()
            key = f"{hi // 2 + 1}-{hi}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: int(kv[0].split("-")[0])))
