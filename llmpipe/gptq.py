"""GPTQ (Frantar et al. 2022, arXiv:2210.17323): quantize a layer's weight columns one by one, each time
moving the rounding error onto the columns not yet quantized, weighted by the inverse Hessian of the
layer's calibration inputs, H = 2/n sum x x^T.

Read against the reference implementation (IST-DASLab/gptq `gptq.py`, as auto-gptq and gptqmodel carry
it): dead inputs (H_ii = 0) are zeroed, damp * mean(diag H) is added to the diagonal (damp 0.01), the
upper Cholesky factor of H^-1 drives the updates, and columns go in blocks with the update of the
columns after a block applied lazily. Two choices differ, both to keep storage simple:
- each group's scale and zero point are taken when its first column is reached, from the weights as the
  earlier errors left them (the reference's default), with blocks aligned to groups so that "as left" is
  exact (the reference reads the not-yet-updated matrix when a group starts inside a block);
- act_order (columns by decreasing H_ii, the reference's desc_act) uses static groups (gptqmodel's
  static_groups): scales from the original weights of each contiguous group, so no g_idx is stored.

The model is quantized block by block with calibration activations that have gone through the blocks
already quantized, and inside a block in the order the inputs arise (q/k/v, o, gate/up, down: the
reference's true_sequential). A mixture's experts are quantized one by one, each from the tokens the
router sent it (`stages_of`).
"""

from __future__ import annotations

import torch

from llmpipe.quant import grid_params, quantize_with


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int, symmetric: bool,
                  damp: float = 0.01, act_order: bool = False, block_size: int = 128):
    """(q [out, in] as floats, scale [out, groups], zero [out, groups]) of weight [out, in] given H [in, in]."""
    W = weight.detach().double().clone()
    H = hessian.double().clone()
    out, inp = W.shape
    g = group_size or inp
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    scale = torch.zeros(out, inp // g, dtype=torch.float64)
    zero = torch.zeros_like(scale)
    perm = torch.arange(inp)
    if act_order:
        for k in range(inp // g):  # static groups: from the weights as they are
            s, z = grid_params(W[:, k * g:(k + 1) * g], bits, symmetric)
            scale[:, k], zero[:, k] = s.double(), z.double()
        perm = torch.argsort(H.diagonal(), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    H += damp * H.diagonal().mean() * torch.eye(inp, dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    block = min(block_size, g) if not act_order else block_size  # a group starts at a block start: its weights are current
    for i1 in range(0, inp, block):
        i2 = min(i1 + block, inp)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            k = col // g
            if not act_order and col % g == 0:
                s, z = grid_params(W1[:, i:i + g] if i + g <= i2 - i1 else W[:, col:col + g], bits, symmetric)
                scale[:, k], zero[:, k] = s.double(), z.double()
            w = W1[:, i]
            q = quantize_with(w[:, None], scale[:, k], zero[:, k], bits)[:, 0]
            Q[:, i1 + i] = q
            err = (w - (q - zero[:, k]) * scale[:, k]) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if act_order:
        Q = Q[:, torch.argsort(perm)]
    return Q.float(), scale.float(), zero.float()


class HessianSum:
    """Running H = 2/n sum x x^T over every input row seen (x [..., in])."""

    def __init__(self, dim: int):
        self.H = torch.zeros(dim, dim, dtype=torch.float64)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        self.H += 2 * x.T @ x
        self.n += x.shape[0]

    @property
    def value(self) -> torch.Tensor:
        return self.H / max(self.n, 1)


# where each projection's input comes from: the fused CPU ops read q/k/v and gate/up weights directly,
# so their shared input is taken from the norm that feeds them; o_proj and down_proj are called as modules
STAGES_OF_A_BLOCK = (
    (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "input_layernorm", "output"),
    (("self_attn.o_proj",), "self_attn.o_proj", "input"),
    (("mlp.gate_proj", "mlp.up_proj"), "post_attention_layernorm", "output"),
    (("mlp.down_proj",), "mlp.down_proj", "input"),
)


def stages_of(block) -> list[list[tuple[tuple[str, ...], str, str]]]:
    """A block's stages in the order their inputs arise: in each, the (projections, source, side) whose inputs one pass
    over the calibration batches collects. A mixture's experts (llmpipe.moe.LinearExperts) each take their input from
    themselves, so each expert's Hessian holds only the tokens routed to it (as GPTQ for Mixtral does)."""
    from llmpipe.moe import PROJECTIONS, LinearExperts

    stages = [[stage] for stage in STAGES_OF_A_BLOCK]
    experts = getattr(block.mlp, "experts", None)
    if isinstance(experts, LinearExperts):
        for projection in (p for p in PROJECTIONS if hasattr(experts, p)):
            names = [f"mlp.experts.{projection}.{e}" for e in range(len(getattr(experts, projection)))]
            stages.append([((name,), name, "input") for name in names])
    return stages


@torch.no_grad()
def gptq_model(model, batches: list[torch.Tensor], names: list[str], bits: int, group_size: int, symmetric: bool,
               damp: float = 0.01, act_order: bool = False, log=None) -> dict:
    """GPTQ of the named linear layers of `model` (eval, fp32) on calibration token batches [b, T] each.

    Returns name -> (q, scale, zero); the model's weights are left replaced by their quantized values. A layer no
    calibration token reached (an expert the router never chose) is rounded to nearest: GPTQ would zero its weights
    as dead inputs."""
    from llmpipe.quant import dequantize, quantize_rtn

    targets, result = set(names), {}

    def quantize(name: str, acc: "HessianSum") -> None:
        linear = model.get_submodule(name)
        if acc.n:
            q, s, z = gptq_quantize(linear.weight, acc.value, bits, group_size, symmetric, damp, act_order)
        else:
            q, s, z = quantize_rtn(linear.weight.detach(), bits, group_size, symmetric)
            if log:
                log(f"gptq: no calibration token reached {name}; rounded to nearest")
        linear.weight.copy_(dequantize(q, s, z))
        result[name] = (q, s, z)

    position = model.positions(batches[0], 0)  # the model's positions and masks: its options (ALiBi, windows) hold here too
    rope, masks = model.rope(position, 0), model.attention_masks(batches[0], 0)
    hidden = [model.embed(x, position) for x in batches]
    for i, block in enumerate(model.model.layers):
        for stage in stages_of(block):
            feeds = []  # (Hessian, the layers it is for, the module whose input or output it reads, which)
            for projections, source, side in stage:
                wanted = [f"model.layers.{i}.{p}" for p in projections if f"model.layers.{i}.{p}" in targets]
                if wanted:
                    feeds.append((HessianSum(model.get_submodule(wanted[0]).in_features), wanted, block.get_submodule(source), side))
            if not feeds:
                continue
            hooks = [module.register_forward_hook(lambda m, inp, out, acc=acc: acc.add(out)) if side == "output"
                     else module.register_forward_pre_hook(lambda m, inp, acc=acc: acc.add(inp[0])) for acc, _, module, side in feeds]
            try:
                for h in hidden:
                    block(h, rope, None, masks[i])
            finally:
                for hook in hooks:
                    hook.remove()
            for acc, wanted, _, _ in feeds:
                for name in wanted:
                    quantize(name, acc)
        hidden = [block(h, rope, None, masks[i]) for h in hidden]
        if log:
            log(f"gptq: block {i + 1}/{len(model.model.layers)} quantized")
    if "lm_head" in targets:
        acc = HessianSum(model.config.n_embd)
        for h in hidden:
            acc.add(model.model.norm(h))
        quantize("lm_head", acc)
    return result
