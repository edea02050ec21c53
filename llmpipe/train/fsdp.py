"""FSDP2 (ZeRO-3 style sharding, `torch.distributed.fsdp.fully_shard`) for the one training loop.

Each rank keeps 1/world of every parameter, gradient and AdamW moment: a parameter is a DTensor
sharded on dim 0, all-gathered per Block just before its forward (and backward), and its gradient
reduce-scattered after. Blocks are the units (one all-gather each) and the root holds the rest: the
embedding, which lm_head shares when tied, and the final norm. On CUDA the all-gathered weights are
bf16 and gradients are reduced in fp32 (MixedPrecisionPolicy); on CPU everything stays fp32, which
is why 2 CPU ranks train to the losses of one process.

Checkpoints are the format DDP writes (model.safetensors + training_state.safetensors with the AdamW
moments under the parameter names), not torch.distributed.checkpoint's per-rank files, whose writer
keeps its metadata in a Python-object format llmpipe does not write. Saving gathers the full tensors
to rank 0 (CPU, one tensor at a time) and rank 0 writes; resuming, every rank reads the files (as under
DDP) and keeps its own shard of each tensor, so no Python objects travel between ranks. The files do
not depend on the number of ranks: one process, DDP, FSDP on any number of ranks and transformers all
read them.

    shard(model, device); rebind_optimizer(optimizer, names, model)   # before the first step
    tensors, moments = full_state(model, optimizer)                   # every rank calls it; rank 0 gets them
"""

from __future__ import annotations

import warnings

import torch


def shard(model, device: str) -> None:
    """fully_shard each Block, then the root (in place: the module stays the object the caller holds)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # cpu_ops.block returns a view; FSDP warns that an in-place op on it would skip a hook, and Model.forward makes none
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if device.startswith("cuda") else MixedPrecisionPolicy()
    for block in model.model.layers:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)


def rebind_optimizer(optimizer, names: dict, model) -> None:
    """fully_shard replaced every parameter by a DTensor one: the optimizer, made on the plain ones, takes the
    new ones in the same groups (its state is still empty: this runs before any step or resume)."""
    sharded = dict(model.named_parameters())
    for group in optimizer.param_groups:
        group["params"] = [sharded[names[p]] for p in group["params"]]


def set_gradient_sync(model, sync: bool) -> None:
    """FSDP's no_sync: gradients of earlier micro-batches accumulate unsharded, reduce-scattered on the last."""
    model.set_requires_gradient_sync(sync)


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """The global gradient norm over all shards (a DTensor norm is partial per rank: full_tensor sums the
    squares across ranks), then every shard scaled by the same factor; returns the norm before clipping."""
    from torch.distributed.tensor import DTensor

    params = [p for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_model_state(model) -> dict:
    """Plain CPU tensors of the whole model under its state_dict names on rank 0, {} on the others; every rank calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def full_state(model, optimizer) -> tuple[dict, dict]:
    """(model tensors, AdamW moments as llmpipe/train/optim.py's optimizer_tensors keys them) on rank 0; every rank calls it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    tensors = full_model_state(model)
    state = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True)).get("state", {})
    moments = {f"{name}.{key}": value.reshape(-1) if key == "step" else value for name, per in state.items() for key, value in per.items()}
    return tensors, moments


def load_full_state(model, optimizer, tensors: dict, moments: dict) -> None:
    """Put a checkpoint every rank has read (full tensors, moments) into this rank's shards; every rank calls it."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    names = {p: n for n, p in model.named_parameters()}
    set_model_state_dict(model, tensors, options=_options())
    state, groups = {}, []
    for group in optimizer.param_groups:  # the nested form DCP reads: state per parameter name, groups naming their parameters
        params = [names[p] for p in group["params"]]
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": params})
        for name in params:
            if f"{name}.exp_avg" in moments:
                state[name] = {"step": moments[f"{name}.step"].reshape(()), "exp_avg": moments[f"{name}.exp_avg"],
                               "exp_avg_sq": moments[f"{name}.exp_avg_sq"]}
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups}, options=_options())


def model_state(model) -> dict:
    """The state dict to write as the final model: gathered to rank 0 when `model` is sharded (every rank calls it
    then; the others get {}), else the model's own."""
    from torch.distributed.fsdp import FSDPModule

    return full_model_state(model) if isinstance(model, FSDPModule) else model.state_dict()
