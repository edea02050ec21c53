"""Pretraining batches from token shards: packed sequences, seeded, resumable from a step, split across DDP ranks.

The shards of a split are memory-mapped and read as one stream of tokens. The stream is cut into
samples of seq_len + 1 tokens that overlap by one (sample i starts at token i * seq_len; x is its
first seq_len tokens, y the last seq_len), so every token is predicted once per epoch and
documents are packed back to back, separated by the bos/eos that tokenize put there.

Which samples a batch holds is a pure function of (seed, step, rank): epoch e visits the samples
in a permutation seeded by (seed, e), and global step k takes the k-th slice of batch_size *
world_size samples of it, rank r the r-th part of that slice. So
- the same seed gives the same batches, and a run resumed at step k (after a checkpoint) sees
  exactly the batches an uninterrupted run sees from step k: the only state is the step;
- ranks see disjoint samples, and no sample comes twice in an epoch; the samples that do not fill
  a last global batch are left out of that epoch (a different few each epoch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from llmpipe.artifacts.tokens import read_token_shard


def split_shards(artifact: str | Path, split: str = "train") -> list[Path]:
    """The shard files of one split of a tokenize artifact, in order, from its manifest."""
    from llmpipe.artifacts.manifest import read_manifest

    manifest = read_manifest(Path(artifact))
    splits = manifest.get("splits", {})
    if split not in splits:
        raise ValueError(f"{artifact}: no {split!r} split (has {', '.join(sorted(splits)) or 'none'})")
    return [Path(artifact) / s["file"] for s in splits[split]["shards"]]


class TokenStream:
    """Several memory-mapped shards read as one array of tokens."""

    def __init__(self, shards: Sequence[str | Path]):
        self.shards = [read_token_shard(Path(p)) for p in shards]
        self.bounds = np.concatenate([[0], np.cumsum([len(s) for s in self.shards])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) as int64, crossing shard boundaries where needed."""
        first = int(np.searchsorted(self.bounds, start, side="right")) - 1
        if stop <= self.bounds[first + 1]:  # the usual case: inside one shard
            return self.shards[first][start - self.bounds[first]:stop - self.bounds[first]].astype(np.int64)
        pieces, pos, i = [], start, first
        while pos < stop:
            end = min(stop, int(self.bounds[i + 1]))
            pieces.append(self.shards[i][pos - self.bounds[i]:end - self.bounds[i]])
            pos, i = end, i + 1
        return np.concatenate(pieces).astype(np.int64)


class PackedBatches:
    """Batches (x, y) of shape [batch_size, seq_len] for one rank; `batch(step)` or iterate from a start step."""

    def __init__(
        self, shards: Sequence[str | Path], seq_len: int, batch_size: int, seed: int = 0,
        rank: int = 0, world_size: int = 1, shuffle: bool = True,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.stream = TokenStream(shards)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.samples = max(0, (len(self.stream) - 1) // seq_len)
        self.steps_per_epoch = self.samples // (batch_size * world_size)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(self.stream)} tokens make {self.samples} samples of {seq_len}+1 tokens, fewer than one global batch "
                f"({batch_size} x {world_size} ranks); lower batch_tokens or seq_len, or tokenize more text"
            )
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, permutation), kept for the current epoch

    @classmethod
    def from_artifact(cls, artifact: str | Path, split: str = "train", **kwargs) -> "PackedBatches":
        return cls(split_shards(artifact, split), **kwargs)

    def order(self, epoch: int) -> np.ndarray:
        """The samples of an epoch in the order they are visited."""
        if self._order is None or self._order[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.samples) if self.shuffle else np.arange(self.samples)
            self._order = (epoch, perm)
        return self._order[1]

    def sample_indices(self, step: int) -> np.ndarray:
        """Indices of the samples this rank gets at a global step."""
        epoch, k = divmod(step, self.steps_per_epoch)
        per_step = self.batch_size * self.world_size
        start = k * per_step + self.rank * self.batch_size
        return self.order(epoch)[start:start + self.batch_size]

    def batch_array(self, step: int) -> np.ndarray:
        """[batch_size, seq_len + 1] int64 tokens of this rank's batch at a step."""
        return np.stack([self.stream.read(int(i) * self.seq_len, int(i) * self.seq_len + self.seq_len + 1) for i in self.sample_indices(step)])

    def batch(self, step: int, device: str = "cpu"):
        """(x, y) LongTensors on `device`: y is x shifted by one token."""
        import torch

        rows = torch.from_numpy(self.batch_array(step))
        if device.startswith("cuda"):
            rows = rows.pin_memory().to(device, non_blocking=True)
        elif device != "cpu":
            rows = rows.to(device)
        return rows[:, :-1], rows[:, 1:]

    def __call__(self, start_step: int = 0, device: str = "cpu") -> Iterator[tuple]:
        """(x, y) from start_step on, without end; the training loop decides when to stop."""
        step = start_step
        while True:
            yield self.batch(step, device)
            step += 1

    def state_dict(self, step: int) -> dict:
        """What a checkpoint needs to resume the data where it stopped (JSON, no pickle)."""
        return {"step": step, "seed": self.seed, "seq_len": self.seq_len, "batch_size": self.batch_size, "world_size": self.world_size}

    def check_resume(self, state: dict) -> int:
        """The step to resume from; refuses a state made with another seed or batch geometry."""
        mine = self.state_dict(state.get("step", 0))
        changed = [k for k in mine if k != "step" and state.get(k) != mine[k]]
        if changed:
            raise ValueError("cannot resume the data position: " + ", ".join(f"{k} was {state.get(k)}, now {mine[k]}" for k in changed)
                             + " (" + json.dumps(state) + ")")
        return int(state["step"])
