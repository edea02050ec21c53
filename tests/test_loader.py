"""The pretraining data loader (llmpipe/train/data.py): packed samples read across shards, the same batches
for the same seed, resuming at step k, and DDP ranks that never share a sample."""

from __future__ import annotations

import numpy as np
import pytest

from llmpipe.artifacts.tokens import write_token_shard
from llmpipe.train.data import PackedBatches

pytest.importorskip("torch")

SIZES = (1000, 777, 1500)  # shards of unequal size, so samples straddle their boundaries


@pytest.fixture
def shards(tmp_path):
    """Each token is its own position in the stream, so a sample tells where it was read."""
    paths, start = [], 0
    for k, n in enumerate(SIZES):
        paths.append(tmp_path / f"shard-{k:05d}.safetensors")
        write_token_shard(paths[-1], np.arange(start, start + n), vocab_size=sum(SIZES) + 1)
        start += n
    return paths


def test_samples_are_packed_windows_read_across_shards(shards):
    loader = PackedBatches(shards, seq_len=64, batch_size=4, seed=0)
    assert loader.samples == (sum(SIZES) - 1) // 64 and loader.steps_per_epoch == loader.samples // 4
    seen_boundary = False
    for step in range(loader.steps_per_epoch):
        x, y = loader.batch(step)
        assert x.shape == y.shape == (4, 64) and str(x.dtype) == "torch.int64"
        for row_x, row_y, i in zip(x.numpy(), y.numpy(), loader.sample_indices(step)):
            assert np.array_equal(row_x, np.arange(i * 64, i * 64 + 64)) and np.array_equal(row_y, row_x + 1)
            seen_boundary |= any(i * 64 < b < i * 64 + 65 for b in np.cumsum(SIZES)[:-1])
    assert seen_boundary


def test_same_seed_same_batches_other_seed_other_batches(shards):
    a, b = PackedBatches(shards, 32, 8, seed=1), PackedBatches(shards, 32, 8, seed=1)
    c = PackedBatches(shards, 32, 8, seed=2)
    for step in (0, 1, 5, a.steps_per_epoch + 3):
        assert np.array_equal(a.batch_array(step), b.batch_array(step))
    assert not np.array_equal(a.batch_array(0), c.batch_array(0))


def test_resuming_at_step_k_gives_the_uninterrupted_batches(shards):
    loader = PackedBatches(shards, 32, 8, seed=3)
    total = 2 * loader.steps_per_epoch + 5  # runs over two epoch boundaries
    it = loader(0)
    uninterrupted = [next(it)[0].numpy() for _ in range(total)]
    for k in (1, loader.steps_per_epoch - 1, loader.steps_per_epoch, total - 1):
        state = loader.state_dict(k)  # what a checkpoint at step k stores
        fresh = PackedBatches(shards, 32, 8, seed=3)  # a new process after the restart
        resumed = fresh(fresh.check_resume(state))
        for step in range(k, total):
            assert np.array_equal(next(resumed)[0].numpy(), uninterrupted[step]), (k, step)


def test_resume_refuses_another_seed_or_geometry(shards):
    state = PackedBatches(shards, 32, 8, seed=3).state_dict(10)
    with pytest.raises(ValueError, match="cannot resume the data position: seed was 3, now 4"):
        PackedBatches(shards, 32, 8, seed=4).check_resume(state)
    with pytest.raises(ValueError, match="batch_size was 8, now 4"):
        PackedBatches(shards, 32, 4, seed=3).check_resume(state)


def test_ranks_see_disjoint_samples_and_none_twice_in_an_epoch(shards):
    world = 2
    ranks = [PackedBatches(shards, 16, 5, seed=0, rank=r, world_size=world) for r in range(world)]
    steps = ranks[0].steps_per_epoch
    for epoch in range(2):
        seen = [np.concatenate([r.sample_indices(epoch * steps + s) for s in range(steps)]) for r in ranks]
        assert not set(seen[0]) & set(seen[1])
        both = np.concatenate(seen)
        assert len(both) == len(set(both)) == steps * 5 * world
        starts = [set(r.batch_array(epoch * steps)[:, 0]) for r in ranks]  # and the tokens differ, not only indices
        assert not starts[0] & starts[1]
    assert not np.array_equal(ranks[0].sample_indices(0), ranks[0].sample_indices(steps))  # a new order each epoch


def test_unshuffled_order_walks_the_stream(shards):
    loader = PackedBatches(shards, 100, 2, shuffle=False, rank=1, world_size=2)
    assert list(loader.sample_indices(0)) == [2, 3] and list(loader.sample_indices(1)) == [6, 7]


def test_too_little_data_for_one_batch_is_explained(shards):
    with pytest.raises(ValueError, match=r"3277 tokens make 12 samples of 256\+1 tokens, fewer than one global batch \(8 x 2 ranks\)"):
        PackedBatches(shards, 256, 8, world_size=2)
    with pytest.raises(ValueError, match="rank 2 is outside world_size 2"):
        PackedBatches(shards, 16, 1, rank=2, world_size=2)
