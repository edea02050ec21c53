"""torchrun command lines for training stages: standalone on one machine, or under `srun` on Slurm.

Training code initialises DDP from RANK / WORLD_SIZE / LOCAL_RANK (see llmpipe/train/dist.py),
as nanoGPT and nanochat do; this module only builds the launch command.
"""

from __future__ import annotations

import sys
from pathlib import Path


def nproc_of(run: dict) -> int:
    return int(run["params"].get("nproc_per_node", 1) or 1)


def task_command(out: Path, phase: int, task: int) -> list[str]:
    return ["-m", "llmpipe", "task", str(out), "--phase", str(phase), "--task", str(task)]


def local_command(out: Path, phase: int, task: int, nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *task_command(out, phase, task)]


def slurm_command(out: Path, phase: int, task: int, nproc: int, python: str) -> str:
    """Shell line for an sbatch script: one torchrun per node via srun, rendezvous on the first node."""
    args = " ".join(task_command(out, phase, task))
    return (
        'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)\n'
        f"srun --ntasks-per-node=1 {python} -m torch.distributed.run --nnodes=$SLURM_NNODES "
        f"--nproc_per_node={nproc} --rdzv_id=$SLURM_JOB_ID --rdzv_backend=c10d --rdzv_endpoint=$head:29500 {args}"
    )
