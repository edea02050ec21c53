"""Knowledge distillation's loss (Hinton, Vinyals and Dean 2015): match the teacher's softened next-token distribution.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, targets)

T > 1 flattens both distributions, so the student also learns how the teacher ranks the wrong tokens (the
"dark knowledge"); the gradient of the softened term scales as 1 / T^2, and the T^2 factor keeps its weight
against the hard-label term the same whatever T is (the paper's section 2). The KL is summed over the
vocabulary and averaged over the scored tokens: torch's F.kl_div(log_student, log_teacher, log_target=True,
reduction="batchmean") on [tokens, vocab] rows. Both are computed in float32 (under bf16 autocast the logits
come in bf16). Only torch is imported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float = 2.0, alpha: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, kl, ce), each a mean over the tokens whose target is not -1.

    student_logits, teacher_logits [B, T, V] (the teacher's are treated as constants); targets [B, T] the next
    tokens. kl is KL(teacher_T || student_T) without the T^2 factor, ce the student's plain cross-entropy.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"distillation_loss: student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ (the two models need one vocabulary)")
    vocab = student_logits.size(-1)
    student = student_logits.float().reshape(-1, vocab)
    targets = targets.reshape(-1)
    ce = F.cross_entropy(student, targets, ignore_index=-1)
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.detach().float().reshape(-1, vocab) / temperature, dim=-1)
    per_token = (log_teacher.exp() * (log_teacher - log_student)).sum(-1)  # [tokens]: KL of each position's distribution
    scored = (targets != -1).to(per_token.dtype)
    kl = (per_token * scored).sum() / scored.sum().clamp(min=1)
    return alpha * temperature**2 * kl + (1 - alpha) * ce, kl, ce
