"""Weight-only quantization of linear layers: the integer grids, int4 packing, and `QuantLinear`.

Schemes (each weight row is an output channel; groups run along the input features):
- int8: per output channel, symmetric: q = round(w / s) in [-127, 127], s = max|w| / 127.
- int4: groups of `group_size` input features per row (0: one group per row), 16 levels q in [0, 15]:
  asymmetric (the default): s = (max - min) / 15 over the group (0 always inside the range), zero point
  z = round(-min / s), w ~ (q - z) * s; symmetric: s = 2 max|w| / 15, z = 8 (GPTQ's grid). The group
  size must divide in_features of every quantized layer (a model with n_embd 64 takes 64 or 32, not 128).

Scales are stored as float16 (as GPTQ and llama.cpp store them) and the integers are rounded with the
float16 scale, so what is stored is what was measured. A checkpoint holds per quantized layer P:
  P.qweight  int8 [out, in] (int8), or uint8 [out, in / 2] (int4: column 2j in the low nibble, 2j+1 in the high)
  P.scales   float16 [out] (int8), or [out, in / group_size] (int4)
  P.qzeros   uint8 [out, in / group_size] (asymmetric int4 only)
and config.json's `quantization` entry names the scheme and the layers. This is llmpipe's layout, not
auto-gptq's (which packs eight int4 into an int32): transformers does not load it.

Which kernel runs where (`QuantLinear.forward`), measured with torch 2.13 on a 2-core AVX-512 CPU:
- CPU, bf16/fp16 activations (a bf16 model, or CPU autocast): torch's weight-only kernels,
  `torch._weight_int8pack_mm` (int8) and `torch._weight_int4pack_mm_for_cpu` (int4, weights repacked once
  on first use); at batch 1 they beat fp32 F.linear 1.5-3x on a 1024 x 384 layer.
- CPU, fp32 activations (the default): dequantize on the fly. The same kernels accept fp32 but run a
  scalar reference loop there, 15-30x slower than F.linear, so they are not used for fp32.
- CUDA and other devices: dequantize on the fly (no GPU here to test torch's CUDA kernels on).
torchao (0.18) wraps the same int8 op on CPU and has no CPU int4 path for its Int4WeightOnlyConfig, so
it adds nothing here.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# --- the integer grids -------------------------------------------------------------------------------------


def grid_params(w: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each row of w [..., g] (the last dim is one group): float tensors [...]."""
    w = w.float()
    if bits == 8:  # symmetric, signed
        scale = w.abs().amax(-1) / 127
        zero = torch.zeros_like(scale)
    elif symmetric:
        scale = 2 * w.abs().amax(-1) / 15
        zero = torch.full_like(scale, 8.0)
    else:
        lo, hi = w.amin(-1).clamp(max=0), w.amax(-1).clamp(min=0)
        scale = (hi - lo) / 15
        zero = None  # from the float16 scale below
    # float16 as stored (subnormal for tiny groups: the integers are rounded with the stored value, so they stay
    # consistent); an all-zero group gets the smallest positive float16, and its integers all equal the zero point
    scale = scale.clamp(min=2.0 ** -24).half().float()
    if zero is None:
        zero = torch.round(-lo / scale).clamp(0, 15)
    return scale, zero


def grid_range(bits: int) -> tuple[int, int]:
    return (-127, 127) if bits == 8 else (0, 15)


def quantize_with(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers (as floats) of w [..., g] on the grid of scale, zero [...]."""
    lo, hi = grid_range(bits)
    return torch.clamp(torch.round(w / scale[..., None]) + zero[..., None], lo, hi)


def quantize_rtn(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool):
    """Round-to-nearest: (q [out, in] as floats, scale [out, groups], zero [out, groups])."""
    out, inp = weight.shape
    g = group_size or inp
    w = weight.detach().float().view(out, inp // g, g)
    scale, zero = grid_params(w, bits, symmetric)
    return quantize_with(w, scale, zero, bits).view(out, inp), scale, zero


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Float weights [out, in] from integers q [out, in] and per-group scale, zero [out, groups]."""
    out, inp = q.shape
    groups = scale.shape[-1] if scale.dim() == 2 else 1
    qg = q.float().view(out, groups, inp // groups)
    s = scale.float().view(out, groups, 1)
    z = zero.float().view(out, groups, 1)
    return ((qg - z) * s).view(out, inp)


# --- int4 packing ------------------------------------------------------------------------------------------


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """[out, in] integers in [0, 15] -> uint8 [out, in / 2]: column 2j in the low nibble, 2j + 1 in the high."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [out, in / 2] -> uint8 [out, in] in [0, 15]."""
    return torch.stack((packed & 15, packed >> 4), dim=-1).flatten(-2)


# --- the module --------------------------------------------------------------------------------------------


class QuantLinear(nn.Module):
    """A bias-free linear layer with quantized weights (buffers, not parameters: nothing here trains)."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int = 0, symmetric: bool = True):
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"bits: expected 4 or 8, got {bits}")
        g = group_size or in_features
        if in_features % g or (bits == 4 and in_features % 2):
            raise ValueError(f"group_size: {group_size} does not divide in_features {in_features}")
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.group_size, self.symmetric = (0, True) if bits == 8 else (group_size, symmetric)
        groups = in_features // g
        if bits == 8:
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
            self.register_buffer("scales", torch.ones(out_features, dtype=torch.float16))
        else:
            self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
            self.register_buffer("scales", torch.ones(out_features, groups, dtype=torch.float16))
            if not symmetric:
                self.register_buffer("qzeros", torch.zeros(out_features, groups, dtype=torch.uint8))
        self._int4_cpu = None  # torch's CPU int4 layout, made on first use by the kernel path

    @classmethod
    def from_quantized(cls, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group_size: int,
                       symmetric: bool) -> "QuantLinear":
        """From integers q [out, in] (floats holding integers) and per-group scale, zero [out, groups]."""
        out, inp = q.shape
        m = cls(inp, out, bits, group_size, symmetric)
        if bits == 8:
            m.qweight.copy_(q.to(torch.int8))
            m.scales.copy_(scale.reshape(out).half())
        else:
            m.qweight.copy_(pack_int4(q))
            m.scales.copy_(scale.half())
            if not symmetric:
                m.qzeros.copy_(zero.to(torch.uint8))
        return m

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int = 0, symmetric: bool = True) -> "QuantLinear":
        """Round-to-nearest quantization of a float layer."""
        q, scale, zero = quantize_rtn(linear.weight, bits, group_size if bits == 4 else 0, symmetric)
        return cls.from_quantized(q, scale, zero, bits, group_size, symmetric).to(linear.weight.device)

    def integers(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q [out, in], scale [out, groups], zero [out, groups]) as stored."""
        if self.bits == 8:
            return self.qweight, self.scales[:, None], torch.zeros_like(self.scales[:, None])
        zero = self.qzeros if not self.symmetric else torch.full_like(self.scales, 8)
        return unpack_int4(self.qweight), self.scales, zero

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return dequantize(*self.integers()).to(dtype)

    def forward(self, x):
        low_precision = x.dtype in (torch.bfloat16, torch.float16) or (x.device.type == "cpu" and torch.is_autocast_enabled("cpu"))
        if x.device.type == "cpu" and low_precision and self._cpu_kernel_fits():
            return self._cpu_kernel(x)
        if self.bits == 8:  # the per-channel scale factors out of the matmul: one cast of the integers, no multiply
            return F.linear(x, self.qweight.to(x.dtype)) * self.scales.to(x.dtype)
        return F.linear(x, self.dequantize(x.dtype))

    def _cpu_kernel_fits(self) -> bool:
        """torch's CPU int4 kernel takes groups of 32, 64, 128 or 256 and out_features divisible by 16; int8 takes any shape."""
        return self.bits == 8 or (self.group_size in (32, 64, 128, 256) and self.out_features % 16 == 0)

    def _cpu_kernel(self, x):
        dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.get_autocast_dtype("cpu")
        x2 = x.reshape(-1, self.in_features).to(dtype)  # the kernels take 2-D inputs
        if self.bits == 8:
            y = torch._weight_int8pack_mm(x2, self.qweight, self.scales.to(dtype))
        else:
            packed, scale_zero = self._int4_cpu_layout()
            y = torch._weight_int4pack_mm_for_cpu(x2, packed, self.group_size or self.in_features, scale_zero.to(dtype))
        return y.view(*x.shape[:-1], self.out_features)

    def _int4_cpu_layout(self):
        """torch's CPU int4 kernel computes w = (q - 8) * s + b with b = (8 - zero) * s; its packing is its own."""
        if self._int4_cpu is None:
            q, scale, zero = self.integers()
            packed = torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
            s = scale.float()
            scale_zero = torch.stack((s, (8 - zero.float()) * s), dim=-1).transpose(0, 1).contiguous()  # [groups, out, 2]
            self._int4_cpu = (packed, scale_zero)
        return self._int4_cpu

    def extra_repr(self) -> str:
        scheme = "int8 per channel" if self.bits == 8 else f"int4 group {self.group_size or self.in_features} {'sym' if self.symmetric else 'asym'}"
        return f"in_features={self.in_features}, out_features={self.out_features}, {scheme}"


# --- a model's quantized layers ----------------------------------------------------------------------------


def target_names(model, quantize_lm_head: bool = False) -> list[str]:
    """Names of the linear layers a scheme quantizes: every block projection, each expert's of a mixture (after
    llmpipe.moe.split_experts; the router stays float, as in GPTQ and llama.cpp's MoE quantization), and lm_head when
    asked; block by block, in the order their inputs arise."""
    modules = dict(model.named_modules())
    names = []
    for i in range(len(model.model.layers)):
        block = f"model.layers.{i}."
        names += [n for n in (f"{block}{'self_attn' if n.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{n}"
                              for n in LINEAR_NAMES) if n in modules]  # a GELU MLP has no gate_proj, a mixture none of these
        names += [n for n, m in modules.items() if n.startswith(f"{block}mlp.experts.") and isinstance(m, nn.Linear)]
    return names + (["lm_head"] if quantize_lm_head else [])


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def swap_quantized_linears(model: nn.Module, spec: dict) -> None:
    """Replace the layers config["quantization"] names with empty QuantLinear modules, to load a checkpoint into.

    The block projections then run as modules, not through the fused CPU path (`plain_linears` in model.py)."""
    if spec.get("format") != "llmpipe" or spec.get("bits") not in (4, 8):
        raise ValueError(f"quantization: unknown scheme {spec!r} (llmpipe reads its own int8/int4 format)")
    if any(".mlp.experts." in name for name in spec["modules"]):
        from llmpipe.moe import split_experts

        split_experts(model)
    for name in spec["modules"]:
        old = model.get_submodule(name)
        new = QuantLinear(old.in_features, old.out_features, spec["bits"], spec.get("group_size", 0), spec.get("symmetric", True))
        set_module(model, name, new.to(old.weight.device))
