"""Reward models: a scalar score per sequence, trained on preference pairs with the Bradley-Terry loss.

The model is llmpipe's decoder with HF's `score` head (ModelConfig.num_labels = 1: LlamaForSequenceClassification's
layout, no lm_head), read at each row's last token, the position transformers pools (its last non-pad token:
rows here are right-padded). Bradley-Terry (1952), as InstructGPT and TRL's RewardTrainer train it: P(chosen >
rejected) = sigmoid(r_chosen - r_rejected), loss -log sigmoid(r_chosen - r_rejected), plus TRL's optional
center_rewards_coefficient * mean((r_chosen + r_rejected)^2), which keeps rewards near zero (Eisenstein et al.
2023). Metric names are TRL's: accuracy (chosen strictly above rejected), margin, mean_reward.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F


def reward_model_from(checkpoint, device: str = "cpu"):
    """A reward model whose decoder is a language-model checkpoint's (lm_head dropped) and whose `score` head is new
    (normal, std 0.02, as transformers initialises it)."""
    from llmpipe.model import Model

    base = Model.from_checkpoint(checkpoint, device="cpu")
    model = Model(dataclasses.replace(base.config, num_labels=1, tie_embeddings=False))
    weights = {k: v for k, v in base.state_dict().items() if not k.startswith("lm_head.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing != ["score.weight"] or unexpected:
        raise ValueError(f"{checkpoint}: the weights do not fit a reward model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device)


def sequence_rewards(model, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B] float32 rewards of right-padded rows ids [B, T] with lengths [B] real tokens: the score at each last token."""
    scores, _ = model(ids)  # [B, T, 1]
    return scores[torch.arange(ids.size(0), device=ids.device), lengths - 1, 0].float()


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, center_rewards_coefficient: float = 0.0):
    """(mean loss, metrics) of pairs' rewards chosen [B], rejected [B]."""
    loss = -F.logsigmoid(chosen - rejected).mean()
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * ((chosen + rejected) ** 2).mean()
    with torch.no_grad():
        metrics = {"accuracy": (chosen > rejected).float().mean(), "margin": (chosen - rejected).mean(),
                   "mean_reward": torch.cat((chosen, rejected)).mean()}
    return loss, metrics
