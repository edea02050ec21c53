"""run_stage(): the one entry point that the CLI stage commands, pipeline steps and library users share."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from llmpipe import step as step_mod
from llmpipe.config import params_from_mapping
from llmpipe.errors import ConfigError, InputError
from llmpipe.executors.local import run_phases
from llmpipe.fingerprint import dir_is_inside
from llmpipe.inputs import Input, resolve_input
from llmpipe.log import log
from llmpipe.registry import get_stage


def build_step(name: str, stage_ref: str, inputs: Sequence[Input], output: Path, params: Mapping[str, Any], where: str) -> step_mod.Step:
    """Validate params and the output path against the inputs; nothing is written here."""
    stage = get_stage(stage_ref, where=f"{where} stage")
    typed = params_from_mapping(stage.params, params, where=where, stage=stage.name)
    out = Path(output).resolve()
    for inp in inputs:
        if inp.kind == "embedded":
            continue
        roots = [Path(inp.path)] if inp.kind == "artifact" else [Path(f) for f in inp.files]
        for root in roots:
            if dir_is_inside(root, out) or dir_is_inside(out, root):
                raise InputError(f"{where} output: {out} overlaps its own input {root}; choose an output outside the inputs")
    step_mod.check_output_is_ours(out, where)
    return step_mod.Step(name, stage_ref, stage, typed, list(inputs), out)


def array_shard() -> tuple[int, int] | None:
    """(index, count) inside a Slurm array task, so hand-written sbatch arrays split the work."""
    if "SLURM_ARRAY_TASK_ID" not in os.environ or os.environ.get("LLMPIPE_EXECUTOR") == "slurm":
        return None
    index = int(os.environ["SLURM_ARRAY_TASK_ID"]) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
    return index, int(os.environ.get("SLURM_ARRAY_TASK_COUNT", "1"))


def execute(step: step_mod.Step, workers: int = 1, force: bool = False) -> dict:
    """Run a built step locally unless it is fresh; returns its manifest."""
    state, _ = step_mod.state(step)
    if state == "fresh" and not force:
        log(f"[bold]{step.name}[/]: fresh, skipped")
        return step_mod.read_json(step.out / "_manifest.json")
    if force and step.out.exists():
        step_mod.check_output_is_ours(step.out, step.name)
        import shutil

        shutil.rmtree(step.out)
    run = step_mod.prepare(step)
    shard = array_shard()
    if shard is not None:
        return _execute_shard(step, run, *shard)
    t0 = time.time()
    run_phases(step.out, run, workers, step.name)
    manifest = step_mod.finalize(step.out)
    log(f"[bold]{step.name}[/]: done in {time.time() - t0:.1f}s -> {step.out}")
    return manifest


def _execute_shard(step: step_mod.Step, run: dict, index: int, count: int) -> dict:
    """This array task runs tasks i with i % count == index of each phase, waiting for the others in between.

    All array tasks must be able to run at once (no `%` limit below the array size), since
    each waits for the rest at every phase boundary; `llmpipe run --executor slurm` has no such limit.
    """
    out = step.out
    for k in range(len(run["phases"])):
        run_phases(out, run, 1, f"{step.name} [shard {index}/{count}]", tasks_of=lambda p, todo, k=k: [t for t in todo if t % count == index] if p == k else [])
        while step_mod.pending_tasks(out, run, k):
            time.sleep(1.0)
    if index != 0:
        while not (out / "_manifest.json").exists():
            time.sleep(1.0)
        return step_mod.read_json(out / "_manifest.json")
    return step_mod.finalize(out)


def run_stage(
    name: str,
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    output: str | os.PathLike,
    *,
    workers: int = 1,
    force: bool = False,
    **params: Any,
) -> dict:
    """Run stage `name` on `inputs` (artifacts, files, globs) into `output`; returns the manifest.

    >>> run_stage("dedup", ["runs/docs"], "runs/deduped", normalize=True)
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise ConfigError(f"{name}: at least one --input is required")
    resolved = [resolve_input(str(i), where=f"{name} --input") for i in inputs]
    step = build_step(name, name, resolved, Path(output), params, where=name)
    return execute(step, workers=workers, force=force)
