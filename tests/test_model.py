"""The model: a checkpoint transformers loads as it is (same logits on real text), causality, KV-cache generation."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from llmpipe.model import Model, ModelConfig  # noqa: E402


def shakespeare_ids(shared: Path, n: int):
    """Byte-level ids of real text: the first n bytes of tiny shakespeare, as a [2, n/2] batch."""
    data = (shared / "text" / "tinyshakespeare.txt").read_bytes()[:n]
    return torch.tensor(list(data), dtype=torch.long).view(2, -1)


def tiny(**kw) -> Model:
    torch.manual_seed(0)
    cfg = ModelConfig(**{"vocab_size": 260, "n_layer": 2, "n_embd": 64, "n_head": 4, "n_kv_head": 2, "max_seq_len": 256, "rope_theta": 5000.0, **kw})
    return Model(cfg).eval()


@pytest.mark.parametrize("tie", [True, False])
def test_transformers_loads_the_checkpoint_with_the_same_logits(tmp_path, shared_data, tie):
    transformers = pytest.importorskip("transformers")
    from llmpipe.artifacts.checkpoint import save_checkpoint

    model = tiny(tie_embeddings=tie)
    with torch.no_grad():  # trained-looking weights: norms away from 1, so a misplaced norm would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_checkpoint(tmp_path / "ck", model.state_dict(), model.config.to_hf())
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ck").eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert hf.config.num_key_value_heads == 2 and hf.config.tie_word_embeddings == tie
    x = shakespeare_ids(shared_data, 256)
    with torch.no_grad():
        ours, _ = model(x)
        theirs = hf(x).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    # and back: a config.json transformers wrote reads as the same model
    assert ModelConfig.from_hf(hf.config.to_dict()).n_kv_head == 2


def test_future_tokens_do_not_change_past_logits():
    model = tiny()
    x = torch.randint(0, 260, (1, 40))
    y = x.clone()
    y[0, 25:] = torch.randint(0, 260, (15,))
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(y)
    assert torch.allclose(a[0, :25], b[0, :25], atol=1e-6)
    assert not torch.allclose(a[0, 25:], b[0, 25:])


def test_kv_cache_generation_equals_full_recompute(shared_data):
    model = tiny()
    prompt = shakespeare_ids(shared_data, 32)  # two prompts of 16 bytes
    with_cache = model.generate(prompt, 40)
    without = model.generate(prompt, 40, use_cache=False)
    assert with_cache.shape == (2, 56)
    assert torch.equal(with_cache, without)
    # top-p sampling with the same seed draws the same tokens either way
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    s1 = model.generate(prompt, 20, temperature=0.8, top_p=0.9, generator=g1)
    s2 = model.generate(prompt, 20, temperature=0.8, top_p=0.9, generator=g2, use_cache=False)
    assert torch.equal(s1, s2)


def test_cache_prefill_after_cache_is_causal():
    """Several new tokens after a filled cache see the cache and each other causally (a chat turn after a prompt)."""
    model = tiny()
    x = torch.randint(0, 260, (1, 30))
    with torch.no_grad():
        full, _ = model(x)
        cache = model.new_cache()
        model(x[:, :20], cache=cache)
        part, _ = model(x[:, 20:], cache=cache)
    assert (full[:, 20:] - part).abs().max().item() < 1e-5


def test_presets_have_the_advertised_sizes():
    sizes = {name: Model(ModelConfig.preset(name, vocab_size=4096)).num_params() for name in ("tiny", "small")}
    assert 0.8e6 < sizes["tiny"] < 2e6 and 8e6 < sizes["small"] < 14e6
    cfg = ModelConfig.preset("small")
    assert cfg.to_hf()["num_key_value_heads"] == 2 and cfg.to_hf()["architectures"] == ["LlamaForCausalLM"]


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="n_head"):
        ModelConfig(n_embd=100, n_head=3)


def test_activation_checkpointing_gives_the_same_gradients():
    model = tiny().train()
    x = torch.randint(0, 260, (2, 32))
    model(x, x)[1].backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.activation_checkpointing = True
    model(x, x)[1].backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(plain, model.parameters()))


def test_the_stage_lists_the_same_presets_without_importing_torch():
    from llmpipe.model import PRESETS
    from stages.pretrain import MODEL_PRESETS

    assert tuple(PRESETS) == MODEL_PRESETS
