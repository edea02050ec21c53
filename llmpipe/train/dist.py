"""Device and DDP setup from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK).

RANK present means DDP, as in nanoGPT and nanochat: NCCL on CUDA (one GPU per local rank),
gloo on CPU. A single process needs no process group at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Dist:
    rank: int
    local_rank: int
    world_size: int
    device: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world_size > 1


def autodetect_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group when launched by torchrun; pin this rank's GPU."""
    import torch
    import torch.distributed as dist

    device = autodetect_device() if device == "auto" else device
    if "RANK" not in os.environ:
        return Dist(0, 0, 1, device)
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return Dist(rank, local_rank, world, device)


def shutdown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_device(device: str, built_only: bool = False) -> None:
    """ValueError unless torch can use `device` here; built_only: only whether this torch was built for it at all.

    A GPU missing on this machine may still be on the node a Slurm job runs on, with the same install,
    so before the run only a torch built without the device is refused; the task checks the rest.
    """
    if device in ("auto", "cpu"):
        return
    import torch

    built = torch.backends.cuda.is_built() if device == "cuda" else torch.backends.mps.is_built()
    here = torch.cuda.is_available() if device == "cuda" else torch.backends.mps.is_available()
    if not built:
        raise ValueError(f"device: torch {torch.__version__} is built without {device} support; use cpu (or auto), or install a torch built for {device}")
    if not here and not built_only:
        raise ValueError(f"device: torch sees no {device} device on this machine ({os.uname().nodename}); use cpu (or auto)")
