"""A Llama block as one autograd Function with a hand-written backward pass, for eager training on CPU.

On CPU at small widths, autograd's graph of a block costs about as much as its elementwise arithmetic:
~15 nodes per layer, each op a dispatch, a fresh allocation and a cache-cold pass, every split of a fused
projection a cat in the backward pass. `block` does the same arithmetic in fewer, larger steps:
- q/k/v and gate/up each run as one GEMM on the concatenated weights, and the residual adds ride in the
  o_proj and down GEMMs (addmm);
- each RMSNorm gain g is folded into the weight that follows it (W diag(g): a weight-sized multiply
  instead of an activation-sized one);
- RoPE is one in-place complex multiply: the fused weight's q and k rows are put in interleaved pair
  order (the same permutation of q and k leaves every q.k product unchanged); the backward multiplies
  by the conjugate, the inverse rotation;
- attention is aten's CPU flash kernel and its backward, called directly (grouped-query heads natively);
- every gradient is written straight into one buffer per fused weight.
The parameters stay the HF-named, HF-layout ones: checkpoints do not change. `model.py` uses `block` on
eager CPU without a KV cache; on CUDA, under torch.compile (inductor fuses the plain formulas there) and
in cached generation the plain formulas run. tests/test_cpu_ops.py checks values and gradients against
them in float64.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def _normalize(x, eps: float):
    """x / rms(x) over the last dimension, and rstd = 1 / rms(x) [..., 1]."""
    rstd = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.size(-1)).add_(eps).rsqrt_()
    return x * rstd, rstd


def _normalize_backward(grad_xn, x, rstd, weight=None):
    """Gradient of x (and of the gain, if any) through weight * x * rstd(x)."""
    # LayerNorm's fused backward with mean 0 is this backward minus rstd * mean(grad * weight): one ATen
    # kernel and a row reduction instead of seven elementwise passes
    grad_x, grad_weight, _ = torch.ops.aten.native_layer_norm_backward(
        grad_xn, x, [x.size(-1)], torch.zeros_like(rstd), rstd, weight, None, [True, weight is not None, False])
    mean = grad_xn.mean(-1, keepdim=True) if weight is None else torch.matmul(grad_xn, weight).unsqueeze(-1).div_(x.size(-1))
    return grad_x.addcmul_(rstd, mean), grad_weight


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float):
        xn, rstd = _normalize(x, eps)
        ctx.save_for_backward(x, rstd, weight)
        return xn.mul_(weight)

    @staticmethod
    def backward(ctx, grad):
        x, rstd, weight = ctx.saved_tensors
        return *_normalize_backward(grad, x, rstd, weight), None


def rms_norm(x, weight, eps: float):
    """weight * x / sqrt(mean(x^2) + eps) over the last dimension."""
    return _RMSNorm.apply(x, weight, eps)


def _gained(weights, gain, rows=None):
    """cat(weights) [O, C], rows reordered by `rows`, and the same with the norm gain folded in: W diag(g)."""
    w = torch.cat(weights)
    if rows is not None:
        w = w.index_select(0, rows)
    return w, w * gain


def _gained_backward(grad_wg, w, gain, sizes, inverse_rows=None):
    """Gradients of the gain and of each weight (in their order before `_gained`'s `rows`) from the
    gradient of W diag(g) (overwritten)."""
    grad_gain = (grad_wg * w).sum(0)
    grad_w = grad_wg.mul_(gain)
    if inverse_rows is not None:
        grad_w = grad_w.index_select(0, inverse_rows)
    return grad_gain, grad_w.split(sizes)


@functools.lru_cache(maxsize=None)
def _interleaved_rows(n_rotated: int, n_plain: int, head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row order of the fused [q; k; v] weight putting each RoPE pair (i, i + D/2) of every q and k head
    next to each other (2i, 2i + 1), v rows in their order; and its inverse. Made outside inference mode: a cached
    tensor first made during generation (llmpipe/decoding.py) would otherwise refuse to join autograd later."""
    with torch.inference_mode(False):
        return _row_orders(n_rotated, n_plain, head_dim, device)


def _row_orders(n_rotated: int, n_plain: int, head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    half = head_dim // 2
    within = torch.stack((torch.arange(half), torch.arange(half) + half), dim=1).reshape(-1)  # 0, D/2, 1, D/2 + 1, ...
    rotated = (torch.arange(n_rotated)[:, None] * head_dim + within).reshape(-1)
    order = torch.cat((rotated, torch.arange(n_rotated * head_dim, (n_rotated + n_plain) * head_dim)))
    return order.to(device), torch.argsort(order).to(device)


def _as_complex(x):
    """[..., D] real with interleaved pairs -> [..., D/2] complex view (a copy only if x's strides forbid a view:
    attention's gradients arrive as transposed views, which need none)."""
    if x.stride(-1) != 1 or any(s % 2 for s in x.stride()[:-1]) or x.storage_offset() % 2:
        x = x.contiguous()
    return torch.view_as_complex(x.unflatten(-1, (-1, 2)))


def rope_freqs(cos, sin, n_rotated: int):
    """cos, sin [T, D/2] -> e^(i angle) [T, n_rotated, D/2], one row per rotated head: a multiply whose
    operands run contiguously over heads and dimensions is ~1.4x faster than one broadcast over heads."""
    return torch.complex(cos, sin)[:, None].expand(-1, n_rotated, -1).contiguous()


class _Block(torch.autograd.Function):
    """x -> h = x + o_proj(attention(rope(qkv(norm1(x))))) -> h + down(swiglu(gate_up(norm2(h)))), one autograd
    node: the residual adds ride in the GEMMs (addmm) and attention is aten's flash kernel called directly."""

    @staticmethod
    def forward(ctx, x, g1, wq, wk, wv, wo, g2, w_gate, w_up, w_down, freqs, n_head: int, n_kv_head: int, eps: float):
        B, T, C = x.shape
        H, K, D = n_head, n_kv_head, wq.size(0) // n_head
        rows, inverse_rows = _interleaved_rows(H + K, K, D, x.device)
        x = x.reshape(B * T, C)
        # attention: q, k, v [B, T, heads, D] views of one GEMM's output, q and k rotated in place
        xn1, r1 = _normalize(x, eps)
        w1, w1g = _gained((wq, wk, wv), g1, rows)
        qkv = torch.mm(xn1, w1g.t()).view(B, T, H + 2 * K, D)
        _as_complex(qkv[:, :, :H + K]).mul_(freqs)
        q, k, v = (t.transpose(1, 2) for t in qkv.split([H, K, K], dim=2))  # [B, heads, T, D]
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True)  # GQA: K < H is fine
        y = o.transpose(1, 2).reshape(B * T, H * D)
        h = torch.addmm(x, y, wo.t())  # x + o_proj(y)
        # SwiGLU MLP
        xn2, r2 = _normalize(h, eps)
        w2, w2g = _gained((w_gate, w_up), g2)
        gu = torch.mm(xn2, w2g.t())  # [gate | up]
        gate, up = gu.chunk(2, dim=-1)
        act = F.silu(gate)
        a = act * up
        out = torch.addmm(h, a, w_down.t())
        ctx.save_for_backward(x, xn1, r1, g1, w1, w1g, qkv, o, lse, y, wo, h, xn2, r2, g2, w2, w2g, gu, act, a, w_down,
                              freqs, inverse_rows)
        ctx.sizes = (wq.size(0), wk.size(0), wv.size(0)), (w_gate.size(0), w_up.size(0)), (H, K)
        return out.view(B, T, C)

    @staticmethod
    def backward(ctx, grad):
        (x, xn1, r1, g1, w1, w1g, qkv, o, lse, y, wo, h, xn2, r2, g2, w2, w2g, gu, act, a, w_down,
         freqs, inverse_rows) = ctx.saved_tensors
        qkv_sizes, gate_up_sizes, (H, K) = ctx.sizes
        B, T, C = grad.shape
        grad = grad.reshape(B * T, C)
        # MLP
        grad_a = torch.mm(grad, w_down)
        grad_w_down = torch.mm(grad.t(), a)
        grad_gu = torch.empty_like(gu)
        grad_gate, grad_up = grad_gu.chunk(2, dim=-1)
        torch.mul(grad_a, act, out=grad_up)
        gate, up = gu.chunk(2, dim=-1)
        torch.ops.aten.silu_backward.grad_input(grad_a.mul_(up), gate, grad_input=grad_gate)
        grad_xn2 = torch.mm(grad_gu, w2g)
        grad_g2, (grad_w_gate, grad_w_up) = _gained_backward(torch.mm(grad_gu.t(), xn2), w2, g2, gate_up_sizes)
        grad_h = _normalize_backward(grad_xn2, h, r2)[0].add_(grad)
        # attention
        grad_o = torch.mm(grad_h, wo).view(B, T, H, -1).transpose(1, 2)  # [B, H, T, D]
        grad_wo = torch.mm(grad_h.t(), y)
        q, k, v = (t.transpose(1, 2) for t in qkv.split([H, K, K], dim=2))
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(grad_o, q, k, v, o, lse, 0.0, True)
        grad_qkv = torch.empty_like(qkv)  # [B, T, H + 2K, D]
        back = freqs.conj_physical()
        torch.mul(_as_complex(dq.transpose(1, 2)), back[:, :H], out=_as_complex(grad_qkv[:, :, :H]))
        torch.mul(_as_complex(dk.transpose(1, 2)), back[:, H:], out=_as_complex(grad_qkv[:, :, H:H + K]))
        grad_qkv[:, :, H + K:].copy_(dv.transpose(1, 2))
        grad_qkv = grad_qkv.view(B * T, -1)
        grad_xn1 = torch.mm(grad_qkv, w1g)
        grad_g1, (grad_wq, grad_wk, grad_wv) = _gained_backward(torch.mm(grad_qkv.t(), xn1), w1, g1, qkv_sizes, inverse_rows)
        grad_x = _normalize_backward(grad_xn1, x, r1)[0].add_(grad_h)
        return (grad_x.view(B, T, C), grad_g1, grad_wq, grad_wk, grad_wv, grad_wo, grad_g2, grad_w_gate, grad_w_up, grad_w_down,
                None, None, None, None)


def block(x, g1, wq, wk, wv, wo, g2, w_gate, w_up, w_down, freqs, n_head: int, n_kv_head: int, eps: float):
    """A Llama block on x [B, T, C] (no KV cache): the two RMSNorm gains, the attention projections, the MLP
    projections (all HF layout), RoPE from `rope_freqs(cos, sin, H + K)`, causal attention."""
    return _Block.apply(x, g1, wq, wk, wv, wo, g2, w_gate, w_up, w_down, freqs, n_head, n_kv_head, eps)
