"""The CPU kernels with hand-written backward passes give the plain formulas' values and gradients."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from llmpipe import cpu_ops  # noqa: E402
from llmpipe.positions import rope_cache  # noqa: E402


def grads(fn, *inputs):
    """Output and input gradients of fn for a fixed random upstream gradient."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    torch.manual_seed(1)
    torch.autograd.backward(outs, [torch.randn_like(o) for o in outs])
    return [o.detach() for o in outs], [t.grad for t in inputs]


def assert_same(a, b, tol=1e-10):
    (out_a, grad_a), (out_b, grad_b) = a, b
    for x, y in zip(out_a + grad_a, out_b + grad_b):
        assert x.shape == y.shape
        assert (x - y).abs().max().item() < tol


def rms_norm_formula(x, g, eps=1e-5):
    return g * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def test_rms_norm_matches_the_formula():
    torch.manual_seed(0)
    x, w = torch.randn(3, 5, 48, dtype=torch.float64) * 3, 1 + 0.1 * torch.randn(48, dtype=torch.float64)

    assert_same(grads(lambda x, w: cpu_ops.rms_norm(x, w, 1e-5), x, w), grads(rms_norm_formula, x, w))
    assert torch.autograd.gradcheck(lambda x, w: cpu_ops.rms_norm(x, w, 1e-5), (x[:1, :2].requires_grad_(), w.clone().requires_grad_()))


@pytest.mark.parametrize("heads", [(4, 4), (4, 2)])
def test_the_fused_block_matches_the_plain_block(heads, monkeypatch):
    """cpu_ops.block (RMSNorm gains folded into the weights, q/k rows permuted for RoPE, residuals inside the
    GEMMs, one hand-written backward) gives the plain Block's output and the gradients of x and of every
    parameter, with multi-head and grouped-query attention."""
    import llmpipe.model as model_module

    H, K = heads
    cfg = model_module.ModelConfig(vocab_size=11, n_layer=1, n_embd=32, n_head=H, n_kv_head=K, intermediate_size=40, max_seq_len=9)
    torch.manual_seed(0)
    block = model_module.Block(cfg).double()
    with torch.no_grad():  # gains away from 1, so that a gradient routed wrongly through them shows
        for norm in (block.input_layernorm, block.post_attention_layernorm):
            norm.weight.normal_(1.0, 0.2)
    x = torch.randn(2, 9, 32, dtype=torch.float64) * 3
    cos, sin = (t.double() for t in rope_cache(9, cfg.head_dim, 500.0))
    names, params = zip(*block.named_parameters())

    def run(x, *weights):
        rope = cpu_ops.rope_freqs(cos, sin, H + K) if model_module.fused_block(x, None) else (cos, sin)
        return torch.func.functional_call(block, dict(zip(names, weights)), (x, rope))

    fast = grads(run, x, *params)
    monkeypatch.setattr(model_module, "CPU_OPS", False)
    plain = grads(run, x, *params)
    # the plain RMSNorm computes in float32 (HF's `.float()`), hence float32-sized relative differences
    for a, b in zip(fast[0] + fast[1], plain[0] + plain[1]):
        assert a.shape == b.shape and (a - b).abs().max() <= 1e-6 * b.abs().max()


def test_the_model_gives_the_same_loss_and_gradients_with_and_without_cpu_ops(monkeypatch):
    """The plain formulas are what runs on CUDA: this keeps that path checked on a CPU-only machine."""
    import llmpipe.model as model_module

    torch.manual_seed(0)
    model = model_module.Model(model_module.ModelConfig(vocab_size=97, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=32)).double()
    x = torch.randint(0, 97, (3, 32))

    def loss_and_grads():
        model.zero_grad()
        loss = model(x, x)[1]
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    fast_loss, fast_grads = loss_and_grads()
    monkeypatch.setattr(model_module, "CPU_OPS", False)
    plain_loss, plain_grads = loss_and_grads()
    # the plain RMSNorm computes in float32 (HF's `.float()`), hence a float32-sized tolerance
    assert abs(fast_loss - plain_loss) < 1e-6
    assert all((a - b).abs().max() <= 1e-5 * b.abs().max() for a, b in zip(fast_grads, plain_grads))


def test_the_plain_path_trains_under_bf16_autocast(monkeypatch):
    """What CUDA runs (plain formulas, bf16 autocast), here under CPU autocast: dtypes must meet in
    attention and the loss must be the fp32 loss to bf16 precision."""
    import llmpipe.model as model_module

    monkeypatch.setattr(model_module, "CPU_OPS", False)
    torch.manual_seed(0)
    model = model_module.Model(model_module.ModelConfig(vocab_size=97, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=32))
    x = torch.randint(0, 97, (2, 32))
    fp32_loss = model(x, x)[1].item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, x)[1]
    loss.backward()
    assert loss.dtype == torch.float32 and abs(loss.item() - fp32_loss) < 0.05
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
