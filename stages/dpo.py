"""Preference tuning: DPO and its family (ipo, hinge, robust), the reference-free SimPO and ORPO, and KTO.

Input: preference data files (JSON, JSONL (.gz/.zst), Parquet): prompt/chosen/rejected as strings
or conversations (TRL's formats), Anthropic hh-rlhf transcripts, ShareGPT-style ranking rows
(dpo_en_demo.json), or for loss = "kto" unpaired rows (prompt, completion, label; or messages +
label), detected per row (llmpipe/text/preference_data.py); bad rows are counted by reason.
`checkpoint` is the chat model to tune (an sft step, or a checkpoint directory with llmpipe's
tokenizer); `reference` defaults to it.

Two phases. `reference`: the reference model's log-probabilities of every completion (for KTO also
of each prompt with another example's completion, its KL reference point) are computed once and
stored in the artifact (reference_logps.safetensors), so training never holds a second model.
`train`: the one training loop with the method's loss (llmpipe/train/preference.py, equal to TRL's
to 1e-6) and TRL's metric names on training batches (rewards/chosen, rewards/rejected,
rewards/accuracies, rewards/margins, logps/chosen, logps/rejected, kl for KTO) and on the held-out
pairs (eval_ prefixed), measured before training and at every evaluation. A prompt too long for
max_seq_len loses its beginning (at most half the context stays for it), a completion its end.

    llmpipe dpo --input embedded:python-preferences --checkpoint runs/pretrain/sft --output runs/dpo --max-steps 10
    llmpipe dpo --input dpo_en_demo.json --checkpoint runs/pretrain/sft --output runs/simpo --loss simpo
    [steps.dpo]
    inputs = ["data/preferences.jsonl"]
    checkpoint = "sft"
    loss = "sigmoid"
    beta = 0.1
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llmpipe.registry import Plan, Stage
from llmpipe.train.finetune import FineTuneParams, check_chat_checkpoint, finalize_counts, plan_checks, read_examples

REFERENCE_FILE = "reference_logps.safetensors"


@dataclass(frozen=True)
class Params(FineTuneParams):
    reference: str = field(default="", metadata={"help": "The reference model (default: checkpoint); its log-probs are computed once and stored."})
    loss: Literal["sigmoid", "ipo", "hinge", "robust", "simpo", "orpo", "kto"] = field(
        default="sigmoid", metadata={"help": "sigmoid (DPO), ipo, hinge, robust (label_smoothing = flip rate), simpo and orpo (no reference), kto (unpaired)."})
    beta: float = field(default=0.1, metadata={"help": "The method's strength: DPO's beta, ORPO's lambda, SimPO's beta, KTO's beta (TRL's defaults: 0.1)."})
    label_smoothing: float = field(default=0.0, metadata={"help": "sigmoid: conservative DPO's epsilon; robust: the label flip rate; simpo: as sigmoid."})
    simpo_gamma: float = field(default=0.5, metadata={"help": "SimPO's target reward margin gamma (TRL's default)."})
    desirable_weight: float = field(default=1.0, metadata={"help": "KTO: weight of desirable examples."})
    undesirable_weight: float = field(default=1.0, metadata={"help": "KTO: weight of undesirable examples."})
    format: str = field(default="auto", metadata={"help": "Data format: auto, paired, hh_rlhf, sharegpt, kto, kto_messages."})
    # the shared params' defaults, for preference tuning: pairs are two sequences each, and DPO takes small steps
    micro_batch: int = field(default=4, metadata={"help": "Pairs (KTO: examples) per forward/backward on one rank."})
    lr: float = field(default=1e-5, metadata={"help": "Peak learning rate (TRL's default is 1e-6 for billion-parameter models; small models take more)."})
    min_lr: float = field(default=0.0, metadata={"help": "Learning rate at the end of the cosine schedule."})

    def __post_init__(self):
        from llmpipe.text.preference_data import FORMATS

        super().__post_init__()
        if self.format != "auto" and self.format not in FORMATS:
            raise ValueError(f"format: expected auto or one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.reference and self.loss in ("simpo", "orpo"):
            raise ValueError(f"reference: loss = {self.loss!r} is reference-free; drop reference or choose a reference-based loss")
        if not self.beta > 0:
            raise ValueError(f"beta: expected a number above 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing: expected a number in [0, 0.5), got {self.label_smoothing}")

    @property
    def uses_reference(self) -> bool:
        return self.loss not in ("simpo", "orpo")


def plan(params: Params, inputs) -> Plan:
    out = plan_checks(params, inputs, "preference data", "dpo")
    if params.reference:
        check_chat_checkpoint(params.reference, made=False)
    if not params.uses_reference:
        return Plan(phases=[("train", [{}])], files=out)
    return Plan(phases=[("reference", [{}]), ("train", [{}])], files=out + [REFERENCE_FILE])


# --- examples ----------------------------------------------------------------------------------


@dataclass
class Example:
    """One pair (completions = chosen, rejected) or one KTO example (completions = its completion, and
    the completion of another example for the KL reference point), token ids ready to score."""
    key: str
    prompt: list[int]
    completions: list[list[int]]
    desirable: bool = True  # KTO's label


def load_examples(files: list[str], p: Params, tokenizer, max_len: int, stats) -> tuple[list[Example], list[Example]]:
    """(train, val) examples, in file order, every prompt and completion tokenized and cut to max_len."""
    from llmpipe.text.preference_data import read_kto, read_preferences, render_kto, render_pair
    from llmpipe.train.examples import val_keys

    if p.loss == "kto":
        rows = [(e.key, *render_kto(e, tokenizer), e.desirable) for e in read_kto(files, p.format, stats)]
        examples = [Example(key, prompt, [completion], desirable) for key, prompt, completion, desirable in rows]
        for i, ex in enumerate(examples):  # KTO's KL pair: this prompt with the completion before it (TRL's rotation)
            ex.completions.append(examples[i - 1].completions[0] if len(examples) > 1 else ex.completions[0])
    else:
        examples = [Example(pair.key, *_split(render_pair(pair, tokenizer))) for pair in read_preferences(files, p.format, stats)]
    kept = []
    for ex in examples:
        ex.prompt, ex.completions = fit(ex.prompt, ex.completions, max_len)
        if all(ex.completions):
            kept.append(ex)
        else:
            stats.drop("no_completion_token_within_max_seq_len")
    held_out = val_keys([e.key for e in kept], p.seed, p.val_fraction)
    return [e for e in kept if e.key not in held_out], [e for e in kept if e.key in held_out]


def _split(rendered):
    prompt, chosen, rejected = rendered
    return prompt, [chosen, rejected]


def fit(prompt: list[int], completions: list[list[int]], max_len: int) -> tuple[list[int], list[list[int]]]:
    """Cut to max_len tokens: a long prompt keeps its end (at most half the context), a long completion its start."""
    longest = max(len(c) for c in completions)
    if len(prompt) + longest > max_len:
        prompt = prompt[-max(max_len // 2, max_len - longest):]
    return prompt, [c[: max_len - len(prompt)] for c in completions]


def rows_of(examples: list[Example]) -> list[tuple[list[int], list[int]]]:
    """(ids, completion mask) rows: every example's first completion, then every second one, and so on."""
    return [(ex.prompt + c[k], [0] * len(ex.prompt) + [1] * len(c[k])) for k in range(len(examples[0].completions))
            for ex in examples for c in [ex.completions]]


def completion_logps(model, examples: list[Example], pad_id: int, device: str):
    """Summed log-probs [k, B] and token counts [k, B] of each example's k-th completion given its prompt."""
    from llmpipe.train.examples import pad_rows
    from llmpipe.train.preference import sequence_logps

    ids, mask = pad_rows(rows_of(examples), pad_id)
    ids, mask = ids.to(device), mask.to(device)
    logits, _ = model(ids)
    summed, counts = sequence_logps(logits, ids, mask)
    k = len(examples[0].completions)
    return summed.view(k, len(examples)), counts.view(k, len(examples))


# --- phases ------------------------------------------------------------------------------------


def _setup(ctx):
    """(params, tokenizer, max_len, train, val, stats) as both phases see them: the same examples in the same order."""
    from llmpipe.errors import InputError
    from llmpipe.model import ModelConfig
    from llmpipe.text.tokenizer import load_tokenizer
    from llmpipe.train.dist import check_device

    p: Params = ctx.params
    try:
        check_device(p.device)
        for path in filter(None, (p.checkpoint, p.reference)):
            check_chat_checkpoint(path)
    except ValueError as e:
        raise InputError(f"{ctx.run['step']} {e}") from None
    context = ModelConfig.from_hf(json.loads((Path(p.checkpoint) / "config.json").read_text())).max_seq_len
    max_len = min(p.max_seq_len or context, context)
    tokenizer = load_tokenizer(p.checkpoint)
    train, val, stats = read_examples(ctx, load_examples, tokenizer, max_len, "example" if p.loss == "kto" else "pair")
    return p, tokenizer, max_len, train, val, stats


def reference_task(ctx, task: dict) -> dict:
    """The reference model's log-probs of every completion, train and val, stored once in the artifact."""
    import torch

    from llmpipe.artifacts.checkpoint import save_tensors
    from llmpipe.artifacts.layout import atomic_path
    from llmpipe.model import Model

    from llmpipe.train.dist import init_distributed, shutdown_distributed

    p, tokenizer, _, train, val, _ = _setup(ctx)
    examples = train + val
    dist = init_distributed(p.device)
    try:
        if dist.is_main:  # one pass, in fp32 on the training device; under torchrun the other ranks wait
            model = Model.from_checkpoint(p.reference or p.checkpoint, device=dist.device).eval()
            parts = []
            with torch.no_grad():
                for k in range(0, len(examples), p.micro_batch):
                    parts.append(completion_logps(model, examples[k:k + p.micro_batch], tokenizer.special.get("pad", 0), dist.device)[0].cpu())
            logps = torch.cat(parts, dim=1).double()  # [completions per example, examples]
            with atomic_path(ctx.out / REFERENCE_FILE) as tmp:
                save_tensors({"logps": logps.contiguous()}, tmp, metadata={"keys": _keys_digest(examples)})
        if dist.ddp:
            torch.distributed.barrier()
    finally:
        shutdown_distributed()
    return {"counts": {"reference_examples": len(examples)}}


def _keys_digest(examples: list[Example]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(e.key for e in examples).encode()).hexdigest()


def _reference(out: Path, examples: list[Example]):
    from safetensors import safe_open

    with safe_open(str(out / REFERENCE_FILE), framework="pt") as f:
        if f.metadata().get("keys") != _keys_digest(examples):
            raise RuntimeError(f"{out / REFERENCE_FILE} was computed for other examples; re-run the step with --force")
        return f.get_tensor("logps")


def method_loss(p: Params, policy, counts, ref, desirable=None):
    """(losses [B], metrics) of one micro-batch from the policy's and the reference's log-probs [k, B]."""
    from llmpipe.train import preference as pref

    if p.loss == "kto":
        kl = pref.kto_kl_estimate(policy[1], ref[1])
        losses, rewards = pref.kto_loss(policy[0], ref[0], desirable, kl, beta=p.beta,
                                        desirable_weight=p.desirable_weight, undesirable_weight=p.undesirable_weight)
        metrics = pref.kto_metrics(rewards, desirable, kl, policy[0])
        # every micro-batch reports the same names (DDP averages them in one all-reduce): a side it lacks counts as 0
        return losses, {name: metrics.get(name, 0.0) for name in ("kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected")}
    reference = (None, None) if ref is None else (ref[0], ref[1])
    losses, chosen_r, rejected_r = pref.dpo_loss(policy[0], policy[1], *reference, loss_type=p.loss, beta=p.beta,
                                                  label_smoothing=p.label_smoothing, chosen_lengths=counts[0], rejected_lengths=counts[1],
                                                  simpo_gamma=p.simpo_gamma)
    averaged = p.loss in ("simpo", "orpo")  # TRL logs per-token averages for the reference-free losses
    logps = (policy[0] / counts[0].clamp(min=1), policy[1] / counts[1].clamp(min=1)) if averaged else (policy[0], policy[1])
    metrics = pref.reward_metrics(chosen_r, rejected_r, *logps)
    if p.loss == "orpo":  # ORPO adds the SFT loss of the chosen completion (the paper's L_SFT)
        nll = -policy[0].sum() / counts[0].sum().clamp(min=1)
        metrics["nll_loss"] = nll.item()
        losses = losses + nll
    return losses, metrics


def train_task(ctx, task: dict) -> dict:
    import torch

    from llmpipe.model import Model
    from llmpipe.train.dist import init_distributed, shutdown_distributed
    from llmpipe.train.examples import step_examples
    from llmpipe.train.finetune import before_after, write_chat_checkpoint
    from llmpipe.train.fsdp import model_state
    from llmpipe.train.loop import LoopConfig, train
    from llmpipe.train.optim import lr_at, make_optimizer

    p, tokenizer, _, train_examples, val_examples, stats = _setup(ctx)
    ref_all = _reference(ctx.out, train_examples + val_examples) if p.uses_reference else None
    index = {id(e): i for i, e in enumerate(train_examples + val_examples)}
    pad = tokenizer.special.get("pad", 0)
    dist = init_distributed(p.device)
    try:
        torch.manual_seed(p.seed)
        model = Model.from_checkpoint(p.checkpoint, device=dist.device)
        steps = p.steps(len(train_examples))
        accum = p.batch_size // (p.micro_batch * dist.world_size)

        def score(m, examples):
            policy, counts = completion_logps(m, examples, pad, dist.device)
            ref = ref_all[:, [index[id(e)] for e in examples]].to(dist.device) if ref_all is not None else None
            desirable = torch.tensor([e.desirable for e in examples], device=dist.device)
            return method_loss(p, policy, counts, ref, desirable)

        def micro_batches(step: int):
            mine = step_examples(train_examples, step, p.batch_size, p.seed, dist.rank, dist.world_size)
            for k in range(accum):
                yield mine[k * p.micro_batch:(k + 1) * p.micro_batch]

        def loss_fn(m, batch):
            losses, metrics = score(m, batch)
            return losses.mean(), metrics

        eval_fn = None
        if val_examples:
            mine = val_examples[dist.rank::dist.world_size]

            def eval_fn(m):
                sums: dict[str, float] = {}
                for k in range(0, len(mine), p.micro_batch):
                    batch = mine[k:k + p.micro_batch]
                    losses, metrics = score(m, batch)
                    for name, value in {"loss": losses.mean().item(), **metrics}.items():
                        sums[name] = sums.get(name, 0.0) + value * len(batch)
                names = sorted(sums)
                totals = torch.tensor([sums[n] for n in names] + [len(mine)], dtype=torch.float64, device=dist.device)
                if dist.ddp:
                    torch.distributed.all_reduce(totals)
                means = dict(zip(names, (totals[:-1] / totals[-1]).tolist()))
                return {"val_loss": means.pop("loss"), **{f"eval_{n}": v for n, v in means.items()}}

        optimizer = make_optimizer(model, p.lr, p.weight_decay, device=dist.device)
        rows = sum(len(e.prompt) + len(c) for e in train_examples for c in e.completions)
        loop = LoopConfig(max_steps=steps, grad_clip=p.grad_clip, eval_every=p.eval_every, checkpoint_every=p.checkpoint_every,
                          keep_last=p.keep_last, tokens_per_step=rows * p.batch_size // len(train_examples), eval_at_start=True,
                          parallel=p.parallel)
        schedule = lambda step: lr_at(step, lr=p.lr, min_lr=p.min_lr, warmup_steps=p.warmup_steps, max_steps=steps)  # noqa: E731
        hf_config = model.config.to_hf()
        evals = train(model, optimizer, schedule, micro_batches, loss_fn, ctx.out, loop, dist, config_json=hf_config, eval_fn=eval_fn, trackers=p.trackers)
        state = model_state(model)  # every rank: under FSDP the shards are gathered to rank 0
        if dist.is_main:
            write_chat_checkpoint(ctx.out, state, hf_config, p.checkpoint, f"dpo ({p.loss}, beta {p.beta}): {len(train_examples)} examples, {steps} steps")
        metrics = before_after(evals)
        counts = {"examples": len(train_examples) + len(val_examples), "train_examples": len(train_examples),
                  "val_examples": len(val_examples), "steps": steps}
        return {**stats.to_json(), "counts": {**stats.counts, **counts}, "metrics": metrics, "world_size": dist.world_size}
    finally:
        shutdown_distributed()


def finalize(ctx, stats: dict, records: dict) -> dict:
    result = finalize_counts(records["train"][0]["stats"], ("examples", "train_examples", "val_examples", "steps"))
    result["samples"] = chat_samples(ctx.out, ctx.input_files, ctx.params)
    return result


def chat_samples(checkpoint: Path, files: list[str], p: Params, n: int = 2) -> list[dict]:
    """The tuned model's greedy answers to the first held-out prompts (else the first prompts): what the chat model says now."""
    from llmpipe.text.preference_data import read_kto, read_preferences
    from llmpipe.train.examples import val_keys
    from llmpipe.train.finetune import chat_answers

    rows = read_kto(files, p.format) if p.loss == "kto" else read_preferences(files, p.format)
    prompts, seen = [], set()
    for row in rows:  # KTO reads a pair as two examples: each prompt once
        if json.dumps(row.prompt) not in seen:
            seen.add(json.dumps(row.prompt))
            prompts.append((row.key, row.prompt))
    held_out = val_keys([key for key, _ in prompts], p.seed, p.val_fraction)
    return chat_answers(checkpoint, [x for x in prompts if x[0] in held_out][:n] or prompts[:n])


STAGE = Stage(
    name="dpo", version=1, params=Params, doc=__doc__, plan=plan, run_task={"reference": reference_task, "train": train_task},
    finalize=finalize, output_kind="checkpoint", launcher="torchrun", input_kinds=("raw",), path_params=("checkpoint", "reference"),
)
