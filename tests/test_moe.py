"""Mixture of experts (llmpipe/moe.py): the load-balancing loss and expert load are the formulas (transformers'
load_balancing_loss_func as the reference); FLOPs per token are those of k experts whatever the number of experts;
the export is Mixtral with transformers' logits; a capacity factor caps each expert and dropped tokens get nothing
from it; a checkpoint resumes exactly, loads and generates; on real text the load-balancing loss evens expert load."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest

from tests.test_model import shakespeare_ids
from tests.test_model_options import BASE, trained_looking

torch = pytest.importorskip("torch")

import llmpipe.model as model_module  # noqa: E402
from llmpipe.model import Model, ModelConfig  # noqa: E402
from llmpipe.moe import MoE, router_loss  # noqa: E402

MOE = {"n_experts": 8, "experts_per_token": 2}


def gate_logits(model, x) -> list:
    """Each layer's router logits [N, E] in a forward of x."""
    seen = []
    hooks = [block.mlp.gate.register_forward_hook(lambda m, i, o: seen.append(o.detach())) for block in model.model.layers]
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def test_the_load_balancing_loss_and_expert_load_are_the_formulas():
    transformers = pytest.importorskip("transformers")
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    model = trained_looking(**MOE, router_aux_loss_coef=0.02).train()
    x = torch.randint(4, 260, (2, 48))
    logits = gate_logits(model, x)
    aux, metrics = router_loss(model)
    # by hand: f_i = share of the N x layers tokens with expert i among their top 2, P_i = mean router probability
    probs = torch.softmax(torch.cat(logits).float(), dim=-1)  # [2 * 96, 8]
    chosen = probs.topk(2, dim=-1).indices
    f = torch.zeros(8).index_add_(0, chosen.flatten(), torch.ones(chosen.numel())) / probs.shape[0]
    by_hand = 8 * (f * probs.mean(0)).sum()
    reference = load_balancing_loss_func(tuple(logits), 8, 2)
    print(f"load-balancing loss: llmpipe {metrics['moe_aux_loss']:.6f}, by hand {by_hand:.6f}, transformers {reference:.6f} "
          f"(2 when perfectly even); loads {[round(float(metrics[f'moe_load/{i}']), 4) for i in range(8)]}")
    assert metrics["moe_aux_loss"].item() == pytest.approx(by_hand.item(), abs=1e-6)
    assert metrics["moe_aux_loss"].item() == pytest.approx(reference.item(), abs=1e-6)
    assert aux.item() == pytest.approx(0.02 * by_hand.item(), abs=1e-7) and aux.requires_grad
    for i in range(8):  # each expert's share of the routed tokens, the two layers averaged
        assert metrics[f"moe_load/{i}"].item() == pytest.approx(f[i].item() / 2, abs=1e-6)
    per_layer = [torch.bincount(l.topk(2, dim=-1).indices.flatten(), minlength=8).float() for l in logits]
    cv = sum((c.std(unbiased=False) / c.mean()).item() for c in per_layer) / 2
    assert metrics["moe_load_cv"].item() == pytest.approx(cv, abs=1e-6)
    # the loss reaches the router: its gradient is that of 0.02 x the formula
    aux.backward()
    assert model.model.layers[0].mlp.gate.weight.grad.abs().sum() > 0
    # read once; evaluation and a frozen model (a reference, a teacher) record nothing
    assert router_loss(model) == (0.0, {})
    with torch.no_grad():
        model(x)
    model.eval()(x)
    assert router_loss(model) == (0.0, {})


def forward_flops(model, x) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def test_flops_per_token_are_those_of_k_experts_whatever_the_number_of_experts(monkeypatch):
    """Measured on a forward: n experts top k = the dense model + (k - 1) more MLPs + the router (2 x C x n per token),
    per layer; so 8 experts top 2 costs 2 MLPs, not 8. estimate_flops (training: 3 x the forward) counts the same."""
    monkeypatch.setattr(model_module, "CPU_OPS", False)  # the plain formulas, which FlopCounterMode sees whole
    x = torch.randint(4, 260, (2, 64))
    N, L, C = x.numel(), BASE["n_layer"], BASE["n_embd"]
    dense = trained_looking()
    I = dense.config.intermediate_size
    mlp = 2 * 3 * C * I  # one SwiGLU MLP's forward FLOPs per token
    base = forward_flops(dense, x)
    for E, k in ((2, 2), (4, 2), (8, 2), (8, 1), (16, 2)):
        moe = trained_looking(n_experts=E, experts_per_token=k)
        measured = forward_flops(moe, x)
        print(f"{E} experts top {k}: {measured / N:,.0f} forward FLOPs per token (dense {base / N:,.0f}; "
              f"its MLPs {L * mlp:,}, the router {L * 2 * C * E:,} per token)")
        assert measured == base + N * L * ((k - 1) * mlp + 2 * C * E)
        assert moe.estimate_flops(64) - dense.estimate_flops(64) == 3 * (measured - base) / N


@pytest.mark.parametrize("options", [{"tie_embeddings": True}, {"tie_embeddings": False}, {"sliding_window": 16, "experts_per_token": 1}],
                         ids=["tied", "untied", "window-top1"])
def test_the_export_is_mixtral_with_transformers_logits(tmp_path, shared_data, options):
    transformers = pytest.importorskip("transformers")
    from llmpipe.artifacts.checkpoint import save_checkpoint

    model = trained_looking(**{**MOE, **options})
    save_checkpoint(tmp_path / "ck", model.state_dict(), model.config.to_hf())
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ck").eval()
    assert type(hf).__name__ == "MixtralForCausalLM"
    x = shakespeare_ids(shared_data, 400)  # [2, 200]
    with torch.no_grad():
        difference = (model(x)[0] - hf(x).logits).abs().max().item()
    print(f"{options}: MixtralForCausalLM, max |logit difference| {difference:.2e}")
    assert difference < 1e-5
    # transformers' own save is the same layout (fused 3-D experts), and llmpipe reads its config.json as the same model
    hf.save_pretrained(tmp_path / "hf")
    config = {k: v for k, v in json.loads((tmp_path / "hf" / "config.json").read_text()).items() if k != "llmpipe"}
    again = ModelConfig.from_hf(config)
    assert (again.n_experts, again.experts_per_token, again.sliding_window) == (8, model.config.experts_per_token, model.config.sliding_window)
    loaded = Model.from_checkpoint(tmp_path / "hf").eval()
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], model(x)[0])


@pytest.mark.parametrize("options, said", [({"mlp": "gelu"}, "GELU"), ({"sliding_window": 8, "global_every": 2}, "alternating"),
                                           ({"positions": "alibi"}, "ALiBi")])
def test_a_mixture_transformers_cannot_compute_says_so_in_one_line(tmp_path, options, said):
    from llmpipe.artifacts.checkpoint import save_checkpoint

    cfg = ModelConfig(**{**BASE, **MOE, **options})
    reason = cfg.export_blocker()
    assert said in reason and "\n" not in reason and cfg.to_hf()["model_type"] == "llmpipe"
    save_checkpoint(tmp_path / "ck", Model(cfg).state_dict(), cfg.to_hf())
    assert Model.from_checkpoint(tmp_path / "ck").config == cfg


def test_a_capacity_factor_caps_each_expert_and_dropped_tokens_get_nothing_from_it():
    """c = 0.5, 4 experts top 2, 64 tokens: each expert takes at most ceil(0.5 * 64 * 2 / 4) = 16 assignments, every
    token's first choice before any second choice, then in token order; a dropped assignment adds nothing (the other
    expert's weight is not renormalised), a token with both dropped gets exactly 0 (the residual carries it). In
    evaluation the same layer is dropless."""
    torch.manual_seed(0)
    moe = MoE(ModelConfig(**{**BASE, "n_experts": 4, "experts_per_token": 2, "capacity_factor": 0.5})).train()
    with torch.no_grad():
        moe.gate.weight.normal_(0, 0.3)  # uneven routing, as a trained router's
    x = torch.randn(1, 64, BASE["n_embd"])
    processed = []
    moe.experts.register_forward_hook(lambda m, inputs, out: processed.append((inputs[0], len(inputs[1]))))
    out = moe(x)[0].detach()  # with grad: a training forward records its routing
    _, metrics = router_loss(moe)
    first = [n for _, n in processed]

    probs = torch.softmax(moe.gate(x[0]), dim=-1)
    weights, chosen = probs.topk(2, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    capacity = math.ceil(0.5 * 64 * 2 / 4)
    expected, kept = torch.zeros_like(out), torch.zeros(64, 2, dtype=torch.bool)
    for e in range(4):
        queue = [(n, j) for j in range(2) for n in range(64) if chosen[n, j] == e][:capacity]
        for n, j in queue:
            kept[n, j] = True
            with torch.no_grad():
                expected[n] += weights[n, j] * moe.experts(e, x[0, n:n + 1])[0]
    counts = torch.bincount(chosen.flatten(), minlength=4).tolist()
    print(f"routed per expert {counts}, capacity {capacity}, processed {first}, "
          f"dropped {metrics['moe_dropped']:.3f}, tokens with both choices dropped {(~kept).all(1).sum().item()}")
    assert max(counts) > capacity  # the cap binds
    assert len(first) == 4 and max(first) <= capacity and sum(first) == kept.sum()
    assert torch.allclose(out, expected, atol=1e-6)
    both_dropped = (~kept).all(1)
    assert both_dropped.any() and torch.equal(out[both_dropped], torch.zeros_like(out[both_dropped]))
    assert metrics["moe_dropped"] == pytest.approx(1 - kept.sum().item() / 128)
    # evaluation: dropless, every routed token processed
    processed.clear()
    with torch.no_grad():
        moe.eval()(x)
    assert [n for _, n in processed] == [c for c in counts if c]


def test_a_mixture_checkpoint_resumes_exactly_loads_and_generates(tmp_path, shared_data):
    """Through the one training loop: a run stopped at step 3 and resumed logs the losses and expert loads of one that
    never stopped; metrics.jsonl has the load-balancing loss and each expert's load; the checkpoint loads with
    Model.from_checkpoint and its cached generation (forward with a KV cache, and Model.decode) gives the tokens and
    logits of full forwards."""
    from llmpipe.train.dist import Dist
    from llmpipe.train.loop import LoopConfig, train
    from llmpipe.train.optim import make_optimizer

    ids = shakespeare_ids(shared_data, 6 * 4 * 33).view(6, 4, 33)
    cfg = ModelConfig(**{**BASE, "n_experts": 4, "experts_per_token": 2, "capacity_factor": 1.25})

    def run(out, steps):
        out.mkdir(exist_ok=True)
        torch.manual_seed(0)
        model = Model(cfg)
        with contextlib.redirect_stderr(io.StringIO()):
            train(model, make_optimizer(model, 3e-3, 0.1, device="cpu"), lambda s: 3e-3,
                  lambda step: [(ids[step, :, :-1], ids[step, :, 1:])], lambda m, batch: m(*batch)[1],
                  out, LoopConfig(max_steps=steps, checkpoint_every=3), Dist(0, 0, 1, "cpu"), config_json=cfg.to_hf())
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    straight = run(tmp_path / "a", 6)
    run(tmp_path / "b", 3)
    resumed = run(tmp_path / "b", 6)
    keys = ["loss", "moe_aux_loss", "moe_load_cv", "moe_dropped", *(f"moe_load/{i}" for i in range(4))]
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]
    last = straight[-1]
    print("step 6:", {k: last[k] for k in keys})
    assert sum(last[f"moe_load/{i}"] for i in range(4)) == pytest.approx(1, abs=1e-4) and 0 < last["moe_dropped"] < 1

    model = Model.from_checkpoint(tmp_path / "b" / "checkpoints" / "step-6").eval()
    prompt = ids[0, :2, :8]
    cached, full = model.generate(prompt, 12), model.generate(prompt, 12, use_cache=False)
    assert torch.equal(cached, full)
    with torch.no_grad():
        cache = model.new_cache()
        model.decode(cached[:, :10], cache)
        step = model.decode(cached[:, 10:11], cache)
        assert torch.allclose(step, model(cached[:, :11])[0][:, -1], atol=1e-5)


def test_pretrain_params_make_a_mixture():
    from stages.pretrain import Params, model_config

    cfg = model_config(Params(n_experts=8, experts_per_token=2, router_aux_loss_coef=0.02, capacity_factor=1.25), 260, {})
    assert (cfg.n_experts, cfg.experts_per_token, cfg.router_aux_loss_coef, cfg.capacity_factor, cfg.fusable) == (8, 2, 0.02, 1.25, False)
    assert model_config(Params(), 260, {}).n_experts == 0
    with pytest.raises(ValueError, match="experts_per_token"):
        Params(n_experts=4, experts_per_token=5)
    with pytest.raises(ValueError, match="capacity_factor"):
        ModelConfig(**BASE, n_experts=4, capacity_factor=-1.0)


@pytest.mark.long
def test_the_load_balancing_loss_evens_expert_load_on_real_text(tmp_path, shared_data):
    """8 experts top 2, 2 layers, d 64, byte-level tiny shakespeare, 200 steps through the training loop, without and
    with the load-balancing loss (0.01, Switch's): each layer's expert load on held-out text, as the coefficient of
    variation (0: even). Without it routing concentrates on a few experts; with it the load is clearly more even."""
    from llmpipe.train.dist import Dist
    from llmpipe.train.loop import LoopConfig, train
    from llmpipe.train.optim import lr_at, make_optimizer

    text = torch.tensor(list((shared_data / "text" / "tinyshakespeare.txt").read_bytes()[:400_000]), dtype=torch.long)
    train_text, held_out = text[:360_000], text[360_000:360_000 + 16 * 64].view(16, 64)
    steps, B, T = 200, 8, 64

    def loads(model):
        """[layers, experts]: each expert's share of the held-out tokens' routing."""
        with torch.no_grad():
            logits = gate_logits(model.eval(), held_out)
        return torch.stack([torch.bincount(l.topk(2, -1).indices.flatten(), minlength=8) / l.numel() * 4 for l in logits])

    def cv(load):
        return (load.std(-1, unbiased=False) / load.mean(-1)).mean().item()

    results = {}
    for seed in (0, 1, 2):
        starts = torch.randint(0, len(train_text) - T - 1, (steps, B), generator=torch.Generator().manual_seed(seed))

        def micro_batches(step):
            rows = torch.stack([train_text[i:i + T + 1] for i in starts[step]])
            yield rows[:, :-1], rows[:, 1:]

        for coef in (0.0, 0.01):
            torch.manual_seed(seed)
            model = Model(ModelConfig(**{**BASE, **MOE, "n_kv_head": 4, "max_seq_len": T, "router_aux_loss_coef": coef}))
            before = loads(model)
            schedule = lambda s: lr_at(s, lr=1e-3, min_lr=1e-4, warmup_steps=20, max_steps=steps, schedule="cosine")  # noqa: E731
            (tmp_path / f"{seed}-{coef}").mkdir()
            with contextlib.redirect_stderr(io.StringIO()):
                train(model.train(), make_optimizer(model, 1e-3, 0.1, device="cpu"), schedule, micro_batches, lambda m, b: m(*b)[1],
                      tmp_path / f"{seed}-{coef}", LoopConfig(max_steps=steps),
                      Dist(0, 0, 1, "cpu"), config_json=model.config.to_hf())
            after = loads(model)
            results[seed, coef] = cv(after)
            print(f"seed {seed}, aux coef {coef}: load CV before {cv(before):.3f}, after {cv(after):.3f}; per-layer loads after "
                  f"{[[round(v, 3) for v in row] for row in after.tolist()]}")
    # seeds 0-5 when written: CV 0.88, 0.99, 1.12, 1.26, 1.07, 0.92 without, 0.71-0.72, 0.63, 0.56, 0.66, 0.60, 0.64 with
    # (ratios 0.50 to 0.82; the three seeds here pooled: 0.64). Room for another CPU's rounding: each seed more even
    # with the loss than without, and the three pooled by a fifth at least.
    for seed in (0, 1, 2):
        assert results[seed, 0.01] < results[seed, 0.0], results
    assert sum(results[s, 0.01] for s in (0, 1, 2)) < 0.8 * sum(results[s, 0.0] for s in (0, 1, 2)), results


@pytest.mark.parametrize("mlp", ["swiglu", "gelu", "geglu"])
def test_one_expert_is_the_dense_mlp_of_each_kind(mlp):
    """n_experts 1, top-1: the router's weight is 1, so the model is the dense one with the expert's weights (each MLP
    kind's activation, GeGLU's included)."""
    torch.manual_seed(0)
    shape = dict(n_layer=1, n_embd=32, n_head=2, n_kv_head=2, vocab_size=100, max_seq_len=16, mlp=mlp)
    moe, dense = Model(ModelConfig(**shape, n_experts=1, experts_per_token=1)).eval(), Model(ModelConfig(**shape)).eval()
    weights = {k: v for k, v in moe.state_dict().items() if ".mlp." not in k}
    experts, I = moe.model.layers[0].mlp.experts, moe.config.intermediate_size
    if mlp == "gelu":
        weights["model.layers.0.mlp.up_proj.weight"] = experts.up_proj[0]
    else:
        weights["model.layers.0.mlp.gate_proj.weight"], weights["model.layers.0.mlp.up_proj.weight"] = experts.gate_up_proj[0].split(I)
    weights["model.layers.0.mlp.down_proj.weight"] = experts.down_proj[0]
    dense.load_state_dict(weights, strict=False)
    x = torch.randint(0, 100, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(moe(x)[0], dense(x)[0], atol=1e-6, rtol=0)  # the dense SwiGLU runs cpu_ops.block: another order of sums
