"""What the fuzzer (tests/test_fuzz.py, model-side targets) found in llmpipe's loaders, each with its minimized input:
a damaged file is refused in one line naming it, never a traceback, a hang or a huge allocation."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from llmpipe.errors import InputError
from tests.test_errors import _one_line_error


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A tiny checkpoint directory (32-token vocabulary, one layer), as write_model_dir writes one."""
    import torch

    from llmpipe.artifacts.checkpoint import write_model_dir
    from llmpipe.model import Model, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=32, n_layer=1, n_embd=8, n_head=2, n_kv_head=1, intermediate_size=16, max_seq_len=32)
    write_model_dir(tmp_path / "ckpt", Model(cfg).state_dict(), cfg.to_hf())
    return tmp_path / "ckpt"


def _refusal(call, *args) -> str:
    with pytest.raises(InputError) as e:
        call(*args)
    message = str(e.value)
    assert "\n" not in message and "Error" not in message, message
    return message


# --- token shards: struct.error on a short file; a header's offsets and lengths were trusted -------------------


def _shard(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize("content, why", [
    (b"", "0 bytes, shorter than a safetensors header"),
    (struct.pack("<Q", 1 << 62) + b"{}", "its header claims 4,611,686,018,427,387,904 bytes but the file has 10"),
    (struct.pack("<Q", 2) + b"\xff\xfe", "its header is not JSON"),
    (_shard({"tokens": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "no uint16 or uint32 'tokens' tensor in its header"),
    # a header claiming a huge tensor: np.memmap refused it with a traceback ("mmap length is greater than file size")
    (_shard({"tokens": {"dtype": "U16", "shape": [1 << 40], "data_offsets": [0, 1 << 41]}}, b"\0" * 4),
     "the tokens' data_offsets [0, 2199023255552] are not within its 4 bytes of data"),
    (_shard({"tokens": {"dtype": "U16", "shape": [3], "data_offsets": [0, 4]}}, b"\0" * 4), "the tokens' shape [3] does not match their 4 bytes"),
])
def test_damaged_token_shard_is_refused_in_one_line(tmp_path, content, why):
    from llmpipe.artifacts.tokens import read_token_shard

    path = tmp_path / "shard-000.safetensors"
    path.write_bytes(content)
    assert _refusal(read_token_shard, path) == f"{path}: not a token shard ({why}); re-run the tokenize step that wrote it"


def test_token_shard_still_reads_back(tmp_path):
    import numpy as np

    from llmpipe.artifacts.tokens import read_token_shard, write_token_shard

    write_token_shard(tmp_path / "s.safetensors", np.array([1, 7, 399, 2]), 400)
    assert read_token_shard(tmp_path / "s.safetensors").tolist() == [1, 7, 399, 2]


# --- checkpoints: JSONDecodeError and SafetensorError tracebacks; a config's sizes were allocated before any check --


def test_checkpoint_config_that_is_not_json(checkpoint):
    from llmpipe.model import Model

    (checkpoint / "config.json").write_bytes(b"")
    assert _refusal(Model.from_checkpoint, checkpoint) == (
        f"{checkpoint}/config.json: not valid JSON (Expecting value: line 1 column 1 (char 0)); re-run the step that wrote it")


def test_checkpoint_weights_that_are_not_safetensors(checkpoint):
    from llmpipe.model import Model

    (checkpoint / "model.safetensors").write_bytes(b"")
    assert _refusal(Model.from_checkpoint, checkpoint) == (
        f"{checkpoint}/model.safetensors: not a safetensors file llmpipe can read (header too small); re-run the step that wrote it")


@pytest.mark.parametrize("key, value, why", [
    # each of these was allocated before the weights were compared with it: tens of GB, or a Python loop of 10**9 modules
    ("vocab_size", 10**12, "vocab_size: expected an integer from 1 to 2**31 - 1, got 1000000000000"),
    ("vocab_size", 1 << 30, "the weights do not fit the config"),
    ("n_layer", 10**9, "n_layer 1000000000, but the weights hold 1 layer"),
    ("intermediate_size", 1 << 30, "the weights do not fit the config"),
    ("max_seq_len", 1 << 30, "max_seq_len: 1073741824 positions is more than llmpipe makes rope tables for (1048576)"),
    ("n_embd", "8", "n_embd: expected an integer from 2 to 2**31 - 1, got '8'"),
    ("n_head", 0, "n_head: expected an integer from 1 to 2**31 - 1, got 0"),
    ("norm_eps", None, "norm_eps: expected a positive number, got None"),
])
def test_checkpoint_config_is_checked_against_the_weights_before_allocating(checkpoint, key, value, why):
    from llmpipe.model import Model

    config = json.loads((checkpoint / "config.json").read_text())
    config["llmpipe"][key] = value
    (checkpoint / "config.json").write_text(json.dumps(config))
    message = _refusal(Model.from_checkpoint, checkpoint)
    if why.startswith("the weights"):
        assert message.startswith(f"{checkpoint}: the weights do not fit the config (missing [], unexpected [], wrong shape ["), message
    else:
        assert message == f"{checkpoint}/config.json: not a model config llmpipe can load ({why}); re-run the step that wrote it"


def test_checkpoint_config_without_a_field(checkpoint):
    from llmpipe.model import Model

    config = json.loads((checkpoint / "config.json").read_text())
    del config["llmpipe"], config["hidden_size"]
    (checkpoint / "config.json").write_text(json.dumps(config))
    assert _refusal(Model.from_checkpoint, checkpoint) == (
        f"{checkpoint}/config.json: not a model config llmpipe can load (no 'hidden_size' field); re-run the step that wrote it")


def test_renamed_weight_is_named(checkpoint):
    from safetensors.torch import load_file, save_file

    from llmpipe.model import Model

    tensors = load_file(checkpoint / "model.safetensors")
    tensors["model.layers.0.mlp.upp_proj.weight"] = tensors.pop("model.layers.0.mlp.up_proj.weight")
    save_file(tensors, checkpoint / "model.safetensors")
    assert _refusal(Model.from_checkpoint, checkpoint) == (
        f"{checkpoint}: the weights do not fit the config (missing ['model.layers.0.mlp.up_proj.weight'], "
        "unexpected ['model.layers.0.mlp.upp_proj.weight'], wrong shape []); re-run the step that wrote it")


# --- tokenizers: JSONDecodeError on special_tokens.json; sentencepiece's multi-line RuntimeError ---------------------


@pytest.fixture
def tokenizer_dir(shared_data, tmp_path) -> Path:
    """A copy of the tiny tokenizer the fuzz seeds train on the real text (vocabulary 400)."""
    import shutil

    from tests.fuzz.model_seeds import model_fixtures

    tok = tmp_path / "tok"
    tok.mkdir()
    for name in ("tokenizer.model", "special_tokens.json"):
        shutil.copy(model_fixtures(shared_data, tmp_path) / "tok" / name, tok / name)
    return tok


@pytest.mark.parametrize("content, why", [
    (b"", 'not a special tokens file ({"bos": {"id": 1, "token": "<s>"}, ...}); re-run train-tokenizer'),
    (b'{"bos": {"id": "1"}}', 'not a special tokens file ({"bos": {"id": 1, "token": "<s>"}, ...}); re-run train-tokenizer'),
    (b'{"bos": {"id": 1}, "user": {"id": 4000}}', "user=4000 outside the vocabulary of 400; re-run train-tokenizer"),
])
def test_damaged_special_tokens_file(tokenizer_dir, content, why):
    from llmpipe.text.tokenizer import load_tokenizer

    (tokenizer_dir / "special_tokens.json").write_bytes(content)
    assert _refusal(load_tokenizer, tokenizer_dir) == f"{tokenizer_dir}/special_tokens.json: {why}"


def test_damaged_sentencepiece_model(tokenizer_dir):
    from llmpipe.text.tokenizer import load_tokenizer

    model = tokenizer_dir / "tokenizer.model"
    model.write_bytes(model.read_bytes()[:100])
    assert _refusal(load_tokenizer, tokenizer_dir) == (
        f"{model}: not a sentencepiece model; give the output of train-tokenizer (or a sentencepiece .model file)")


# --- GGUF: an array whose count runs past the end of the file hung gguf's reader ----------------------------------


def _gguf_with_array(count: int) -> bytes:
    """A GGUF v3 header with no tensors and one key, an array of `count` uint8 values, none of them present."""
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 0, count)


def test_gguf_array_past_the_end_is_refused_not_looped_on(tmp_path):
    pytest.importorskip("gguf")
    path = tmp_path / "hang.gguf"
    path.write_bytes(_gguf_with_array(1 << 63))
    assert _one_line_error(tmp_path, "inspect", "hang.gguf") == (
        "error: hang.gguf: not a GGUF file gguf 0.19.0 can read (it ends at byte 49, where a value should start)")


@pytest.mark.parametrize("content, why", [
    (b"", "the file is empty"),
    (b"GGUX" + bytes(20), "GGUF magic invalid"),
])
def test_not_a_gguf_file(tmp_path, content, why):
    pytest.importorskip("gguf")
    (tmp_path / "m.gguf").write_bytes(content)
    assert _one_line_error(tmp_path, "inspect", "m.gguf") == f"error: m.gguf: not a GGUF file gguf 0.19.0 can read ({why})"


def test_sentencepiece_model_with_a_piece_that_is_not_utf8(tokenizer_dir):
    """sentencepiece loads it and encodes with it, then raised UnicodeDecodeError when a piece was read (render, decode)."""
    from llmpipe.text.tokenizer import check_tokenizer, load_tokenizer

    model = tokenizer_dir / "tokenizer.model"
    raw = model.read_bytes()
    at = raw.index(b"<|user|>") + 2
    model.write_bytes(raw[:at] + b"\xa4" + raw[at + 1:])
    assert _refusal(load_tokenizer, tokenizer_dir) == (
        f"{model}: not a sentencepiece model; give the output of train-tokenizer (or a sentencepiece .model file)")
    with pytest.raises(ValueError, match=r"^tokenizer: .*tokenizer.model is not a sentencepiece model; give the output of train-tokenizer"):
        check_tokenizer(tokenizer_dir)


# --- WordPiece tokenizer.json: a vocabulary without a special token (a TypeError when rendering) or without [UNK]
# ("Missing [UNK] token" when encoding a word it cannot spell)


def test_wordpiece_vocabulary_missing_a_special_token(shared_data, tmp_path):
    import shutil

    from llmpipe.text.tokenizer import load_tokenizer
    from tests.fuzz.model_seeds import model_fixtures

    tok = tmp_path / "tok"
    tok.mkdir()
    fixture = model_fixtures(shared_data, tmp_path) / "tok-wordpiece"
    shutil.copy(fixture / "special_tokens.json", tok)
    hf = json.loads((fixture / "tokenizer.json").read_text(encoding="utf-8"))
    load_tokenizer(fixture)  # as trained, it loads
    for damage, why in (("del", "user=5 of special_tokens.json"), ("unk", "its unknown-word token '[NOPE]'")):
        damaged = json.loads(json.dumps(hf))
        if damage == "del":
            del damaged["model"]["vocab"]["<|user|>"]  # the added tokens still name it: the model's vocabulary lacks it
        else:
            damaged["model"]["unk_token"] = "[NOPE]"
        (tok / "tokenizer.json").write_text(json.dumps(damaged), encoding="utf-8")
        assert _refusal(load_tokenizer, tok) == f"{tok}/tokenizer.json: holds no token for {why}; re-run train-tokenizer"
