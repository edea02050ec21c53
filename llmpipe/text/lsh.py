"""LSH banding over MinHash signatures, candidate verification, and connected components (union-find).

Banding: a signature's `rows` values of band j hash to one 64-bit key; documents with equal keys in
some band are candidates. Candidates are then verified by the signatures' agreement (the MinHash
estimate of Jaccard) so precision does not rest on the S-curve: at b=16, r=8 candidates alone are
~45 % precise against Jaccard >= 0.8 (shared/notes/ANCHORS.md), verified ones ~99 %.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np

from llmpipe.text.minhash import FOLD_MUL, FOLD_SEED, fmix64

# Bands and rows minimise 0.05 x (false-positive area) + 0.95 x (false-negative area) under the
# S-curve 1-(1-s^r)^b, as datasketch's _optimal_param does with equal weights. Recall-heavy because
# candidates are verified: an extra candidate costs one comparison, a missed one a duplicate kept.
# At 0.8 and 128 permutations this gives b=16, r=8 (P(candidate | J=0.85) = 0.994).
FALSE_NEGATIVE_WEIGHT = 0.95
MAX_VERIFY_ROUNDS = 32  # a bucket splits into at most this many verified groups (see verified_edges)


@lru_cache(maxsize=None)  # ~0.3 s of integrals; every task of a run asks for the same pair
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm for a Jaccard threshold."""
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # renamed in numpy 2
    s_lo, s_hi = np.linspace(0, threshold, 1001), np.linspace(threshold, 1, 1001)
    best, best_cost = (1, 1), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = trapezoid(1 - (1 - s_lo ** r) ** b, s_lo)
            fn = trapezoid((1 - s_hi ** r) ** b, s_hi)
            cost = (1 - FALSE_NEGATIVE_WEIGHT) * fp + FALSE_NEGATIVE_WEIGHT * fn
            if cost < best_cost:
                best, best_cost = (b, r), cost
    return best


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(bands, n) uint64: one key per band per document; band-major so a band task reads one row."""
    keys = np.empty((bands, len(sigs)), dtype=np.uint64)
    for j in range(bands):
        h = np.full(len(sigs), FOLD_SEED, dtype=np.uint64)
        for col in sigs[:, j * rows:(j + 1) * rows].T.astype(np.uint64):
            h = (h ^ col) * np.uint64(FOLD_MUL)
        keys[j] = fmix64(h)
    return keys


def buckets(keys: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Documents sharing a key: (bucket number, id) of every member of a bucket of 2 or more, ids ascending in a bucket."""
    order = np.lexsort((ids, keys))
    k, i = keys[order], ids[order]
    new = np.ones(len(k), dtype=bool)
    new[1:] = k[1:] != k[:-1]
    bucket = np.cumsum(new) - 1
    size = np.bincount(bucket)
    multi = size[bucket] >= 2
    return bucket[multi], i[multi]


def verified_edges(bucket: np.ndarray, ids: np.ndarray, rows_of: Callable[[np.ndarray], np.ndarray], threshold: float) -> np.ndarray:
    """Edges (head, member) between bucket members whose estimated Jaccard reaches `threshold`.

    Each round compares every pending member with its bucket's first pending member (the head),
    links those similar enough and leaves the rest for the next round, so a bucket holding two
    different groups gives two stars instead of a wrong union. `rows_of(ids)` returns signatures.
    """
    edges = []
    for _ in range(MAX_VERIFY_ROUNDS):
        if len(ids) == 0:
            break
        is_head = np.ones(len(ids), dtype=bool)
        is_head[1:] = bucket[1:] != bucket[:-1]
        head = ids[is_head][np.cumsum(is_head) - 1]
        member = ~is_head
        h, m, b = head[member], ids[member], bucket[member]
        if len(m) == 0:
            break
        uniq, inverse = np.unique(np.concatenate([h, m]), return_inverse=True)
        sig = rows_of(uniq)
        agree = (sig[inverse[:len(h)]] == sig[inverse[len(h):]]).mean(axis=1)
        ok = agree >= threshold
        edges.append(np.stack([h[ok], m[ok]], axis=1))
        bucket, ids = b[~ok], m[~ok]
    return np.concatenate(edges) if edges else np.zeros((0, 2), dtype=np.int64)


def connected_components(n: int, edges: np.ndarray) -> np.ndarray:
    """Component label of each of n nodes: the smallest node index in its component (union-find, vectorised)."""
    label = np.arange(n, dtype=np.int64)
    if len(edges) == 0:
        return label
    u, v = edges[:, 0].astype(np.int64), edges[:, 1].astype(np.int64)
    while True:
        lu, lv = label[u], label[v]
        if np.array_equal(lu, lv):
            return label
        # hook the larger root under the smaller, then compress paths until every node points at a root
        np.minimum.at(label, np.maximum(lu, lv), np.minimum(lu, lv))
        while True:
            nxt = label[label]
            if np.array_equal(nxt, label):
                break
            label = nxt
