"""GRPO: reinforcement learning from a reward, without a value network (Shao et al. 2024, as TRL's GRPOTrainer).

Input: prompt files (JSON, JSONL (.gz/.zst), Parquet): rows with "prompt" (a string or a list of messages) or
"question" (GSM8K), and "answer" (a string or number; GSM8K's "... #### 72" works), or prompt-only rows for
a reward that needs no answer; or the conversations sft reads (alpaca, messages, sharegpt, prompt/response),
whose last assistant reply is the answer and the turns before it the prompt. `checkpoint` is the chat model to
tune; `reference` (default: checkpoint) is the frozen model of the KL penalty.

Each step takes `batch_size` prompts, samples `num_generations` completions of each from the current policy
(temperature, KV cache: llmpipe/decoding.py), scores them with `reward` (llmpipe/train/grpo_rewards.py):
exact_match (the completion's final number or answer equals the answer), regex:<pattern> (a format reward) or
a reward-model checkpoint (llmpipe reward-model's output), and minimises the clipped surrogate of the
group-relative advantages plus beta x the k3 KL to the reference, per token, reduced as `loss_type` says
(llmpipe/train/grpo.py; "grpo": each completion's token mean, then the mean over completions). The reference's
log-probs are computed when the completions are sampled; with num_iterations > 1 the same completions are
optimised that many steps and the sampling policy's log-probs (kept then) make the ratio and its clipping.

Logged per step: reward, reward_std, accuracy (exact match rate, when the prompts have answers),
frac_reward_zero_std (groups that teach nothing), completion_length, kl, clip_ratio. The held-out prompts
(`val_fraction`) are answered before training and at every evaluation, greedily (eval_accuracy, eval_reward) and
by `eval_generations` samples each at the training temperature (eval_sampled_accuracy: how often the policy GRPO
trains answers right as it samples; the greedy answers of a small model can lag it, or jump, as single digits flip);
<name>_before and <name> in the manifest; reward.png beside loss.png.

    llmpipe grpo --input embedded:arithmetic --checkpoint runs/pretrain/sft --output runs/grpo --max-steps 5 --max-new-tokens 8
    [steps.grpo]
    inputs = ["data/gsm8k_train.jsonl"]
    checkpoint = "sft"
    reward = "exact_match"
    num_generations = 8
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llmpipe.registry import Plan, Stage
from llmpipe.train.finetune import FineTuneParams, check_chat_checkpoint, finalize_counts, plan_checks, read_examples


@dataclass(frozen=True)
class Params(FineTuneParams):
    reward: str = field(default="exact_match", metadata={"help": "exact_match (the final number/answer equals the row's answer), regex:<pattern> (1 when it matches the completion), or a reward-model checkpoint directory."})
    reference: str = field(default="", metadata={"help": "The frozen model of the KL penalty (default: checkpoint)."})
    num_generations: int = field(default=8, metadata={"help": "Completions sampled per prompt: the group whose rewards set each one's advantage."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest completion, in tokens."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the completions (TRL's default)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling of the completions (1: off)."})
    beta: float = field(default=0.04, metadata={"help": "Weight of the per-token KL to the reference (k3 estimator); 0: no reference model."})
    epsilon: float = field(default=0.2, metadata={"help": "Clipping range of the probability ratio (PPO's epsilon)."})
    kl_bias_correction: bool = field(default=False, metadata={"help": "Multiply the KL term by the ratio (DeepSeek-V3.2; TRL 1.16's use_bias_correction_kl); off: the GRPO paper's k3 term."})
    eval_generations: int = field(default=4, metadata={"help": "Completions sampled per held-out prompt at each evaluation (besides the greedy one): eval_sampled_accuracy is their mean, pass@1 averaged over k as DeepSeek-R1 reports it (0: greedy only)."})
    num_iterations: int = field(default=1, metadata={"help": "Optimizer steps on each sampled batch (the paper's mu); above 1 the ratio departs from 1 and clipping acts."})
    scale_rewards: Literal["group", "batch", "none"] = field(default="group", metadata={"help": "Divide advantages by the std of the group, of the batch, or not at all (Dr. GRPO)."})
    loss_type: Literal["grpo", "bnpo", "dr_grpo"] = field(default="grpo", metadata={"help": "grpo: per-completion token mean, then mean; bnpo: mean over all tokens; dr_grpo: sum / (completions x max_new_tokens)."})
    format: str = field(default="auto", metadata={"help": "Data format: auto (prompt/question + answer rows, else what sft reads), or one of sft's formats."})
    # the shared params' defaults, for GRPO: a prompt is num_generations sequences, and RL takes small steps
    batch_size: int = field(default=8, metadata={"help": "Prompts per optimizer step over all ranks (each sampled num_generations times)."})
    micro_batch: int = field(default=2, metadata={"help": "Prompts per forward/backward on one rank (num_generations rows each)."})
    lr: float = field(default=1e-5, metadata={"help": "Peak learning rate (TRL's default is 1e-6 for billion-parameter models; small models take more)."})
    min_lr: float = field(default=0.0, metadata={"help": "Learning rate at the end of the cosine schedule."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warmup steps."})

    def __post_init__(self):
        from llmpipe.text.chat_formats import FORMATS

        super().__post_init__()
        if self.parallel == "fsdp":
            raise ValueError("parallel: grpo samples with the whole model on each rank; use ddp (fsdp shards it)")
        if self.format not in ("auto", *FORMATS):
            raise ValueError(f"format: expected auto or one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.num_generations < 2:
            raise ValueError(f"num_generations: expected 2 or more (advantages compare completions of one prompt), got {self.num_generations}")
        if self.max_new_tokens < 1 or not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"max_new_tokens: expected max_new_tokens >= 1, temperature > 0 and top_p in (0, 1], got {self.max_new_tokens}, {self.temperature}, {self.top_p}")
        if self.eval_generations < 0:
            raise ValueError(f"eval_generations: expected 0 or more, got {self.eval_generations}")
        if self.beta < 0 or not self.epsilon > 0 or self.num_iterations < 1:
            raise ValueError(f"beta: expected beta >= 0, epsilon > 0 and num_iterations >= 1, got {self.beta}, {self.epsilon}, {self.num_iterations}")
        if self.reward.startswith("regex:") or self.reward == "exact_match":
            from llmpipe.train.grpo_rewards import describe_problem

            problem = describe_problem(self.reward)
            if problem:
                raise ValueError(problem)


def plan(params: Params, inputs) -> Plan:
    from llmpipe.train.grpo_rewards import describe_problem

    out = plan_checks(params, inputs, "prompt data", "grpo")
    if params.reference:
        check_chat_checkpoint(params.reference, made=False)
    spec = params.reward
    # a path an earlier pipeline step has yet to make passes here and is checked when the step runs
    if not (spec.startswith("regex:") or spec == "exact_match") and (Path(spec).exists() or "/" not in spec):
        problem = describe_problem(spec)
        if problem:
            raise ValueError(problem)
    if spec == "exact_match":  # before anything is written: a prompt without an answer cannot be scored
        from llmpipe.stats import TaskStats

        files = [f for inp in inputs for f in inp.files]
        missing = next((x for x in read_prompts(files, params.format, TaskStats()) if x.answer is None), None)
        if missing is not None:
            raise ValueError(no_answer(missing.key))
    return Plan(phases=[("train", [{}])], files=out + ["reward.png"])


def no_answer(key: str) -> str:
    return (f"reward: exact_match needs an answer to compare with, and {key} has none; "
            'give rows with "answer" (or a reply), or a reward that needs none (regex:<pattern>, a reward model)')


# --- prompts -----------------------------------------------------------------------------------


@dataclass
class Prompt:
    key: str
    messages: list[dict]  # the turns before the reply: they end on a user turn
    answer: str | None
    ids: list[int] = field(default_factory=list)  # through the chat template, with the assistant header


def read_prompts(files: list[str], fmt: str, stats) -> list[Prompt]:
    """Every usable row as a Prompt, in file order; unusable rows counted in stats by reason."""
    import os

    from llmpipe.text.chat_data import iter_rows
    from llmpipe.text.chat_formats import BadRow, detect_format, parse_messages, to_messages

    prompts = []
    for path in files:
        for row_no, row in iter_rows(path, stats):
            stats.count("rows")
            key = f"{os.fspath(path)}:{row_no}"
            try:
                question = row.get("prompt", row.get("question")) if isinstance(row, dict) else None
                if fmt == "auto" and question is not None and "response" not in row and "completion" not in row:
                    messages = [{"role": "user", "content": question}] if isinstance(question, str) else parse_messages(question, "prompt", "role", "content")
                    if not messages or messages[-1]["role"] != "user" or not messages[-1]["content"]:
                        raise BadRow("empty_content", "the prompt has no user turn to answer")
                    answer = row.get("answer")
                    prompts.append(Prompt(key, messages, None if answer is None else str(answer)))
                    continue
                use = fmt if fmt != "auto" else detect_format(row)
                if use is None:
                    raise BadRow("no_format", ", ".join(list(row)[:12]) if isinstance(row, dict) else f"a JSON {type(row).__name__}")
                messages = to_messages(row, use)
                last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
                prompts.append(Prompt(key, messages[:last], messages[last]["content"]))
            except BadRow as bad:
                stats.skip(bad.reason, f"{key}: {bad.detail}")
    return prompts


def load_examples(files: list[str], p: Params, tokenizer, max_len: int, stats) -> tuple[list[Prompt], list[Prompt]]:
    """(train, held-out) prompts, each rendered and cut to leave max_new_tokens of the context for its completion."""
    from llmpipe.errors import InputError
    from llmpipe.text.chat_template import render
    from llmpipe.train.examples import val_keys

    prompts = read_prompts(files, p.format, stats)
    if p.reward == "exact_match":
        missing = next((x for x in prompts if x.answer is None), None)
        if missing is not None:
            raise InputError(f"grpo {no_answer(missing.key)}")
    room = max_len - p.max_new_tokens
    for x in prompts:
        x.ids = render(x.messages, tokenizer, add_generation_prompt=True)[0][-room:]
    held_out = val_keys([x.key for x in prompts], p.seed, p.val_fraction)
    return [x for x in prompts if x.key not in held_out], [x for x in prompts if x.key in held_out]


# --- sampling and scoring ------------------------------------------------------------------------


@dataclass
class Rollout:
    """One micro-batch of sampled completions: rows (prompt ids, completion ids), group by group."""
    rows: list[tuple[list[int], list[int]]]
    advantages: object  # [N] tensor
    old_logps: object = None  # [N, T - 1] at sampling time (num_iterations > 1), else None
    ref_logps: object = None  # [N, T - 1] under the reference (beta > 0), else None
    metrics: dict = field(default_factory=dict)  # the step's sampling figures, the same on every micro-batch


def sample(model, prompts: list[list[int]], p: Params, stop_ids: set[int], generator, greedy: bool = False) -> list[list[int]]:
    """Each prompt's completion ids (a final stop id included), by token_steps with one KV cache for the batch."""
    from llmpipe.decoding import Decoding, token_steps

    d = Decoding(max_new_tokens=p.max_new_tokens, temperature=0.0 if greedy else p.temperature, top_p=1.0 if greedy else p.top_p)
    made, ended = [[] for _ in prompts], [False] * len(prompts)
    for step in token_steps(model, prompts, d, stop_ids, None if greedy else generator):
        for row, token in enumerate(step.tolist()):
            if not ended[row]:
                made[row].append(token)
                ended[row] = token in stop_ids
    return made


def completion_texts(tokenizer, completions: list[list[int]], stop_ids: set[int]) -> list[str]:
    return [tokenizer.decode([t for t in c if t not in stop_ids]) for c in completions]


def score(prompts: list[Prompt], made: list[list[int]], tokenizer, stop_ids: set[int], reward_fn) -> tuple[list[float], list[float | None]]:
    """The reward of each completion `made` of its prompt, and its exact match with the prompt's answer (None: no answer)."""
    from llmpipe.train.grpo_rewards import exact_match

    texts = completion_texts(tokenizer, made, stop_ids)
    rewards = reward_fn([x.messages for x in prompts], texts, [x.answer for x in prompts])
    return rewards, [exact_match(t, x.answer) if x.answer is not None else None for t, x in zip(texts, prompts)]


def _autocast(device: str):
    import torch

    # the sampling-time log-probs must be computed as the training forward computes them (bf16 on CUDA)
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))


def score_rows(model, rows, pad: int, device: str):
    import torch

    from llmpipe.train.grpo import completion_logps

    with torch.no_grad(), _autocast(device):
        return completion_logps(model, rows, pad, device)[0]


def rollouts(model, reference, batch: list[Prompt], p: Params, reward_fn, tokenizer, stop_ids: set[int], pad: int,
             device: str, generator) -> list[Rollout]:
    """This rank's micro-batches of a step: sample, score, group advantages, sampling-time and reference log-probs."""
    import statistics

    import torch

    from llmpipe.train.grpo import group_advantages

    G = p.num_generations
    chunks = [batch[k:k + p.micro_batch] for k in range(0, len(batch), p.micro_batch)]
    rows, rewards, correct = [], [], []
    for chunk in chunks:
        repeated = [x for x in chunk for _ in range(G)]
        prompts = [x.ids for x in repeated]
        made = sample(model, prompts, p, stop_ids, generator)
        scores, matches = score(repeated, made, tokenizer, stop_ids, reward_fn)
        rewards += scores
        correct += [m for m in matches if m is not None]
        rows += list(zip(prompts, made))
    r = torch.tensor(rewards, dtype=torch.float32)
    advantages = group_advantages(r, G, p.scale_rewards)
    group_std = r.view(-1, G).std(dim=1)
    metrics = {"reward": r.mean().item(), "reward_std": r.std().item() if r.numel() > 1 else 0.0,
               "frac_reward_zero_std": torch.isclose(group_std, torch.zeros_like(group_std)).float().mean().item(),
               "completion_length": statistics.fmean(len(c) for _, c in rows)}
    if correct:
        metrics["accuracy"] = statistics.fmean(correct)
    out, n = [], p.micro_batch * G
    for k in range(0, len(rows), n):
        part = rows[k:k + n]
        old = score_rows(model, part, pad, device) if p.num_iterations > 1 else None
        ref = score_rows(reference, part, pad, device) if reference is not None else None
        out.append(Rollout(part, advantages[k:k + n].to(device), old, ref, metrics))
    return out


# --- training ----------------------------------------------------------------------------------


def train_task(ctx, task: dict) -> dict:
    import torch

    from llmpipe.errors import InputError
    from llmpipe.model import Model
    from llmpipe.text.tokenizer import load_tokenizer
    from llmpipe.train.dist import check_device, init_distributed, shutdown_distributed
    from llmpipe.train.examples import step_examples
    from llmpipe.train.finetune import before_after, write_chat_checkpoint
    from llmpipe.train.grpo import completion_logps, grpo_loss
    from llmpipe.train.grpo_rewards import describe_problem, make_reward
    from llmpipe.train.loop import LoopConfig, train
    from llmpipe.train.optim import lr_at, make_optimizer

    p: Params = ctx.params
    try:
        check_device(p.device)
        for path in filter(None, (p.checkpoint, p.reference)):
            check_chat_checkpoint(path)
        problem = describe_problem(p.reward)
        if problem:
            raise ValueError(problem)
    except ValueError as e:
        raise InputError(f"{ctx.run['step']} {e}") from None
    dist = init_distributed(p.device)
    try:
        torch.manual_seed(p.seed)
        model = Model.from_checkpoint(p.checkpoint, device=dist.device)
        tokenizer = load_tokenizer(p.checkpoint)
        context = model.config.max_seq_len
        max_len = min(p.max_seq_len or context, context)
        if p.max_new_tokens >= max_len:
            raise InputError(f"{ctx.run['step']} max_new_tokens: {p.max_new_tokens} leaves no room for a prompt in {max_len} tokens; lower it")
        train_prompts, val_prompts, stats = read_examples(ctx, load_examples, tokenizer, max_len, "prompt")
        reference = None
        if p.beta:
            reference = Model.from_checkpoint(p.reference or p.checkpoint, device=dist.device).eval()
            reference.requires_grad_(False)
        reward_fn = make_reward(p.reward, device=dist.device)
        stop_ids = {tokenizer.special["end"], *([tokenizer.special["eos"]] if "eos" in tokenizer.special else [])}
        pad = tokenizer.special.get("pad", 0)
        steps = p.steps(len(train_prompts))
        generated: dict[int, list[Rollout]] = {}  # the batch of the current generation (num_iterations steps use it)

        def micro_batches(step: int):
            g = step // p.num_iterations
            if g not in generated:
                generated.clear()
                mine = step_examples(train_prompts, g, p.batch_size, p.seed, dist.rank, dist.world_size)
                generator = torch.Generator(device=dist.device).manual_seed(p.seed * 1_000_003 + g * 1009 + dist.rank)
                generated[g] = rollouts(model, reference, mine, p, reward_fn, tokenizer, stop_ids, pad, dist.device, generator)
            yield from generated[g]

        def loss_fn(m, batch: Rollout):
            logps, mask = completion_logps(m, batch.rows, pad, dist.device)
            loss, metrics = grpo_loss(logps, batch.old_logps, batch.ref_logps, batch.advantages, mask, beta=p.beta,
                                      epsilon=p.epsilon, loss_type=p.loss_type, max_new_tokens=p.max_new_tokens,
                                      kl_bias_correction=p.kl_bias_correction)
            return loss, {**batch.metrics, **metrics}

        eval_fn = None
        if val_prompts:
            mine = val_prompts[dist.rank::dist.world_size]

            def eval_fn(m):
                k = p.eval_generations
                # the same sampling stream at every evaluation: a change between two of them is the model's
                generator = torch.Generator(device=dist.device).manual_seed(p.seed * 1_000_003 + 999_983 + dist.rank) if k else None
                # greedy reward, correct, tokens; prompts; sampled reward, correct (each prompt's mean over k)
                sums = torch.zeros(6, dtype=torch.float64, device=dist.device)
                for start in range(0, len(mine), 16):
                    chunk = mine[start:start + 16]
                    made = sample(m, [x.ids for x in chunk], p, stop_ids, None, greedy=True)
                    reward, correct = summed(chunk, made)
                    sums[:4] += torch.tensor([reward, correct, sum(map(len, made)), len(chunk)], dtype=torch.float64, device=dist.device)
                    if k:
                        rows = [x for x in chunk for _ in range(k)]
                        reward, correct = summed(rows, sample(m, [x.ids for x in rows], p, stop_ids, generator))
                        sums[4:] += torch.tensor([reward / k, correct / k], dtype=torch.float64, device=dist.device)
                if dist.ddp:
                    torch.distributed.all_reduce(sums)
                record = {"eval_reward": (sums[0] / sums[3]).item(), "eval_completion_length": (sums[2] / sums[3]).item()}
                if k:
                    record["eval_sampled_reward"] = (sums[4] / sums[3]).item()
                if all(x.answer is not None for x in val_prompts):
                    record["eval_accuracy"] = (sums[1] / sums[3]).item()
                    if k:
                        record["eval_sampled_accuracy"] = (sums[5] / sums[3]).item()
                return record

            def summed(rows: list[Prompt], made: list[list[int]]) -> tuple[float, float]:
                rewards, matches = score(rows, made, tokenizer, stop_ids, reward_fn)
                return sum(rewards), sum(m or 0.0 for m in matches)

        optimizer = make_optimizer(model, p.lr, p.weight_decay, device=dist.device)
        prompt_tokens = sum(len(x.ids) for x in train_prompts) / len(train_prompts)
        loop = LoopConfig(max_steps=steps, grad_clip=p.grad_clip, eval_every=p.eval_every, checkpoint_every=p.checkpoint_every,
                          keep_last=p.keep_last, tokens_per_step=int(p.batch_size * p.num_generations * (prompt_tokens + p.max_new_tokens)),
                          eval_at_start=True, parallel=p.parallel)
        schedule = lambda step: lr_at(step, lr=p.lr, min_lr=p.min_lr, warmup_steps=p.warmup_steps, max_steps=steps)  # noqa: E731
        hf_config = model.config.to_hf()
        evals = train(model, optimizer, schedule, micro_batches, loss_fn, ctx.out, loop, dist, config_json=hf_config, eval_fn=eval_fn, trackers=p.trackers)
        if dist.is_main:
            write_chat_checkpoint(ctx.out, model, hf_config, p.checkpoint,
                                  f"grpo ({p.reward}, G {p.num_generations}, beta {p.beta}): {len(train_prompts)} prompts, {steps} steps")
            reward_png(ctx.out / "reward.png", ctx.out / "metrics.jsonl", f"grpo: reward {p.reward}, {steps} steps")
        counts = {"prompts": len(train_prompts) + len(val_prompts), "train_prompts": len(train_prompts), "val_prompts": len(val_prompts), "steps": steps}
        return {**stats.to_json(), "counts": {**stats.counts, **counts}, "metrics": before_after(evals), "world_size": dist.world_size}
    finally:
        shutdown_distributed()


def reward_png(path: Path, metrics: Path, title: str) -> None:
    """Mean reward (and exact-match accuracy) of the sampled completions per step; held-out accuracy where measured."""
    from llmpipe.train.loop import curves_png

    curves_png(path, metrics, title, [("reward", "reward (sampled)"), ("accuracy", "accuracy (sampled)")],
               [("eval_accuracy", "held-out accuracy (greedy)"), ("eval_sampled_accuracy", "held-out accuracy (sampled)")])


def finalize(ctx, stats: dict, records: dict) -> dict:
    from llmpipe.stats import TaskStats
    from llmpipe.train.examples import val_keys
    from llmpipe.train.finetune import chat_answers

    result = finalize_counts(records["train"][0]["stats"], ("prompts", "train_prompts", "val_prompts", "steps"))
    p = ctx.params
    prompts = read_prompts(ctx.input_files, p.format, TaskStats())
    held_out = val_keys([x.key for x in prompts], p.seed, p.val_fraction)
    chosen = [x for x in prompts if x.key in held_out][:2] or prompts[:2]
    result["samples"] = chat_answers(ctx.out, [(x.key, x.messages) for x in chosen], new_tokens=p.max_new_tokens)
    return result


STAGE = Stage(
    name="grpo", version=1, params=Params, doc=__doc__, plan=plan, run_task={"train": train_task}, finalize=finalize,
    output_kind="checkpoint", launcher="torchrun", input_kinds=("raw",), path_params=("checkpoint", "reference"),
)
