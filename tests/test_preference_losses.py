"""llmpipe.train.preference against TRL 1.16.0 and against the papers' formulas (issue 13, item 2).

The TRL comparisons are pinned to trl==1.16.0 (the `compare` extra): TRL's loss code moves between
versions (1.x computes the DPO and KTO losses inside `_compute_loss`, next to the model forward and the
metric logging; 0.x had a free-standing `dpo_loss`). Each comparison builds TRL's trainer with
`object.__new__`, sets the attributes its `__init__` would set from a real `DPOConfig`/`KTOConfig`/
`CPOConfig`/`ORPOConfig`, and runs TRL's own loss method on a tiny random Llama whose LM head TRL
patches as its trainers do (`add_fused_lm_head`); the reference log-probs are random tensors handed in
as precomputed (`precompute_ref_log_probs=True`). llmpipe's losses get the same per-token log-probs
TRL's head produced, so the comparison is of the losses and metrics alone; sequence_logps is compared
with that head separately. Without trl those tests skip; the formula tests still run.
"""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F

from llmpipe.train.preference import (
    SIMPO_GAMMA,
    dpo_loss,
    kto_kl_estimate,
    kto_loss,
    kto_metrics,
    kto_mismatched_index,
    orpo_log_odds,
    reward_metrics,
    sequence_logps,
)

TRL_VERSION = "1.16.0"
VOCAB, LENGTH = 64, 14


def trl_or_skip():
    trl = pytest.importorskip("trl", reason="TRL is the compared peer (pip install -c .ci/constraints.txt 'trl==1.16.0', the compare extra)")
    if trl.__version__ != TRL_VERSION:
        pytest.skip(f"these comparisons read TRL {TRL_VERSION}'s internals; installed: {trl.__version__}")
    return trl


# --- sanity and formulas (no TRL needed) -------------------------------------------------------


def test_sigmoid_at_reference_is_log2_and_its_gradient_raises_chosen_and_lowers_rejected():
    policy_chosen = torch.tensor([-12.0, -30.5, -7.25], requires_grad=True)
    policy_rejected = torch.tensor([-15.0, -22.0, -9.5], requires_grad=True)
    losses, chosen_r, rejected_r = dpo_loss(policy_chosen, policy_rejected, policy_chosen.detach().clone(), policy_rejected.detach().clone(), beta=0.1)
    assert torch.allclose(losses, torch.full((3,), math.log(2)), atol=1e-7)
    assert chosen_r.tolist() == [0.0, 0.0, 0.0] and rejected_r.tolist() == [0.0, 0.0, 0.0]
    losses.sum().backward()
    # d/dx -log σ(β(x_c - x_r)) at 0 is -β/2 for chosen, +β/2 for rejected: descent raises chosen, lowers rejected
    assert torch.allclose(policy_chosen.grad, torch.full((3,), -0.05))
    assert torch.allclose(policy_rejected.grad, torch.full((3,), 0.05))


def test_conservative_dpo_and_robust_dpo_follow_their_papers():
    pc, pr = torch.tensor([-10.0, -20.0, -5.0]), torch.tensor([-12.0, -18.0, -5.0])
    rc, rr = torch.tensor([-11.0, -19.0, -6.0]), torch.tensor([-11.5, -19.5, -4.0])
    beta, eps = 0.5, 0.2
    h = beta * ((pc - rc) - (pr - rr))  # β Δ = [0.75, -1.75, 1.0]
    # cDPO (Mitchell 2023, "A note on DPO with noisy preferences"): the labels are flipped with probability ε
    cdpo = -(1 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h)
    assert torch.allclose(dpo_loss(pc, pr, rc, rr, "sigmoid", beta, eps)[0], cdpo, atol=1e-7)
    # rDPO (Chowdhury et al. 2024, "Provably robust DPO"): the unbiased loss under flip probability ε
    rdpo = ((1 - eps) * -F.logsigmoid(h) - eps * -F.logsigmoid(-h)) / (1 - 2 * eps)
    assert torch.allclose(dpo_loss(pc, pr, rc, rr, "robust", beta, eps)[0], rdpo, atol=1e-7)
    assert torch.allclose(dpo_loss(pc, pr, rc, rr, "robust", beta, 0.0)[0], -F.logsigmoid(h), atol=1e-7)


def test_simpo_and_orpo_follow_their_papers():
    summed_c, summed_r = torch.tensor([-6.0, -12.0]), torch.tensor([-9.0, -4.0])
    len_c, len_r = torch.tensor([3, 4]), torch.tensor([3, 2])
    avg_c, avg_r = summed_c / len_c, summed_r / len_r  # [-2, -3] and [-3, -2]
    beta, gamma = 2.0, 0.8
    # SimPO (Meng et al. 2024): -log σ(β/|y_w| log π(y_w|x) - β/|y_l| log π(y_l|x) - γ)
    losses, chosen_r, rejected_r = dpo_loss(summed_c, summed_r, None, None, "simpo", beta, chosen_lengths=len_c, rejected_lengths=len_r, simpo_gamma=gamma)
    assert torch.allclose(losses, -F.logsigmoid(beta * avg_c - beta * avg_r - gamma), atol=1e-6)
    assert torch.allclose(losses, torch.tensor([-math.log(1 / (1 + math.exp(-1.2))), -math.log(1 / (1 + math.exp(2.8)))]), atol=1e-6)
    assert chosen_r.tolist() == [-4.0, -6.0] and rejected_r.tolist() == [-6.0, -4.0]
    # ORPO (Hong et al. 2024, eq. 4, 7): odds(y) = P / (1 - P) with P the per-token average likelihood
    odds = lambda p: p / (1 - p)  # noqa: E731
    ratio = torch.log(odds(avg_c.exp()) / odds(avg_r.exp()))
    assert torch.allclose(orpo_log_odds(avg_c, avg_r), ratio, atol=1e-6)
    losses, chosen_r, rejected_r = dpo_loss(summed_c, summed_r, None, None, "orpo", 0.1, chosen_lengths=len_c, rejected_lengths=len_r)
    assert torch.allclose(losses, -0.1 * F.logsigmoid(ratio), atol=1e-7)
    assert torch.allclose(chosen_r, 0.1 * avg_c) and torch.allclose(rejected_r, 0.1 * avg_r)


def test_kto_loss_follows_the_paper_and_the_kl_estimate_is_clamped():
    policy, ref = torch.tensor([-10.0, -20.0, -8.0]), torch.tensor([-12.0, -19.0, -8.0])
    desirable = torch.tensor([True, False, True])
    # KTO (Ethayarajh et al. 2024, eq. 7) with r = β log π/π_ref, z0 = β KL
    losses, rewards = kto_loss(policy, ref, desirable, kl=torch.tensor(0.5), beta=0.1, desirable_weight=1.5, undesirable_weight=0.5)
    assert torch.allclose(rewards, torch.tensor([0.2, -0.1, 0.0]))
    expected = [1.5 * (1 - 1 / (1 + math.exp(-(0.2 - 0.05)))), 0.5 * (1 - 1 / (1 + math.exp(-(0.05 + 0.1)))), 1.5 * (1 - 1 / (1 + math.exp(0.05)))]
    assert torch.allclose(losses, torch.tensor(expected), atol=1e-7)
    assert kto_kl_estimate(torch.tensor([-5.0, -7.0]), torch.tensor([-6.0, -7.5])).item() == 0.75
    assert kto_kl_estimate(torch.tensor([-5.0, -7.0]), torch.tensor([-4.0, -7.5])).item() == 0.0
    metrics = kto_metrics(rewards, desirable, 0.75, policy)
    assert metrics == pytest.approx({"kl": 0.75, "rewards/chosen": 0.1, "rewards/rejected": -0.1, "rewards/margins": 0.2, "logps/chosen": -9.0, "logps/rejected": -20.0})
    assert kto_metrics(rewards[:1], desirable[:1], 0.0) == pytest.approx({"kl": 0.0, "rewards/chosen": 0.2})
    assert kto_mismatched_index(4).tolist() == [3, 0, 1, 2]  # (x1, y4), (x2, y1), (x3, y2), (x4, y3)


def test_reward_metrics_are_batch_means():
    metrics = reward_metrics(torch.tensor([0.3, -0.1, 0.2]), torch.tensor([0.1, 0.1, 0.2]), torch.tensor([-10.0, -20.0, -30.0]), torch.tensor([-1.0, -2.0, -3.0]))
    assert metrics == pytest.approx({"rewards/chosen": 0.4 / 3, "rewards/rejected": 0.4 / 3, "rewards/accuracies": 1 / 3, "rewards/margins": 0.0, "logps/chosen": -20.0, "logps/rejected": -2.0}, abs=1e-7)
    assert set(reward_metrics(torch.zeros(2), torch.zeros(2))) == {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"}


def test_wrong_calls_say_what_is_missing():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="unknown loss_type 'dpo'; expected one of sigmoid, ipo, hinge, robust, simpo, orpo"):
        dpo_loss(x, x, x, x, loss_type="dpo")
    with pytest.raises(ValueError, match="loss_type 'hinge' needs the reference log-probs"):
        dpo_loss(x, x, None, None, loss_type="hinge")
    with pytest.raises(ValueError, match="loss_type 'ipo' averages log-probs per token and needs chosen_lengths"):
        dpo_loss(x, x, x, x, loss_type="ipo")
    with pytest.raises(ValueError, match=r"robust DPO needs label_smoothing \(the flip probability\) in \[0, 0.5\), got 0.5"):
        dpo_loss(x, x, x, x, loss_type="robust", label_smoothing=0.5)


# --- sequence_logps ------------------------------------------------------------------------------


def random_rows(generator: torch.Generator, batch: int, length: int = LENGTH):
    """Right-padded rows of prompt + completion + padding: ids (pad id 0), attention and completion masks."""
    ids = torch.randint(1, VOCAB, (batch, length), generator=generator)
    attention, completion = torch.zeros_like(ids), torch.zeros_like(ids)
    for row in range(batch):
        prompt = int(torch.randint(2, 6, (1,), generator=generator))
        total = int(torch.randint(prompt + 1, length + 1, (1,), generator=generator))
        attention[row, :total] = 1
        completion[row, prompt:total] = 1
    return ids.masked_fill(attention == 0, 0), attention, completion


def test_sequence_logps_equals_a_per_token_loop_and_scores_only_masked_tokens():
    gen = torch.Generator().manual_seed(1)
    ids, _, completion = random_rows(gen, 5)
    logits = torch.randn(5, LENGTH, VOCAB, generator=gen, dtype=torch.float64) * 3
    summed, counts = sequence_logps(logits, ids, completion)
    for b in range(5):
        naive, n = 0.0, 0
        for t in range(1, LENGTH):
            if completion[b, t]:
                naive += torch.log_softmax(logits[b, t - 1], -1)[ids[b, t]].item()
                n += 1
        assert summed[b].item() == pytest.approx(naive, abs=1e-10) and counts[b].item() == n
    assert counts.tolist() == completion.sum(1).tolist()  # prompts never end at position 0
    # prompt and padding tokens do not count: change them (padding to the ignore index) and nothing moves
    other = torch.where(completion.bool(), ids, torch.randint(1, VOCAB, ids.shape, generator=gen))
    other[:, -1] = torch.where(completion[:, -1].bool(), other[:, -1], torch.full_like(other[:, -1], -100))
    assert torch.equal(sequence_logps(logits, other, completion)[0], summed)
    # ...but a completion token does
    changed = ids.clone()
    col = int(completion[0].nonzero()[0])
    changed[0, col] = (changed[0, col] % (VOCAB - 1)) + 1
    assert sequence_logps(logits, changed, completion)[0][0] != summed[0]


def test_sequence_logps_scores_half_precision_logits_in_float32():
    gen = torch.Generator().manual_seed(2)
    ids, _, completion = random_rows(gen, 3)
    logits = (torch.randn(3, LENGTH, VOCAB, generator=gen) * 4).bfloat16()
    summed, _ = sequence_logps(logits, ids, completion)
    exact, _ = sequence_logps(logits.double(), ids, completion)
    assert summed.dtype == torch.float32
    assert torch.allclose(summed.double(), exact, atol=1e-4)


def test_sequence_logps_saves_no_full_size_copy_of_the_logits_for_backward():
    gen = torch.Generator().manual_seed(3)
    ids, _, completion = random_rows(gen, 4)
    logits = torch.randn(4, LENGTH, VOCAB, generator=gen, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        summed, _ = sequence_logps(logits, ids, completion)
    full = [t for t in saved if t.numel() >= 4 * (LENGTH - 1) * VOCAB]
    # the only [B, T, V]-sized tensor autograd keeps is the logits themselves (a view), not a log-softmax
    assert full and all(t.untyped_storage().data_ptr() == logits.untyped_storage().data_ptr() for t in full)
    summed.sum().backward()
    # predictions of prompt/padding tokens (and the last position, which predicts nothing) get no gradient
    assert logits.grad[:, :-1][completion[:, 1:] == 0].abs().sum() == 0 and logits.grad[:, -1].abs().sum() == 0
    assert (logits.grad[:, :-1][completion[:, 1:] == 1].abs().sum(-1) > 0).all()


# --- against TRL 1.16 ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama():
    """A one-layer random Llama with TRL's fused LM head, as TRL's DPO and KTO trainers patch their model."""
    trl_or_skip()
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    # initializer_range 0.5: per-token log-probs spread over several nats, so pairs differ
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4, initializer_range=0.5)
    model = LlamaForCausalLM(config)
    plain_forward = model.forward
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    model.train()
    return model, plain_forward


def trl_logps(model, ids, attention, completion) -> torch.Tensor:
    """Summed completion log-probs from TRL's fused head: the log-probabilities TRL's loss sees."""
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=attention, labels=ids.masked_fill(completion == 0, -100), fused_lm_head=True)
    return out.log_probs.sum(1)


def new_trainer(cls, model=None):
    """TRL's trainer without its __init__ (no dataset, tokenizer or optimizer needed to run the loss).

    Build it after the config: a TrainingArguments resets accelerate's shared state, so the
    Accelerator is made here, last."""
    from accelerate import Accelerator

    trainer = object.__new__(cls)
    trainer.model, trainer.ref_model, trainer.accelerator = model, None, Accelerator(cpu=True)
    trainer.aux_loss_enabled = False
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens, trainer._tp_size = 0, 1
    return trainer


def test_sequence_logps_equals_trls_fused_head(tiny_llama):
    model, plain_forward = tiny_llama
    ids, attention, completion = random_rows(torch.Generator().manual_seed(4), 8)
    with torch.no_grad():
        logits = plain_forward(input_ids=ids, attention_mask=attention).logits
    ours, counts = sequence_logps(logits, ids, completion)
    theirs = trl_logps(model, ids, attention, completion)
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-5), (ours - theirs).abs().max()
    assert counts.tolist() == completion.sum(1).tolist()


@pytest.mark.parametrize(
    "loss_type, beta, label_smoothing",
    [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.0), ("ipo", 0.1, 0.0), ("ipo", 0.5, 0.0), ("hinge", 0.1, 0.0), ("hinge", 0.5, 0.0),
     ("robust", 0.1, 0.0), ("robust", 0.1, 0.2), ("robust", 0.5, 0.1)],
)
def test_dpo_loss_and_metrics_equal_trl(tiny_llama, tmp_path, loss_type, beta, label_smoothing):
    from trl import DPOConfig, DPOTrainer

    model, _ = tiny_llama
    pairs = 6
    gen = torch.Generator().manual_seed(5)
    ids, attention, completion = random_rows(gen, 2 * pairs)  # TRL's batch: the chosen rows, then the rejected rows
    logps = trl_logps(model, ids, attention, completion)
    ref = logps + 4 * torch.randn(2 * pairs, generator=gen)  # random reference log-probs: rewards of both signs
    lengths = completion.sum(1)

    args = DPOConfig(output_dir=str(tmp_path), bf16=False, loss_type=[loss_type], beta=beta, label_smoothing=label_smoothing, precompute_ref_log_probs=True)
    trainer = new_trainer(DPOTrainer, model)
    for name in ("beta", "label_smoothing", "ld_alpha", "f_divergence_type", "use_weighting"):
        setattr(trainer, name, getattr(args, name))
    trainer.precompute_ref_logps, trainer.loss_types, trainer.loss_weights = True, args.loss_type, [1.0]
    batch = {"input_ids": ids, "attention_mask": attention, "completion_mask": completion, "ref_chosen_logps": ref[:pairs], "ref_rejected_logps": ref[pairs:]}
    trl_loss = trainer._compute_loss(model, batch, return_outputs=False)
    trl_metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}

    losses, chosen_r, rejected_r = dpo_loss(
        logps[:pairs], logps[pairs:], ref[:pairs], ref[pairs:], loss_type, beta, label_smoothing, chosen_lengths=lengths[:pairs], rejected_lengths=lengths[pairs:]
    )
    assert losses.shape == (pairs,)
    assert losses.mean().item() == pytest.approx(trl_loss.item(), abs=1e-6)
    ours = reward_metrics(chosen_r, rejected_r, logps[:pairs], logps[pairs:])
    assert ours == pytest.approx({name: trl_metrics[name] for name in ours}, abs=1e-6)
    assert 0 < ours["rewards/accuracies"] < 1  # the random pairs go both ways: accuracy is really compared


@pytest.mark.parametrize("kl_offset", [-1.5, 1.5], ids=["kl-positive", "kl-clamped-to-0"])
def test_kto_loss_and_metrics_equal_trl(tiny_llama, tmp_path, kl_offset):
    from trl import KTOConfig, KTOTrainer

    model, _ = tiny_llama
    n = 8
    gen = torch.Generator().manual_seed(6)
    ids, attention, completion = random_rows(gen, n)
    # KL batch: prompt i with completion i - 1 (TRL's rotation), packed as the collator would
    kl_ids, kl_attention, kl_completion = torch.zeros_like(ids), torch.zeros_like(ids), torch.zeros_like(ids)
    for i, j in enumerate(kto_mismatched_index(n).tolist()):
        prompt = ids[i][(attention[i] == 1) & (completion[i] == 0)]
        answer = ids[j][completion[j] == 1][: LENGTH - len(prompt)]
        row = torch.cat([prompt, answer])
        kl_ids[i, : len(row)], kl_attention[i, : len(row)], kl_completion[i, len(prompt) : len(row)] = row, 1, 1
    desirable = torch.tensor([True, False, True, True, False, True, False, False])
    logps = trl_logps(model, ids, attention, completion)
    kl_logps = trl_logps(model, kl_ids, kl_attention, kl_completion)
    ref = logps + 4 * torch.randn(n, generator=gen)
    ref_kl = kl_logps + kl_offset + torch.randn(n, generator=gen)

    args = KTOConfig(output_dir=str(tmp_path), bf16=False, beta=0.1, desirable_weight=1.33, undesirable_weight=1.0, precompute_ref_log_probs=True)
    trainer = new_trainer(KTOTrainer, model)
    for name in ("beta", "loss_type", "desirable_weight", "undesirable_weight"):
        setattr(trainer, name, getattr(args, name))
    trainer.precompute_ref_logps, trainer.calculate_KL = True, True
    batch = {"input_ids": ids, "attention_mask": attention, "completion_mask": completion, "label": desirable,
             "KL_input_ids": kl_ids, "KL_attention_mask": kl_attention, "KL_completion_mask": kl_completion, "ref_logps": ref, "ref_KL_logps": ref_kl}
    trl_loss = trainer._compute_loss(model, batch, return_outputs=False)
    trl_metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}

    kl = kto_kl_estimate(kl_logps, ref_kl)
    assert (kl.item() > 0) == (kl_offset < 0)
    losses, rewards = kto_loss(logps, ref, desirable, kl, beta=0.1, desirable_weight=1.33, undesirable_weight=1.0)
    assert losses.mean().item() == pytest.approx(trl_loss.item(), abs=1e-6)
    ours = kto_metrics(rewards, desirable, kl, logps)
    assert set(ours) == {"kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"}
    assert ours == pytest.approx({name: trl_metrics[name] for name in ours}, abs=1e-6)


def random_pairs(seed: int, pairs: int = 8):
    """Summed completion log-probs and completion lengths, as the reference-free losses take them."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 40, (2 * pairs,), generator=gen)
    summed = -lengths * (0.2 + 2 * torch.rand(2 * pairs, generator=gen))  # 0.2-2.2 nats a token
    return summed[:pairs], summed[pairs:], lengths[:pairs], lengths[pairs:]


@pytest.mark.parametrize("beta, label_smoothing, gamma", [(0.1, 0.0, None), (2.0, 0.0, 1.0), (2.5, 0.1, 0.5)])
def test_simpo_equals_trls_cpo_trainer(tmp_path, beta, label_smoothing, gamma):
    trl_or_skip()
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    args = CPOConfig(output_dir=str(tmp_path), bf16=False, loss_type="simpo", cpo_alpha=0.0, beta=beta, label_smoothing=label_smoothing, **({} if gamma is None else {"simpo_gamma": gamma}))
    assert args.simpo_gamma == (SIMPO_GAMMA if gamma is None else gamma)  # llmpipe's default is TRL's
    trainer = new_trainer(CPOTrainer)
    for name in ("beta", "label_smoothing", "loss_type", "simpo_gamma", "alpha"):
        setattr(trainer, name, getattr(args, name))
    chosen, rejected, len_c, len_r = random_pairs(7)
    # TRL's CPO trainer hands its loss per-token average log-probs (get_batch_logps(average_log_prob=True))
    trl_losses, trl_chosen_r, trl_rejected_r = trainer.cpo_loss(chosen / len_c, rejected / len_r)

    kwargs = {} if gamma is None else {"simpo_gamma": gamma}
    losses, chosen_r, rejected_r = dpo_loss(chosen, rejected, None, None, "simpo", beta, label_smoothing, len_c, len_r, **kwargs)
    assert torch.allclose(losses, trl_losses, atol=1e-6)
    assert torch.allclose(chosen_r, trl_chosen_r, atol=1e-6) and torch.allclose(rejected_r, trl_rejected_r, atol=1e-6)
    assert 0 < reward_metrics(chosen_r, rejected_r)["rewards/accuracies"] < 1


@pytest.mark.parametrize("beta", [0.1, 0.25])
def test_orpo_equals_trls_orpo_trainer(tmp_path, beta):
    trl_or_skip()
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    args = ORPOConfig(output_dir=str(tmp_path), bf16=False, beta=beta)
    trainer = new_trainer(ORPOTrainer)
    trainer.beta = args.beta
    chosen, rejected, len_c, len_r = random_pairs(8)
    trl_terms, trl_chosen_r, trl_rejected_r, trl_log_odds_ratio, trl_log_odds_chosen = trainer.odds_ratio_loss(chosen / len_c, rejected / len_r)

    losses, chosen_r, rejected_r = dpo_loss(chosen, rejected, None, None, "orpo", beta, chosen_lengths=len_c, rejected_lengths=len_r)
    # TRL's total is nll - terms.mean(); llmpipe's odds-ratio losses are the terms negated, added to the nll
    nll = torch.tensor(1.7)
    assert (nll + losses.mean()).item() == pytest.approx((nll - trl_terms.mean()).item(), abs=1e-6)
    assert torch.allclose(losses, -trl_terms, atol=1e-6)
    assert torch.allclose(chosen_r, trl_chosen_r, atol=1e-6) and torch.allclose(rejected_r, trl_rejected_r, atol=1e-6)
    log_odds = orpo_log_odds(chosen / len_c, rejected / len_r)
    assert log_odds.mean().item() == pytest.approx(trl_log_odds_chosen.item(), abs=1e-6)
    assert F.logsigmoid(log_odds).mean().item() == pytest.approx(trl_log_odds_ratio.item(), abs=1e-6)
