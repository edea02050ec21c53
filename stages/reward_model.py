"""Reward model: a scalar head trained on preference pairs with the Bradley-Terry loss (InstructGPT's RM, TRL's RewardTrainer).

Input: preference data files, in the paired formats dpo reads (prompt/chosen/rejected strings or conversations,
Anthropic hh-rlhf transcripts, ShareGPT-style ranking rows such as dpo_en_demo.json), detected per row; bad
rows are counted by reason. `checkpoint` is the language model to start from (a pretrain, sft or dpo step, or a
checkpoint directory with llmpipe's tokenizer): its decoder is kept, its lm_head replaced by a new `score`
head (llmpipe/train/reward.py). Each pair is rendered through the chat template (prompt + chosen reply, prompt +
rejected reply) and scored at its last token; the loss is -log sigmoid(r_chosen - r_rejected), plus
center_rewards_coefficient * mean((r_chosen + r_rejected)^2) when that is above 0 (TRL's option).

A seeded share of the pairs (`val_fraction`) is held out: the manifest holds their pair accuracy (chosen
scored strictly above rejected), loss and margin before training (eval_accuracy_before: about chance with the
new head) and after (eval_accuracy). The output is a sequence-classification checkpoint that transformers
loads as it is: config.json with architectures ["LlamaForSequenceClassification"], num_labels 1 and
pad_token_id, model.safetensors with the decoder and `score.weight`, the tokenizer files with the chat template;
AutoModelForSequenceClassification(...)(ids).logits[:, 0] are the rewards llmpipe computed.

    llmpipe reward-model --input embedded:python-preferences --checkpoint runs/pretrain/sft --output runs/rm --max-steps 20
    llmpipe reward-model --input dpo_en_demo.json --checkpoint runs/finetune/sft --output runs/rm-demo
    [steps.rm]
    stage = "reward_model"
    inputs = ["data/preferences.jsonl"]
    checkpoint = "sft"
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmpipe.registry import Plan, Stage
from llmpipe.train.finetune import FineTuneParams, check_chat_checkpoint, finalize_counts, plan_checks, read_examples

PAIRED = ("auto", "paired", "hh_rlhf", "sharegpt")


@dataclass(frozen=True)
class Params(FineTuneParams):
    format: str = field(default="auto", metadata={"help": "Data format: auto, paired, hh_rlhf or sharegpt."})
    center_rewards_coefficient: float = field(default=0.0, metadata={"help": "Weight of mean((r_chosen + r_rejected)^2), which keeps rewards centred on 0 (TRL's option; 0: off, 0.01 is usual)."})
    # the shared params' defaults, for reward modelling: a pair is two sequences, and TRL's RewardConfig learning rate
    micro_batch: int = field(default=4, metadata={"help": "Pairs per forward/backward on one rank."})
    lr: float = field(default=1e-4, metadata={"help": "Peak learning rate (TRL's RewardConfig default)."})
    min_lr: float = field(default=1e-5, metadata={"help": "Learning rate at the end of the cosine schedule."})

    def __post_init__(self):
        super().__post_init__()
        if self.format not in PAIRED:
            raise ValueError(f"format: expected one of {', '.join(PAIRED)} (a reward model learns from pairs), got {self.format!r}")
        if self.center_rewards_coefficient < 0:
            raise ValueError(f"center_rewards_coefficient: expected a number >= 0, got {self.center_rewards_coefficient}")


def plan(params: Params, inputs) -> Plan:
    files = plan_checks(params, inputs, "preference data", "reward_model")
    return Plan(phases=[("train", [{}])], files=[f for f in files if f != "generation_config.json"])  # a scorer does not generate


@dataclass
class Pair:
    key: str
    chosen: list[int]  # prompt + chosen reply, through the chat template
    rejected: list[int]


def load_pairs(files: list[str], p: Params, tokenizer, max_len: int, stats) -> tuple[list[Pair], list[Pair]]:
    """(train, held-out) pairs, in file order, cut to max_len tokens as dpo cuts them."""
    from llmpipe.text.preference_data import read_preferences, render_pair
    from llmpipe.train.examples import val_keys
    from stages.dpo import fit

    pairs = []
    for pair in read_preferences(files, p.format, stats):
        prompt, chosen, rejected = render_pair(pair, tokenizer)
        prompt, (chosen, rejected) = fit(prompt, [chosen, rejected], max_len)
        if not (chosen and rejected):
            stats.drop("no_completion_token_within_max_seq_len")
            continue
        pairs.append(Pair(pair.key, prompt + chosen, prompt + rejected))
    held_out = val_keys([x.key for x in pairs], p.seed, p.val_fraction)
    return [x for x in pairs if x.key not in held_out], [x for x in pairs if x.key in held_out]


def pair_rewards(model, pairs: list[Pair], pad_id: int, device: str):
    """(r_chosen [B], r_rejected [B]): chosen and rejected rows in one right-padded batch, as TRL batches them."""
    from llmpipe.train.examples import pad_rows
    from llmpipe.train.reward import sequence_rewards

    rows = [x.chosen for x in pairs] + [x.rejected for x in pairs]
    ids, mask = pad_rows([(r, [1] * len(r)) for r in rows], pad_id)
    rewards = sequence_rewards(model, ids.to(device), mask.sum(1).to(device))
    return rewards[:len(pairs)], rewards[len(pairs):]


def train_task(ctx, task: dict) -> dict:
    import torch

    from llmpipe.artifacts.checkpoint import write_model_dir
    from llmpipe.errors import InputError
    from llmpipe.text.chat_template import write_chat_template
    from llmpipe.text.tokenizer import load_tokenizer
    from llmpipe.train.dist import check_device, init_distributed, shutdown_distributed
    from llmpipe.train.examples import step_examples
    from llmpipe.train.finetune import before_after
    from llmpipe.train.fsdp import model_state
    from llmpipe.train.loop import LoopConfig, loss_png, train
    from llmpipe.train.optim import lr_at, make_optimizer
    from llmpipe.train.reward import bradley_terry_loss, reward_model_from

    p: Params = ctx.params
    try:
        check_device(p.device)
        check_chat_checkpoint(p.checkpoint)
    except ValueError as e:
        raise InputError(f"{ctx.run['step']} {e}") from None
    dist = init_distributed(p.device)
    try:
        torch.manual_seed(p.seed)  # the score head's initial weights
        model = reward_model_from(p.checkpoint, device=dist.device)
        tokenizer = load_tokenizer(p.checkpoint)
        max_len = min(p.max_seq_len or model.config.max_seq_len, model.config.max_seq_len)
        train_pairs, val_pairs, stats = read_examples(ctx, load_pairs, tokenizer, max_len, "pair")
        steps = p.steps(len(train_pairs))
        accum = p.batch_size // (p.micro_batch * dist.world_size)
        pad = model.config.pad_token_id  # transformers pools at the last token that is not this one

        def micro_batches(step: int):
            mine = step_examples(train_pairs, step, p.batch_size, p.seed, dist.rank, dist.world_size)
            for k in range(accum):
                yield mine[k * p.micro_batch:(k + 1) * p.micro_batch]

        def loss_fn(m, batch):
            return bradley_terry_loss(*pair_rewards(m, batch, pad, dist.device), p.center_rewards_coefficient)

        eval_fn = None
        if val_pairs:
            mine = val_pairs[dist.rank::dist.world_size]

            def eval_fn(m):
                totals = torch.zeros(5, dtype=torch.float64, device=dist.device)  # loss, accuracy, margin, mean_reward (x pairs), pairs
                for k in range(0, len(mine), p.micro_batch):
                    batch = mine[k:k + p.micro_batch]
                    loss, metrics = bradley_terry_loss(*pair_rewards(m, batch, pad, dist.device))  # held out: plain Bradley-Terry
                    totals += torch.stack([loss, *metrics.values(), torch.ones_like(loss)]).double() * len(batch)
                if dist.ddp:
                    torch.distributed.all_reduce(totals)
                means = (totals[:4] / totals[4]).tolist()
                return dict(zip(("val_loss", "eval_accuracy", "eval_margin", "eval_mean_reward"), means))

        optimizer = make_optimizer(model, p.lr, p.weight_decay, device=dist.device)
        rows = sum(len(x.chosen) + len(x.rejected) for x in train_pairs)
        loop = LoopConfig(max_steps=steps, grad_clip=p.grad_clip, eval_every=p.eval_every, checkpoint_every=p.checkpoint_every,
                          keep_last=p.keep_last, tokens_per_step=rows * p.batch_size // len(train_pairs), eval_at_start=True,
                          parallel=p.parallel)
        schedule = lambda step: lr_at(step, lr=p.lr, min_lr=p.min_lr, warmup_steps=p.warmup_steps, max_steps=steps)  # noqa: E731
        hf_config = model.config.to_hf()
        evals = train(model, optimizer, schedule, micro_batches, loss_fn, ctx.out, loop, dist, config_json=hf_config, eval_fn=eval_fn, trackers=p.trackers)
        state = model_state(model)  # every rank: under FSDP the shards are gathered to rank 0
        if dist.is_main:
            write_model_dir(ctx.out, state, hf_config, p.checkpoint)
            write_chat_template(ctx.out)  # so transformers' apply_chat_template gives the ids it was trained on
            loss_png(ctx.out / "loss.png", ctx.out / "metrics.jsonl", f"reward model: {len(train_pairs)} pairs, {steps} steps")
        counts = {"pairs": len(train_pairs) + len(val_pairs), "train_pairs": len(train_pairs), "val_pairs": len(val_pairs), "steps": steps}
        return {**stats.to_json(), "counts": {**stats.counts, **counts}, "metrics": before_after(evals), "world_size": dist.world_size}
    finally:
        shutdown_distributed()


def finalize(ctx, stats: dict, records: dict) -> dict:
    return finalize_counts(records["train"][0]["stats"], ("pairs", "train_pairs", "val_pairs", "steps"))


STAGE = Stage(
    name="reward_model", version=1, params=Params, doc=__doc__, plan=plan, run_task={"train": train_task}, finalize=finalize,
    output_kind="checkpoint", launcher="torchrun", input_kinds=("raw",), path_params=("checkpoint",),
)
