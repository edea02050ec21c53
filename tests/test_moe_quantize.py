"""Quantizing a mixture of experts (llmpipe/moe.py LinearExperts, llmpipe/quant.py, llmpipe/gptq.py): every expert's
projections become integers, the router stays float; the checkpoint loads, decodes with its KV cache as a full forward
does and keeps the float model's outputs; GPTQ takes each expert's Hessian from the tokens routed to it, beats
round-to-nearest on a mixture pre-trained on real text, and rounds an expert no calibration token reached to nearest
instead of zeroing it."""

from __future__ import annotations

import json

import pytest

import llmpipe
from tests.conftest import TINY_PRETRAIN, run_cli
from tests.test_model_options import BASE, trained_looking

torch = pytest.importorskip("torch")
pytest.importorskip("sentencepiece")

from llmpipe.model import Model  # noqa: E402
from llmpipe.moe import LinearExperts, MoE, split_experts  # noqa: E402
from llmpipe.quant import QuantLinear, quantize_rtn, target_names  # noqa: E402

E, K, GROUP = 4, 2, 32


def experts_of(model) -> list:
    return [block.mlp.experts for block in model.model.layers]


def relative_error(logits, reference) -> float:
    return ((logits - reference).pow(2).mean() / reference.var()).item()


@pytest.fixture(scope="module")
def mixture(chat_base, tmp_path_factory):
    """A 2-layer mixture of 4 SwiGLU experts (top 2) pre-trained 30 steps on the C4 sample's tokens, quantized int8,
    int4 round-to-nearest and int4 GPTQ by the quantize stage."""
    tmp = tmp_path_factory.mktemp("moe_quantize")
    run_cli("pretrain", "--input", str(chat_base / "tokens"), "--output", str(tmp / "model"), "--tokenizer", str(chat_base / "tok"),
            "--max-steps", "30", *TINY_PRETRAIN, "--n-experts", str(E), "--experts-per-token", str(K), cwd=tmp, check=True)
    made = {"fp32": tmp / "model"}
    for name, params in {"int8": {}, "int4": {"scheme": "int4", "group_size": GROUP},
                         "gptq": {"scheme": "int4", "group_size": GROUP, "method": "gptq", "calibration": str(chat_base / "tokens"),
                                  "calibration_samples": 16, "calibration_seq_len": 128}}.items():
        made[name] = {"dir": tmp / name, "manifest": llmpipe.run_stage("quantize", [str(tmp / "model")], tmp / name, **params)}
    return made


def test_every_expert_is_quantized_and_the_router_stays_float(mixture):
    for name in ("int8", "int4", "gptq"):
        out, manifest = mixture[name]["dir"], mixture[name]["manifest"]
        modules = json.loads((out / "config.json").read_text())["quantization"]["modules"]
        per_layer = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     *(f"mlp.experts.gate_up_proj.{e}" for e in range(E)), *(f"mlp.experts.down_proj.{e}" for e in range(E))]
        assert modules == [f"model.layers.{i}.{m}" for i in range(2) for m in per_layer], name
        assert manifest["counts"]["quantized_layers"] == len(modules) == 2 * (4 + 2 * E)
        model = Model.from_checkpoint(out).eval()
        for experts in experts_of(model):
            assert isinstance(experts, LinearExperts)
            assert all(isinstance(m, QuantLinear) for p in (experts.gate_up_proj, experts.down_proj) for m in p)
        assert all(type(block.mlp.gate) is torch.nn.Linear for block in model.model.layers), "the router stays float"
        # experts are most of a mixture's weights: the stored linear weights shrink by what the scheme says
        counts = manifest["counts"]
        ratio = counts["quantized_layers_fp32_bytes"] / counts["quantized_layers_bytes"]
        print(f"{name}: {len(modules)} layers, linear weights {ratio:.1f}x smaller, model.safetensors "
              f"{counts['input_safetensors_bytes']:,} -> {counts['model_safetensors_bytes']:,} bytes")
        assert ratio > (3.5 if name == "int8" else 5.5), name


def test_a_quantized_mixture_keeps_the_float_outputs_and_decodes_as_a_full_forward(mixture, chat_base):
    """Logits' squared error over their variance on validation tokens: int8 tiny, int4 small, GPTQ below RTN int4 (it
    minimizes each layer's output error on the calibration tokens, per expert on the tokens routed to it)."""
    from llmpipe.train.data import PackedBatches, split_shards

    x, _ = PackedBatches(split_shards(chat_base / "tokens", "val"), seq_len=128, batch_size=8, shuffle=False).batch(0)
    with torch.no_grad():
        reference = Model.from_checkpoint(mixture["fp32"]).eval()(x)[0]
    errors = {}
    for name in ("int8", "int4", "gptq"):
        model = Model.from_checkpoint(mixture[name]["dir"]).eval()
        with torch.no_grad():
            errors[name] = relative_error(model(x)[0], reference)
        prompt = x[:2, :8]
        assert torch.equal(model.generate(prompt, 12), model.generate(prompt, 12, use_cache=False)), name
    print("logits' squared error / variance: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    # measured: int8 2.5e-6, int4 1.6e-5, gptq 8.0e-6 (a token whose top 2 flips under rounding bounds what GPTQ gains)
    assert errors["int8"] < 1e-4 and errors["int4"] < 1e-2
    assert errors["gptq"] < 0.8 * errors["int4"]


def test_gptq_takes_each_experts_hessian_from_the_tokens_routed_to_it():
    """Layer 0's experts alone, so their inputs are the float model's: on the tokens the router sent it, each expert's
    output error ||(W - Q) X_e||^2 is far below round-to-nearest's and below GPTQ's from the Hessian of every token the
    layer saw (what quantizing the experts as one dense MLP would take)."""
    from llmpipe.gptq import HessianSum, gptq_model, gptq_quantize
    from llmpipe.quant import dequantize

    model = trained_looking({**BASE, "n_experts": E, "experts_per_token": K})
    split_experts(model)
    x = torch.randint(4, 260, (4, 32))
    experts = model.model.layers[0].mlp.experts
    routed, pooled = {e: [] for e in range(E)}, HessianSum(BASE["n_embd"])
    hooks = [experts.gate_up_proj[e].register_forward_pre_hook(lambda m, i, e=e: routed[e].append(i[0].clone())) for e in range(E)]
    hooks.append(model.model.layers[0].mlp.register_forward_pre_hook(lambda m, i: pooled.add(i[0])))
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    names = [f"model.layers.0.mlp.experts.gate_up_proj.{e}" for e in range(E)]
    originals = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    found = gptq_model(model, [x], names, 4, GROUP, False)
    total = {"rtn": 0.0, "pooled": 0.0, "gptq": 0.0}
    for e, name in enumerate(names):
        X, W = torch.cat(routed[e]), originals[name]
        error = lambda q: ((W - dequantize(*q)) @ X.T).pow(2).sum().item()  # noqa: E731
        here = {"rtn": error(quantize_rtn(W, 4, GROUP, False)), "pooled": error(gptq_quantize(W, pooled.value, 4, GROUP, False)),
                "gptq": error(found[name])}
        print(f"expert {e} ({len(X)} tokens): output error rtn {here['rtn']:.3e}, gptq from every token {here['pooled']:.3e}, "
              f"gptq from its own tokens {here['gptq']:.3e}")
        total = {k: total[k] + v for k, v in here.items()}
    assert total["gptq"] < 0.5 * total["rtn"] and total["gptq"] < total["pooled"], total


def test_gptq_rounds_an_expert_no_calibration_token_reached_to_nearest():
    """One calibration token goes to k = 2 of 4 experts per layer: the other two keep round-to-nearest weights (GPTQ
    would zero a layer whose inputs were all zero, which an unreached expert's Hessian looks like)."""
    from llmpipe.gptq import gptq_model

    model = trained_looking({**BASE, "n_experts": E, "experts_per_token": K})
    split_experts(model)
    names = target_names(model)
    originals = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    reached = set()
    hooks = [block.mlp.experts.gate_up_proj[e].register_forward_pre_hook(lambda m, i, key=(b, e): reached.add(key))
             for b, block in enumerate(model.model.layers) for e in range(E)]
    with torch.no_grad():
        model(torch.tensor([[7]]))
    for hook in hooks:
        hook.remove()
    notes = []
    found = gptq_model(model, [torch.tensor([[7]])], names, 4, GROUP, False, log=notes.append)
    for b in range(2):
        assert sum((b, e) in reached for e in range(E)) == K
        for e in range(E):
            for projection in ("gate_up_proj", "down_proj"):
                name = f"model.layers.{b}.mlp.experts.{projection}.{e}"
                rtn = quantize_rtn(originals[name], 4, GROUP, False)
                q = found[name][0]
                assert q.abs().sum() > 0, name
                if (b, e) not in reached:
                    assert all(torch.equal(a, r) for a, r in zip(found[name], rtn)), name
                    assert f"gptq: no calibration token reached {name}; rounded to nearest" in notes
    assert sum("no calibration token reached" in n for n in notes) == 2 * (E - K) * 2


def test_split_experts_computes_what_the_3d_experts_compute():
    """LinearExperts shares the 3-D weights (views: no copy) and gives the mixture's outputs unchanged."""
    for mlp in ("swiglu", "gelu", "geglu"):
        model = trained_looking({**BASE, "n_experts": E, "experts_per_token": K, "mlp": mlp})
        x = torch.randint(4, 260, (2, 16))
        with torch.no_grad():
            before = model(x)[0]
            weights = {n: p.data_ptr() for n, p in model.named_parameters() if ".experts." in n}
            assert split_experts(model) == 2 and split_experts(model) == 0  # once
            after = model(x)[0]
        assert torch.equal(before, after), mlp
        first = model.model.layers[0].mlp.experts
        projection = "up_proj" if mlp == "gelu" else "gate_up_proj"
        assert getattr(first, projection)[0].weight.data_ptr() == weights[f"model.layers.0.mlp.experts.{projection}"]
        assert isinstance(model.model.layers[0].mlp, MoE)
