"""GRPO's pieces: group advantages and the clipped, KL-penalised loss by hand and against TRL 1.16's _compute_loss;
the exact-match and regex rewards; the stage's one-line errors. The learning run is tests/stages/test_grpo.py.

The TRL comparison builds GRPOTrainer with object.__new__ (as tests/test_preference_losses.py builds DPO's), sets the
attributes its __init__ sets from a real GRPOConfig, and runs TRL's own _compute_loss on a tiny random Llama with
TRL's fused LM head; llmpipe's grpo_loss gets the per-token log-probs TRL's head gives for the same rows, and the
sampling-time and reference log-probs are random tensors handed to both (so the ratio departs from 1 and clipping acts).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

import pytest
import torch

from llmpipe.train.grpo import group_advantages, grpo_loss
from llmpipe.train.grpo_rewards import describe_problem, exact_match, final_number, make_reward
from tests.conftest import run_cli
from tests.test_errors import _one_line_error
from tests.test_preference_losses import trl_or_skip


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])  # two groups of 4
    adv = group_advantages(rewards, 4)
    std = math.sqrt(((0.75) ** 2 + 3 * 0.25**2) / 3)  # unbiased, as TRL's nanstd
    expected = [0.75 / (std + 1e-4), -0.25 / (std + 1e-4), -0.25 / (std + 1e-4), -0.25 / (std + 1e-4), 0, 0, 0, 0]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6), "a group whose rewards are equal teaches nothing: advantage 0"
    assert group_advantages(rewards, 4, "none").tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])
    batch_std = rewards.std().item()
    assert group_advantages(rewards, 4, "batch").tolist() == pytest.approx([x / (batch_std + 1e-4) for x in [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]], abs=1e-6)


def _by_hand(logps, old, ref, adv, mask, beta, eps, loss_type, max_new):
    """The loss with python loops: l_t = -min(r A, clip(r) A) + beta (exp(ref - lp) - (ref - lp) - 1)."""
    per_seq, total, tokens = [], 0.0, 0
    for i in range(len(logps)):
        row = []
        for t in range(len(logps[i])):
            if not mask[i][t]:
                continue
            r = math.exp(logps[i][t] - old[i][t])
            d = ref[i][t] - logps[i][t]
            row.append(-min(r * adv[i], min(max(r, 1 - eps), 1 + eps) * adv[i]) + beta * (math.exp(d) - d - 1))
        per_seq.append(sum(row) / max(len(row), 1))
        total, tokens = total + sum(row), tokens + len(row)
    return {"grpo": sum(per_seq) / len(per_seq), "bnpo": total / tokens, "dr_grpo": total / (len(logps) * max_new)}[loss_type]


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
def test_grpo_loss_by_hand(loss_type):
    gen = torch.Generator().manual_seed(0)
    logps = -torch.rand(4, 5, generator=gen) * 3
    old = logps + 0.4 * torch.randn(4, 5, generator=gen)  # ratios from ~0.5 to ~2: both clips act
    ref = logps + 0.3 * torch.randn(4, 5, generator=gen)
    adv = torch.tensor([1.2, -0.7, 0.0, -1.5])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    loss, metrics = grpo_loss(logps, old, ref, adv, mask, beta=0.04, epsilon=0.2, loss_type=loss_type, max_new_tokens=5)
    expected = _by_hand(logps.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), 0.04, 0.2, loss_type, 5)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert 0 < metrics["clip_ratio"].item() < 1 and metrics["kl"].item() > 0


def test_one_pass_has_ratio_one_and_the_policy_gradient():
    # num_iterations = 1: old = logps detached, so the loss is -A (plus the KL) and d loss / d logp_t = -A / |o_i| / N
    logps = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, metrics = grpo_loss(logps, None, None, adv, mask, beta=0.0)
    assert loss.item() == pytest.approx((-2.0 + 1.0) / 2)
    loss.backward()
    assert logps.grad.flatten().tolist() == pytest.approx([-2.0 / 2 / 2, -2.0 / 2 / 2, 1.0 / 1 / 2, 0.0])
    assert metrics["clip_ratio"].item() == 0 and "kl" not in metrics


@pytest.mark.parametrize("loss_type, beta, correction", [("grpo", 0.04, False), ("grpo", 0.04, True), ("grpo", 0.0, False),
                                                         ("bnpo", 0.1, False), ("dr_grpo", 0.04, False)])
def test_grpo_loss_and_gradient_equal_trl(tmp_path, loss_type, beta, correction):
    trl_or_skip()
    from accelerate import Accelerator
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import GRPOConfig, GRPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=4, initializer_range=0.5)
    model = LlamaForCausalLM(config).train()
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    args = GRPOConfig(output_dir=str(tmp_path), loss_type=loss_type, beta=beta, epsilon=0.2, max_completion_length=7,
                      num_generations=4, per_device_train_batch_size=8, bf16=False, report_to=[],
                      use_bias_correction_kl=correction)
    trainer = object.__new__(GRPOTrainer)
    trainer.args, trainer.model, trainer.accelerator = args, model, Accelerator(cpu=True)
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    for name in ("loss_type", "beta", "max_completion_length", "use_vllm", "vllm_importance_sampling_correction",
                 "importance_sampling_level", "off_policy_mask_threshold", "top_entropy_quantile"):
        setattr(trainer, name, getattr(args, name))
    trainer.epsilon_low = trainer.epsilon_high = args.epsilon
    trainer.aux_loss_enabled, trainer._entropy_bonus_enabled, trainer.current_gradient_accumulation_steps = False, False, 1

    gen = torch.Generator().manual_seed(1)
    n, lp, lc = 8, 4, 7
    prompt_ids = torch.randint(0, 64, (n, lp), generator=gen)
    completion_ids = torch.randint(0, 64, (n, lc), generator=gen)
    lengths = torch.tensor([7, 3, 5, 1, 6, 7, 2, 4])
    completion_mask = (torch.arange(lc)[None] < lengths[:, None]).long()
    ones = torch.ones(n, lp, dtype=torch.long)
    advantages = group_advantages(torch.tensor([1.0, 0, 0, 1, 0, 0, 0, 1]), 4)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(model, torch.cat([prompt_ids, completion_ids], 1),
                                                                 torch.cat([ones, completion_mask], 1), lc)
    old = logps + 0.3 * torch.randn(n, lc, generator=gen)
    ref = logps + 0.3 * torch.randn(n, lc, generator=gen)
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": ones, "completion_ids": completion_ids, "completion_mask": completion_mask,
              "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref}

    theirs = trainer._compute_loss(model, inputs)
    theirs.backward()
    trl_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    policy, _, _ = trainer._get_per_token_logps_and_entropies(model, torch.cat([prompt_ids, completion_ids], 1),
                                                              torch.cat([ones, completion_mask], 1), lc)
    ours, metrics = grpo_loss(policy, old, ref if beta else None, advantages, completion_mask, beta=beta, epsilon=0.2,
                              loss_type=loss_type, max_new_tokens=lc, kl_bias_correction=correction)
    ours.backward()
    print(f"{loss_type} beta {beta} kl correction {correction}: llmpipe {ours.item():.8f}, TRL {theirs.item():.8f}")
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    worst = max((p.grad - g).abs().max().item() for p, g in zip(model.parameters(), trl_grads))
    assert worst < 1e-6, worst
    assert metrics["clip_ratio"].item() == pytest.approx(trainer._metrics["train"]["clip_ratio/region_mean"][-1], abs=1e-6)
    if beta:
        assert metrics["kl"].item() == pytest.approx(trainer._metrics["train"]["kl"][-1], abs=1e-6)


def test_exact_match_compares_final_numbers_else_text():
    assert exact_match("The answer is 12", "12") == 1.0
    assert exact_match("7 + 5 = 12.", "12") == 1.0
    assert exact_match("12 or maybe 13", "12") == 0.0, "the final number counts"
    assert exact_match("1,200 apples", "#### 1200") == 1.0, "GSM8K's answers end on #### N; thousands commas are fine"
    assert exact_match("12.0", "12") == 1.0 and exact_match("12.5", "12") == 0.0
    assert exact_match("-3", "-3") == 1.0 and exact_match("3", "-3") == 0.0
    assert exact_match("no number", "12") == 0.0
    assert exact_match("  Paris ", "paris") == 1.0 and exact_match("Paris, France", "Paris") == 0.0
    assert final_number("between 3 and 4.5") == 4.5 and final_number("none") is None


def test_regex_reward_and_make_reward():
    fmt = make_reward(r"regex:^<think>.*</think>\s*\d+$")
    completions = ["<think>7 plus 5\nis 12</think> 12", "12", "<think>x</think> twelve"]
    assert fmt([[]] * 3, completions, [None] * 3) == [1.0, 0.0, 0.0], "DOTALL: the thought may span lines"
    em = make_reward("exact_match")
    assert em([[]] * 2, ["12", "13"], ["12", "12"]) == [1.0, 0.0]


def test_reward_spec_problems(tmp_path):
    assert describe_problem("exact_match") is None and describe_problem(r"regex:\d+") is None
    assert "unknown reward 'accuracy'" in describe_problem("accuracy")
    assert "not a regular expression" in describe_problem("regex:(")
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 10}))
    assert "is not a reward model" in describe_problem(str(tmp_path))


def _tiny_chat_checkpoint(tmp_path):
    """The smallest chat checkpoint the stage accepts: llmpipe's tokenizer with role tokens and a random 1-layer model."""
    import llmpipe
    from llmpipe.artifacts.checkpoint import write_model_dir
    from llmpipe.model import Model, ModelConfig

    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": f"What is {a} plus {b}? It is {a + b}."}) + "\n" for a in range(30) for b in range(10)))
    llmpipe.run_stage("ingest", [str(text)], tmp_path / "docs")
    llmpipe.run_stage("train_tokenizer", [str(tmp_path / "docs")], tmp_path / "tok", vocab_size=300, holdout_documents=0)
    torch.manual_seed(0)
    model = Model(ModelConfig(vocab_size=300, n_layer=1, n_embd=32, n_head=2, n_kv_head=2, max_seq_len=64))
    write_model_dir(tmp_path / "ck", model.state_dict(), model.config.to_hf(), str(tmp_path / "tok"))
    return tmp_path / "ck"


def test_one_line_errors(tmp_path):
    ck = _tiny_chat_checkpoint(tmp_path)
    no_answers = tmp_path / "prompts.jsonl"
    no_answers.write_text(json.dumps({"prompt": "What is 1 + 2?"}) + "\n" + json.dumps({"prompt": "What is 2 + 2?"}) + "\n")
    cases = [
        (["--reward", "accuracy"], "unknown reward 'accuracy'"),
        (["--reward", "regex:("], "not a regular expression"),
        (["--num-generations", "1"], "--num-generations: expected 2 or more"),
        ([], "exact_match needs an answer"),
    ]
    for extra, expected in cases:
        line = _one_line_error(tmp_path, "grpo", "--input", str(no_answers), "--checkpoint", str(ck), "--output", "runs/out",
                               "--max-steps", "1", "--device", "cpu", *extra)
        assert expected in line, line
    # the same prompts train with a reward that needs no answer
    res = run_cli("grpo", "--input", str(no_answers), "--checkpoint", str(ck), "--output", "out", "--max-steps", "2",
                  "--device", "cpu", "--reward", r"regex:\d", "--batch-size", "2", "--micro-batch", "1", "--num-generations", "2",
                  "--max-new-tokens", "4", "--val-fraction", "0", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all({"reward", "reward_std", "completion_length", "kl", "clip_ratio"} <= r.keys() for r in records)
    assert "accuracy" not in records[0], "no answers: no exact-match accuracy"


def test_reward_model_reward_scores_the_rendered_reply(tmp_path):
    from llmpipe.artifacts.checkpoint import write_model_dir
    from llmpipe.text.chat_template import render
    from llmpipe.text.tokenizer import load_tokenizer
    from llmpipe.train.reward import reward_model_from, sequence_rewards

    ck = _tiny_chat_checkpoint(tmp_path)
    torch.manual_seed(1)
    rm = reward_model_from(ck).eval()
    write_model_dir(tmp_path / "rm", rm.state_dict(), rm.config.to_hf(), str(ck))
    assert describe_problem(str(tmp_path / "rm")) is None and "not a reward model" in describe_problem(str(ck))
    prompts = [[{"role": "user", "content": "What is 2 plus 3?"}]] * 2
    scores = make_reward(str(tmp_path / "rm"))(prompts, ["It is 5.", "It is 7."], [None, None])
    tok = load_tokenizer(ck)
    with torch.no_grad():
        expected = [sequence_rewards(rm, torch.tensor([ids]), torch.tensor([len(ids)])).item()
                    for ids in (render(prompts[0] + [{"role": "assistant", "content": c}], tok)[0] for c in ("It is 5.", "It is 7."))]
    assert scores == pytest.approx(expected, abs=1e-5) and scores[0] != scores[1]


def test_embedded_arithmetic_is_a_verifiable_task_that_ships():
    """400 'What is a + b?' prompts with their answers, in a stable shuffled order; exact_match scores the answer."""
    import re

    from llmpipe.stats import TaskStats
    from llmpipe.train.grpo_rewards import exact_match
    from stages.grpo import read_prompts

    prompts = read_prompts(["embedded:arithmetic"], "auto", TaskStats())
    assert len(prompts) == 400 and len({p.messages[-1]["content"] for p in prompts}) == 400
    for p in prompts:
        a, b = map(int, re.fullmatch(r"What is (\d+) \+ (\d+)\?", p.messages[-1]["content"]).groups())
        assert p.answer == str(a + b) and exact_match(f"The answer is {a + b}.", p.answer) == 1.0
    assert [p.key for p in prompts[:2]] == ["embedded:arithmetic:1", "embedded:arithmetic:2"]
    assert prompts == read_prompts(["embedded:arithmetic"], "auto", TaskStats())


def test_held_out_prompts_are_answered_greedily_and_by_samples(tmp_path):
    """eval_generations completions per held-out prompt at each evaluation, drawn from the same stream every time: with
    nothing learned (lr 0) the last evaluation repeats the first; 0 leaves the greedy figures only."""
    ck = _tiny_chat_checkpoint(tmp_path)
    common = ["grpo", "--input", "embedded:arithmetic", "--checkpoint", str(ck), "--max-steps", "2", "--eval-every", "1",
              "--device", "cpu", "--reward", r"regex:\d", "--batch-size", "2", "--micro-batch", "2", "--num-generations", "2",
              "--max-new-tokens", "3", "--val-fraction", "0.05", "--lr", "0", "--min-lr", "0"]
    env = {"OMP_NUM_THREADS": "1"}
    run_cli(*common, "--output", "k3", "--eval-generations", "3", cwd=tmp_path, check=True, env=env)
    run_cli(*common, "--output", "k0", "--eval-generations", "0", cwd=tmp_path, check=True, env=env)
    evals = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
             for name in ("k3", "k0")}
    n_val = json.loads((tmp_path / "k3" / "_manifest.json").read_text())["counts"]["val_prompts"]
    sampled = [r["eval_sampled_reward"] for r in evals["k3"]]
    assert [r["step"] for r in evals["k3"]] == [0, 1, 2] and n_val == 25  # the seeded hash puts 25 of 400 below 0.05
    assert 0 < sampled[0] < 1 and round(sampled[0] * 3 * n_val, 6) == round(sampled[0] * 3 * n_val), sampled
    assert sampled == [sampled[0]] * 3, "the same model and the same stream give the same figure"
    assert all(0 <= r["eval_sampled_accuracy"] <= 1 for r in evals["k3"])
    assert [r["eval_reward"] for r in evals["k3"]] == [r["eval_reward"] for r in evals["k0"]], "greedy answers do not depend on k"
    assert not any("eval_sampled_reward" in r or "eval_sampled_accuracy" in r for r in evals["k0"])
    line = _one_line_error(tmp_path, *common, "--output", "bad", "--eval-generations", "-1")
    assert "--eval-generations: expected 0 or more, got -1" in line, line
