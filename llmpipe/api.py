"""run_stage(): the one entry point that the CLI stage commands, pipeline steps and library users share."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from llmpipe import step as step_mod
from llmpipe.config import params_from_mapping
from llmpipe.errors import ConfigError, InputError
from llmpipe.executors.local import run_phases
from llmpipe.fingerprint import dir_is_inside
from llmpipe.inputs import BUILTIN_PREFIX, Input, resolve_input
from llmpipe.lock import artifact_lock, hold
from llmpipe.log import is_rank0, log
from llmpipe.registry import get_stage


def build_step(
    name: str, stage_ref: str, inputs: Sequence[Input], output: Path, params: Mapping[str, Any], where: str,
    origins: Mapping[str, str] | None = None, flags: bool = False, output_where: str | None = None,
    step_params: Mapping[str, str] | None = None,
) -> step_mod.Step:
    """Validate params, input kinds and the output path against the inputs; nothing is written here.

    step_params: path params whose value is an earlier step's output (which may not exist yet),
    with that step's fingerprint.
    """
    stage = get_stage(stage_ref, where=f"{where} stage")
    typed = params_from_mapping(stage.params, params, where=where, stage=stage.name, origins=origins, flags=flags)
    out = Path(output).resolve()
    output_where = output_where or f"{where} {'--output' if flags else 'output'}"
    for inp in inputs:
        _check_input_kind(stage, inp, f"{where} {'--input' if flags else 'inputs'}")
        if inp.kind == "embedded":
            continue
        roots = [Path(inp.path).resolve()] if Path(inp.path).is_dir() else [Path(f) for f in inp.files]
        for root in roots:
            if dir_is_inside(root, out) or dir_is_inside(out, root):
                raise InputError(f"{output_where}: {out} overlaps its own input {root}; choose an output outside the inputs")
    step_mod.check_output_is_ours(out, output_where)
    param_fps = dict(step_params or {})  # path params naming earlier pipeline steps: their fingerprints
    for key in stage.path_params:
        value = getattr(typed, key)
        if value and key not in param_fps and not value.startswith(BUILTIN_PREFIX):
            param_fps[key] = resolve_input(value, where=f"{where} {'--' + key.replace('_', '-') if flags else key}").fingerprint
    try:  # a plan that cannot be made (labels that do not match the inputs, ...) is a user error
        stage.plan(typed, list(inputs))
    except ValueError as e:
        message = str(e)
        key, sep, rest = message.partition(": ")
        if flags and sep and key in {f.name for f in stage.param_fields()}:  # as the user spelled it: --batch-tokens
            message = f"--{key.replace('_', '-')}: {rest}"
        raise ConfigError(f"{where} {message}") from None
    # data files a param names inside a richer value (evaluate's "hellaswag=PATH" tasks): their content joins the fingerprint
    for key, path in stage.extra.get("param_files", lambda _: {})(typed).items():
        param_fps[key] = resolve_input(path, where=f"{where} {key}").fingerprint
    return step_mod.Step(name, stage_ref, stage, typed, list(inputs), out, param_fps)


def _check_input_kind(stage, inp: Input, where: str) -> None:
    """A stage that reads documents refuses raw files other than Parquet, with the stage to run first."""
    accepts = stage.input_kinds
    if "any" in accepts or (inp.kind in ("files", "embedded") and "raw" in accepts):
        return
    if inp.kind == "artifact" and inp.output_kind in accepts:
        return
    if inp.kind == "files" and "documents" in accepts and all(f.endswith(".parquet") for f in inp.files):
        return
    what = f"a {inp.output_kind} artifact" if inp.kind == "artifact" else "raw input"
    raise InputError(f"{where}: {inp.path} is {what}, but stage \"{stage.name}\" reads {' or '.join(accepts)}; run ingest first")


def array_shard() -> tuple[int, int] | None:
    """(index, count) inside a Slurm array task, so hand-written sbatch arrays split the work."""
    if "SLURM_ARRAY_TASK_ID" not in os.environ or os.environ.get("LLMPIPE_EXECUTOR") == "slurm":
        return None
    index = int(os.environ["SLURM_ARRAY_TASK_ID"]) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
    return index, int(os.environ.get("SLURM_ARRAY_TASK_COUNT", "1"))


def execute(step: step_mod.Step, workers: int = 1, force: bool = False) -> dict:
    """Run a built step locally unless it is fresh; returns its manifest.

    The process that drives the step holds its artifact's lock (a second writer is refused in one
    line); the elements of a hand-written Slurm array and the ranks of a torchrun share the work
    on purpose, so they take none.
    """
    peers = array_shard() is not None or not is_rank0()
    with contextlib.nullcontext() if peers else hold(artifact_lock(step.out), str(step.out)):
        return _execute(step, workers, force)


def _execute(step: step_mod.Step, workers: int, force: bool) -> dict:
    state, _ = step_mod.state(step)
    if state == "fresh" and not force:
        log(f"[bold]{step.name}[/]: fresh, skipped")
        return step_mod.read_json(step.out / "_manifest.json")
    if force and step.out.exists():
        step_mod.check_output_is_ours(step.out, step.name)
        from llmpipe.artifacts.layout import remove_artifact

        remove_artifact(step.out)
    try:  # planned again now that earlier steps have run (a pipeline plans before they exist), before a write
        plan = step.plan()
    except ValueError as e:
        raise ConfigError(f"{step.name} {e}") from None
    run = step_mod.prepare(step, plan)
    shard = array_shard()
    if shard is not None:
        return _execute_shard(step, run, *shard)
    t0 = time.time()
    run_phases(step.out, run, workers, step.name)
    manifest = step_mod.finalize(step.out)
    log(f"[bold]{step.name}[/]: done in {time.time() - t0:.1f}s -> {step.out}")
    return manifest


def _execute_shard(step: step_mod.Step, run: dict, index: int, count: int) -> dict | None:
    """One element of a hand-written Slurm array: claim tasks (its own share first, then any left over),
    wait at each phase boundary for tasks other elements hold, and let the first to get there finalize.

    Claiming instead of a fixed share means elements that start late (an array larger than the
    free CPUs) find the work done instead of leaving the running ones waiting forever.
    """
    out = step.out
    claims = out / "_tasks" / f".claims-{os.environ.get('SLURM_ARRAY_JOB_ID', 'local')}"
    claims.mkdir(parents=True, exist_ok=True)
    for k, phase in enumerate(run["phases"]):
        todo = step_mod.pending_tasks(out, run, k)
        for t in [t for t in todo if t % count == index] + [t for t in todo if t % count != index]:
            if _claim(claims / f"{phase['name']}-{t:05d}"):
                step_mod.run_task(out, k, t)
        while step_mod.pending_tasks(out, run, k):
            time.sleep(0.5)
    if (out / "_manifest.json").exists() or not _claim(claims / "finalize"):
        log(f"{step.name} [shard {index}/{count}]: done, another array task writes the manifest")
        return None
    return step_mod.finalize(out)


def _claim(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def run_stage(
    name: str,
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    output: str | os.PathLike,
    *,
    workers: int = 1,
    force: bool = False,
    _flags: bool = False,
    **params: Any,
) -> dict | None:
    """Run stage `name` on `inputs` (artifacts, files, globs) into `output`; returns the manifest.

    >>> run_stage("dedup", ["runs/docs"], "runs/deduped", normalize=True)

    Returns None only inside a hand-written Slurm array element whose peer writes the manifest.
    `_flags` makes messages name CLI options (--min-chars) rather than params, for the CLI.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise ConfigError(f"{name}: at least one --input is required")
    resolved = [resolve_input(str(i), where=f"{name} --input") for i in inputs]
    step = build_step(name, name, resolved, Path(output), params, where=name, flags=_flags)
    return execute(step, workers=workers, force=force)
