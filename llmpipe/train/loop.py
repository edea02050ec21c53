"""The one training loop: pretrain, SFT and DPO each bring their batches and their loss_fn.

It handles grad accumulation, clipping, the LR schedule, bf16 autocast on CUDA (fp32 on CPU), DDP
gradient sync or FSDP2 sharding (cfg.parallel, llmpipe/train/fsdp.py), an eval hook, checkpoints every
N steps keeping the last K, automatic resume from the newest checkpoint in the output directory,
metrics.jsonl and one log line per step.

Resume is exact on CPU: batches are a pure function of the step (PackedBatches), the model has no
dropout, and the checkpoint holds the weights and AdamW's moments, so a run killed and resumed
logs the same losses as one that never stopped.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from llmpipe.log import log
from llmpipe.train.trackers import Trackers

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"


@dataclass
class LoopConfig:
    max_steps: int
    grad_clip: float = 1.0
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 0  # 0: only at the end
    keep_last: int = 2
    tokens_per_step: int = 0  # global tokens per optimizer step, for tokens/s
    flops_per_token: float = 0.0  # for MFU
    peak_flops: float = 0.0  # per process; 0 (CPU, unknown GPU) leaves MFU out
    eval_at_start: bool = False  # evaluate the model as it comes in (fine-tuning: the base model's figures)
    parallel: str = "ddp"  # with more than one rank: ddp (replicas) or fsdp (shards, llmpipe/train/fsdp.py)


def peak_flops(device: str) -> float:
    """Peak FLOP/s of one device from a table of CUDA GPUs (bf16 dense); 0 (no MFU) elsewhere.

    CPUs get no MFU: a matmul peak measured at start-up on a shared machine came out below what the
    training steps then reached (MFU of 236 %), and a CPU has no published peak to use instead.
    """
    import torch

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        for key, flops in (("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L4", 121e12), ("A10", 125e12), ("4090", 165e12), ("3090", 71e12)):
            if key in name:
                return flops
    return 0.0


def measured_matmul_flops(n: int = 1024, repeats: int = 10) -> float:
    """Best-of-`repeats` fp32 n x n matmul FLOP/s in this process (~140 GFLOP/s on 2 EPYC cores; lower when the machine is shared)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def checkpoint_dirs(out: Path) -> list[tuple[int, Path]]:
    """(step, path) of complete checkpoints, oldest first (save_checkpoint renames into place, so any that exists is whole)."""
    root = Path(out) / CHECKPOINTS
    found = []
    for d in root.glob("step-*") if root.is_dir() else []:
        if d.name[5:].isdigit() and (d / "model.safetensors").exists():
            found.append((int(d.name[5:]), d))
    return sorted(found)


def prune_checkpoints(out: Path, keep_last: int) -> None:
    """Delete all but the newest keep_last complete checkpoints (all are kept when keep_last < 1), and any
    checkpoint directory left half deleted by a run killed while pruning: one without model.safetensors is
    not a checkpoint to checkpoint_dirs, so nothing else would ever remove it."""
    complete = [path for _, path in checkpoint_dirs(out)]
    keep = set(complete[-keep_last:] if keep_last > 0 else complete)
    root = Path(out) / CHECKPOINTS
    for d in sorted(root.glob("step-*")) if root.is_dir() else []:
        if d not in keep and d.name[5:].isdigit() and d.is_dir():  # step-N.tmp-PID temporaries are remove_temporaries' to clear
            shutil.rmtree(d, ignore_errors=True)


def _autocast(device: str):
    import contextlib

    import torch

    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train(
    model, optimizer, lr_schedule: Callable[[int], float], micro_batches: Callable[[int], Iterable], loss_fn: Callable,
    out: Path, cfg: LoopConfig, dist, *, config_json: dict, eval_fn: Callable | None = None, compile: bool = False,
    trackers: Sequence[str] = (),
) -> list[dict]:
    """Train `model` to cfg.max_steps, resuming from the newest checkpoint in out/checkpoints; returns the eval records.

    micro_batches(step) yields this rank's micro-batches of an optimizer step; loss_fn(model, batch)
    -> loss (the mean over the micro-batch), or (loss, {name: number or scalar tensor}) whose metrics are
    averaged over micro-batches and ranks and logged; eval_fn(model) -> dict of metrics, run on every rank.
    trackers: where every metrics.jsonl record also goes (llmpipe/train/trackers.py: tensorboard, wandb), from rank 0.
    """
    import torch

    from llmpipe.artifacts.checkpoint import load_checkpoint, save_checkpoint
    from llmpipe.moe import discard_routing, router_loss
    from llmpipe.train.memory import keep_freed_memory
    from llmpipe.train.optim import load_optimizer_tensors, optimizer_tensors

    keep_freed_memory()
    out = Path(out)
    raw = model
    names = {p: n for n, p in raw.named_parameters()}
    fsdp = cfg.parallel == "fsdp" and dist.ddp
    if fsdp:  # sharding makes new parameters: before the first step and before a resume fills the shards
        from llmpipe.train import fsdp as sharded

        sharded.shard(raw, dist.device)
        sharded.rebind_optimizer(optimizer, names, raw)
    start = 0
    found = checkpoint_dirs(out)
    if found:
        step, path = found[-1]
        tensors, _, state, opt = load_checkpoint(path, device="cpu")
        if fsdp:  # every rank keeps its shards of the full tensors
            sharded.load_full_state(raw, optimizer, tensors, opt or {})
        else:
            raw.load_state_dict(tensors)
            load_optimizer_tensors(optimizer, names, opt or {})
        start = int(state["step"])
        log(f"resuming from {path} (step {start}/{cfg.max_steps})")
    if dist.is_main:
        prune_checkpoints(out, cfg.keep_last)  # a run killed while pruning left a checkpoint half deleted
        if start == 0:  # a fresh start (or one killed before its first checkpoint) begins a fresh file
            (out / METRICS).unlink(missing_ok=True)
        # a run killed after its last checkpoint evaluates again below: drop the first evaluation of that step
        _truncate_metrics(out / METRICS, start, drop_eval_at_end=start >= cfg.max_steps)
    # rank 0 alone writes metrics; the trackers start over from what metrics.jsonl kept (a resume replays it)
    tracked = Trackers(out, trackers if dist.is_main else (), metrics=out / METRICS)
    if dist.ddp and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[dist.local_rank] if dist.device.startswith("cuda") else None)
    if compile:
        model = torch.compile(model)
    evals: list[dict] = []

    def save(step: int) -> None:
        if fsdp:  # the same files as DDP's: every rank gathers, rank 0 holds the full tensors
            tensors, moments = sharded.full_state(raw, optimizer)
        elif dist.is_main:
            tensors, moments = raw.state_dict(), {k: v.cpu() for k, v in optimizer_tensors(optimizer, names).items()}
        if dist.is_main:
            save_checkpoint(out / CHECKPOINTS / f"step-{step}", tensors, config_json, {"step": step}, moments)
            prune_checkpoints(out, cfg.keep_last)
        if dist.ddp:
            torch.distributed.barrier()

    def evaluate(step: int) -> None:
        if eval_fn is None:
            return
        raw.eval()
        with torch.no_grad(), _autocast(dist.device):
            record = {"step": step, **eval_fn(raw)}
        raw.train()
        evals.append(record)
        if dist.is_main:
            _append(out / METRICS, {"eval": True, **record})
            tracked.log({"eval": True, **record})
            log(f"step {step}/{cfg.max_steps} | " + " | ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "step"))

    if cfg.eval_at_start and start == 0:
        evaluate(0)
    model.train()
    t_start, tokens_done = time.time(), 0
    for step in range(start, cfg.max_steps):
        t0 = time.time()
        lr = lr_schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches = list(micro_batches(step))
        total = torch.zeros((), device=dist.device)
        extra: dict[str, torch.Tensor] = {}  # a method's own metrics (DPO's rewards/*), averaged like the loss
        for k, batch in enumerate(batches):
            sync = k == len(batches) - 1
            ctx = model.no_sync() if dist.ddp and not sync and hasattr(model, "no_sync") else _nullcontext()
            if fsdp:
                sharded.set_gradient_sync(raw, sync)
            with ctx:  # no_sync: gradients are all-reduced (FSDP: reduce-scattered) once, on the last micro-batch
                with _autocast(dist.device):
                    discard_routing(raw)  # routing recorded outside this batch's forward (checkpointing's recomputation)
                    loss, metrics = _loss_and_metrics(loss_fn(model, batch))
                    aux, routing = router_loss(raw)  # a mixture of experts' load-balancing loss and expert load; 0, {} when dense
                    loss = (loss + aux) / len(batches)
                    metrics = {**metrics, **routing}
                loss.backward()
            total += loss.detach()
            for name, value in metrics.items():
                extra[name] = extra.get(name, 0) + torch.as_tensor(value, dtype=torch.float32, device=dist.device).detach() / len(batches)
        if dist.ddp:
            torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.AVG)
            if extra:
                stacked = torch.stack(list(extra.values()))
                torch.distributed.all_reduce(stacked, op=torch.distributed.ReduceOp.AVG)
                extra = dict(zip(extra, stacked))
        clip = sharded.clip_grad_norm if fsdp else torch.nn.utils.clip_grad_norm_  # FSDP: the norm over every rank's shards
        grad_norm = clip(raw.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = total.item()  # syncs the device, so dt below is real
        dt = time.time() - t0
        tokens_done += cfg.tokens_per_step
        tok_s = cfg.tokens_per_step / dt
        record = {"step": step + 1, "loss": loss_value, "lr": lr, "grad_norm": round(float(grad_norm), 5), "tokens_per_s": round(tok_s, 1), "dt": round(dt, 4),
                  **{name: round(value.item(), 5) for name, value in extra.items()}}
        if cfg.flops_per_token:
            record["flops_per_s"] = round(cfg.flops_per_token * tok_s / dist.world_size, 0)  # per process
            if cfg.peak_flops:
                record["mfu"] = round(cfg.flops_per_token * tok_s / (cfg.peak_flops * dist.world_size), 4)
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at step {step + 1}; lower lr or raise warmup_steps")
        if dist.is_main:
            _append(out / METRICS, record)
            tracked.log(record)
            remaining = (cfg.max_steps - step - 1) * (time.time() - t_start) / max(1, step + 1 - start)
            mfu = f" | mfu {record['mfu']:.1%}" if "mfu" in record else ""
            shown = "".join(f" | {name} {record[name]:.3f}" for name in extra if not name.startswith("moe_load/"))  # moe_load_cv sums them up
            log(f"step {step + 1}/{cfg.max_steps} | loss {loss_value:.4f}{shown} | lr {lr:.2e} | norm {float(grad_norm):.3f} | "
                f"dt {dt * 1000:.0f}ms | tok/s {tok_s:,.0f}{mfu} | eta {remaining / 60:.1f}m")
        done = step + 1 == cfg.max_steps
        if done or (cfg.eval_every and (step + 1) % cfg.eval_every == 0):
            evaluate(step + 1)
        if done or (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0):
            save(step + 1)
    if start >= cfg.max_steps and eval_fn is not None:  # everything was done before a kill after the last checkpoint
        evaluate(cfg.max_steps)
    tracked.close()  # each point was flushed as logged: a run that raised above has lost none
    return evals


def _loss_and_metrics(out) -> tuple:
    """loss_fn returns the loss, or (loss, {name: number or scalar tensor}) for metrics logged beside it."""
    return out if isinstance(out, tuple) else (out, {})


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _truncate_metrics(path: Path, step: int, drop_eval_at_end: bool = False) -> None:
    """Drop records past the checkpoint we resume from, so the file reads like an uninterrupted run."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if record.get("step", 0) < step or (record.get("step", 0) == step and not (drop_eval_at_end and record.get("eval"))):
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """(train records, eval records) of a metrics.jsonl."""
    train_records, eval_records = [], []
    for line in Path(path).read_text().splitlines():
        record = json.loads(line)
        (eval_records if record.get("eval") else train_records).append(record)
    return train_records, eval_records


def loss_png(path: Path, metrics: Path, title: str) -> None:
    """Training loss per step, and validation loss where it was measured."""
    curves_png(path, metrics, title, [("loss", "train loss")], [("val_loss", "val loss")], "loss (nats/token)")


def curves_png(path: Path, metrics: Path, title: str, train_keys: list[tuple[str, str]], eval_keys: list[tuple[str, str]],
               ylabel: str = "") -> None:
    """Metrics per step from a metrics.jsonl: (key, label) of the training records as lines, of the evaluations as
    points; a key the records do not hold is left out."""
    from llmpipe.artifacts.layout import atomic_path
    from llmpipe.plots import _pyplot

    train_records, eval_records = read_metrics(metrics)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for records, keys, style in ((train_records, train_keys, "-"), (eval_records, eval_keys, "o-")):
        for key, label in keys:
            if records and key in records[0]:
                ax.plot([r["step"] for r in records], [r[key] for r in records], style, lw=1, label=label)
    ax.set_xlabel("step")
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
