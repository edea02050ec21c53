"""A mixture-of-experts FFN (Shazeer et al. 2017; Switch, Fedus et al. 2021; Mixtral, Jiang et al. 2024): a router
sends each token to its top k of n experts, each expert the model's MLP (SwiGLU or GELU) with its own weights, and the
token's output is the experts' outputs weighted by the router's softmax renormalised over the k chosen (Mixtral).
With k = 1 that weight is always 1, so the router learns only from the load-balancing loss (Switch weights by the
unnormalised probability instead; Mixtral in transformers renormalises, and the export must compute its logits).

The weights carry transformers 5's Mixtral names and layout (modeling_mixtral: MixtralTopKRouter, MixtralExperts):
mlp.gate.weight [E, C] (the router), mlp.experts.gate_up_proj [E, 2I, C] (each expert's gate rows, then its up rows)
and mlp.experts.down_proj [E, C, I], so the checkpoint loads as MixtralForCausalLM with no key map. One 3-D tensor per
projection also keeps DDP simple: an expert no token chose in a step gets a zero gradient slice, not a parameter
without a gradient (no find_unused_parameters).

Training records each layer's routing (fraction of tokens sent to each expert, mean router probability) for the
load-balancing loss, n_experts * sum_i f_i * P_i over the layers pooled, as transformers' load_balancing_loss_func
computes it; the training loop adds router_aux_loss_coef times it to the loss and logs expert load (router_loss).

Capacity factor c > 0 (training forwards only: MoE.training_forward): an expert takes at most
ceil(c * tokens * k / n_experts) of a micro-batch's tokens, every token's first choice before any second choice, then
in token order (GShard, Switch); the tokens over it get nothing from that expert (the block's residual carries them through). Evaluation, generation and the export
are dropless, as Mixtral in transformers is: a token's output then never depends on the other tokens of its batch
(so the KV-cache paths equal a full forward), and the exported logits are transformers'.

Shapes: N tokens, C n_embd, I intermediate_size, E n_experts, k experts_per_token.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Experts(nn.Module):
    """The experts' weights as 3-D tensors (transformers' MixtralExperts); GELU experts have up_proj instead of gate_up_proj."""

    def __init__(self, cfg):
        super().__init__()
        E, C, I = cfg.n_experts, cfg.n_embd, cfg.intermediate_size
        self.gelu = cfg.mlp == "gelu"
        self.gate_act = F.gelu if cfg.mlp == "geglu" else F.silu  # a gated MLP: SwiGLU or GeGLU, as model.MLP
        if self.gelu:
            self.up_proj = nn.Parameter(torch.empty(E, I, C))
        else:
            self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, C))
        self.down_proj = nn.Parameter(torch.empty(E, C, I))
        # the dense model's init: 0.02, and GPT-2's scaled init for the projection into the residual stream
        nn.init.normal_(self.up_proj if self.gelu else self.gate_up_proj, std=0.02)
        nn.init.normal_(self.down_proj, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def project(self, name: str, e: int, x):
        """Expert e's projection `name` (gate_up_proj, up_proj or down_proj) of x."""
        return F.linear(x, getattr(self, name)[e])

    def forward(self, e: int, x):
        """Expert e's MLP of x [n, C] -> [n, C] (model.MLP's formulas)."""
        if self.gelu:
            return self.project("down_proj", e, F.gelu(self.project("up_proj", e, x)))
        gate, up = self.project("gate_up_proj", e, x).chunk(2, dim=-1)
        return self.project("down_proj", e, self.gate_act(gate) * up)


class LinearExperts(Experts):
    """The same experts as one nn.Linear per expert and projection (`mlp.experts.gate_up_proj.3`), for quantization:
    each becomes a QuantLinear of its own (llmpipe/quant.py), and under GPTQ each sees only the tokens routed to it
    (llmpipe/gptq.py). The linears' weights are views of the 3-D tensors, so splitting costs no memory."""

    def __init__(self, experts: Experts):
        nn.Module.__init__(self)  # not Experts.__init__: the weights are `experts`', not new ones
        self.gelu, self.gate_act = experts.gelu, experts.gate_act
        for name in PROJECTIONS:
            if hasattr(experts, name):
                weight = getattr(experts, name)  # [E, out, in]
                setattr(self, name, nn.ModuleList(_linear(w) for w in weight.detach()))

    def project(self, name: str, e: int, x):
        return getattr(self, name)[e](x)


PROJECTIONS = ("gate_up_proj", "up_proj", "down_proj")  # in the order an expert's inputs arise (GPTQ's order)


def _linear(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    layer.weight = nn.Parameter(weight, requires_grad=False)
    return layer


def split_experts(model) -> int:
    """Every MoE layer's experts as LinearExperts (for quantization); the number of MoE layers."""
    layers = [m for m in model.modules() if isinstance(m, MoE) and not isinstance(m.experts, LinearExperts)]
    for m in layers:
        m.experts = LinearExperts(m.experts)
    return len(layers)


class MoE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_experts, self.top_k = cfg.n_experts, cfg.experts_per_token
        self.capacity_factor, self.aux_loss_coef = cfg.capacity_factor, cfg.router_aux_loss_coef
        self.gate = nn.Linear(cfg.n_embd, cfg.n_experts, bias=False)  # the router
        self.experts = Experts(cfg)
        self.routed: list[tuple] = []  # training forwards' (f [E], P [E], dropped) since router_loss last read them

    def projections(self) -> tuple[nn.Module, ...]:
        return (self.gate,)

    def training_forward(self) -> bool:
        """Training mode with gradients: not evaluation, nor generation (no_grad, even from a model left in training
        mode: GRPO's sampling), nor a frozen reference or teacher model."""
        return self.training and torch.is_grad_enabled()

    def capacity(self, tokens: int) -> int:
        """The most assignments an expert takes from `tokens` tokens (training with a capacity factor), else all of them."""
        if not (self.training_forward() and self.capacity_factor):
            return tokens
        return math.ceil(self.capacity_factor * tokens * self.top_k / self.n_experts)

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N, C]
        N, k = x.shape[0], self.top_k
        probs = F.softmax(self.gate(x).float(), dim=-1)  # [N, E]
        weights, chosen = probs.topk(k, dim=-1)  # [N, k]
        weights = weights / weights.sum(-1, keepdim=True)
        # assignment a = j * N + n: token n's j-th choice, so a stable sort by expert puts first choices first
        flat = chosen.t().reshape(-1)  # [k * N]
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.n_experts)  # [E]
        capacity = self.capacity(N)
        flat_weights = weights.t().reshape(-1)  # [k * N], as flat
        out = torch.zeros_like(x)
        kept = 0
        for e, assigned in enumerate(order.split(counts.tolist())):
            assigned = assigned[:capacity]
            if not len(assigned):
                continue
            token = assigned % N
            y = self.experts(e, x.index_select(0, token)) * flat_weights[assigned, None]
            out.index_add_(0, token, y.to(out.dtype))
            kept += len(assigned)
        if self.training_forward():
            self.routed.append((counts.float() / N, probs.mean(0), 1 - kept / (k * N)))
        return out.view(shape)


def discard_routing(model) -> None:
    """Forget the routing recorded so far (forwards not of this batch: activation checkpointing's recomputation)."""
    for m in model.modules():
        if isinstance(m, MoE):
            m.routed.clear()


def router_loss(model) -> tuple:
    """(router_aux_loss_coef x the load-balancing loss, metrics) over the routing the MoE layers recorded since the last
    call, which it clears; (0, {}) for a dense model. Metrics: moe_aux_loss (n_experts * sum_i f_i P_i over the layers
    pooled; k when perfectly even), moe_load/i (the share of routed tokens expert i got, averaged over layers),
    moe_load_cv (the coefficient of variation of each layer's loads, averaged over layers: 0 when even) and, with a capacity factor, moe_dropped (the share of
    assignments over capacity)."""
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    routed = [r for m in layers for r in m.routed]
    discard_routing(model)
    if not routed:
        return 0.0, {}
    moe = layers[0]
    per_layer = torch.stack([r[0] for r in routed])  # [layers (x forwards), E]: tokens per expert / N (sums to k)
    f = per_layer.mean(0)  # the layers pooled
    P = torch.stack([r[1] for r in routed]).mean(0)  # [E]: mean router probability
    aux = moe.n_experts * (f * P).sum()
    load = f / moe.top_k
    cv = (per_layer.std(-1, unbiased=False) / per_layer.mean(-1)).mean()  # averaged over layers can look even when no layer is
    metrics = {"moe_aux_loss": aux.detach(), "moe_load_cv": cv,
               **{f"moe_load/{i}": share for i, share in enumerate(load)}}
    if moe.capacity_factor:
        metrics["moe_dropped"] = sum(r[2] for r in routed) / len(routed)
    return moe.aux_loss_coef * aux, metrics
