"""quantize: int8, int4 and GPTQ checkpoints load with Model.from_checkpoint and keep the validation perplexity of
the float model within the issue's bounds; stored sizes; QuantLinear's kernels equal dequantize-then-matmul; int4
packing round-trips; GGUF files read back with gguf's reader (names, shapes, types, tokenizer, chat template) and
hold the float weights; user mistakes are one line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

import llmpipe
from tests.test_errors import _one_line_error

torch = pytest.importorskip("torch")
pytest.importorskip("sentencepiece")

GROUP = 32  # the chat_base model has n_embd 64 and intermediate_size 192: 128 divides neither


@pytest.fixture(scope="module")
def quantized(chat_base, tmp_path_factory):
    """The chat_base model quantized four ways: int8, int4 RTN, int4 GPTQ, and int4 RTN with GGUF files."""
    from llmpipe.text.chat_template import write_chat_template

    tmp = tmp_path_factory.mktemp("quantized")
    chat = tmp / "chat_model"  # a plain checkpoint directory (no manifest) with the chat template, as sft writes it
    chat.mkdir()
    for f in (chat_base / "model").iterdir():
        if f.is_file() and not f.name.startswith("_") and f.suffix != ".png":
            shutil.copy(f, chat / f.name)
    write_chat_template(chat)
    model = chat_base / "model"
    llmpipe.run_stage("quantize", [str(model)], tmp / "int8")
    llmpipe.run_stage("quantize", [str(model)], tmp / "int4", scheme="int4", group_size=GROUP)
    llmpipe.run_stage("quantize", [str(model)], tmp / "gptq", scheme="int4", group_size=GROUP, method="gptq",
                      calibration=str(chat_base / "tokens"), calibration_samples=16, calibration_seq_len=128)
    llmpipe.run_stage("quantize", [str(chat)], tmp / "gguf", scheme="int4", group_size=GROUP, format="gguf")
    return {"fp32": model, "chat": chat, **{k: tmp / k for k in ("int8", "int4", "gptq", "gguf")}}


def val_perplexity(model, tokens: Path, seq_len: int = 256, batch: int = 8) -> float:
    import torch.nn.functional as F

    from llmpipe.train.data import PackedBatches, split_shards

    data = PackedBatches(split_shards(tokens, "val"), seq_len=seq_len, batch_size=batch, shuffle=False)
    nats = n = 0
    with torch.no_grad():
        for s in range(data.steps_per_epoch):
            x, y = data.batch(s)
            logits, _ = model(x)
            nats += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            n += y.numel()
    return math.exp(nats / n)


def test_quantized_checkpoints_load_and_keep_val_perplexity(quantized, chat_base):
    """The issue's bounds: int8 <= +1 %, int4 (group <= 128) <= +5 %, GPTQ int4 closer to the float model than RTN int4.
    This 30-step model's perplexity (~410) is nearly flat, so quantization moves it by +-0.003 % either way, below what
    can rank GPTQ against RTN (CI once saw GPTQ +0.0024 % vs RTN -0.0031 %); the ranking is asserted on what GPTQ
    minimizes instead, the error of the outputs against the float model's (measured: RTN 1.5e-6, GPTQ 2.5e-8 of the
    logits' variance). benchmarks/quantize.py ranks them by perplexity on a trained model (int8 -0.00 %, int4 +0.23 %,
    GPTQ +0.08 % on perplexity 27)."""
    from llmpipe.model import Model, plain_linears
    from llmpipe.quant import QuantLinear

    from llmpipe.train.data import PackedBatches, split_shards

    x, _ = PackedBatches(split_shards(chat_base / "tokens", "val"), seq_len=128, batch_size=8, shuffle=False).batch(0)
    ppl, logits_error = {}, {}
    for name in ("fp32", "int8", "int4", "gptq"):
        model = Model.from_checkpoint(quantized[name]).eval()
        with torch.no_grad():
            logits = model(x)[0]
        reference = logits if name == "fp32" else reference
        logits_error[name] = ((logits - reference).pow(2).mean() / reference.var()).item()
        if name != "fp32":
            blocks = model.model.layers
            assert all(isinstance(m, QuantLinear) for b in blocks for m in b.projections()), "every projection is quantized"
            assert not plain_linears(*blocks[0].projections()), "the fused CPU block (which reads .weight) is not taken"
            assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight is model.model.embed_tokens.weight
        ppl[name] = val_perplexity(model, chat_base / "tokens")
    print("val perplexity: " + ", ".join(f"{k} {v:.4f} ({100 * (v / ppl['fp32'] - 1):+.4f} %)" for k, v in ppl.items()))
    assert ppl["int8"] <= 1.01 * ppl["fp32"]
    assert ppl["int4"] <= 1.05 * ppl["fp32"]
    assert ppl["gptq"] <= 1.05 * ppl["fp32"]
    print("logits' squared error / variance: " + ", ".join(f"{k} {v:.2e}" for k, v in logits_error.items()))
    assert logits_error["gptq"] < 0.5 * logits_error["int4"]
    config = json.loads((quantized["gptq"] / "config.json").read_text())["quantization"]
    assert {k: config[k] for k in ("format", "method", "bits", "group_size", "symmetric", "act_order")} == \
        {"format": "llmpipe", "method": "gptq", "bits": 4, "group_size": GROUP, "symmetric": False, "act_order": False}
    assert config["modules"][:2] == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"] and len(config["modules"]) == 14
    assert config["calibration_tokens"] == 16 * 128


def test_quantized_model_equals_float_model_with_dequantized_weights(quantized):
    """QuantLinear (module path) gives the logits the fused float path gives with the dequantized weights."""
    from llmpipe.model import Model
    from llmpipe.quant import QuantLinear

    for name in ("int8", "gptq"):
        q = Model.from_checkpoint(quantized[name]).eval()
        f = Model.from_checkpoint(quantized["fp32"]).eval()
        with torch.no_grad():
            for n, m in q.named_modules():
                if isinstance(m, QuantLinear):
                    f.get_submodule(n).weight.copy_(m.dequantize())
            x = torch.randint(0, q.config.vocab_size, (2, 64))
            torch.testing.assert_close(q(x)[0], f(x)[0], rtol=1e-4, atol=1e-4)


def test_stored_sizes(quantized):
    """Quantized layers store 1 byte (int8) or 1/2 byte + 3 bytes per group (int4 asymmetric) per weight."""
    config = json.loads((quantized["fp32"] / "config.json").read_text())
    C, I, L = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    shapes = [(C, C)] * 4 * L + [(I, C)] * 2 * L + [(C, I)] * L  # (out, in)
    fp32 = sum(4 * n * k for n, k in shapes)
    expected = {"int8": sum(n * k + 2 * n for n, k in shapes), "int4": sum(n * k // 2 + 3 * n * k // GROUP for n, k in shapes)}
    for name, size in expected.items():
        counts = json.loads((quantized[name] / "_manifest.json").read_text())["counts"]
        assert counts["quantized_layers_fp32_bytes"] == fp32
        assert counts["quantized_layers_bytes"] == size
        metrics = json.loads((quantized[name] / "_manifest.json").read_text())["metrics"]
        assert metrics["decode_tokens_per_s"] > 0 and metrics["input_decode_tokens_per_s"] > 0  # measured for the report
        print(f"{name}: quantized layers {fp32} -> {size} bytes ({size / fp32:.3f} of fp32); model.safetensors "
              f"{counts['input_safetensors_bytes']} -> {counts['model_safetensors_bytes']} (the float embedding is most of it)")
    assert 0.25 < expected["int8"] / fp32 < 0.26 and 0.125 < expected["int4"] / fp32 < 0.15  # group 32; 128 gives 0.131


def test_int8_kernel_equals_dequantize_then_matmul():
    from llmpipe.quant import QuantLinear

    torch.manual_seed(0)
    layer = QuantLinear.from_linear(torch.nn.Linear(64, 48, bias=False), bits=8)
    x = torch.randn(5, 64)
    reference = x @ layer.dequantize().T
    kernel = torch._weight_int8pack_mm(x, layer.qweight, layer.scales.float())  # torch's kernel on fp32 (slow there)
    torch.testing.assert_close(kernel, reference, rtol=0, atol=1e-4)
    torch.testing.assert_close(layer(x[None])[0], reference, rtol=0, atol=1e-4)  # fp32: the dequantizing path
    xb = x.bfloat16()  # bf16 activations: the kernel path; bf16 rounding of the output only
    torch.testing.assert_close(layer(xb).float(), xb.float() @ layer.dequantize().T, rtol=1e-2, atol=1e-2)


def test_int4_kernel_equals_dequantize_then_matmul():
    from llmpipe.quant import QuantLinear

    torch.manual_seed(0)
    for symmetric in (False, True):
        layer = QuantLinear.from_linear(torch.nn.Linear(64, 48, bias=False), bits=4, group_size=32, symmetric=symmetric)
        x = torch.randn(5, 64)
        reference = x @ layer.dequantize().T
        torch.testing.assert_close(layer(x), reference, rtol=0, atol=1e-5)
        xb = x.bfloat16()
        torch.testing.assert_close(layer(xb).float(), xb.float() @ layer.dequantize().T, rtol=2e-2, atol=2e-2)


def test_int4_packing_round_trips_and_holds_the_rounded_weights(quantized):
    from safetensors.torch import load_file

    from llmpipe.quant import pack_int4, quantize_rtn, unpack_int4

    q = torch.randint(0, 16, (6, 10))
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (6, 5)
    assert packed[0, 0].item() == q[0, 0].item() | (q[0, 1].item() << 4), "column 2j low nibble, 2j + 1 high"
    assert torch.equal(unpack_int4(packed), q.to(torch.uint8))
    stored = load_file(str(quantized["int4"] / "model.safetensors"))
    weights = load_file(str(quantized["fp32"] / "model.safetensors"))
    name = "model.layers.1.mlp.down_proj"
    expected_q, expected_scale, expected_zero = quantize_rtn(weights[name + ".weight"], 4, GROUP, symmetric=False)
    assert stored[name + ".qweight"].dtype == torch.uint8 and stored[name + ".qweight"].shape == (64, 96)
    assert torch.equal(unpack_int4(stored[name + ".qweight"]), expected_q.to(torch.uint8))
    assert torch.equal(stored[name + ".scales"], expected_scale.half()) and stored[name + ".scales"].shape == (64, 192 // GROUP)
    assert torch.equal(stored[name + ".qzeros"], expected_zero.to(torch.uint8))
    assert stored["model.embed_tokens.weight"].dtype == torch.float32 and stored["model.norm.weight"].dtype == torch.float32
    assert name + ".weight" not in stored


def test_gguf_reads_back_with_tokenizer_chat_template_and_weights(quantized):
    gguf = pytest.importorskip("gguf", reason="GGUF export needs the gguf package")
    from safetensors.torch import load_file

    from llmpipe.gguf_export import rope_permute
    from llmpipe.text.chat_template import JINJA_TEMPLATE
    from llmpipe.text.tokenizer import load_tokenizer

    out, chat = quantized["gguf"], quantized["chat"]
    assert sorted(p.name for p in out.glob("*.gguf")) == ["model-F16.gguf", "model-Q4_0.gguf", "model-Q8_0.gguf"]
    weights = {k: v.numpy() for k, v in load_file(str(chat / "model.safetensors")).items()}
    tok = load_tokenizer(chat)
    types = {"F16": "F16", "Q8_0": "Q8_0", "Q4_0": "Q4_0"}
    for kind in ("F16", "Q8_0", "Q4_0"):
        reader = gguf.GGUFReader(out / f"model-{kind}.gguf")
        tensors = {t.name: t for t in reader.tensors}
        expected_names = {"token_embd.weight", "output_norm.weight"} | {
            f"blk.{i}.{n}.weight" for i in range(2) for n in
            ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
        assert set(tensors) == expected_names, "tied lm_head: no output.weight (llama.cpp reads token_embd)"
        assert [int(x) for x in tensors["blk.0.ffn_down.weight"].shape] == [192, 64], "GGUF lists dims innermost first"
        assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
        assert tensors["blk.1.ffn_up.weight"].tensor_type.name == types[kind]
        assert tensors["token_embd.weight"].tensor_type.name == ("F16" if kind == "F16" else "Q8_0")
        field = lambda key: reader.get_field(key)  # noqa: E731
        assert field("general.architecture").contents() == "llama"
        assert field("llama.block_count").contents() == 2 and field("llama.embedding_length").contents() == 64
        assert field("llama.attention.head_count").contents() == 4 and field("llama.context_length").contents() == 256
        assert field("tokenizer.ggml.model").contents() == "llama"
        assert field("tokenizer.ggml.tokens").contents() == [tok.sp.id_to_piece(i) for i in range(tok.vocab_size)]
        assert field("tokenizer.ggml.scores").contents()[10] == pytest.approx(tok.sp.get_score(10))
        token_types = field("tokenizer.ggml.token_type").contents()
        assert token_types[:8] == [2, 3, 3, 3, 3, 3, 3, 3], "unk, then bos/eos/pad and the chat roles are control tokens"
        assert [field(f"tokenizer.ggml.{k}_token_id").contents() for k in ("bos", "eos", "padding")] == [1, 2, 3]
        assert field("tokenizer.chat_template").contents() == JINJA_TEMPLATE
    reader = gguf.GGUFReader(out / "model-F16.gguf")
    tensors = {t.name: t for t in reader.tensors}
    q = weights["model.layers.0.self_attn.q_proj.weight"]
    assert (tensors["blk.0.attn_q.weight"].data == rope_permute(q, 4).astype("float16")).all(), "q permuted to llama.cpp's rope"
    for hf, name in (("model.layers.1.mlp.down_proj.weight", "blk.1.ffn_down.weight"), ("model.embed_tokens.weight", "token_embd.weight")):
        assert (tensors[name].data == weights[hf].astype("float16")).all()
    q8 = {t.name: t for t in gguf.GGUFReader(out / "model-Q8_0.gguf").tensors}["blk.1.ffn_down.weight"]
    restored = gguf.quants.dequantize(q8.data, q8.tensor_type)
    w = weights["model.layers.1.mlp.down_proj.weight"]
    assert abs(restored - w).max() <= abs(w).max() / 127 / 2 * 1.01, "Q8_0 is within half a step of 1/127 of the block max"


def test_inspect_shows_a_gguf_file_header_metadata_and_tensors(quantized):
    """`llmpipe inspect FILE.gguf` on a file the quantize stage wrote: header, metadata keys and the tensor table."""
    pytest.importorskip("gguf", reason="GGUF export needs the gguf package")
    from tests.conftest import run_cli

    path = quantized["gguf"] / "model-Q4_0.gguf"
    out = run_cli("inspect", str(path), cwd=quantized["gguf"], check=True).stdout.splitlines()
    assert out[0] == f"{path}  GGUF v3  architecture=llama  tensors=20  file_type=MOSTLY_Q4_0  ({path.stat().st_size:,} bytes)"
    assert out[1] == "metadata (26 keys):"
    assert "  general.architecture = 'llama'" in out and "  llama.block_count = 2" in out
    assert "  tokenizer.ggml.tokens = [1000 x STRING] '<unk>', '<s>', '</s>', ..." in out
    assert """  tokenizer.chat_template = "{%- for message in messages -%}{%- if message['content'] is not string -%}{{- ra"...""" in out
    table = out[out.index("tensors (20, 170,816 parameters):") + 1:]
    assert len(table) == 20
    assert table[0].split() == ["token_embd.weight", "Q8_0", "64", "x", "1000", "68,000", "bytes"]
    assert table[2] == "  blk.0.ffn_down.weight     Q4_0   192 x 64              6,912 bytes"


@pytest.mark.parametrize("kind", ["F32", "BF16", "Q8_0", "Q5_1"])
def test_every_gguf_type_writes_and_reads_back(quantized, tmp_path, kind):
    gguf = pytest.importorskip("gguf", reason="GGUF export needs the gguf package")
    from llmpipe.gguf_export import write_gguf

    types = write_gguf(quantized["chat"], tmp_path / "m.gguf", kind)
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert {t.name: t.tensor_type.name for t in reader.tensors} == types
    assert types["blk.0.ffn_gate.weight"] == kind and types["output_norm.weight"] == "F32"
    assert int(reader.get_field("general.file_type").contents()) == int(gguf.LlamaFileType["ALL_F32" if kind == "F32" else f"MOSTLY_{kind}"])


def test_rope_permutation_matches_llama_cpp_rotation():
    """Rotating interleaved pairs of the permuted q equals rotating HF's (i, i + D/2) pairs, then permuting."""
    from llmpipe.gguf_export import rope_permute
    from llmpipe.positions import apply_rope, rope_cache

    torch.manual_seed(0)
    H, D, T = 2, 8, 5
    q = torch.randn(T, H * D)
    cos, sin = rope_cache(T, D, 10000.0)
    hf = apply_rope(q.view(1, T, H, D), cos[:, None], sin[:, None]).view(T, H * D)
    p = torch.from_numpy(rope_permute(q.T.numpy(), H).T.copy()).view(T, H, D // 2, 2)  # rows of W^T are q's features
    x0, x1 = p[..., 0], p[..., 1]
    c, s = cos[:, None], sin[:, None]
    interleaved = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).view(T, H * D)  # llama.cpp's LLAMA (normal) rope
    torch.testing.assert_close(interleaved, torch.from_numpy(rope_permute(hf.T.numpy(), H).T.copy()))


def test_user_mistakes_are_one_line(chat_base, tmp_path):
    model = str(chat_base / "model")
    line = _one_line_error(tmp_path, "quantize", "--input", model, "--output", "out", "--scheme", "int4")
    assert line == ("error: quantize --group-size: 128 does not divide in_features 64 (n_embd) of model; use 64 or 32, "
                    "or 0 for one group per row")
    line = _one_line_error(tmp_path, "quantize", "--input", model, "--output", "out", "--scheme", "int3")
    assert "scheme" in line and "int3" in line and "int8" in line
    line = _one_line_error(tmp_path, "quantize", "--input", model, "--output", "out", "--method", "gptq")
    assert line == "error: quantize --calibration: method gptq needs calibration tokens; give a tokenize artifact or step"
    line = _one_line_error(tmp_path, "quantize", "--input", model, "--output", "out", "--format", "gguf", "--gguf-types", "Q4_K")
    assert line == "error: quantize --gguf-types: Q4_K is not a type gguf 0.19 writes; choose from F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1"
    line = _one_line_error(tmp_path, "quantize", "--input", model, "--output", "out", "--method", "gptq", "--calibration", model)
    assert line == f"error: quantize --calibration: {model} is a checkpoint artifact; give a tokenize artifact".replace(str(tmp_path), "<tmp>")


def test_gptq_with_uncorrelated_inputs_is_round_to_nearest_and_beats_it_on_correlated_ones():
    """H = I leaves no error to move: GPTQ's integers are RTN's. With correlated inputs its output error is lower."""
    from llmpipe.gptq import HessianSum, gptq_quantize
    from llmpipe.quant import dequantize, quantize_rtn

    torch.manual_seed(0)
    W = torch.randn(32, 128)
    for symmetric, act_order in ((False, False), (True, False), (False, True)):
        rtn = quantize_rtn(W, 4, 32, symmetric)
        gptq = gptq_quantize(W, torch.eye(128), 4, 32, symmetric, act_order=act_order)
        assert all(torch.equal(a, b) for a, b in zip(rtn, gptq)), (symmetric, act_order)
    X = torch.randn(2048, 16) @ torch.randn(16, 128) + 0.1 * torch.randn(2048, 128)  # inputs on a 16-dim subspace
    acc = HessianSum(128)
    acc.add(X)
    out_error = lambda q, s, z: ((X @ (dequantize(q, s, z) - W).T).pow(2).mean() / (X @ W.T).pow(2).mean()).item()  # noqa: E731
    rtn_error = out_error(*quantize_rtn(W, 4, 32, False))
    for act_order in (False, True):
        gptq_error = out_error(*gptq_quantize(W, acc.value, 4, 32, False, act_order=act_order))
        print(f"relative output error: rtn {rtn_error:.5f}, gptq (act_order={act_order}) {gptq_error:.5f}")
        assert gptq_error < 0.5 * rtn_error


def test_calibration_may_name_a_tokenize_step(chat_base, tmp_path):
    from tests.conftest import run_cli, write

    write(tmp_path / "q.toml", f"""[pipeline]
workdir = "runs"

[steps.tokens]
stage = "tokenize"
inputs = ["{chat_base / 'docs'}"]
tokenizer = "{chat_base / 'tok'}"
val_fraction = 0.1

[steps.quantize]
inputs = ["{chat_base / 'model'}"]
scheme = "int4"
group_size = 32
method = "gptq"
calibration = "tokens"
calibration_samples = 4
calibration_seq_len = 64
""")
    res = run_cli("run", "q.toml", cwd=tmp_path, check=True)
    assert "linear layers 6.7x smaller" in res.stdout
    manifest = json.loads((tmp_path / "runs" / "quantize" / "_manifest.json").read_text())
    assert manifest["params"]["calibration"] == str((tmp_path / "runs" / "tokens").resolve())
    assert manifest["counts"]["calibration_tokens"] == 4 * 64
    assert "calibration" in manifest["param_fingerprints"]


def test_quantized_lm_head(chat_base, tmp_path):
    """quantize_lm_head: lm_head becomes int8 and untied, the embedding stays float and unchanged."""
    from safetensors.torch import load_file

    from llmpipe.model import Model
    from llmpipe.quant import QuantLinear

    llmpipe.run_stage("quantize", [str(chat_base / "model")], tmp_path / "q", quantize_lm_head=True)
    model = Model.from_checkpoint(tmp_path / "q")
    assert isinstance(model.lm_head, QuantLinear) and model.lm_head.out_features == 1000
    stored = load_file(str(tmp_path / "q" / "model.safetensors"))
    original = load_file(str(chat_base / "model" / "model.safetensors"))
    assert torch.equal(stored["model.embed_tokens.weight"], original["model.embed_tokens.weight"])
    assert "lm_head.weight" not in stored and stored["lm_head.qweight"].dtype == torch.int8
    assert json.loads((tmp_path / "q" / "config.json").read_text())["quantization"]["modules"][-1] == "lm_head"
    with torch.no_grad():
        x = torch.randint(0, 1000, (1, 32))
        logits = model(x)[0]
        float_logits = Model.from_checkpoint(chat_base / "model")(x)[0]
    assert (logits - float_logits).abs().max() < 0.05 * float_logits.abs().max()
