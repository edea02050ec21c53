"""Artifact formats: atomic writes, manifest refusal, Parquet streaming, token shards, checkpoints."""

from __future__ import annotations


import numpy as np
import pyarrow.parquet as pq
import pytest

from llmpipe.artifacts.documents import DocumentWriter, iter_batches
from llmpipe.artifacts.layout import atomic_path
from llmpipe.artifacts.manifest import read_manifest
from llmpipe.artifacts.tokens import read_token_shard, token_dtype, write_token_shard
from llmpipe.errors import InputError
from llmpipe.inputs import resolve_input


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "part-00000.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_document_writer_streams_row_groups_with_zstd(tmp_path, monkeypatch):
    import llmpipe.artifacts.documents as documents

    monkeypatch.setattr(documents, "ROW_GROUP_BYTES", 10_000)  # force several row groups
    rows = [{"id": str(i), "text": "word " * 100, "url": None, "source": "t"} for i in range(1000)]
    with DocumentWriter(tmp_path / "p.parquet") as w:
        for i in range(0, 1000, 50):
            w.write_rows(rows[i:i + 50])
    meta = pq.ParquetFile(tmp_path / "p.parquet").metadata
    assert meta.num_rows == 1000 and meta.num_row_groups > 5
    assert meta.row_group(0).column(1).compression == "ZSTD"
    assert [r["id"] for b in iter_batches(tmp_path / "p.parquet", ["id"], batch_size=64) for r in b.to_pylist()] == [str(i) for i in range(1000)]


def test_document_writer_failure_writes_no_part(tmp_path):
    with pytest.raises(ValueError):
        with DocumentWriter(tmp_path / "p.parquet") as w:
            w.write_rows([{"id": "1", "text": "a", "url": None, "source": "s"}])
            raise ValueError("bad data")
    assert not (tmp_path / "p.parquet").exists() and list(tmp_path.iterdir()) == []


def test_incomplete_artifact_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "_run.json").write_text("{}")
    with pytest.raises(InputError, match="incomplete artifact"):
        resolve_input(str(tmp_path / "a"), where="x")
    with pytest.raises(InputError, match="not a complete llmpipe artifact"):
        read_manifest(tmp_path / "a")


@pytest.mark.parametrize("vocab,dtype", [(256, np.uint16), (65536, np.uint16), (65537, np.uint32), (128_256, np.uint32)])
def test_token_shard_dtype_and_memory_map(tmp_path, vocab, dtype):
    tokens = np.arange(0, 5000) % vocab
    write_token_shard(tmp_path / "s.safetensors", tokens, vocab)
    back = read_token_shard(tmp_path / "s.safetensors")
    assert token_dtype(vocab) is dtype and back.dtype == dtype
    assert isinstance(back, np.memmap) and np.array_equal(back, tokens)
    from safetensors.numpy import load_file  # the standard reader agrees with our memory map

    assert np.array_equal(load_file(str(tmp_path / "s.safetensors"))["tokens"], tokens)


def test_token_shard_rejects_ids_outside_vocab(tmp_path):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        write_token_shard(tmp_path / "s.safetensors", np.array([1, 300]), 256)
    assert not (tmp_path / "s.safetensors").exists()


def test_checkpoint_round_trip_without_pickle(tmp_path):
    torch = pytest.importorskip("torch")
    from llmpipe.artifacts.checkpoint import load_checkpoint, save_checkpoint

    emb = torch.randn(10, 4)
    tensors = {"model.embed_tokens.weight": emb, "lm_head.weight": emb}  # tied: shared storage
    save_checkpoint(tmp_path / "ckpt", tensors, {"model_type": "llama"}, state={"step": 7}, state_tensors={"exp_avg": torch.ones(3)})
    t, config, state, st = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(t["lm_head.weight"], emb) and config["model_type"] == "llama"
    assert state == {"step": 7} and torch.equal(st["exp_avg"], torch.ones(3))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors", "training_state.json", "training_state.safetensors"]


def test_document_parts_keep_no_statistics_of_the_text(tmp_path):
    # Parquet copies a column's min and max while writing: for a giant document that is 3.4x its size
    with DocumentWriter(tmp_path / "part.parquet") as w:
        w.write_rows([{"id": "b", "text": "zz " * 1000, "line": 2}, {"id": "a", "text": "aa", "line": 1}])
    group = pq.ParquetFile(tmp_path / "part.parquet").metadata.row_group(0)
    columns = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    assert not columns["text"].is_stats_set
    assert (columns["id"].statistics.min, columns["id"].statistics.max) == ("a", "b")
    assert (columns["line"].statistics.min, columns["line"].statistics.max) == (1, 2)


def test_array_writer_appends_slices_into_one_npy_and_read_rows_picks_rows(tmp_path):
    from llmpipe.artifacts.layout import ArrayWriter, read_rows

    sig = np.arange(7 * 4, dtype=np.uint32).reshape(7, 4)
    with ArrayWriter(tmp_path / "sig.npy", 7, np.uint32, (4,)) as w:
        for start in range(0, 7, 3):  # slices of 3, 3 and 1 rows
            w.append(sig[start:start + 3])
    assert np.array_equal(np.load(tmp_path / "sig.npy"), sig)
    assert np.array_equal(read_rows(tmp_path / "sig.npy", [6, 0, 3]), sig[[6, 0, 3]])
    assert read_rows(tmp_path / "sig.npy", []).shape == (0, 4)
    hashes = np.array([5, 9, 1], dtype=np.uint64)
    with ArrayWriter(tmp_path / "hash.npy", 3, np.uint64) as w:
        w.append(hashes)
    assert read_rows(tmp_path / "hash.npy", [2, 1]).tolist() == [1, 9]


def test_array_writer_leaves_no_file_when_rows_are_missing(tmp_path):
    from llmpipe.artifacts.layout import ArrayWriter

    with pytest.raises(ValueError, match="short.npy: 2 rows written, 3 announced"):
        with ArrayWriter(tmp_path / "short.npy", 3, np.int64) as w:
            w.append(np.array([1, 2]))
    assert list(tmp_path.iterdir()) == []
