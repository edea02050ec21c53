"""torchrun command lines for training stages: standalone on one machine, or under `srun` on Slurm.

Training code initialises DDP from RANK / WORLD_SIZE / LOCAL_RANK (see llmpipe/train/dist.py),
as nanoGPT and nanochat do; this module only builds the launch command.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def nproc_of(run: dict) -> int:
    return int(run["params"].get("nproc_per_node", 1) or 1)


def task_command(out: Path, phase: int, task: int) -> list[str]:
    return ["-m", "llmpipe", "task", str(out), "--phase", str(phase), "--task", str(task)]


def local_command(out: Path, phase: int, task: int, nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *task_command(out, phase, task)]


def slurm_command(out: Path, phase: int, task: int, nproc: int, python: str, nodes: int = 1) -> str:
    """Shell line for an sbatch script: one torchrun per node via srun. On one node torchrun is --standalone (a free
    port of its own: two training jobs on one node at once, as dpo and reward_model after sft, shared port 29500, and
    the job whose store it was closed it under the other); across nodes the rendezvous is on the first node, at a
    port taken from the job id. Every path is shell-quoted."""
    args = " ".join(shlex.quote(a) for a in task_command(out, phase, task))
    launch = f"{shlex.quote(python)} -m torch.distributed.run --nproc_per_node={nproc}"
    if nodes == 1:
        return f"srun --ntasks-per-node=1 {launch} --standalone {args}"
    return (
        'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)\n'
        f"srun --ntasks-per-node=1 {launch} --nnodes=$SLURM_NNODES --rdzv_id=$SLURM_JOB_ID --rdzv_backend=c10d "
        f"--rdzv_endpoint=$head:$((20000 + SLURM_JOB_ID % 40000)) {args}"
    )
