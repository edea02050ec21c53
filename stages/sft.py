"""Supervised fine-tuning: a checkpoint learns to answer through a chat template, with loss on the assistant's tokens only.

Input: instruction data files (JSON, JSONL (.gz/.zst), Parquet) in the formats users have:
Alpaca (instruction, input, output), `messages` lists (OpenAI style, multi-turn, optional
system), ShareGPT (`conversations` with from/value) or prompt/response (LLM Foundry), detected
per row (`format` forces one); a row that fits none is counted with its reason. `checkpoint` is
the model to tune: a pretrain (or sft) step of the pipeline, or any Llama checkpoint directory
whose tokenizer is llmpipe's (it holds the chat role tokens).

`lora_rank` > 0 trains LoRA adapters instead of every weight (llmpipe/train/lora.py, equal to PEFT's):
they are saved in PEFT's layout under adapter/ (peft.PeftModel.from_pretrained(base, adapter) loads
them) and merged into the output checkpoint, so every later stage reads one kind of artifact.

Each conversation is rendered as `<|role|>content<|end|>` turns (llmpipe/text/chat_template.py)
and is one row of a batch, right-padded: no token attends to another example, and only the
assistant turns' tokens and their <|end|> carry loss (every assistant turn of a multi-turn row).
A seeded share of the conversations (`val_fraction`, by a hash of their file:row key) is held
out; their assistant-token loss is measured before training and at every evaluation. The output
is a plain checkpoint (model.safetensors, config.json, the tokenizer files with the Jinja
`chat_template` in tokenizer_config.json, so transformers' apply_chat_template gives the ids
trained on), metrics.jsonl and loss.png; the training loop, checkpoints, exact resume and DDP
are pretrain's.

    llmpipe sft --input embedded:python-qa --checkpoint runs/pretrain/model --output runs/sft --max-steps 50
    llmpipe sft --input alpaca_en_demo.json --checkpoint runs/pretrain/model --output runs/sft-lora --lora-rank 8
    [steps.sft]
    inputs = ["data/alpaca_en_demo.json"]
    checkpoint = "model"      # an earlier step, or a checkpoint directory
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llmpipe.registry import Plan, Stage

from llmpipe.train.finetune import FineTuneParams, check_chat_checkpoint, finalize_counts, plan_checks, read_examples


@dataclass(frozen=True)
class Params(FineTuneParams):
    format: Literal["auto", "alpaca", "messages", "sharegpt", "prompt_response", "multiple_choice"] = field(
        default="auto", metadata={"help": "Data format; auto detects it per row from the fields it has."})
    lora_rank: int = field(default=0, metadata={"help": "LoRA rank; 0 fine-tunes every weight. The adapter is kept in adapter/ (PEFT's layout), the checkpoint is merged."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha: the update is scaled by alpha / rank."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input (training only)."})
    lora_targets: tuple[str, ...] = field(default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                                          metadata={"help": "Linear layers that get adapters: short names (q_proj), full names, or all-linear."})

    def __post_init__(self):
        super().__post_init__()
        if self.lora_rank and self.parallel == "fsdp":
            raise ValueError("parallel: fsdp with lora_rank > 0 is not supported (the adapters are small: use ddp, or lora_rank = 0)")
        if self.lora_rank < 0 or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_rank: expected a rank >= 0 (0: full fine-tuning) and lora_dropout in [0, 1), got {self.lora_rank}, {self.lora_dropout}")


def plan(params: Params, inputs) -> Plan:
    files = plan_checks(params, inputs, "instruction data", "sft")
    adapter = ["adapter/adapter_config.json", "adapter/adapter_model.safetensors"] if params.lora_rank else []
    return Plan(phases=[("train", [{}])], files=files + adapter)


def load_examples(files: list[str], p: Params, tokenizer, max_len: int, stats) -> tuple[list, list]:
    """(train, val) lists of (ids, mask): every conversation rendered and cut to max_len + 1 tokens."""
    from llmpipe.text.chat_data import read_chat
    from llmpipe.text.chat_template import render
    from llmpipe.train.examples import val_keys

    conversations = list(read_chat(files, p.format, stats))
    held_out = val_keys([k for k, _ in conversations], p.seed, p.val_fraction)
    train, val = [], []
    for key, messages in conversations:
        ids, mask = render(messages, tokenizer)
        ids, mask = ids[: max_len + 1], mask[: max_len + 1]  # x and y are one token shorter
        if not any(mask[1:]):
            stats.drop("no_assistant_token_within_max_seq_len")
            continue
        (val if key in held_out else train).append((ids, mask))
    return train, val


def batch_tensors(examples: list, pad_id: int, device: str):
    """x, y [B, T]: right-padded rows; y is x shifted by one with -1 (no loss) outside the assistant's tokens."""
    from llmpipe.train.examples import pad_rows

    ids, learn = pad_rows(examples, pad_id)
    x, y = ids[:, :-1], ids[:, 1:].masked_fill(~learn[:, 1:], -1)
    return x.to(device), y.to(device)


def train_task(ctx, task: dict) -> dict:
    import torch

    from llmpipe.errors import InputError
    from llmpipe.model import Model
    from llmpipe.text.tokenizer import load_tokenizer
    from llmpipe.train.dist import check_device, init_distributed, shutdown_distributed
    from llmpipe.train.examples import step_examples
    from llmpipe.train.lora import apply_lora, merge_lora, save_adapter
    from llmpipe.train.finetune import before_after, write_chat_checkpoint
    from llmpipe.train.fsdp import model_state
    from llmpipe.train.loop import LoopConfig, train
    from llmpipe.train.optim import lr_at, make_optimizer

    p: Params = ctx.params
    try:
        check_device(p.device)
        check_chat_checkpoint(p.checkpoint)
    except ValueError as e:
        raise InputError(f"{ctx.run['step']} {e}") from None
    dist = init_distributed(p.device)
    try:
        torch.manual_seed(p.seed)
        model = Model.from_checkpoint(p.checkpoint, device=dist.device)
        if p.lora_rank:  # before the optimizer (it takes the trainable parameters) and before a resume loads the adapters
            try:
                wrapped = apply_lora(model, p.lora_rank, p.lora_alpha, p.lora_dropout, p.lora_targets)
            except ValueError as e:
                raise InputError(f"{ctx.run['step']} lora_targets: {e}") from None
            if model.config.n_experts:
                from llmpipe.log import log

                log(f"note: LoRA adapts {len(wrapped)} layers; a mixture's experts are 3-D tensors, not linear layers LoRA wraps "
                    "(lora_rank = 0 fine-tunes them)")
        tokenizer = load_tokenizer(p.checkpoint)
        max_len = min(p.max_seq_len or model.config.max_seq_len, model.config.max_seq_len)
        train_examples, val_examples, stats = read_examples(ctx, load_examples, tokenizer, max_len, "conversation")
        steps = p.steps(len(train_examples))
        accum = p.batch_size // (p.micro_batch * dist.world_size)
        pad = tokenizer.special.get("pad", 0)

        def micro_batches(step: int):
            mine = step_examples(train_examples, step, p.batch_size, p.seed, dist.rank, dist.world_size)
            for k in range(accum):
                yield batch_tensors(mine[k * p.micro_batch:(k + 1) * p.micro_batch], pad, dist.device)

        def loss_fn(m, batch):
            return m(batch[0], batch[1])[1]

        eval_fn = None
        if val_examples:
            mine = val_examples[dist.rank::dist.world_size]

            def eval_fn(m):
                sums = torch.zeros(2, dtype=torch.float64, device=dist.device)  # nats, assistant tokens
                for k in range(0, len(mine), p.micro_batch):
                    x, y = batch_tensors(mine[k:k + p.micro_batch], pad, dist.device)
                    logits, _ = m(x)
                    nats = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1, reduction="sum")
                    sums += torch.stack([nats.double(), (y != -1).sum().double()])
                if dist.ddp:
                    torch.distributed.all_reduce(sums)
                return {"val_loss": (sums[0] / sums[1]).item()}

        optimizer = make_optimizer(model, p.lr, p.weight_decay, device=dist.device)
        trainable = sum(t.numel() for t in model.parameters() if t.requires_grad)
        tokens_per_step = sum(len(ids) for ids, _ in train_examples) * p.batch_size // len(train_examples)  # on average
        loop = LoopConfig(max_steps=steps, grad_clip=p.grad_clip, eval_every=p.eval_every, checkpoint_every=p.checkpoint_every,
                          keep_last=p.keep_last, tokens_per_step=tokens_per_step, eval_at_start=True, parallel=p.parallel)
        schedule = lambda step: lr_at(step, lr=p.lr, min_lr=p.min_lr, warmup_steps=p.warmup_steps, max_steps=steps)  # noqa: E731
        hf_config = model.config.to_hf()
        evals = train(model, optimizer, schedule, micro_batches, loss_fn, ctx.out, loop, dist, config_json=hf_config, eval_fn=eval_fn, trackers=p.trackers)
        weights = model_state(model) if p.parallel == "fsdp" else model  # FSDP: every rank gathers its shards to rank 0
        if dist.is_main:
            if p.lora_rank:  # the adapter for PEFT users, then one plain checkpoint for every later stage
                save_adapter(model, ctx.out / "adapter", base_model_name_or_path=str(Path(p.checkpoint).resolve()))
                merge_lora(model)
            write_chat_checkpoint(ctx.out, weights, hf_config, p.checkpoint, f"sft: {len(train_examples)} conversations, {steps} steps")
        metrics = before_after(evals)
        counts = {"conversations": len(train_examples) + len(val_examples), "train_conversations": len(train_examples),
                  "val_conversations": len(val_examples), "steps": steps, "trainable_parameters": trainable}
        return {**stats.to_json(), "counts": {**stats.counts, **counts}, "metrics": metrics, "world_size": dist.world_size}
    finally:
        shutdown_distributed()


def finalize(ctx, stats: dict, records: dict) -> dict:
    result = finalize_counts(records["train"][0]["stats"], ("conversations", "train_conversations", "val_conversations", "steps", "trainable_parameters"))
    result["samples"] = chat_samples(ctx.out, ctx.input_files, ctx.params)
    return result


def chat_samples(checkpoint: Path, files: list[str], p: Params, n: int = 2) -> list[dict]:
    """Greedy answers to the first held-out prompts (else the first prompts), through the template, logged and kept."""
    from llmpipe.text.chat_data import read_chat
    from llmpipe.train.examples import val_keys
    from llmpipe.train.finetune import chat_answers

    conversations = list(read_chat(files, p.format))
    held_out = val_keys([k for k, _ in conversations], p.seed, p.val_fraction)
    chosen = [c for c in conversations if c[0] in held_out][:n] or conversations[:n]
    prompts = [(key, messages[: max(i for i, m in enumerate(messages) if m["role"] == "assistant")]) for key, messages in chosen]
    return chat_answers(checkpoint, prompts)


STAGE = Stage(
    name="sft", version=1, params=Params, doc=__doc__, plan=plan, run_task={"train": train_task}, finalize=finalize,
    output_kind="checkpoint", launcher="torchrun", input_kinds=("raw",), path_params=("checkpoint",),
)
