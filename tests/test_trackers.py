"""Trackers: pretrain, sft and dpo write TensorBoard event files that hold metrics.jsonl's values at its steps
(read back with TensorBoard's own EventAccumulator); a resumed run holds every point once; trackers = []
writes none; an unknown tracker and a missing wandb are one-line errors; with wandb installed, an offline
W&B run holds the same history (read back with `wandb leet inspect`)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import llmpipe
from tests.conftest import SHARED_DATA, run_cli, write
from tests.test_errors import _one_line_error

torch = pytest.importorskip("torch")
pytest.importorskip("tensorboard")
np = pytest.importorskip("numpy")

HAVE_WANDB = importlib.util.find_spec("wandb") is not None
os.environ.setdefault("OMP_NUM_THREADS", "1")  # a shared 2-core machine: training subprocesses inherit it
TINY = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_kv_head": 4, "seq_len": 64, "micro_batch": 4, "batch_tokens": 256,
        "warmup_steps": 2, "eval_steps": 1, "device": "cpu"}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    """60 kB of tiny shakespeare: a 512-piece tokenizer and a token artifact with a validation split (~1 s)."""
    path = SHARED_DATA / "text" / "tinyshakespeare.txt"
    if not path.exists():
        pytest.skip(f"real data not found at {path}")
    tmp = tmp_path_factory.mktemp("trackers")
    docs, cur = [], ""
    for part in path.read_text()[:60_000].split("\n\n"):
        cur += part + "\n\n"
        if len(cur) > 2000:
            docs.append(cur)
            cur = ""
    write(tmp / "raw" / "docs.jsonl", "".join(json.dumps({"id": f"s{i}", "text": d}) + "\n" for i, d in enumerate(docs)))
    llmpipe.run_stage("ingest", [str(tmp / "raw")], tmp / "docs")
    llmpipe.run_stage("train_tokenizer", [str(tmp / "docs")], tmp / "tokenizer", vocab_size=512, holdout_documents=2)
    llmpipe.run_stage("tokenize", [str(tmp / "docs")], tmp / "tokens", tokenizer=str(tmp / "tokenizer"), val_fraction=0.1)
    return tmp


def event_scalars(artifact: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of the event files in <artifact>/tensorboard, as TensorBoard reads them (no sampling)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(artifact / "tensorboard"), size_guidance={SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def metrics_scalars(artifact: Path) -> dict[str, list[tuple[int, float]]]:
    """What the trackers should hold: every number of metrics.jsonl at its step, train/<key>, val_x -> val/x, eval_x -> eval/x."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in map(json.loads, (artifact / "metrics.jsonl").read_text().splitlines()):
        for key, value in record.items():
            if key in ("step", "eval"):
                continue
            name = key.replace("_", "/", 1) if record.get("eval") else f"train/{key}"
            out.setdefault(name, []).append((record["step"], value))
    return out


def as_float32(scalars: dict) -> dict:
    """TensorBoard keeps float32 scalars: metrics.jsonl's values rounded so."""
    return {tag: [(step, float(np.float32(v))) for step, v in points] for tag, points in scalars.items()}


def test_pretrain_event_files_hold_metrics_jsonl(tokens):
    out = tokens / "runs" / "pretrain" / "model"
    llmpipe.run_stage("pretrain", [str(tokens / "tokens")], out, tokenizer=str(tokens / "tokenizer"), max_steps=6, eval_every=3, **TINY)
    seen, expected = event_scalars(out), metrics_scalars(out)
    assert set(seen) == {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/dt", "train/flops_per_s", "val/loss", "val/bpb"}
    assert [s for s, _ in seen["train/loss"]] == [1, 2, 3, 4, 5, 6] and [s for s, _ in seen["val/loss"]] == [3, 6]
    assert seen == as_float32(expected)
    for tag in ("train/loss", "val/loss", "val/bpb"):  # to 1e-6 of the float64 figures
        assert max(abs(a[1] - b[1]) for a, b in zip(seen[tag], expected[tag])) < 1e-6
    assert len(list((out / "tensorboard").iterdir())) == 1, "one event file"


def test_dpo_event_files_hold_its_reward_metrics(chat_base):
    """dpo's loss_fn metrics (rewards/*) and held-out ones (val_loss, eval_rewards/*), before training and after."""
    out = chat_base / "dpo-tracked"
    run_cli("dpo", "--input", str(SHARED_DATA / "preference" / "dpo_en_demo.json"), "--output", out.name, "--max-steps", "2",
            "--batch-size", "8", "--micro-batch", "4", "--max-seq-len", "64", "--val-fraction", "0.1", "--checkpoint", "model",
            "--device", "cpu", cwd=chat_base, check=True, env={"OMP_NUM_THREADS": "1"})
    seen = event_scalars(out)
    assert {"train/loss", "train/rewards/accuracies", "train/rewards/margins", "train/logps/chosen", "val/loss",
            "eval/rewards/accuracies", "eval/rewards/margins"} <= set(seen), sorted(seen)
    assert [s for s, _ in seen["val/loss"]] == [0, 2] and [s for s, _ in seen["train/rewards/chosen"]] == [1, 2]
    assert seen == as_float32(metrics_scalars(out))


def test_the_chat_base_pretrain_cli_run_wrote_event_files(chat_base):
    """The CLI's default: tensorboard (the 30-step base model every chat test starts from)."""
    seen = event_scalars(chat_base / "model")
    assert [s for s, _ in seen["train/loss"]] == list(range(1, 31))
    assert seen == as_float32(metrics_scalars(chat_base / "model"))


TRACKERS = ["tensorboard", "wandb"] if HAVE_WANDB else ["tensorboard"]


class Killed(Exception):
    pass


def _loop(out: Path, tokens: Path, max_steps: int = 6, die_at: int | None = None) -> None:
    """The training loop itself on the tiny model: eval and checkpoint every 2 steps; dies while making step die_at."""
    from llmpipe.evaluation.perplexity import loss_rows, summary
    from llmpipe.model import Model, ModelConfig
    from llmpipe.train.data import PackedBatches, split_shards
    from llmpipe.train.dist import Dist
    from llmpipe.train.loop import LoopConfig, train
    from llmpipe.train.optim import lr_at, make_optimizer

    torch.manual_seed(0)
    model = Model(ModelConfig.preset("tiny", vocab_size=512, max_seq_len=64, n_layer=2, n_embd=64, n_head=4, n_kv_head=4))
    data = PackedBatches.from_artifact(tokens / "tokens", "train", seq_len=64, batch_size=4, seed=0)
    val = PackedBatches(split_shards(tokens / "tokens", "val"), seq_len=64, batch_size=4, shuffle=False)

    def micro_batches(step):
        if step + 1 == die_at:
            raise Killed(f"killed while making step {die_at}")
        yield data.batch(step)

    cfg = LoopConfig(max_steps=max_steps, eval_every=2, checkpoint_every=2, keep_last=2, tokens_per_step=256)
    train(model, make_optimizer(model, 3e-3, 0.1, device="cpu"), lambda s: lr_at(s, lr=3e-3, min_lr=3e-4, warmup_steps=2, max_steps=max_steps),
          micro_batches, lambda m, b: m(*b)[1], out, cfg, Dist(0, 0, 1, "cpu"), config_json=model.config.to_hf(),
          eval_fn=lambda m: {"val_loss": summary(loss_rows(m, *val.batch(0)).sum(0))["loss"]}, trackers=TRACKERS)


def test_a_resumed_run_holds_every_point_once(tokens, tmp_path):
    """Killed at step 5 (checkpoint 4), resumed: the event files hold steps 1-6 once, the losses of a run that never
    stopped; killed after its last checkpoint (before the manifest), resumed: the final evaluation once."""
    from llmpipe.train.loop import checkpoint_dirs

    _loop(tmp_path / "whole", tokens)
    whole = event_scalars(tmp_path / "whole")
    killed = tmp_path / "killed"
    with pytest.raises(Killed):
        _loop(killed, tokens, die_at=6)
    assert [step for step, _ in checkpoint_dirs(killed)] == [2, 4]
    assert [s for s, _ in event_scalars(killed)["train/loss"]] == [1, 2, 3, 4, 5]  # step 5 is past the checkpoint: redone
    _loop(killed, tokens)
    seen = event_scalars(killed)
    assert [s for s, _ in seen["train/loss"]] == [1, 2, 3, 4, 5, 6] and [s for s, _ in seen["val/loss"]] == [2, 4, 6]
    assert seen["train/loss"] == whole["train/loss"] and seen["val/loss"] == whole["val/loss"], "exact resume, exact curves"
    assert seen == as_float32(metrics_scalars(killed))
    assert len(list((killed / "tensorboard").iterdir())) == 1, "the killed run's event file was replaced"
    if HAVE_WANDB:  # one offline run, each step once, as metrics.jsonl
        assert wandb_run(killed)[1] == metrics_scalars(killed)
    _loop(killed, tokens)  # everything was done: resumes at step 6 and evaluates again
    assert event_scalars(killed) == seen
    if HAVE_WANDB:
        assert wandb_run(killed)[1] == metrics_scalars(killed)


def test_no_trackers_write_no_event_files(tokens, tmp_path):
    out = tmp_path / "quiet"
    llmpipe.run_stage("pretrain", [str(tokens / "tokens")], out, max_steps=1, trackers=[], **TINY)
    assert (out / "metrics.jsonl").exists() and not (out / "tensorboard").exists() and not (out / "wandb").exists()
    flags = [a for k, v in TINY.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    run_cli("pretrain", "--input", str(tokens / "tokens"), "--output", "cli", "--max-steps", "1", "--trackers", "none", *flags,
            cwd=tmp_path, check=True, env={"OMP_NUM_THREADS": "1"})
    assert (tmp_path / "cli" / "metrics.jsonl").exists() and not (tmp_path / "cli" / "tensorboard").exists()


def test_unknown_tracker_is_a_one_line_error(tokens, tmp_path):
    args = ["pretrain", "--input", str(tokens / "tokens"), "--output", "out", "--device", "cpu"]
    assert _one_line_error(tmp_path, *args, "--trackers", "tensorbord") == \
        "error: pretrain --trackers: unknown tracker 'tensorbord'; did you mean \"tensorboard\"?"
    assert _one_line_error(tmp_path, *args, "--trackers", "mlflow") == \
        "error: pretrain --trackers: unknown tracker 'mlflow'; expected tensorboard, wandb (or none alone)"
    write(tmp_path / "p.toml", f'[pipeline]\nworkdir = "runs"\n[steps.model]\nstage = "pretrain"\ninputs = ["{tokens / "tokens"}"]\n'
                               'trackers = ["tensorboard", "none"]\n')
    assert _one_line_error(tmp_path, "run", "p.toml") == \
        "error: p.toml [steps.model] trackers: unknown tracker 'none'; expected tensorboard, wandb (or none alone)"


@pytest.mark.skipif(HAVE_WANDB, reason="wandb is installed here")
def test_missing_wandb_is_a_one_line_error(tokens, chat_base, tmp_path):
    line = _one_line_error(tmp_path, "pretrain", "--input", str(tokens / "tokens"), "--output", "out", "--trackers", "tensorboard",
                           "--trackers", "wandb", "--device", "cpu")
    assert line == "error: pretrain --trackers: wandb is not installed; pip install wandb (or leave wandb out of trackers)"
    line = _one_line_error(tmp_path, "sft", "--input", str(SHARED_DATA / "sft" / "alpaca_en_demo.json"), "--output", "out",
                           "--checkpoint", str(chat_base / "model"), "--trackers", "wandb", "--device", "cpu")
    assert line == "error: sft --trackers: wandb is not installed; pip install wandb (or leave wandb out of trackers)"


@pytest.mark.skipif(not HAVE_WANDB, reason="wandb is not installed (pip install wandb)")
def test_wandb_offline_run_holds_metrics_jsonl(tokens, monkeypatch):
    """The real wandb in offline mode, no network: project = the workdir's name, run name = the step's."""
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    out = tokens / "runs" / "wb" / "model"
    llmpipe.run_stage("pretrain", [str(tokens / "tokens")], out, max_steps=4, eval_every=2, trackers=["tensorboard", "wandb"], **TINY)
    run, history = wandb_run(out)
    assert (run["project"], run["display_name"]) == ("wb", "model")
    assert history == metrics_scalars(out), "W&B keeps the float64 values themselves"
    assert event_scalars(out) == as_float32(metrics_scalars(out))


def wandb_run(artifact: Path) -> tuple[dict, dict[str, list[tuple[int, float]]]]:
    """(run record, {key: [(step, value)]}) of the one offline run in <artifact>/wandb, read by `wandb leet inspect`."""
    (run_dir,) = (artifact / "wandb").glob("offline-run-*")
    wandb_cli = Path(sys.executable).parent / "wandb"  # the wandb beside this python (a venv's), else on PATH
    wandb_cli = wandb_cli if wandb_cli.exists() else Path(shutil.which("wandb"))
    records = [json.loads(line) for line in subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(run_dir)], check=True,
                                                            capture_output=True, text=True).stdout.splitlines()]
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    history: dict[str, list] = {}
    for r in records:
        if r["type"] == "history":
            for key, value in r["history"]["item"].items():
                if not key.startswith("_"):
                    history.setdefault(key, []).append((r["history"]["step"]["num"], value))
    return run, history
