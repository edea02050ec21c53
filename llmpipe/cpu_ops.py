"""A Llama block's RMSNorm -> projection -> RoPE / SwiGLU as single autograd Functions with hand-written
backward passes, for eager training on CPU.

On CPU at small widths, autograd's graph of these formulas costs more than their arithmetic: every
temporary is a fresh allocation and a cache-cold pass, every node is Python and bookkeeping, and every
split of a fused projection comes back as a cat in the backward pass. Each Function here takes the
block's parameters in their HF layout and does one normalization, one GEMM for all its projections and
one elementwise pass after it, and writes each gradient straight into one buffer:
- the RMSNorm gain g is folded into the projection weight (W diag(g): a weight-sized multiply instead of
  an activation-sized one);
- q/k/v and gate/up each run as one GEMM on the concatenated weights;
- RoPE is one in-place complex multiply: the fused weight's q and k rows are put in interleaved pair
  order (the same permutation of q and k leaves every q.k product unchanged); the backward multiplies
  by the conjugate, the inverse rotation.
`model.py` uses them on CPU only; on CUDA and under torch.compile the plain formulas run (inductor fuses
them there). tests/test_cpu_ops.py checks values and gradients against the plain formulas in float64.
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


def _project(xn, w):
    """xn [..., C] @ w.T, through a 2-D GEMM."""
    return torch.mm(xn.flatten(0, -2), w.t()).unflatten(0, xn.shape[:-1])


def _project_backward(grad, xn, w):
    """Gradients of xn and w from grad [..., O]."""
    g2 = grad.flatten(0, -2)
    return torch.mm(g2, w).unflatten(0, xn.shape[:-1]), torch.mm(g2.t(), xn.flatten(0, -2))


@functools.lru_cache(maxsize=None)
def _interleaved_rows(n_rotated: int, n_plain: int, head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row order of the fused [q; k; v] weight putting each RoPE pair (i, i + D/2) of every q and k head
    next to each other (2i, 2i + 1), v rows in their order; and its inverse."""
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


class _NormQKVRope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gain, wq, wk, wv, freqs, n_head: int, n_kv_head: int, eps: float):
        H, K, D = n_head, n_kv_head, wq.size(0) // n_head
        rows, inverse_rows = _interleaved_rows(H + K, K, D, x.device)
        xn, rstd = _normalize(x, eps)
        w, wg = _gained((wq, wk, wv), gain, rows)
        qkv = _project(xn, wg).unflatten(-1, (H + 2 * K, D))  # [B, T, H + 2K, D]
        _as_complex(qkv[:, :, :H + K]).mul_(freqs)
        ctx.save_for_backward(x, xn, rstd, gain, w, wg, freqs, inverse_rows)
        ctx.sizes = (wq.size(0), wk.size(0), wv.size(0))
        return qkv.split([H, K, K], dim=2)

    @staticmethod
    def backward(ctx, dq, dk, dv):
        x, xn, rstd, gain, w, wg, freqs, inverse_rows = ctx.saved_tensors
        H, K = dq.size(2), dk.size(2)
        grad = dv.new_empty(*dv.shape[:2], H + 2 * K, dv.size(-1))
        back = freqs.conj()
        torch.mul(_as_complex(dq), back[:, :H], out=_as_complex(grad[:, :, :H]))
        torch.mul(_as_complex(dk), back[:, H:], out=_as_complex(grad[:, :, H:H + K]))
        grad[:, :, H + K:].copy_(dv)
        grad_xn, grad_wg = _project_backward(grad.flatten(-2), xn, wg)
        grad_gain, (grad_wq, grad_wk, grad_wv) = _gained_backward(grad_wg, w, gain, ctx.sizes, inverse_rows)
        grad_x, _ = _normalize_backward(grad_xn, x, rstd)
        return grad_x, grad_gain, grad_wq, grad_wk, grad_wv, None, None, None, None


def rope_freqs(cos, sin, n_rotated: int):
    """cos, sin [T, D/2] -> e^(i angle) [T, n_rotated, D/2], one row per rotated head: a multiply whose
    operands run contiguously over heads and dimensions is ~1.4x faster than one broadcast over heads."""
    return torch.complex(cos, sin)[:, None].expand(-1, n_rotated, -1).contiguous()


def norm_qkv_rope(x, gain, wq, wk, wv, freqs, n_head: int, n_kv_head: int, eps: float):
    """x [B, T, C] -> RMSNorm (gain, eps) -> q [B, T, H, D], k [B, T, K, D] rotated by RoPE (HF's pairs
    (i, i + D/2); freqs from `rope_freqs(cos, sin, H + K)`), v [B, T, K, D].

    q and k come out with each head's dimensions in interleaved pair order: the same permutation of
    both leaves every q.k product, and so attention, unchanged."""
    return _NormQKVRope.apply(x, gain, wq, wk, wv, freqs, n_head, n_kv_head, eps)


class _NormSwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gain, w_gate, w_up, eps: float):
        xn, rstd = _normalize(x, eps)
        w, wg = _gained((w_gate, w_up), gain)
        h = _project(xn, wg)  # [gate | up]
        gate, up = h.chunk(2, dim=-1)
        act = F.silu(gate)
        ctx.save_for_backward(x, xn, rstd, gain, w, wg, h, act)
        ctx.size = w_gate.size(0)
        return act * up

    @staticmethod
    def backward(ctx, grad):
        x, xn, rstd, gain, w, wg, h, act = ctx.saved_tensors
        gate, up = h.chunk(2, dim=-1)
        dh = torch.empty_like(h)
        dgate, dup = dh.chunk(2, dim=-1)
        torch.mul(grad, act, out=dup)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=dgate)
        grad_xn, grad_wg = _project_backward(dh, xn, wg)
        grad_gain, (grad_w_gate, grad_w_up) = _gained_backward(grad_wg, w, gain, (ctx.size, ctx.size))
        grad_x, _ = _normalize_backward(grad_xn, x, rstd)
        return grad_x, grad_gain, grad_w_gate, grad_w_up, None


def norm_swiglu(x, gain, w_gate, w_up, eps: float):
    """x [..., C] -> RMSNorm (gain, eps) -> silu(x W_gate^T) * (x W_up^T) [..., I]."""
    return _NormSwiGLU.apply(x, gain, w_gate, w_up, eps)
