"""What sft and dpo share: the params of tuning a checkpoint, its checks, and the chat checkpoint it writes.

A method's stage (stages/sft.py, stages/dpo.py) subclasses FineTuneParams with its own knobs (a
field it redeclares keeps its place and takes the new default), brings its examples, batches and
loss, and trains on the one loop (llmpipe/train/loop.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from llmpipe.train.trackers import check_tracker_names, check_trackers_installed, trackers_field

DATA_SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class FineTuneParams:
    checkpoint: str = field(default="", metadata={"help": "The model to tune: an earlier pipeline step or a checkpoint directory."})
    max_seq_len: int = field(default=0, metadata={"help": "Tokens per example (a prompt loses its start, an answer its end); 0: the model's context."})
    batch_size: int = field(default=16, metadata={"help": "Examples per optimizer step over all ranks; grad accumulation makes up the rest."})
    micro_batch: int = field(default=8, metadata={"help": "Examples per forward/backward on one rank."})
    max_steps: int = field(default=0, metadata={"help": "Optimizer steps; 0: `epochs` passes over the training examples."})
    epochs: float = field(default=1.0, metadata={"help": "Passes over the training examples when max_steps is 0."})
    lr: float = field(default=3e-4, metadata={"help": "Peak learning rate."})
    min_lr: float = field(default=3e-5, metadata={"help": "Learning rate at the end of the cosine schedule."})
    warmup_steps: int = field(default=5, metadata={"help": "Linear warmup steps."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay on matrices."})
    grad_clip: float = field(default=1.0, metadata={"help": "Clip the global gradient norm to this (0: no clipping)."})
    val_fraction: float = field(default=0.05, metadata={"help": "Share of examples held out (by a hash of their file:row key; at least one when there are two or more)."})
    eval_every: int = field(default=0, metadata={"help": "Steps between held-out evaluations (0: before training and at the end only)."})
    checkpoint_every: int = field(default=0, metadata={"help": "Steps between checkpoints (0: only at the end)."})
    keep_last: int = field(default=1, metadata={"help": "Checkpoints kept under checkpoints/."})
    seed: int = field(default=0, metadata={"help": "Seed of the held-out split and of the batch order."})
    max_bad_fraction: float = field(default=0.1, metadata={"help": "Fail when more than this share of the rows is unusable."})
    nproc_per_node: int = field(default=1, metadata={"help": "Training processes per node (torchrun, DDP); 1 trains in this process."})
    parallel: str = field(default="ddp", metadata={"help": "With more than one rank: ddp (a full replica per rank) or fsdp (FSDP2: weights, gradients and optimizer state sharded over the ranks)."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or mps."})
    trackers: tuple[str, ...] = trackers_field()

    def __post_init__(self):
        check_tracker_names(self.trackers)
        if not self.checkpoint:
            raise ValueError("checkpoint: give the model to tune (an earlier step or a checkpoint directory)")
        if min(self.batch_size, self.micro_batch, self.nproc_per_node) < 1 or self.max_steps < 0 or self.max_seq_len < 0:
            raise ValueError("batch_size: batch_size, micro_batch and nproc_per_node must be at least 1, max_steps and max_seq_len at least 0")
        if self.batch_size % (self.micro_batch * self.nproc_per_node):
            raise ValueError(f"batch_size: {self.batch_size} is not a multiple of micro_batch x nproc_per_node = {self.micro_batch * self.nproc_per_node}")
        if self.max_steps == 0 and not self.epochs > 0:
            raise ValueError(f"epochs: expected a number above 0 when max_steps is 0, got {self.epochs}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction: expected a number in [0, 1), got {self.val_fraction}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr: expected a number in [0, lr={self.lr}], got {self.min_lr}")
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"parallel: expected ddp or fsdp, got {self.parallel!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device: expected {', '.join(DEVICES)}, got {self.device!r}")

    def steps(self, n_train: int) -> int:
        return self.max_steps or max(1, -(-int(self.epochs * n_train) // self.batch_size))


def check_chat_checkpoint(path: str, made: bool = True) -> None:
    """ValueError unless `path` is a model directory whose tokenizer has the chat role tokens.

    made=False: a path an earlier pipeline step has yet to make (or is making) passes; it is checked when the step runs.
    """
    from llmpipe.artifacts.layout import MANIFEST, RUN
    from llmpipe.text.chat_template import role_ids
    from llmpipe.text.tokenizer import check_tokenizer, load_tokenizer

    p = Path(path)
    if not made and (not p.exists() or ((p / RUN).exists() and not (p / MANIFEST).exists())):
        return
    for name in ("model.safetensors", "config.json"):
        if not (p / name).is_file():
            raise ValueError(f"checkpoint: {path} has no {name}; give a pretrain output or a checkpoint directory transformers loads")
    if json.loads((p / "config.json").read_text()).get("num_labels"):  # a sequence scorer has no lm_head
        raise ValueError(f"checkpoint: {path} is a reward model (a sequence scorer), not a language model; give a pretrain, sft or dpo output")
    from llmpipe.encoder import encoder_refusal, is_encoder

    if is_encoder(json.loads((p / "config.json").read_text())):
        raise ValueError(f"checkpoint: {encoder_refusal(path, 'be fine-tuned into a chat model')}")
    check_tokenizer(path)
    role_ids(load_tokenizer(path))


def plan_checks(params: FineTuneParams, inputs, what: str, stage: str) -> list[str]:
    """Before anything is written: the device, the data files and the checkpoint(s); returns the output files."""
    from llmpipe.artifacts.checkpoint import TOKENIZER_FILES
    from llmpipe.train.dist import check_device

    check_device(params.device, built_only=True)
    check_trackers_installed(params.trackers)
    files = [f for inp in inputs for f in inp.files]
    odd = [f for f in files if not f.endswith(DATA_SUFFIXES) and not f.startswith("embedded:")]
    if odd:
        raise ValueError(f"inputs: {odd[0]} is not {what}; {stage} reads {', '.join(DATA_SUFFIXES)} files")
    check_chat_checkpoint(params.checkpoint, made=False)
    tokenizer_files = [f for f in TOKENIZER_FILES if (Path(params.checkpoint) / f).exists()] or list(TOKENIZER_FILES)
    return ["model.safetensors", "config.json", *tokenizer_files, "generation_config.json", "metrics.jsonl", "loss.png"]


def read_examples(ctx, load, tokenizer, max_len: int, what: str):
    """(train, val, stats) from the stage's `load(files, params, tokenizer, max_len, stats)`; fails past
    max_bad_fraction, and with one line when nothing is left to train on."""
    from llmpipe.errors import InputError
    from llmpipe.stats import TaskStats, check_bad_fraction

    p, step, stats = ctx.params, ctx.run["step"], TaskStats()
    train, val = load(ctx.input_files, p, tokenizer, max_len, stats)
    check_bad_fraction(stats.to_json(), "rows", p.max_bad_fraction, step)
    if not train:
        raise InputError(f"{step}: no {what} to train on in {len(ctx.input_files)} files "
                         f"(rows: {stats.counts.get('rows', 0)}, bad: {dict(stats.skipped) or 'none'})")
    return train, val, stats


def write_chat_checkpoint(out: Path, model, hf_config: dict, tokenizer_dir: str, title: str) -> None:
    """The output every later stage reads: a plain checkpoint with the chat template (and transformers' stop at
    <|end|>), plus the loss curve. model: the trained model, or its state dict (FSDP: llmpipe.train.fsdp.model_state)."""
    from llmpipe.artifacts.checkpoint import write_model_dir
    from llmpipe.text.chat_template import write_chat_template, write_generation_config
    from llmpipe.train.loop import loss_png

    write_model_dir(out, model if isinstance(model, dict) else model.state_dict(), hf_config, tokenizer_dir)
    write_chat_template(out)
    write_generation_config(out)  # transformers' generate stops at <|end|> too
    loss_png(out / "loss.png", out / "metrics.jsonl", title)


def before_after(evals: list[dict]) -> dict:
    """The first evaluation (before training) as <name>_before, and the last one."""
    if not evals:
        return {}
    out = {f"{k}_before": round(v, 5) for k, v in evals[0].items() if k != "step"}
    out.update({k: round(v, 5) for k, v in evals[-1].items() if k != "step"})
    return out


def finalize_counts(record: dict, keys: tuple[str, ...]) -> dict:
    """Manifest extras from the train task's record: its counts, metrics, world size and data stats."""
    counts = record.get("counts", {})
    return {"counts": {k: counts[k] for k in keys if k in counts}, "metrics": record.get("metrics", {}),
            "world_size": record.get("world_size", 1), "stats": {k: record[k] for k in ("counts", "skipped", "dropped", "samples") if k in record}}


def chat_answers(checkpoint: Path, prompts: list[tuple[str, list[dict]]], new_tokens: int = 48) -> list[dict]:
    """Greedy answers of a chat checkpoint to (key, messages ending on a user turn) prompts, through its
    template; logged and returned as the manifest's samples, which the report shows."""
    import torch

    from llmpipe.log import log
    from llmpipe.model import Model
    from llmpipe.text.chat_template import render
    from llmpipe.text.tokenizer import load_tokenizer

    model, tok = Model.from_checkpoint(checkpoint).eval(), load_tokenizer(checkpoint)
    out = []
    for key, prompt in prompts:
        ids, _ = render(prompt, tok, add_generation_prompt=True)
        ids = ids[-(model.config.max_seq_len - new_tokens):]
        with torch.no_grad():
            made = model.generate(torch.tensor([ids]), new_tokens, eos_token_id=tok.special["end"])[0, len(ids):].tolist()
        answer = tok.decode([t for t in made if t != tok.special["end"]])
        log(f"sample ({key}): {prompt[-1]['content'][:60]!r} -> {answer!r}")
        out.append({"key": key, "prompt": prompt[-1]["content"], "answer": answer})
    return out
