"""Knowledge distillation: a smaller student learns from a teacher checkpoint on token shards (Hinton et al. 2015).

Input: a tokenize artifact, as pretrain reads it. `teacher`: a checkpoint (a pretrain step or directory) with
the vocabulary the tokens were made with. The student is described by pretrain's params (model, n_layer,
n_embd, ...; usually smaller than the teacher) and trained on pretrain's batches, schedule, validation and
training loop, with the loss

    alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy      (llmpipe/train/distill.py)

where _T is the softmax of the logits divided by `temperature`. The teacher runs frozen in eval mode without
gradients (under bf16 autocast on CUDA, as the student does); alpha = 0 is pretrain exactly and never runs it.
The output is pretrain's: a checkpoint transformers loads, metrics.jsonl (kd_kl and kd_ce beside the loss) and
loss.png; the manifest holds the student's val_loss and val_bpb beside the teacher's (teacher_val_loss,
teacher_val_bpb, measured on the same validation batches). `tokenizer` defaults to the teacher's.

    llmpipe distill --input runs/pretrain/tokens --teacher runs/pretrain/model --output runs/student --n-layer 2 --n-embd 64 --max-steps 50
    [steps.student]
    stage = "distill"
    inputs = ["tokens"]
    teacher = "model"
    n_layer = 2
    alpha = 0.5
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from llmpipe.registry import Plan, Stage
from llmpipe.text.tokenizer import has_tokenizer
from stages import pretrain


@dataclass(frozen=True)
class Params(pretrain.Params):
    tokenizer: str = field(default="", metadata={"help": "Tokenizer the tokens were made with (default: the teacher's); copied into the checkpoint."})
    teacher: str = field(default="", metadata={"help": "The teacher checkpoint (a pretrain step or a checkpoint directory) with the tokens' vocabulary."})
    temperature: float = field(default=2.0, metadata={"help": "Softmax temperature T of both models' logits in the KL term (Hinton et al. use 2 to 20)."})
    alpha: float = field(default=0.5, metadata={"help": "Weight of the distillation term: alpha * T^2 * KL + (1 - alpha) * cross-entropy (0: plain pretraining)."})

    def __post_init__(self):
        super().__post_init__()
        if not self.teacher:
            raise ValueError("teacher: give the teacher checkpoint (an earlier pretrain step or a checkpoint directory)")
        if not self.temperature > 0:
            raise ValueError(f"temperature: expected a number above 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha: expected a number in [0, 1], got {self.alpha}")


def _made(path: Path) -> bool:
    """Whether a teacher path holds a finished checkpoint (an earlier pipeline step may have yet to make it)."""
    from llmpipe.artifacts.layout import MANIFEST, RUN

    return path.exists() and not ((path / RUN).exists() and not (path / MANIFEST).exists())


def with_tokenizer(p: Params) -> Params:
    """p with its tokenizer: the one given, else the teacher's (a teacher still to be made is taken to carry one)."""
    teacher = Path(p.teacher)
    if p.tokenizer or (_made(teacher) and not has_tokenizer(teacher)):
        return p
    return dataclasses.replace(p, tokenizer=p.teacher)


def check_teacher(p: Params, tokens_path: str, tokens: dict | None) -> None:
    """ValueError("teacher: ...") unless the teacher is a checkpoint that speaks the tokens' vocabulary with a context
    of at least seq_len; a teacher an earlier step has yet to make passes (checked when this step runs)."""
    from llmpipe.text.tokenizer import model_sha256

    teacher = Path(p.teacher)
    if not _made(teacher):
        return
    if not (teacher / "config.json").is_file() or not (teacher / "model.safetensors").is_file():
        raise ValueError(f"teacher: {teacher} has no config.json and model.safetensors; give a pretrain output or a checkpoint directory")
    config = json.loads((teacher / "config.json").read_text())
    if config.get("quantization") or config.get("num_labels"):
        raise ValueError(f"teacher: {teacher} is not a plain causal language model checkpoint; give a pretrain (or sft) output")
    if config.get("max_position_embeddings", 0) < p.seq_len:
        raise ValueError(f"teacher: {teacher} has a context of {config.get('max_position_embeddings')} tokens, shorter than seq_len {p.seq_len}; lower seq_len")
    if tokens is None:
        return
    if config["vocab_size"] != tokens["vocab_size"]:
        raise ValueError(f"teacher: {teacher} has a vocabulary of {config['vocab_size']} tokens, but {tokens_path} was made with one of "
                         f"{tokens['vocab_size']}; the student learns the teacher's next-token distribution, so tokenize with the teacher's tokenizer")
    made_with = tokens.get("tokenizer_sha256")
    if made_with and has_tokenizer(teacher) and model_sha256(teacher) != made_with:
        raise ValueError(f"teacher: {teacher}'s tokenizer (sha256 {model_sha256(teacher)[:12]}) is not the one {tokens_path} was made with "
                         f"(sha256 {made_with[:12]}); tokenize with the teacher's tokenizer")


def plan(params: Params, inputs) -> Plan:
    made = pretrain._made_manifest(inputs[0]) if len(inputs) == 1 else None
    check_teacher(params, inputs[0].path if inputs else "", made)
    return pretrain.plan(with_tokenizer(params), inputs)


def train_task(ctx, task: dict) -> dict:
    from llmpipe.artifacts.manifest import read_manifest
    from llmpipe.errors import InputError

    p: Params = ctx.params
    try:
        check_teacher(p, ctx.inputs[0].path, read_manifest(Path(ctx.inputs[0].path)))
        if not p.tokenizer and not has_tokenizer(p.teacher):
            raise ValueError(f"teacher: {p.teacher} carries no tokenizer (tokenizer.model or a WordPiece tokenizer.json); give --tokenizer")
    except ValueError as e:
        raise InputError(f"{ctx.run['step']} {e}") from None
    return pretrain.train_on_tokens(ctx, with_tokenizer(p), _objective(p), "distill")


def _objective(p: Params):
    """distill's objective for pretrain.train_on_tokens: the teacher loaded once, measured on the validation
    batches, then run on each micro-batch beside the student."""

    def objective(cfg, dist, eval_fn):
        import torch

        from llmpipe.model import Model
        from llmpipe.train.distill import distillation_loss
        from llmpipe.train.loop import _autocast

        teacher = Model.from_checkpoint(p.teacher, device=dist.device).eval().requires_grad_(False)
        measured = {}
        if eval_fn is not None:
            with torch.no_grad(), _autocast(dist.device):
                measured = {f"teacher_{k}": v for k, v in eval_fn(teacher).items()}
        if p.alpha == 0:  # plain pretraining: the teacher's figures only
            return pretrain.next_token_loss(cfg, dist, eval_fn)[0], measured

        def loss_fn(m, batch):
            x, y = batch
            with torch.no_grad():
                teacher_logits, _ = teacher(x)
            logits, _ = m(x)
            loss, kl, ce = distillation_loss(logits, teacher_logits, y, p.temperature, p.alpha)
            return loss, {"kd_kl": kl.detach(), "kd_ce": ce.detach()}

        return loss_fn, measured

    return objective


def finalize(ctx, stats: dict, records: dict) -> dict:
    return pretrain.finalize(dataclasses.replace(ctx, params=with_tokenizer(ctx.params)), stats, records)


STAGE = Stage(
    name="distill", version=1, params=Params, doc=__doc__, plan=plan, run_task={"train": train_task}, finalize=finalize,
    output_kind="checkpoint", launcher="torchrun", input_kinds=("tokens",), path_params=("tokenizer", "teacher"),
)
