"""tokenize: real documents -> token shards; exact round trip, counts that match the shards, a 4-part run
that equals a 1-part run byte for byte, the train/validation split and mixture weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

import llmpipe
from llmpipe.artifacts.tokens import read_token_shard
from llmpipe.errors import ConfigError, InputError
from tests.test_resume import rows

pytest.importorskip("sentencepiece")
pytest.importorskip("tokenizers")

STAGE = "tokenize"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The C4 sample with stable ids, ingested as one part and as four; a tokenizer trained on it."""
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    tmp = tmp_path_factory.mktemp("tokenize")
    docs = [json.loads(line) for line in (SHARED_DATA / "text/c4_demo.jsonl").read_text().splitlines()]
    lines = [json.dumps({"id": f"c4-{i}", "text": d["text"]}) + "\n" for i, d in enumerate(docs)]
    (tmp / "one").mkdir()
    (tmp / "one" / "all.jsonl").write_text("".join(lines))
    (tmp / "four").mkdir()
    quarter = -(-len(lines) // 4)
    for k in range(4):
        (tmp / "four" / f"q{k}.jsonl").write_text("".join(lines[k * quarter:(k + 1) * quarter]))
    llmpipe.run_stage("ingest", [str(tmp / "one")], tmp / "docs1")
    llmpipe.run_stage("ingest", [str(tmp / "four")], tmp / "docs4", workers=2, task_bytes=1)  # four parts
    llmpipe.run_stage("train_tokenizer", [str(tmp / "docs1")], tmp / "tok", vocab_size=2000, holdout_documents=20)
    return tmp


def stream(artifact, split="train") -> np.ndarray:
    m = json.loads((artifact / "_manifest.json").read_text())
    shards = [read_token_shard(artifact / s["file"]) for s in m["splits"][split]["shards"]]
    return np.concatenate(shards) if shards else np.zeros(0, np.uint16)


def documents(tokens: np.ndarray, bos: int = 1, eos: int = 2) -> list[np.ndarray]:
    """Split a stream of bos ... eos documents."""
    starts = np.flatnonzero(tokens == bos)
    ends = np.flatnonzero(tokens == eos)
    assert len(starts) == len(ends) and np.all(starts < ends) and starts[0] == 0 and ends[-1] == len(tokens) - 1
    return [tokens[s + 1:e] for s, e in zip(starts, ends)]


def test_round_trip_gives_back_every_document(data):
    """Every document of the C4 sample and of the Dolma sample (text the tokenizer never saw) decodes to its text."""
    from tests.conftest import SHARED_DATA
    from llmpipe.text.tokenizer import load_tokenizer

    llmpipe.run_stage("ingest", [str(SHARED_DATA / "text/dolma")], data / "dolma")
    m = llmpipe.run_stage(STAGE, [str(data / "docs1"), str(data / "dolma")], data / "rt", tokenizer=str(data / "tok"))
    tok = load_tokenizer(data / "tok")
    texts = [r["text"] for r in rows(data / "docs1") + rows(data / "dolma")]
    decoded = [tok.decode(d) for d in documents(stream(data / "rt"))]
    assert len(decoded) == len(texts) == m["counts"]["documents"] == m["counts"]["train_documents"] == 300 + m["sources"][1]["documents"]
    assert m["sources"][1]["documents"] > 10
    mismatched = [i for i, (a, b) in enumerate(zip(decoded, texts)) if a != tok.normalize(b)]
    assert not mismatched
    assert all(tok.normalize(t) == t for t in texts)  # identity normalization: the text itself comes back
    assert m["dtype"] == "uint16" and m["vocab_size"] == 2000 and m["special_tokens"] == {"bos": 1, "eos": 2, "pad": 3}
    assert m["files"] == ["train"] and m["output_kind"] == "tokens"
    assert 2.5 < m["bytes_per_token"] < 5  # English at a 2k vocabulary


def test_manifest_counts_equal_the_shards_and_shards_have_the_target_size(data):
    m = llmpipe.run_stage(STAGE, [str(data / "docs4")], data / "sized", tokenizer=str(data / "tok"), val_fraction=0.2, shard_tokens=10_000)
    assert m["files"] == ["train", "val"]
    for split in ("train", "val"):
        info = m["splits"][split]
        sizes = [len(read_token_shard(data / "sized" / s["file"])) for s in info["shards"]]
        assert sizes == [s["tokens"] for s in info["shards"]]
        assert sum(sizes) == info["tokens"] == m["counts"][f"{split}_tokens"]
        assert all(n == 10_000 for n in sizes[:-1]) and 0 < sizes[-1] <= 10_000
        on_disk = sorted(p.name for p in (data / "sized" / split).iterdir())
        assert on_disk == [s["file"].split("/")[1] for s in info["shards"]]
        assert info["documents"] == len(documents(stream(data / "sized", split)))
    assert m["counts"]["train_documents"] + m["counts"]["val_documents"] == m["counts"]["documents"] == 300
    assert 30 <= m["counts"]["val_documents"] <= 90  # ~20 % of 300


def test_four_parts_equal_one_part_byte_for_byte(data):
    kw = dict(tokenizer=str(data / "tok"), val_fraction=0.25, seed=7, shard_tokens=20_000)
    one = llmpipe.run_stage(STAGE, [str(data / "docs1")], data / "run1", **kw)
    four = llmpipe.run_stage(STAGE, [str(data / "docs4")], data / "run4", workers=2, **kw)
    assert len(four["timings"]["task_seconds"]) == 2 and one["counts"] == four["counts"]
    assert one["splits"] == four["splits"]
    for split in ("train", "val"):
        for shard in one["splits"][split]["shards"]:
            assert (data / "run1" / shard["file"]).read_bytes() == (data / "run4" / shard["file"]).read_bytes(), shard
    assert sum(s["train_tokens"] for s in four["sources"]) == four["counts"]["train_tokens"]


def test_split_by_count_is_exact_and_follows_the_seed(data):
    kw = dict(tokenizer=str(data / "tok"), val_documents=25)
    a = llmpipe.run_stage(STAGE, [str(data / "docs4")], data / "count_a", **kw)
    b = llmpipe.run_stage(STAGE, [str(data / "docs1")], data / "count_b", **kw)
    c = llmpipe.run_stage(STAGE, [str(data / "docs1")], data / "count_c", seed=1, **kw)
    assert a["counts"]["val_documents"] == b["counts"]["val_documents"] == c["counts"]["val_documents"] == 25
    assert np.array_equal(stream(data / "count_a", "val"), stream(data / "count_b", "val"))
    assert not np.array_equal(stream(data / "count_b", "val"), stream(data / "count_c", "val"))
    val = {d.tobytes() for d in documents(stream(data / "count_b", "val"))}
    assert not val & {d.tobytes() for d in documents(stream(data / "count_b", "train"))}  # a document is in one split


def test_mixture_weights_repeat_and_sample_documents(data):
    parts = [str(data / "docs4" / f"part-{k:05d}.parquet") for k in range(4)]
    base = llmpipe.run_stage(STAGE, parts, data / "mix_base", tokenizer=str(data / "tok"), weights=[1.0, 1.0, 1.0, 1.0])
    per_source = [s["train_tokens"] for s in base["sources"]]
    m = llmpipe.run_stage(STAGE, parts, data / "mix", tokenizer=str(data / "tok"), weights=[2.0, 1.0, 0.5, 0.0], val_fraction=0.1)
    src = m["sources"]
    assert [s["weight"] for s in src] == [2.0, 1.0, 0.5, 0.0] and src[0]["input"] == parts[0]
    held0 = src[0]["val_tokens"]
    assert src[0]["train_tokens"] == 2 * (per_source[0] - held0) and src[0]["train_documents"] == 2 * (75 - src[0]["val_documents"])
    assert 0.25 * per_source[2] < src[2]["train_tokens"] < 0.75 * per_source[2]
    assert src[3]["train_tokens"] == src[3]["val_tokens"] == 0 and src[3]["documents"] == 75
    assert sum(s["train_tokens"] for s in src) == m["counts"]["train_tokens"] == len(stream(data / "mix"))
    # the second epoch of source 0 repeats its first, document for document
    first = documents(stream(data / "mix"))[: src[0]["train_documents"]]
    half = len(first) // 2
    assert all(np.array_equal(a, b) for a, b in zip(first[:half], first[half:]))
    again = llmpipe.run_stage(STAGE, parts, data / "mix2", tokenizer=str(data / "tok"), weights=[2.0, 1.0, 0.5, 0.0], val_fraction=0.1)
    assert again["splits"] == m["splits"] and np.array_equal(stream(data / "mix"), stream(data / "mix2"))


def test_user_mistakes_are_one_line_errors(data, tmp_path):
    with pytest.raises(ConfigError, match=r"tokenize tokenizer: required; give the train-tokenizer artifact \(--tokenizer PATH\)"):
        llmpipe.run_stage(STAGE, [str(data / "docs1")], tmp_path / "a")
    with pytest.raises(InputError, match=r"tokenizer: input path nope does not exist"):
        llmpipe.run_stage(STAGE, [str(data / "docs1")], tmp_path / "b", tokenizer="nope")
    with pytest.raises(ConfigError, match=r"weights: 2 weights for 1 inputs; give one weight per input, in order"):
        llmpipe.run_stage(STAGE, [str(data / "docs1")], tmp_path / "c", tokenizer=str(data / "tok"), weights=[1.0, 2.0])
    with pytest.raises(ConfigError, match=r"val_documents: give either val_fraction or val_documents"):
        llmpipe.run_stage(STAGE, [str(data / "docs1")], tmp_path / "d", tokenizer=str(data / "tok"), val_fraction=0.1, val_documents=3)
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_loader_reads_the_artifact_splits(data):
    from llmpipe.train.data import PackedBatches

    artifact = data / "loader"
    llmpipe.run_stage(STAGE, [str(data / "docs4")], artifact, tokenizer=str(data / "tok"), val_fraction=0.2, shard_tokens=10_000)
    for split in ("train", "val"):
        tokens = stream(artifact, split)
        loader = PackedBatches.from_artifact(artifact, split, seq_len=128, batch_size=4, seed=0)
        assert loader.samples == (len(tokens) - 1) // 128
        for i, row in zip(loader.sample_indices(3), loader.batch_array(3)):
            assert np.array_equal(row, tokens[i * 128:i * 128 + 129])
    with pytest.raises(ValueError, match=r"no 'test' split \(has train, val\)"):
        PackedBatches.from_artifact(artifact, "test", seq_len=128, batch_size=4)


def test_a_bare_sentencepiece_model_gives_the_same_tokens(data):
    a = llmpipe.run_stage(STAGE, [str(data / "docs1")], data / "bare_a", tokenizer=str(data / "tok"))
    b = llmpipe.run_stage(STAGE, [str(data / "docs1")], data / "bare_b", tokenizer=str(data / "tok" / "tokenizer.model"))
    assert a["special_tokens"] == b["special_tokens"] and np.array_equal(stream(data / "bare_a"), stream(data / "bare_b"))
