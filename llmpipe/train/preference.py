"""Preference-tuning losses: the DPO family (sigmoid, ipo, hinge, robust), SimPO, ORPO and KTO.

Every loss takes per-sequence log-probabilities that the caller computed (`sequence_logps`), so the
reference model's values can be computed once and stored, and the training loop never holds a second
model. The formulas and the reward definitions follow TRL 1.16 (trl/trainer/dpo_trainer.py,
kto_trainer.py, experimental/cpo, experimental/orpo), and the metric names are TRL's, so users read
them as they already do; tests/test_preference_losses.py checks them against TRL to 1e-6.

    summed, counts = sequence_logps(model(ids).logits, ids, completion_mask)
    losses, chosen_r, rejected_r = dpo_loss(summed[:n], summed[n:], ref[:n], ref[n:], beta=0.1)
    losses.mean().backward(); metrics = reward_metrics(chosen_r, rejected_r, summed[:n], summed[n:])

Only torch is imported: llmpipe never imports TRL.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")
# SimPO's target reward margin γ: TRL's CPOConfig default (the SimPO paper tunes γ per model)
SIMPO_GAMMA = 0.5


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence summed log-probabilities of `labels` where `mask` is 1, and the number of such tokens.

    Convention (causal LM, the one TRL and transformers use): `logits` [B, T, V] come from running the
    model on `labels` [B, T] (the input ids themselves), so logits[:, t] predicts labels[:, t + 1].
    `mask` [B, T] marks the tokens to score by their own position: 1 on completion tokens, 0 on
    prompt and padding. Position 0 has nothing predicting it, so mask[:, 0] is ignored. Labels under
    mask 0 may be anything (e.g. -100 or a pad id).

    Returns (summed_logps [B], token_counts [B]) in float32 or wider (half-precision logits are scored
    in float32). Memory: besides the logits, at most one [B, T, V] float tensor exists at a time (the
    temporary of logsumexp, or the float32 copy of half-precision logits, which is scored row by row).
    """
    token_logps, target_mask = per_token_logps(logits, labels, mask)
    return (token_logps * target_mask).sum(-1), target_mask.sum(-1)


def per_token_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sequence_logps before the sum, for losses that weigh each token (GRPO): the log-prob of every label
    labels[:, 1:] ([B, T - 1]; any value where the mask is 0, so multiply by it) and that mask [B, T - 1] (bool)."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2] or mask.shape != labels.shape:
        raise ValueError(f"sequence_logps: expected logits [B, T, V] with labels and mask [B, T], got {tuple(logits.shape)}, {tuple(labels.shape)}, {tuple(mask.shape)}")
    target_mask = mask[:, 1:].bool()
    # masked positions may hold -100 (padding, ignore index): point them at token 0, their value is dropped
    targets = torch.where(target_mask, labels[:, 1:], torch.zeros_like(labels[:, 1:])).long()
    predicting = logits[:, :-1]  # a view: logits at t predict the label at t + 1
    if predicting.dtype in (torch.float16, torch.bfloat16):
        # half precision keeps ~3 significant digits, too few for log-probs summed over many tokens;
        # upcast one row at a time so only one [T, V] temporary exists beside the (saved) float rows
        token_logps = torch.stack([_token_logps(row.float(), tgt) for row, tgt in zip(predicting, targets)])
    else:
        token_logps = _token_logps(predicting, targets)
    return token_logps, target_mask


def _token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] without building the log-softmax: the target's logit minus logsumexp."""
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    loss_type: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    simpo_gamma: float = SIMPO_GAMMA,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and (detached) chosen/rejected rewards of a paired preference loss.

    Inputs are 1-D, one entry per pair: summed completion log-probs of the policy and of the reference
    (the reference ones are treated as constants), and completion token counts for the losses that
    average per token (ipo, simpo, orpo). The caller reduces: `losses.mean()` is TRL's loss.

    loss_type (beta is the method's own temperature/strength; defaults are TRL's):
    - "sigmoid": DPO (Rafailov et al. 2023), -log σ(β Δ) with Δ the chosen-minus-rejected log-ratio.
      label_smoothing ε > 0 gives conservative DPO (cDPO, Mitchell 2023): -(1-ε) log σ(βΔ) - ε log σ(-βΔ).
      (TRL 1.16's "sigmoid" ignores label_smoothing; at ε = 0 the two agree.)
    - "ipo": IPO (Azar et al. 2023, eq. 17) on per-token average log-ratios, (Δ_avg - 1/(2β))², as TRL.
    - "hinge": SLiC (Zhao et al. 2023), relu(1 - βΔ).
    - "robust": robust DPO (Chowdhury et al. 2024) for labels flipped with probability ε in [0, 0.5):
      (-(1-ε) log σ(βΔ) + ε log σ(-βΔ)) / (1 - 2ε).
    - "simpo": SimPO (Meng et al. 2024), reference-free on per-token average log-probs:
      -log σ(β Δ_avg - γ) with γ = simpo_gamma (plus cDPO-style label_smoothing, as TRL's CPO trainer).
      Rewards are β × average log-prob, as TRL's CPO trainer reports them.
    - "orpo": ORPO's odds-ratio term (Hong et al. 2024), reference-free on per-token average log-probs:
      -β log σ(log odds(chosen) - log odds(rejected)), odds(y) = p / (1 - p). β is the paper's λ. The
      full ORPO loss adds the SFT NLL of the chosen completion, which the caller computes from the same
      forward pass: `nll + losses.mean()`, with nll = -(chosen summed logps).sum() / chosen lengths.sum()
      (the paper's L_SFT; TRL's ORPO trainer scores the prompt tokens of the chosen rows too). TRL
      returns β log σ(·) and subtracts it; the sign here makes every loss_type a loss to minimise.
      Rewards are β × average log-prob, as TRL's ORPO trainer reports them.

    For the reference-based losses rewards are β (policy - reference) summed log-probs (TRL's DPO
    trainer, IPO included). label_smoothing is read by sigmoid, robust and simpo only.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"dpo_loss: unknown loss_type {loss_type!r}; expected one of {', '.join(DPO_LOSS_TYPES)}")
    policy_chosen_logps, policy_rejected_logps = _wide(policy_chosen_logps), _wide(policy_rejected_logps)

    if loss_type in REFERENCE_FREE:
        chosen_avg = _per_token(policy_chosen_logps, chosen_lengths, loss_type, "chosen_lengths")
        rejected_avg = _per_token(policy_rejected_logps, rejected_lengths, loss_type, "rejected_lengths")
        if loss_type == "simpo":
            # TRL writes β (Δ_avg - γ/β): the same as SimPO's β Δ_avg - γ
            margin = beta * (chosen_avg - rejected_avg) - simpo_gamma
            losses = _smoothed_sigmoid(margin, label_smoothing)
        else:
            losses = -beta * F.logsigmoid(orpo_log_odds(chosen_avg, rejected_avg))
        return losses, beta * chosen_avg.detach(), beta * rejected_avg.detach()

    if ref_chosen_logps is None or ref_rejected_logps is None:
        raise ValueError(f"dpo_loss: loss_type {loss_type!r} needs the reference log-probs (only {' and '.join(REFERENCE_FREE)} are reference-free)")
    chosen_logratios = policy_chosen_logps - _wide(ref_chosen_logps).detach()
    rejected_logratios = policy_rejected_logps - _wide(ref_rejected_logps).detach()
    delta = chosen_logratios - rejected_logratios

    if loss_type == "sigmoid":
        losses = _smoothed_sigmoid(beta * delta, label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif loss_type == "robust":
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"dpo_loss: robust DPO needs label_smoothing (the flip probability) in [0, 0.5), got {label_smoothing}")
        clean = -(1 - label_smoothing) * F.logsigmoid(beta * delta)
        flipped = -label_smoothing * F.logsigmoid(-beta * delta)
        losses = (clean - flipped) / (1 - 2 * label_smoothing)
    else:  # ipo
        # TRL averages the log-ratios per completion token (confirmed with the IPO authors, per its
        # comment): the squared loss of token sums would grow with completion length
        chosen_avg = _per_token(chosen_logratios, chosen_lengths, loss_type, "chosen_lengths")
        rejected_avg = _per_token(rejected_logratios, rejected_lengths, loss_type, "rejected_lengths")
        losses = (chosen_avg - rejected_avg - 1 / (2 * beta)) ** 2
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def orpo_log_odds(chosen_avg_logps: torch.Tensor, rejected_avg_logps: torch.Tensor) -> torch.Tensor:
    """log(odds(chosen) / odds(rejected)) from per-token average log-probs, odds = p / (1 - p) (ORPO eq. 4, 7).

    TRL's ORPO trainer logs mean(log σ(this)) as log_odds_ratio and mean(this) as log_odds_chosen.
    """
    return (chosen_avg_logps - rejected_avg_logps) - (_log1mexp(chosen_avg_logps) - _log1mexp(rejected_avg_logps))


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Mächler 2012: switch at -log 2)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def _smoothed_sigmoid(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """-log σ(x) with the label flipped with probability ε: -(1-ε) log σ(x) - ε log σ(-x)."""
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"dpo_loss: label_smoothing must be in [0, 0.5], got {label_smoothing}")
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def _per_token(summed: torch.Tensor, lengths: torch.Tensor | None, loss_type: str, name: str) -> torch.Tensor:
    if lengths is None:
        raise ValueError(f"dpo_loss: loss_type {loss_type!r} averages log-probs per token and needs {name} (completion token counts)")
    return summed / lengths.to(summed.dtype).clamp(min=1.0)  # an empty completion counts as one token, as in TRL


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Half-precision log-probs to float32: sums of hundreds of token log-probs need the mantissa."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor | float,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example KTO losses (Ethayarajh et al. 2024, eq. 7, as TRL's KTO trainer) and detached rewards.

    Inputs are 1-D summed completion log-probs of unpaired examples, `desirable` a bool tensor (the
    label), `kl` the batch's reference point (`kto_kl_estimate`, detached, ≥ 0). With r = β(policy - ref):
    a desirable example costs w_d (1 - σ(r - βkl)), an undesirable one w_u (1 - σ(βkl - r)).
    `losses.mean()` is TRL's loss; rewards are r, reported by `kto_metrics`.
    """
    policy_logps = _wide(policy_logps)
    kl = torch.as_tensor(kl, dtype=policy_logps.dtype, device=policy_logps.device).detach()
    logratios = policy_logps - _wide(ref_logps).detach()
    desirable = desirable.bool()
    desirable_losses = desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl)))
    undesirable_losses = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios)))
    return torch.where(desirable, desirable_losses, undesirable_losses), beta * logratios.detach()


def kto_kl_estimate(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point: mean(policy - reference) summed log-probs of mismatched pairs, detached, clamped at 0.

    The mismatched pairs are each prompt of the batch with another example's completion; TRL pairs
    prompt i with completion i - 1 (`kto_mismatched_index`). Under DDP, TRL averages the per-rank means
    before clamping: all-reduce the mean of the difference first, then call this on the result.
    """
    return (_wide(policy_kl_logps) - _wide(ref_kl_logps)).mean().detach().clamp(min=0)


def kto_mismatched_index(batch_size: int) -> torch.Tensor:
    """Which completion goes with prompt i in KTO's KL batch: TRL's rotation (x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1})."""
    return torch.roll(torch.arange(batch_size), 1)


def reward_metrics(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    policy_chosen_logps: torch.Tensor | None = None,
    policy_rejected_logps: torch.Tensor | None = None,
) -> dict[str, float]:
    """TRL's paired-preference metrics (batch means): rewards/chosen, rewards/rejected, rewards/accuracies
    (chosen reward strictly above rejected), rewards/margins, and logps/chosen, logps/rejected when the
    policy log-probs (summed; average ones for simpo/orpo, as TRL logs them) are given."""
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    metrics = {
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
    }
    if policy_chosen_logps is not None:
        metrics["logps/chosen"] = policy_chosen_logps.detach().mean().item()
    if policy_rejected_logps is not None:
        metrics["logps/rejected"] = policy_rejected_logps.detach().mean().item()
    return metrics


def kto_metrics(
    rewards: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor | float, policy_logps: torch.Tensor | None = None
) -> dict[str, float]:
    """TRL's KTO metrics: kl, and for each side present in the batch rewards/chosen, rewards/rejected
    (desirable / undesirable means) and logps/chosen, logps/rejected; rewards/margins (difference of the
    two means) when both are. There are no pairs, so no rewards/accuracies (TRL logs none either)."""
    desirable = desirable.bool()
    metrics = {"kl": float(kl)}
    for side, rows in (("chosen", desirable), ("rejected", ~desirable)):
        if rows.any():
            metrics[f"rewards/{side}"] = rewards.detach()[rows].mean().item()
            if policy_logps is not None:
                metrics[f"logps/{side}"] = policy_logps.detach()[rows].mean().item()
    if "rewards/chosen" in metrics and "rewards/rejected" in metrics:
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return metrics
