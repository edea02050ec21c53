"""Pipeline files: `[pipeline]` settings plus `[steps.NAME]` tables, checked whole before anything runs.

    [pipeline]
    name = "pretrain"
    workdir = "runs/pretrain"      # each step writes <workdir>/<step name>
    workers = 2

    [steps.ingest]
    inputs = ["embedded:python-docs"]

    [steps.dedup]                  # stage = "dedup" by default (the step's name)
    inputs = ["ingest"]            # an earlier step, or paths / globs
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmpipe.api import build_step
from llmpipe.config import coerce, load_toml, parse_cli_value, type_name, _MISMATCH
from llmpipe.errors import ConfigError, InputError, did_you_mean
from llmpipe.fingerprint import planned_fingerprint
from llmpipe.inputs import Input, artifact_input, planned_input, resolve_input
from llmpipe.step import Step

# [pipeline] keys with their types; [pipeline.slurm] is passed to sbatch.
PIPELINE_KEYS: dict[str, Any] = {"name": str, "workdir": str, "executor": str, "workers": int, "slurm": dict}
SLURM_KEYS: dict[str, Any] = {
    "partition": str, "time": str, "cpus_per_task": int, "mem": str, "array_parallelism": int,
    "account": str, "qos": str, "max_array_size": int, "gpus_per_node": int, "nodes": int, "extra_sbatch": list, "python": str, "setup": str,
}
EXECUTORS = ("local", "slurm")


@dataclass
class StepSpec:
    name: str
    stage_ref: str
    inputs: list[str]
    params: dict[str, Any]
    where: str
    stage_given: bool = True
    origins: dict[str, str] = field(default_factory=dict)  # key -> "--set ..." for overridden params


@dataclass
class Pipeline:
    path: Path
    name: str
    workdir: Path
    executor: str = "local"
    workers: int = 1
    slurm: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, StepSpec] = field(default_factory=dict)  # in run order


def _check_table(table: dict, known: dict[str, Any], where: str) -> None:
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{where} {key}: unknown key{did_you_mean(key, known)}")
        tp = known[key]
        if tp in (dict, list):
            ok = isinstance(value, tp)
        else:
            ok = coerce(value, tp) is not _MISMATCH
        if not ok:
            raise ConfigError(f"{where} {key}: expected {type_name(tp) if tp not in (dict, list) else ('a table' if tp is dict else 'a list')}, got {value!r}")


def load_pipeline(path: str | Path, overrides: list[str] = ()) -> Pipeline:
    path = Path(path)
    data = load_toml(path)
    for key in data:
        if key not in ("pipeline", "steps"):
            raise ConfigError(f"{path} [{key}]: unknown table; a pipeline file has [pipeline] and [steps.NAME]{did_you_mean(key, ['pipeline', 'steps'])}")
    settings = data.get("pipeline", {})
    _check_table(settings, PIPELINE_KEYS, f"{path} [pipeline]")
    _check_table(settings.get("slurm", {}), SLURM_KEYS, f"{path} [pipeline.slurm]")
    executor = settings.get("executor", "local")
    if executor not in EXECUTORS:
        raise ConfigError(f'{path} [pipeline] executor: expected one of "local", "slurm", got "{executor}"')
    name = settings.get("name", path.stem)
    pipe = Pipeline(path, name, _workdir(path, settings, name), executor, settings.get("workers", 1), settings.get("slurm", {}))
    steps = data.get("steps")
    if not steps:
        raise ConfigError(f"{path}: no steps; add a [steps.NAME] table per step")
    for step_name, table in steps.items():
        _check_step_name(path, step_name)
        where = f"{path} [steps.{step_name}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table of settings")
        table = dict(table)
        stage_ref = table.pop("stage", step_name)
        inputs = table.pop("inputs", [])
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(stage_ref, str) or not all(isinstance(i, str) for i in inputs):
            raise ConfigError(f"{where}: stage must be a string and inputs a list of strings")
        if not inputs:
            raise ConfigError(f"{where} inputs: a step needs inputs (earlier steps or paths)")
        pipe.steps[step_name] = StepSpec(step_name, stage_ref, list(inputs), table, where, stage_given="stage" in steps[step_name])
    _apply_overrides(pipe, overrides)
    pipe.steps = {n: pipe.steps[n] for n in _topological_order(pipe)}
    return pipe


STEP_NAME = re.compile(r"\w[\w-]*")  # letters (any script), digits, _ and -; never a path


def _check_step_name(path: Path, name: str) -> None:
    """A step writes <workdir>/<name>: "../x" would write outside the workdir and "./b" over step b."""
    if STEP_NAME.fullmatch(name):
        return
    suggestion = re.sub(r"[^\w-]+", "_", name).strip("_-")
    example = f" (for example [steps.{suggestion}])" if STEP_NAME.fullmatch(suggestion) else ""
    raise ConfigError(f"{path} [steps.{json.dumps(name, ensure_ascii=False)}]: a step name is a name, not a path; "
                      f"use letters, digits, - and _{example}")


def _workdir(path: Path, settings: dict, name: str) -> Path:
    """The workdir as written (any directory the user names), or runs/<name>, where the name must stay one directory."""
    if "workdir" in settings:
        if "\0" in settings["workdir"]:
            raise ConfigError(f"{path} [pipeline] workdir: {json.dumps(settings['workdir'])} holds a NUL character, which no path can hold")
        return Path(settings["workdir"])
    if "/" in name or "\0" in name or name in ("", ".", ".."):
        where = f"{path} [pipeline] name" if "name" in settings else f"{path}: the file's name"
        raise ConfigError(f'{where}: {json.dumps(name)} would make the default workdir runs/{name} leave runs/; '
                          f'use a name without "/", or set [pipeline] workdir')
    return Path("runs") / name


def unknown_step(pipe: Pipeline, name: str) -> str:
    """'no step "x" in FILE; its steps are: ...' with the step that runs stage x, or the closest name."""
    message = f'no step "{name}" in {pipe.path}; its steps are: {", ".join(pipe.steps)}'
    runs_it = [s for s in pipe.steps.values() if s.stage_ref.replace("-", "_") == name.replace("-", "_")]
    if runs_it:
        return message + " (" + ", ".join(f'step "{s.name}" runs stage "{s.stage_ref}"' for s in runs_it) + ")"
    return message + did_you_mean(name, pipe.steps)


def _apply_overrides(pipe: Pipeline, overrides: list[str]) -> None:
    for item in overrides:
        target, eq, value = item.partition("=")
        step_name, dot, key = target.partition(".")
        if not eq or not dot or not key:
            raise ConfigError(f'--set {item}: expected STEP.KEY=VALUE, for example dedup.normalize=false')
        if step_name not in pipe.steps:
            raise ConfigError(f"--set {item}: {unknown_step(pipe, step_name)}")
        spec = pipe.steps[step_name]
        if key == "inputs":
            spec.inputs = [str(v) for v in (parse_cli_value(value) if value.startswith("[") else [value])]
        else:
            spec.params[key] = parse_cli_value(value)
            spec.origins[key] = f"--set {item}"


def step_refs(pipe: Pipeline, spec: StepSpec) -> list[str]:
    """Earlier steps this one reads: as inputs, or through a path param (tokenizer = "train_tokenizer")."""
    return [i for i in spec.inputs if i in pipe.steps] + list(_param_step_refs(pipe, spec).values())


def _param_step_refs(pipe: Pipeline, spec: StepSpec) -> dict[str, str]:
    """path param -> step name, for path params whose value names a step of this pipeline."""
    from llmpipe.registry import get_stage

    try:
        path_params = get_stage(spec.stage_ref, where=f"{spec.where} stage").path_params
    except ConfigError:
        return {}  # an unknown stage is reported with its suggestion when the step is built
    return {k: spec.params[k] for k in path_params if isinstance(spec.params.get(k), str) and spec.params[k] in pipe.steps}


def _topological_order(pipe: Pipeline) -> list[str]:
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = trail[trail.index(name):] + [name]
            raise ConfigError(f"{pipe.steps[cycle[0]].where} inputs: steps form a cycle: {' -> '.join(cycle)}")
        state[name] = "visiting"
        for dep in step_refs(pipe, pipe.steps[name]):
            visit(dep, trail + [name])
        state[name] = "done"
        order.append(name)

    for name in pipe.steps:
        visit(name, [])
    return order


def select_steps(pipe: Pipeline, only: list[str] = (), start: str | None = None, until: str | None = None) -> list[str]:
    names = list(pipe.steps)
    for flag, n in [*(("--only", n) for n in only), ("--from", start), ("--until", until)]:
        if n is not None and n not in pipe.steps:
            raise ConfigError(f"{flag} {n}: {unknown_step(pipe, n)}")
    if only:
        return [n for n in names if n in only]
    lo = names.index(start) if start else 0
    hi = names.index(until) + 1 if until else len(names)
    return names[lo:hi]


def _upstream_input(up: Step) -> Input:
    """An earlier step's artifact: by its content once made and fresh, else provisional until it runs."""
    if (up.out / "_manifest.json").exists() and _manifest_fp(up.out) == up.fingerprint:
        return artifact_input(up.out)
    return planned_input(up.out, up.plan().files, planned_fingerprint(up.fingerprint), up.stage.output_kind)


def _resolve_step_input(pipe: Pipeline, spec: StepSpec, ref: str, built: dict[str, Step]) -> Input:
    if ref in built:
        return _upstream_input(built[ref])
    looks_like_name = not any(c in ref for c in "/.*?[") and not ref.startswith("embedded:")
    if looks_like_name and not Path(ref).exists():
        hint = did_you_mean(ref, pipe.steps)
        raise ConfigError(f'{spec.where} inputs: "{ref}" is neither a step of this pipeline nor an existing path{hint}')
    return resolve_input(ref, where=f"{spec.where} inputs")


def _manifest_fp(out: Path) -> str | None:
    import json

    try:
        return json.loads((out / "_manifest.json").read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


def _check_workdir(pipe: Pipeline) -> None:
    """The workdir, or the first of its parents that exists, must be a directory."""
    for p in [pipe.workdir, *pipe.workdir.parents]:
        if p.exists():
            if not p.is_dir():
                what = "exists and is a file" if p == pipe.workdir else f"cannot be made: {p} is a file"
                raise InputError(f"{pipe.path} [pipeline] workdir: {pipe.workdir} {what}; set workdir to a directory path")
            return


def build_steps(pipe: Pipeline) -> dict[str, Step]:
    """Resolve every step's stage, params and inputs; all user errors surface here, before any write."""
    _check_workdir(pipe)
    built: dict[str, Step] = {}
    for name, spec in pipe.steps.items():
        inputs = [_resolve_step_input(pipe, spec, ref, built) for ref in spec.inputs]
        if not spec.stage_given:
            from llmpipe.registry import builtin_stages

            if spec.stage_ref not in builtin_stages():
                raise ConfigError(f'{spec.where}: no stage = "..." is set and "{spec.stage_ref}" is not a stage{did_you_mean(spec.stage_ref, builtin_stages())}')
        params, step_params = dict(spec.params), {}
        for key, ref in _param_step_refs(pipe, spec).items():
            params[key] = str(built[ref].out)  # the stage reads the path; the fingerprint is what it holds
            step_params[key] = _upstream_input(built[ref]).fingerprint
        built[name] = build_step(
            name, spec.stage_ref, inputs, pipe.workdir / name, params, spec.where, origins=spec.origins,
            output_where=f"{pipe.path} [pipeline] workdir", step_params=step_params,
        )
    return built


def refresh_inputs(pipe: Pipeline, built: dict[str, Step], name: str) -> Step:
    """Rebuild a step's inputs after its upstream steps ran, so it reads their real manifests."""
    spec = pipe.steps[name]
    step = built[name]
    step.inputs = [_resolve_step_input(pipe, spec, ref, built) for ref in spec.inputs]
    for key, ref in _param_step_refs(pipe, spec).items():
        step.param_fingerprints[key] = _upstream_input(built[ref]).fingerprint
    return step


def check_upstream_ready(pipe: Pipeline, built: dict[str, Step], selected: list[str]) -> None:
    """With --only/--from, an unselected upstream step must already be fresh."""
    from llmpipe.step import state

    for name in selected:
        for dep in step_refs(pipe, pipe.steps[name]):
            if dep not in selected and state(built[dep])[0] != "fresh":
                raise InputError(f'{pipe.steps[name].where} inputs: step "{dep}" is not fresh; run it first or include it in the selection')
