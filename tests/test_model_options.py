"""Model options (llmpipe/model.py): each exportable one gives transformers' logits under the architecture that
matches it; a sliding window hides what lies outside it; the KV-cache paths equal a full forward for every option;
ALiBi's biases are the paper's and, trained at one length, it degrades less than RoPE at twice that length."""

from __future__ import annotations

import json
import math
import time

import pytest

from tests.test_model import shakespeare_ids

torch = pytest.importorskip("torch")

import llmpipe.model as model_module  # noqa: E402
from llmpipe.model import Model, ModelConfig  # noqa: E402
from llmpipe.positions import alibi_slopes  # noqa: E402

BASE = {"vocab_size": 260, "n_layer": 2, "n_embd": 64, "n_head": 4, "n_kv_head": 2, "max_seq_len": 256, "rope_theta": 5000.0}

# option -> the transformers class its export loads as
EXPORTABLE = {
    "sliding window (Mistral)": ({"sliding_window": 16}, "MistralForCausalLM"),
    "sliding window alternating with global layers (Ministral)": ({"sliding_window": 16, "global_every": 2}, "MinistralForCausalLM"),
    "rope linear": ({"rope_scaling": "linear", "rope_factor": 2.0}, "LlamaForCausalLM"),
    "rope yarn": ({"rope_scaling": "yarn", "rope_factor": 4.0}, "LlamaForCausalLM"),
    "rope dynamic NTK": ({"rope_scaling": "dynamic", "rope_factor": 2.0}, "LlamaForCausalLM"),  # trained context 128 < 128 tokens read
    "gelu MLP (Arcee)": ({"mlp": "gelu"}, "ArceeForCausalLM"),
    "multi-query": ({"n_kv_head": 1}, "LlamaForCausalLM"),
}
NOT_EXPORTABLE = {
    "alibi": {"positions": "alibi"},
    "learned": {"positions": "learned"},
    "softcap": {"attn_softcap": 20.0, "final_softcap": 10.0},
    "gelu + window": {"mlp": "gelu", "sliding_window": 16},
}
ALL = {**{k: v for k, (v, _) in EXPORTABLE.items()}, **NOT_EXPORTABLE,
       "alibi + alternating window + softcap + gelu + MQA": {"positions": "alibi", "sliding_window": 8, "global_every": 2,
                                                            "attn_softcap": 20.0, "final_softcap": 10.0, "mlp": "gelu", "n_kv_head": 1}}


def trained_looking(base: dict = BASE, **options) -> Model:
    """A small model (`base` with `options`) with weights moved off their init (norms away from 1, peaked attention, a
    non-zero decoder bias), so that a misplaced option shows in the logits."""
    torch.manual_seed(0)
    model = Model(ModelConfig(**{**base, **options})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("name", EXPORTABLE)
def test_the_export_gives_transformers_logits(tmp_path, shared_data, name):
    """200-token rows of real text: longer than the window (16) and than dynamic NTK's trained context (256 / 2 = 128)."""
    transformers = pytest.importorskip("transformers")
    from llmpipe.artifacts.checkpoint import save_checkpoint

    options, architecture = EXPORTABLE[name]
    model = trained_looking(**options)
    save_checkpoint(tmp_path / "ck", model.state_dict(), model.config.to_hf())
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ck").eval()
    assert type(hf).__name__ == architecture
    x = shakespeare_ids(shared_data, 400)  # [2, 200]
    with torch.no_grad():
        ours, theirs = model(x)[0], hf(x).logits
    difference = (ours - theirs).abs().max().item()
    print(f"{name}: {architecture}, max |logit difference| {difference:.2e}")
    assert difference < 1e-4
    # the option changed the logits (so both sides applied it): the same weights without it give others
    plain = Model(ModelConfig(**{**BASE, **options, "sliding_window": 0, "global_every": 0, "rope_scaling": "none", "rope_factor": 1.0}))
    if "mlp" not in options and "n_kv_head" not in options:
        plain.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert (plain.eval()(x)[0] - ours).abs().max().item() > 1e-2
    # and back: llmpipe reads transformers' config.json (no "llmpipe" entry) as the same model
    hf_config = {k: v for k, v in json.loads((tmp_path / "ck" / "config.json").read_text()).items() if k != "llmpipe"}
    again = ModelConfig.from_hf(hf_config)
    for option, value in options.items():
        assert getattr(again, option) == value, option


@pytest.mark.parametrize("name", NOT_EXPORTABLE)
def test_a_combination_transformers_cannot_compute_says_so_in_one_line(tmp_path, name):
    transformers = pytest.importorskip("transformers")
    from llmpipe.artifacts.checkpoint import save_checkpoint

    cfg = ModelConfig(**{**BASE, **NOT_EXPORTABLE[name]})
    reason = cfg.export_blocker()
    assert reason and "\n" not in reason
    hf_config = cfg.to_hf()
    assert hf_config["model_type"] == "llmpipe" and hf_config["llmpipe_export_blocker"] == reason
    save_checkpoint(tmp_path / "ck", Model(cfg).state_dict(), hf_config)
    with pytest.raises(ValueError, match="llmpipe"):  # transformers refuses it rather than computing other logits
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ck")
    assert Model.from_checkpoint(tmp_path / "ck").config == cfg  # llmpipe loads it


def test_quantize_refuses_gguf_of_a_model_llama_cpp_would_compute_differently(tmp_path):
    from llmpipe.artifacts.checkpoint import save_checkpoint
    from stages.quantize import Params, check_checkpoint

    for options, said in (({"positions": "alibi"}, "ALiBi"), ({"sliding_window": 16}, "model_type mistral"),
                          ({"rope_scaling": "yarn", "rope_factor": 2.0}, "rope_type yarn")):
        cfg = ModelConfig(**{**BASE, **options})
        path = tmp_path / said.replace(" ", "_")
        save_checkpoint(path, Model(cfg).state_dict(), cfg.to_hf())
        (path / "tokenizer.model").write_bytes(b"")
        with pytest.raises(ValueError, match=f"format: GGUF .*{said}"):
            check_checkpoint(path, Params(format="gguf"))
        assert check_checkpoint(path, Params())["llmpipe"] == json.loads((path / "config.json").read_text())["llmpipe"]


@pytest.mark.parametrize("layers", [1, 2])
def test_a_token_outside_the_sliding_window_has_no_influence(layers):
    """Window W: position t sees t - W + 1 .. t. One layer: changing token t - W leaves t's logits as they are, changing
    t - W + 1 changes them. Stacked layers see further (t - layers * (W - 1)), as the Mistral paper says; the gradient of
    t's logits with respect to the input embeddings is exactly zero beyond that and not within it."""
    W, t = 8, 40
    model = trained_looking(n_layer=layers, sliding_window=W)
    x = torch.randint(4, 260, (1, 48))
    reach = layers * (W - 1)  # the furthest token t still sees

    def logits_at_t(row):
        with torch.no_grad():
            return model(row)[0][0, t]

    for position, influences in ((t - reach - 1, False), (t - reach, True), (t - 1, True)):
        changed = x.clone()
        changed[0, position] = (x[0, position] + 1) % 260
        assert torch.equal(logits_at_t(x), logits_at_t(changed)) != influences, position
    embeddings = model.model.embed_tokens(x).detach().requires_grad_()
    h = embeddings
    for i, block in enumerate(model.model.layers):
        h = block(h, model.rope(model.positions(x, 0), 0), None, model.attention_masks(x, 0)[i])
    h[0, t].sum().backward()
    reached = embeddings.grad[0].abs().sum(-1) > 0  # [T]
    assert reached.nonzero().flatten().tolist() == list(range(t - reach, t + 1))


def test_a_global_layer_sees_past_the_window():
    model = trained_looking(n_layer=2, sliding_window=4, global_every=2)
    assert [model.config.sliding(i) for i in range(2)] == [True, False]  # Gemma 2's order: sliding, then global
    x = torch.randint(4, 260, (1, 40))
    changed = x.clone()
    changed[0, 0] += 1
    with torch.no_grad():
        assert not torch.equal(model(x)[0][0, 39], model(changed)[0][0, 39])


@pytest.mark.parametrize("name", ALL)
def test_the_kv_cache_paths_equal_a_full_forward(name):
    """Model.decode (generation's fast path) one token at a time after a prompt, and forward(cache=...), give the
    logits of one forward over the whole row, for every option; sliding windows shorter than the row."""
    model = trained_looking(**ALL[name])
    x = torch.randint(4, 260, (2, 60))
    with torch.no_grad():
        full = model(x)[0]
        cache = model.new_cache()
        steps = [model.decode(x[:, :20], cache)] + [model.decode(x[:, i:i + 1], cache) for i in range(20, 60)]
        cached = model.new_cache()
        model(x[:, :30], cache=cached)
        rest = model(x[:, 30:], cache=cached)[0]
    assert (torch.stack(steps, dim=1) - full[:, 19:]).abs().max().item() < 1e-4
    assert (rest - full[:, 30:]).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["alibi", "sliding window (Mistral)", "learned", "softcap"])
def test_a_left_padded_batch_decodes_each_row_as_alone(name):
    """Prompts of different lengths decoded together (left padding: positions and ALiBi distances from each row's
    first token, windows over real tokens) give each row's tokens decoded alone."""
    from llmpipe.decoding import Decoding, token_steps

    options = EXPORTABLE[name][0] if name in EXPORTABLE else NOT_EXPORTABLE[name]
    model = trained_looking(**{**options, "sliding_window": 6} if "sliding_window" in options else options)
    with torch.no_grad():
        for p in model.parameters():  # peaked distributions: greedy choices that are not near-ties
            if p.dim() == 2:
                p.mul_(4)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(4, 260, (n,), generator=g).tolist() for n in (7, 15, 3)]
    together = torch.stack(list(token_steps(model, prompts, Decoding(12), ())), dim=1).tolist()
    alone = [torch.stack(list(token_steps(model, [p], Decoding(12), ())), dim=1)[0].tolist() for p in prompts]
    assert together == alone


def test_alibi_slopes_and_biases_are_the_papers():
    """Press et al. 2022, section 3: slopes 2^(-8/n * i), i = 1..n, for n heads a power of 2 (8 heads: 1/2 ... 1/256);
    otherwise the power of 2 below n's slopes, then every other of twice as many (their code). The bias added to
    query i's score of key j is -slope * (i - j); keys after i are masked."""
    assert alibi_slopes(8).tolist() == [2.0 ** -i for i in range(1, 9)]
    assert alibi_slopes(4).tolist() == [2.0 ** -(2 * i) for i in range(1, 5)]
    assert alibi_slopes(6).tolist() == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]
    model = Model(ModelConfig(**{**BASE, "positions": "alibi", "n_head": 4}))
    x = torch.zeros(1, 5, dtype=torch.long)
    bias = model.attention_masks(x, 0)[0]  # [1, H, T, S]
    assert bias.shape == (1, 4, 5, 5)
    for h, slope in enumerate(alibi_slopes(4).tolist()):
        for i in range(5):
            assert bias[0, h, i].tolist() == [-slope * (i - j) if j <= i else -math.inf for j in range(5)]
    assert not any(name.startswith("rope") for name, _ in model.named_buffers() if _.numel())  # no position weights or tables
    assert model.num_params() == Model(ModelConfig(**BASE)).num_params()


def test_soft_capping_bounds_the_logits_and_is_the_plain_model_under_a_large_cap():
    model = trained_looking(final_softcap=5.0, attn_softcap=2.0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10)  # scores and logits far beyond the caps
        x = torch.randint(4, 260, (2, 30))
        assert model(x)[0].abs().max().item() < 5.0
        huge = trained_looking(final_softcap=1e6, attn_softcap=1e6)
        plain = trained_looking()
        assert (huge(x)[0] - plain(x)[0]).abs().max().item() < 1e-4  # tanh(s / cap) * cap -> s: the capped path is attention


@pytest.mark.parametrize("options", [{"n_kv_head": 1}, {"rope_scaling": "yarn", "rope_factor": 2.0}, {"final_softcap": 10.0}])
def test_options_the_fused_cpu_block_runs_give_the_plain_formulas_gradients(options, monkeypatch):
    """Multi-query attention, scaled RoPE and a final cap keep eager CPU training on cpu_ops.block; the gradients are
    those of the plain formulas (what runs on CUDA)."""
    torch.manual_seed(0)
    model = Model(ModelConfig(**{**BASE, **options})).double()
    assert model.config.fusable
    x = torch.randint(0, 260, (3, 32))

    def loss_and_grads():
        model.zero_grad()
        loss = model(x, x)[1]
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    fused = loss_and_grads()
    monkeypatch.setattr(model_module, "CPU_OPS", False)
    plain = loss_and_grads()
    # the plain RMSNorm computes in float32 (HF's `.float()`), hence float32-sized relative differences (as tests/test_cpu_ops.py)
    assert abs(fused[0] - plain[0]) < 1e-6
    assert all((a - b).abs().max() <= 1e-6 * b.abs().max() for a, b in zip(fused[1], plain[1]))


def test_options_the_fused_block_cannot_run_take_the_plain_path():
    for options in NOT_EXPORTABLE.values():
        assert not ModelConfig(**{**BASE, **options}).fusable
    assert not ModelConfig(**{**BASE, "sliding_window": 8}).fusable


def test_learned_positions_cannot_be_evaluated_past_their_table():
    model = Model(ModelConfig(**{**BASE, "positions": "learned", "max_seq_len": 64}))
    with pytest.raises(ValueError, match="learned absolute positions end at 64"):
        model.set_max_seq_len(128)
    rope = Model(ModelConfig(**{**BASE, "max_seq_len": 64}))
    rope.set_max_seq_len(128)
    assert rope.rope_cos.shape[0] == 128 and rope(torch.zeros(1, 128, dtype=torch.long))[0].shape == (1, 128, 260)


def test_pretrain_params_reach_the_model_config():
    from stages.pretrain import Params, model_config

    cfg = model_config(Params(positions="alibi", sliding_window=32, global_every=2, attn_softcap=50.0, final_softcap=30.0, mlp="gelu",
                              n_kv_head=1), 260, {})
    assert (cfg.positions, cfg.sliding_window, cfg.global_every, cfg.attn_softcap, cfg.final_softcap, cfg.mlp, cfg.n_kv_head) == \
        ("alibi", 32, 2, 50.0, 30.0, "gelu", 1)
    with pytest.raises(ValueError, match="global_every"):
        Params(global_every=2)
    with pytest.raises(ValueError, match="rope_scaling"):
        Params(positions="alibi", rope_scaling="yarn", rope_factor=2.0)


# ---------------------------------------------------------------- what the ALiBi paper reports

L = 64  # training length; evaluated at L, 2L and 4L


def train_tiny(positions: str, train, steps: int = 300, batch: int = 16) -> Model:
    """A 2-layer, 64-wide byte-level model trained on `train` at length L: same seed, same batches for either
    positions, so the two differ only in how they encode position."""
    torch.manual_seed(0)
    model = Model(ModelConfig(vocab_size=256, n_layer=2, n_embd=64, n_head=4, n_kv_head=4, max_seq_len=L, positions=positions))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(steps):
        starts = torch.randint(0, len(train) - L - 1, (batch,), generator=torch.Generator().manual_seed(step)).tolist()
        rows = torch.stack([train[s:s + L + 1] for s in starts])
        loss = model(rows[:, :-1], rows[:, 1:])[1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def val_loss(model: Model, val, length: int) -> float:
    """Mean next-token loss over non-overlapping windows of `length` tokens of `val` (every token scored once), as the
    paper evaluates at L_valid > L_train."""
    model.set_max_seq_len(max(length, model.config.max_seq_len))
    n = (len(val) - 1) // length // 8 * 8
    x, y = val[:n * length].view(n, length), val[1:n * length + 1].view(n, length)
    with torch.no_grad():
        return sum(model(x[i:i + 8], y[i:i + 8])[1].item() for i in range(0, n, 8)) / (n // 8)


@pytest.mark.long  # 1.5-3.5 min on 2 shared cores (load from other users varies)
def test_alibi_extrapolates_to_twice_the_training_length_better_than_rope(shared_data):
    """Train at L = 64 bytes of tiny shakespeare (first 90 %), evaluate at L, 2L and 4L on the last 10 %. ALiBi's
    paper (Press et al. 2022, figure 1): sinusoidal and rotary models degrade past L_train, ALiBi's do not. Seen
    here (300 steps, seed 0): RoPE 2.240 -> 2.265 (2L) -> 2.672 (4L) nats; ALiBi 2.342 -> 2.339 -> 2.337.
    (RoPE fits better at L this early in training; the claim is about the change with length.)"""
    data = torch.tensor(list((shared_data / "text" / "tinyshakespeare.txt").read_bytes()), dtype=torch.long)
    split = int(len(data) * 0.9)
    train, val = data[:split], data[split:]
    table = {}
    for positions in ("rope", "alibi"):
        start = time.time()
        model = train_tiny(positions, train)
        table[positions] = [val_loss(model, val, n) for n in (L, 2 * L, 4 * L)]
        print(f"{positions:>5}: val loss at {L} / {2 * L} / {4 * L} tokens: " + " / ".join(f"{v:.3f}" for v in table[positions])
              + f"  (2L - L: {table[positions][1] - table[positions][0]:+.3f}; {time.time() - start:.0f} s)")
    rope, alibi = table["rope"], table["alibi"]
    assert alibi[1] - alibi[0] < rope[1] - rope[0]  # smaller degradation at 2L
    assert alibi[1] - alibi[0] < 0.01 and alibi[2] - alibi[0] < 0.01  # none to speak of, even at 4L
    assert rope[2] - rope[0] > 0.1  # while RoPE's grows with the length


# ---------------------------------------------------------------- through the pretrain stage

from tests.stages.test_pretrain import TINY, tokens  # noqa: E402, F401  (the tiny shakespeare token artifact fixture)


def test_pretrain_trains_options_end_to_end_and_says_when_transformers_cannot_load_them(tokens, tmp_path):  # noqa: F811
    """Multi-query attention with a sliding window trains and exports as Mistral with transformers' logits; an ALiBi
    model trains, generates its samples and loads in llmpipe, and the run says in one line why transformers cannot."""
    transformers = pytest.importorskip("transformers")
    import llmpipe
    from tests.conftest import run_cli

    small = {**TINY, "max_steps": 4, "eval_every": 0, "checkpoint_every": 0, "device": "cpu"}
    out = tmp_path / "mqa"
    llmpipe.run_stage("pretrain", [str(tokens / "tokens")], out, tokenizer=str(tokens / "tokenizer"),
                      **{**small, "n_kv_head": 1, "sliding_window": 16})
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "MistralForCausalLM" and hf.config.num_key_value_heads == 1
    ids = torch.tensor([list(range(5, 69))])  # seq_len 64: four windows of 16
    with torch.no_grad():
        assert (Model.from_checkpoint(out).eval()(ids)[0] - hf(ids).logits).abs().max().item() < 1e-4

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in small.items()]
    done = run_cli("pretrain", "--input", str(tokens / "tokens"), "--tokenizer", str(tokens / "tokenizer"), "--output", str(tmp_path / "alibi"),
                   "--positions", "alibi", *flags, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if "not in transformers" in line]
    assert len(notes) == 1 and "ALiBi: no Hugging Face Llama-family architecture" in notes[0]
    from llmpipe.artifacts.manifest import read_manifest

    assert read_manifest(tmp_path / "alibi")["samples"]["greedy"]  # generated with the KV cache and ALiBi's biases
    assert Model.from_checkpoint(tmp_path / "alibi").config.positions == "alibi"
