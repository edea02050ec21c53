"""GRPO (Shao et al. 2024, DeepSeekMath): group-relative advantages and the clipped policy loss with a KL penalty.

No value network: each prompt's G sampled completions are scored, and a completion's advantage is its
reward against the others of its group, A_i = (r_i - mean(r)) / (std(r) + 1e-4) (std unbiased, as TRL's
nanstd; scale_rewards "batch" divides by the std of the whole batch, "none" does not divide: Dr. GRPO).
The loss per completion token t is PPO's clipped surrogate plus the k3 estimate of KL(policy || reference)
(Schulman 2020: exp(ref - logp) - (ref - logp) - 1, unbiased and never negative):

    ratio = exp(logp - old_logp)
    l_t = -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) + beta * k3_t

With one optimisation pass per generated batch (num_iterations = 1) old_logp is logp detached: the ratio is 1,
its gradient A * grad logp. The reduction over tokens is the loss type's, as TRL 1.16 names them:
- "grpo": the mean over each completion's tokens, then the mean over completions (the paper's 1/G sum 1/|o_i|);
- "bnpo": the mean over every completion token of the micro-batch;
- "dr_grpo": the sum over tokens divided by completions x max_new_tokens (no length bias, Liu et al. 2025).
tests/test_grpo.py checks the values against a hand computation and against TRL's _compute_loss.
Only torch is imported: llmpipe never imports TRL.
"""

from __future__ import annotations

import torch

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")
SCALE_REWARDS = ("group", "batch", "none")
STD_EPS = 1e-4  # TRL's: a group whose rewards are all equal gets advantage 0, not 0 / 0


def group_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group") -> torch.Tensor:
    """[N] advantages of rewards [N] laid out group by group (completions of one prompt adjacent)."""
    if rewards.numel() % group_size:
        raise ValueError(f"group_advantages: {rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)
    if scale_rewards == "none":
        return centred
    if scale_rewards == "group":
        std = grouped.std(dim=1, keepdim=True).expand_as(grouped).reshape(-1) if group_size > 1 else torch.zeros_like(rewards)
    elif scale_rewards == "batch":
        std = rewards.std().expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    else:
        raise ValueError(f"scale_rewards: expected one of {', '.join(SCALE_REWARDS)}, got {scale_rewards!r}")
    return centred / (std + STD_EPS)


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor | None, ref_logps: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, beta: float = 0.04, epsilon: float = 0.2, loss_type: str = "grpo",
              max_new_tokens: int = 0, kl_bias_correction: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, metrics) of completions' per-token log-probs logps [N, T] under the policy (with grad), at sampling
    time old_logps [N, T] (None: logps detached, one pass per batch), under the reference ref_logps [N, T] (None:
    beta = 0), advantages [N], mask [N, T] (1 on completion tokens). metrics: kl (mean per token), clip_ratio.
    kl_bias_correction: multiply the KL term by the ratio (DeepSeek-V3.2; TRL 1.16's default use_bias_correction_kl),
    which makes its gradient the unbiased reverse-KL gradient even at ratio 1; off, the paper's GRPO."""
    mask = mask.to(logps.dtype)
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    adv = advantages[:, None]
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * adv)
    tokens = mask.sum().clamp(min=1.0)
    metrics: dict[str, torch.Tensor] = {}
    if beta:
        if ref_logps is None:
            raise ValueError("grpo_loss: beta > 0 needs the reference log-probs")
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        if kl_bias_correction:
            kl = kl * ratio
        per_token = per_token + beta * kl
        metrics["kl"] = ((kl * mask).sum() / tokens).detach()  # as TRL logs it: the term the loss holds
    clipped = ((ratio < 1 - epsilon) & (adv < 0)) | ((ratio > 1 + epsilon) & (adv > 0))
    metrics["clip_ratio"] = ((clipped * mask).sum() / tokens).detach()
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / tokens
    elif loss_type == "dr_grpo":
        if max_new_tokens < 1:
            raise ValueError("grpo_loss: dr_grpo divides by max_new_tokens; give it")
        loss = (per_token * mask).sum() / (per_token.size(0) * max_new_tokens)
    else:
        raise ValueError(f"loss_type: expected one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
    return loss, metrics


def completion_logps(model, rows: list[tuple[list[int], list[int]]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs [N, T - 1] of each (prompt, completion) row's completion tokens, and their mask [N, T - 1]:
    rows right-padded (causal attention: no row sees another's padding)."""
    from llmpipe.train.examples import pad_rows
    from llmpipe.train.preference import per_token_logps

    ids, mask = pad_rows([(p + c, [0] * len(p) + [1] * len(c)) for p, c in rows], pad_id)
    ids, mask = ids.to(device), mask.to(device)
    logits, _ = model(ids)
    logps, target = per_token_logps(logits, ids, mask)
    return logps.float(), target
