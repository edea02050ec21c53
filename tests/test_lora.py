"""LoRA (llmpipe/train/lora.py): the trainable count equals r * (in + out) summed over the targets; training moves
only LoRA weights; PEFT loads the saved adapter (and llmpipe loads PEFT's) with the same logits to 1e-5; the merged
checkpoint loads in transformers with the same logits to 1e-5; LoRA turns the fused CPU block off; dropout only
in train mode; one-line errors for bad targets."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import llmpipe.model as model_module
from llmpipe.artifacts.checkpoint import load_checkpoint, save_checkpoint
from llmpipe.model import Model, ModelConfig
from llmpipe.train.lora import (DEFAULT_TARGETS, LoRALinear, adapter_tensors, apply_lora, load_adapter, lora_layers,
                                lora_parameter_count, merge_lora, save_adapter, trainable_parameter_count)

VOCAB = 256


def tiny(seed: int = 0, tie: bool = True) -> Model:
    torch.manual_seed(seed)
    return Model(ModelConfig.preset("tiny", vocab_size=VOCAB, tie_embeddings=tie))


def write_checkpoint(out, model) -> None:
    """The base checkpoint as the pretrain stage writes it: model.safetensors + config.json (cfg.to_hf())."""
    from llmpipe.artifacts.checkpoint import write_model_dir

    out.mkdir(parents=True, exist_ok=True)
    write_model_dir(out, model.state_dict(), model.config.to_hf(), "")


def batch(seed: int, rows: int = 2, length: int = 24) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def train_lora(model: Model, steps: int = 3, lr: float = 0.5) -> None:
    """A few SGD steps on random tokens: B leaves zero, so the adapter changes the logits."""
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        ids = batch(100 + step)
        _, loss = model(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return (out[0] if isinstance(out, tuple) else out.logits).float()


def autograd_nodes(t: torch.Tensor) -> set[str]:
    names, stack, seen = set(), [t.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(fn.name())
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return names


# tiny: 4 layers, C 128, 4 heads of 32, 4 kv heads, intermediate 384, vocab 256. Per layer and per unit of rank:
# q, k, v, o 4 * (128 + 128) = 1024; gate, up, down 3 * (128 + 384) = 1536; lm_head 128 + 256 = 384.
@pytest.mark.parametrize("rank, targets, tie, expected", [
    (8, DEFAULT_TARGETS, True, 8 * 4 * (1024 + 1536)),  # 81,920
    (4, ("q_proj", "v_proj"), True, 4 * 4 * 2 * 256),  # 8,192
    (8, "all-linear", True, 81_920),  # PEFT's all-linear leaves lm_head out
    (2, DEFAULT_TARGETS + ("lm_head",), False, 2 * 4 * 2560 + 2 * 384),  # 21,248
    (16, ("model.layers.0.mlp.down_proj",), True, 16 * 512),  # one layer by its full name
])
def test_the_trainable_parameter_count_equals_the_formula(rank, targets, tie, expected):
    model = tiny(tie=tie)
    names = apply_lora(model, rank=rank, alpha=2 * rank, targets=targets)
    assert trainable_parameter_count(model) == lora_parameter_count(model.config, rank, targets) == expected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {f"{n}.lora_{x}.weight" for n in names for x in "AB"}


def test_peft_counts_the_same_trainable_parameters(tmp_path):
    peft = pytest.importorskip("peft", reason="PEFT is the compared peer (pip install -e .[compare])")
    transformers = pytest.importorskip("transformers")
    write_checkpoint(tmp_path / "base", tiny(tie=False))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=list(DEFAULT_TARGETS) + ["lm_head"], task_type="CAUSAL_LM")
    trainable, _ = peft.get_peft_model(hf, config).get_nb_trainable_parameters()
    assert trainable == lora_parameter_count(ModelConfig.preset("tiny", vocab_size=VOCAB), 8, DEFAULT_TARGETS + ("lm_head",)) == 84_992


def test_training_moves_only_the_lora_weights():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, rank=4, alpha=8)
    initial = {k: v.clone() for k, v in model.state_dict().items() if ".lora_" in k}
    assert len(initial) == 4 * 7 * 2 and all(torch.equal(v, torch.zeros_like(v)) for k, v in initial.items() if "lora_B" in k)
    train_lora(model)
    after = model.state_dict()
    for key, value in before.items():  # base weights bit-identical, under their wrapped names
        wrapped = key.replace("_proj.weight", "_proj.base_layer.weight")
        assert torch.equal(after[wrapped if wrapped in after else key], value), key
    for key, value in initial.items():  # B moves from step 1, A from step 2 (its gradient is zero while B is)
        assert not torch.equal(after[key], value), key
    assert all(p.grad is None for n, p in model.named_parameters() if ".lora_" not in n)


def test_lora_turns_off_the_fused_cpu_block(monkeypatch):
    """On eager fp32 CPU each block is one fused autograd Function that reads the weights directly; a LoRA model
    must take the plain formulas there (else its adapters would be silently skipped) and give their logits."""
    ids = batch(1)
    model = tiny().train()
    assert model_module.fused_block(ids, None)  # this input takes the fused path on a plain model
    base_out, _ = model(ids)
    assert "_BlockBackward" in autograd_nodes(base_out)
    base = base_out.detach()

    apply_lora(model, rank=4, alpha=8)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(7))
    lora_out, _ = model(ids)
    assert "_BlockBackward" not in autograd_nodes(lora_out)
    assert (lora_out - base).abs().max() > 0.05  # the adapters act
    monkeypatch.setattr(model_module, "CPU_OPS", False)  # the plain formulas everywhere, as on CUDA
    assert (lora_out - model(ids)[0]).abs().max() <= 1e-6
    monkeypatch.setattr(model_module, "CPU_OPS", True)

    merge_lora(model)  # plain again: the fused block runs and gives the LoRA model's logits
    merged_out, _ = model(ids)
    assert "_BlockBackward" in autograd_nodes(merged_out)
    assert (merged_out - lora_out).abs().max() <= 1e-5


def test_a_lora_model_generates_the_same_with_and_without_the_kv_cache():
    """Cached generation runs the attention projections one by one: the adapters act there too."""
    model = tiny()
    plain = model.generate(batch(8, length=10), 12, use_cache=False)
    apply_lora(model, rank=4, alpha=8)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(9))
    cached = model.generate(batch(8, length=10), 12, use_cache=True)
    assert torch.equal(cached, model.generate(batch(8, length=10), 12, use_cache=False))
    assert not torch.equal(cached, plain)


def test_dropout_acts_in_train_mode_and_not_in_eval_mode():
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(16, 12, bias=False), rank=4, alpha=8, dropout=0.5)
    torch.nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(5, 16)
    A, B, W = layer.lora_A.weight, layer.lora_B.weight, layer.base_layer.weight
    layer.eval()
    assert torch.allclose(layer(x), x @ W.T + x @ A.T @ B.T * 2.0, atol=1e-6)
    layer.train()
    torch.manual_seed(3)
    y = layer(x)
    torch.manual_seed(3)
    dropped = F.dropout(x, 0.5, training=True)  # the same mask, applied to A's input only
    assert torch.allclose(y, x @ W.T + dropped @ A.T @ B.T * 2.0, atol=1e-6)
    assert (y - layer.eval()(x)).abs().max() > 0.1

    model = tiny()
    apply_lora(model, rank=4, alpha=8, dropout=0.3)
    train_lora(model, steps=2)
    ids = batch(2)
    model.train()
    torch.manual_seed(0)
    a = logits(model, ids)
    torch.manual_seed(1)
    b = logits(model, ids)
    assert (a - b).abs().max() > 1e-4
    model.eval()
    assert torch.equal(logits(model, ids), logits(model, ids))


def test_bad_targets_and_settings_are_one_line_errors():
    model = tiny()
    layers = "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head"
    for target in ("qkv", "embed_tokens"):
        with pytest.raises(ValueError) as err:
            apply_lora(model, targets=("q_proj", target))
        assert str(err.value) == f'LoRA target "{target}" names no linear layer of the model; its linear layers are: {layers} (or "all-linear")'
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())  # nothing changed
    with pytest.raises(ValueError, match=r"^LoRA on lm_head needs untied embeddings \(tie_embeddings = false\)"):
        apply_lora(model, targets=("lm_head",))
    with pytest.raises(ValueError, match=r"^LoRA rank must be a positive integer, got 0$"):
        apply_lora(model, rank=0)
    with pytest.raises(ValueError, match=r"^LoRA dropout must be in \[0, 1\), got 1.0$"):
        apply_lora(model, dropout=1.0)
    apply_lora(model)
    with pytest.raises(ValueError, match="already has LoRA layers"):
        apply_lora(model)


def test_the_default_targets_are_the_projections_the_model_has():
    """A GELU MLP has no gate_proj and a mixture's experts are no linear layers: the default list takes what there is
    (both refused it before); a target named outright that the model lacks is still a one-line error."""
    from tests.test_model_options import BASE, trained_looking

    for options, mlp in (({"mlp": "gelu"}, ["up_proj", "down_proj"]), ({"n_experts": 4, "experts_per_token": 2}, [])):
        model = trained_looking({**BASE, **options})
        wrapped = apply_lora(model, rank=4)
        per_block = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", *(f"mlp.{n}" for n in mlp)]
        assert wrapped == [f"model.layers.{i}.{n}" for i in range(BASE["n_layer"]) for n in per_block], options
        with pytest.raises(ValueError, match='^LoRA target "gate_proj" names no linear layer of the model'):
            apply_lora(trained_looking({**BASE, **options}), targets=("q_proj", "gate_proj"))


def test_a_wrapped_state_dict_round_trips_through_a_checkpoint(tmp_path):
    """The training loop saves raw.state_dict(): a LoRA model's keys are PEFT's (base_layer, lora_A, lora_B)."""
    model = tiny()
    apply_lora(model, rank=4, alpha=8)
    train_lora(model, steps=2)
    save_checkpoint(tmp_path / "ck", model.state_dict(), model.config.to_hf())
    tensors, config, _, _ = load_checkpoint(tmp_path / "ck")
    assert "model.layers.0.self_attn.q_proj.base_layer.weight" in tensors and "model.layers.3.mlp.down_proj.lora_B.weight" in tensors
    fresh = Model(ModelConfig.from_hf(config))
    apply_lora(fresh, rank=4, alpha=8)
    fresh.load_state_dict(tensors)
    ids = batch(3)
    assert torch.equal(logits(fresh.eval(), ids), logits(model, ids))
    assert trainable_parameter_count(fresh) == trainable_parameter_count(model) == 4 * 4 * 2560


def test_save_adapter_writes_peft_layout_and_loads_back(tmp_path):
    model = tiny()
    apply_lora(model, rank=4, alpha=8, dropout=0.1, targets=("q_proj", "model.layers.1.mlp.down_proj"))
    train_lora(model, steps=2)
    save_adapter(model, tmp_path / "adapter", base_model_name_or_path="base")
    save_adapter(model, tmp_path / "adapter", base_model_name_or_path="base")  # an existing adapter is replaced
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert {k: config[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules", "bias",
                                   "fan_in_fan_out", "inference_mode", "base_model_name_or_path")} == {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, "lora_dropout": 0.1,
        "target_modules": ["model.layers.1.mlp.down_proj", "q_proj"], "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "base_model_name_or_path": "base"}
    assert sorted(adapter_tensors(model))[:2] == ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                                                  "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    fresh = tiny()
    assert load_adapter(fresh, tmp_path / "adapter") == list(lora_layers(model))
    ids = batch(4)
    assert torch.equal(logits(fresh.eval(), ids), logits(model, ids))


def test_peft_loads_the_adapter_and_the_merged_checkpoint_loads_in_transformers(tmp_path):
    """Issue 13, item 5: PEFT's PeftModel on the saved adapter and transformers on the merged checkpoint give
    llmpipe's LoRA logits to 1e-5 (after training, so the adapter is far from zero)."""
    peft = pytest.importorskip("peft", reason="PEFT is the compared peer (pip install -e .[compare])")
    transformers = pytest.importorskip("transformers")
    model = tiny()
    write_checkpoint(tmp_path / "base", model)
    base_logits = logits(model.eval(), ids := batch(5))
    apply_lora(model, rank=8, alpha=16, dropout=0.05)
    train_lora(model)
    ours = logits(model, ids)
    save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    theirs = logits(peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval(), ids)
    adapter_effect, peft_gap = (ours - base_logits).abs().max().item(), (theirs - ours).abs().max().item()
    print(f"LoRA changes the logits by up to {adapter_effect:.4f}; PEFT vs llmpipe: max |diff| {peft_gap:.2e}")
    assert adapter_effect > 0.05 and peft_gap <= 1e-5

    write_checkpoint(tmp_path / "merged", merge_lora(model))
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["model_type"] == "llama"
    merged = logits(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval(), ids)
    merged_gap = (merged - ours).abs().max().item()
    print(f"merged checkpoint in transformers vs llmpipe LoRA: max |diff| {merged_gap:.2e}")
    assert merged_gap <= 1e-5


def test_llmpipe_loads_an_adapter_peft_wrote(tmp_path):
    peft = pytest.importorskip("peft", reason="PEFT is the compared peer (pip install -e .[compare])")
    transformers = pytest.importorskip("transformers")
    write_checkpoint(tmp_path / "base", tiny())
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    config = peft.LoraConfig(r=4, lora_alpha=12, lora_dropout=0.1, target_modules=["k_proj", "up_proj"], task_type="CAUSAL_LM")
    peft_model = peft.get_peft_model(hf, config)
    with torch.no_grad():  # PEFT starts B at zero: give it values so the adapter shows
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = batch(6)
    theirs = logits(peft_model.eval(), ids)

    model = tiny()
    names = load_adapter(model, tmp_path / "adapter")
    assert len(names) == 8 and all(lora_layers(model)[n].scaling == 3.0 for n in names)
    assert (logits(model.eval(), ids) - theirs).abs().max() <= 1e-5
