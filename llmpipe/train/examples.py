"""Fine-tuning examples (one conversation or preference pair each): held-out split, batch order, padding.

Shared by sft and dpo. The split is a hash of each example's file name, row and the seed, so adding
data keeps the other examples where they were, and moving it changes nothing; a step's examples are a pure function of the step
(exact resume), disjoint across DDP ranks; rows are right-padded, so under causal attention no
token sees another example.
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence


def _unit(key: str, seed: int) -> float:
    """A uniform number in [0, 1) from the key's file NAME and row, so the split stays put when the data moves."""
    path, _, row = key.rpartition(":")
    stable = f"{os.path.basename(path)}:{row}" if path else key
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{stable}".encode(), digest_size=8).digest(), "little") / 2**64


def val_keys(keys: Sequence[str], seed: int, fraction: float) -> set[str]:
    """The held-out keys: those hashing below `fraction`; at least one when there are two or more examples
    and fraction > 0 (a small corpus still measures something), never all of them."""
    if fraction <= 0 or len(keys) < 2:
        return set()
    chosen = {k for k in keys if _unit(k, seed) < fraction} or {min(keys, key=lambda k: _unit(k, seed))}
    return chosen if len(chosen) < len(keys) else set()


def step_examples(examples: Sequence, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> list:
    """This rank's examples of global step `step`: epochs visit the examples in seeded permutations."""
    import numpy as np

    order: dict[int, np.ndarray] = {}
    picked = []
    for i in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(i, len(examples))
        if epoch not in order:
            order[epoch] = np.random.default_rng([seed, epoch]).permutation(len(examples))
        picked.append(examples[int(order[epoch][pos])])
    per_rank = batch_size // world_size
    return picked[rank * per_rank:(rank + 1) * per_rank]


def pad_rows(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int):
    """ids [B, T] (right-padded with pad_id) and mask [B, T] (0 on padding) of (ids, mask) rows."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, (tok, m) in enumerate(rows):
        ids[r, : len(tok)] = torch.tensor(tok, dtype=torch.long)
        mask[r, : len(m)] = torch.tensor(m, dtype=torch.bool)
    return ids, mask
