"""RMSNorm, RoPE and SwiGLU with hand-written backward passes, for eager training on CPU.

On CPU, autograd's graph of these formulas costs more than their arithmetic: every temporary is a
fresh allocation and a cache-cold pass, and every split of a fused projection comes back as a cat
in the backward pass. These functions compute the same values in fewer kernels and write each
gradient straight into one buffer. `model.py` uses them on CPU only; on CUDA the plain formulas
run (torch.compile fuses them there). tests/test_model.py checks values and gradients against the
plain formulas in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float):
        rstd = x.square().mean(-1, keepdim=True).add_(eps).rsqrt_()  # [..., 1]
        ctx.save_for_backward(x, rstd, weight)
        return (x * rstd).mul_(weight)

    @staticmethod
    def backward(ctx, grad):
        x, rstd, weight = ctx.saved_tensors
        xhat = x * rstd
        p = grad * xhat
        grad_weight = p.reshape(-1, x.size(-1)).sum(0)
        dot = torch.matmul(p, weight).unsqueeze(-1).div_(x.size(-1))  # mean(grad * weight * xhat) per row
        grad_x = torch.mul(grad, weight, out=p).addcmul_(xhat, dot, value=-1).mul_(rstd)  # reuses p's buffer
        return grad_x, grad_weight, None


def rms_norm(x, weight, eps: float):
    """weight * x / sqrt(mean(x^2) + eps) over the last dimension."""
    return _RMSNorm.apply(x, weight, eps)


def rotate_into(out, x, cos, sin):
    """out = x rotated pairwise, pairs (i, i + D/2) (HF's rotate-half layout); cos, sin broadcast to x's halves."""
    x1, x2 = x.chunk(2, dim=-1)
    o1, o2 = out.chunk(2, dim=-1)
    torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-1)  # x1 cos - x2 sin
    torch.mul(x2, cos, out=o2).addcmul_(x1, sin)  # x2 cos + x1 sin
    return out


class _QKVRope(torch.autograd.Function):
    """qkv [B, T, H + 2K, D] -> q [B, T, H, D], k [B, T, K, D] rotated by RoPE, v [B, T, K, D];
    the backward rotates dq, dk back (a rotation's inverse is its transpose: sin -> -sin) and writes
    dq, dk, dv into one [B, T, H + 2K, D] gradient: no split/cat round trip."""

    @staticmethod
    def forward(ctx, qkv, cos, sin, n_head: int, n_kv_head: int):
        H, K = n_head, n_kv_head
        ctx.save_for_backward(cos, sin)
        ctx.heads = (H, K)
        qk = rotate_into(qkv.new_empty(*qkv.shape[:2], H + K, qkv.size(-1)), qkv[:, :, :H + K], cos, sin)
        q, k = qk.split([H, K], dim=2)
        return q, k, qkv[:, :, H + K:].clone()

    @staticmethod
    def backward(ctx, dq, dk, dv):
        cos, sin = ctx.saved_tensors
        H, K = ctx.heads
        grad = dv.new_empty(*dv.shape[:2], H + 2 * K, dv.size(-1))
        rotate_into(grad[:, :, :H], dq, cos, -sin)
        rotate_into(grad[:, :, H:H + K], dk, cos, -sin)
        grad[:, :, H + K:].copy_(dv)
        return grad, None, None, None, None


def qkv_rope(qkv, cos, sin, n_head: int, n_kv_head: int):
    """Split a fused projection [B, T, H + 2K, D] into q, k (rotated; cos, sin [T, 1, D/2]) and v."""
    return _QKVRope.apply(qkv, cos, sin, n_head, n_kv_head)


class _SwiGLU(torch.autograd.Function):
    """h = [gate | up] (one fused projection) -> silu(gate) * up, gradient written into one buffer."""

    @staticmethod
    def forward(ctx, h):
        gate, up = h.chunk(2, dim=-1)
        act = F.silu(gate)
        ctx.save_for_backward(h, act)
        return act * up

    @staticmethod
    def backward(ctx, grad):
        h, act = ctx.saved_tensors
        gate, up = h.chunk(2, dim=-1)
        dh = torch.empty_like(h)
        dgate, dup = dh.chunk(2, dim=-1)
        torch.mul(grad, act, out=dup)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=dgate)
        return dh


def swiglu(h):
    """silu(gate) * up for h = [gate | up] along the last dimension."""
    return _SwiGLU.apply(h)
