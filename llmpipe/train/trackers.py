"""Trackers: the training loop's metrics, besides metrics.jsonl, in the tools users already watch.

- tensorboard: event files in <artifact>/tensorboard/, so `tensorboard --logdir runs/pretrain` shows
  every training step of a pipeline side by side (runs model/tensorboard, sft/tensorboard, ...).
- wandb: a Weights & Biases run in offline mode in <artifact>/wandb/ (nothing leaves the machine;
  `wandb sync <artifact>/wandb/offline-run-*` uploads it), project = the pipeline's workdir name
  (runs/pretrain -> pretrain; WANDB_PROJECT overrides it), run name = the step's (the artifact's directory).

Scalars carry metrics.jsonl's keys at the record's step: train/<key> for a training step
(train/loss, train/lr, train/grad_norm, train/tokens_per_s, train/rewards/chosen, ...), and for an
evaluation val_<name> -> val/<name>, eval_<name> -> eval/<name>. TensorBoard holds float32 scalars
(metrics.jsonl's value rounded to float32; the loss is a float32 to begin with): TensorBoard's own
fast loader (tensorboard-data-server 0.7) shows no float64 scalar at all, so doubles would vanish.

metrics.jsonl is the source of truth. When the loop (re)starts, it has already cut that file back to
the checkpoint it resumes from; the trackers then start over from it: the old event files (or
offline run) are removed and the kept records are written again before training goes on. A
resumed run thus holds each point once, as an uninterrupted run would, whatever reads it.
(SummaryWriter's purge_step instead leaves the killed run's points on disk, for the reader to drop:
both TensorBoard loaders do, but other readers of event files see every point twice; and without
it, EventAccumulator shows the step after the checkpoint twice.) The cost: replayed points carry
the wall time of the restart, and a W&B run is a new offline run that holds the whole history.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import field
from pathlib import Path

from llmpipe.errors import did_you_mean

TRACKERS = ("tensorboard", "wandb")
NONE = "none"  # the CLI's way to ask for no tracker (--trackers none); a pipeline file may write trackers = []
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # tracker -> the package it needs


def trackers_field():
    """The `trackers` param of every training stage (pretrain, sft, dpo): one definition, one help text."""
    return field(default=("tensorboard",), metadata={"help": (
        "Where training metrics go besides metrics.jsonl: tensorboard (event files in tensorboard/), wandb "
        "(Weights & Biases, offline, in wandb/; needs `pip install wandb`); none for neither.")})


def check_tracker_names(names) -> None:
    """ValueError for a name that is not a tracker (Params.__post_init__: no environment needed)."""
    for name in names:
        if name not in TRACKERS and not (name == NONE and len(names) == 1):
            hint = did_you_mean(name, TRACKERS) or f"; expected {', '.join(TRACKERS)} (or none alone)"
            raise ValueError(f"trackers: unknown tracker {name!r}{hint}")


def check_trackers_installed(names) -> None:
    """ValueError naming the package to install for a tracker it cannot import (at plan time, before a write)."""
    for name in names:
        package = PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise ValueError(f"trackers: {name} is not installed; pip install {package} (or leave {name} out of trackers)")


def scalar_name(key: str, is_eval: bool) -> str:
    """The tracker's name of a metrics.jsonl key: train/loss, val/loss, eval/rewards/accuracies."""
    if not is_eval:
        return f"train/{key}"
    for prefix in ("val_", "eval_"):
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key[len(prefix):]}"
    return f"val/{key}"


def scalars(record: dict) -> dict[str, float]:
    """{tracker name: value} of a metrics.jsonl record (train step or evaluation)."""
    is_eval = bool(record.get("eval"))
    return {scalar_name(k, is_eval): float(v) for k, v in record.items()
            if k not in ("step", "eval") and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Trackers:
    """The open trackers of one training run; log(record) takes a record as metrics.jsonl holds it."""

    def __init__(self, out: Path, names=(), metrics: Path | None = None):
        """Open `names` for the artifact `out`, starting over from the records of `metrics` (see the module doc)."""
        out = Path(out)
        names = [n for n in names if n != NONE]
        self._writers = []
        if "tensorboard" in names:
            shutil.rmtree(out / TENSORBOARD_DIR, ignore_errors=True)
            self._writers.append(_TensorBoard(out / TENSORBOARD_DIR))
        if "wandb" in names:
            shutil.rmtree(out / WANDB_DIR, ignore_errors=True)
            self._writers.append(_WandB(out))
        if self._writers and metrics is not None and Path(metrics).exists():
            for line in Path(metrics).read_text().splitlines():
                self.log(json.loads(line))

    def log(self, record: dict) -> None:
        values = scalars(record)
        for writer in self._writers:
            writer.log(values, int(record["step"]))

    def close(self) -> None:
        for writer in self._writers:
            writer.close()
        self._writers = []


class _TensorBoard:
    def __init__(self, logdir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(logdir))

    def log(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)  # float32 simple_value: every TensorBoard loader reads it
        self.writer.flush()  # a step every few seconds at most: `tensorboard` shows it at once

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, out: Path):
        import wandb

        from llmpipe.artifacts.layout import RUN, read_json

        run = read_json(out / RUN) if (out / RUN).exists() else {}
        project = os.environ.get("WANDB_PROJECT") or out.resolve().parent.name  # runs/pretrain/model -> "pretrain"
        self.run = wandb.init(
            project=project, name=out.name, dir=str(out), mode="offline", config=run.get("params", {}),
            reinit="finish_previous",  # a run a failed training left open in this process must not take our points
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),  # our log lines stay ours
        )

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()
