"""A step: one stage bound to params, inputs and an output directory, and its life on disk.

The executors drive a step only through this module: `prepare` writes `_run.json` (the resolved
plan), `run_task` runs one task of one phase from that file alone (so a worker process, a Slurm
array task or a torchrun rank needs nothing but the directory), and `finalize` writes the
manifest once every task has a record.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import llmpipe
from llmpipe.artifacts.layout import (LOGS, MANIFEST, RUN, TASKS, TMP_MARK, WORK, read_json, remove_artifact, remove_temporaries,
                                      task_record_path, write_json_atomic)
from llmpipe.artifacts.manifest import content_fingerprint, write_manifest
from llmpipe.artifacts.verify import check_step_inputs, damage, seal
from llmpipe.config import canonical_json, params_from_mapping, params_to_dict
from llmpipe.errors import InputError
from llmpipe.fingerprint import PLANNED, is_planned, step_fingerprint
from llmpipe.inputs import Input
from llmpipe.peak_memory import peak_rss_bytes, reset_peak
from llmpipe.registry import Plan, Stage, get_stage
from llmpipe.stats import merge


@dataclass
class Step:
    name: str
    stage_ref: str  # the name the user wrote: a built-in stage or a module path
    stage: Stage
    params: Any
    inputs: list[Input]
    out: Path
    param_fingerprints: dict[str, str] = field(default_factory=dict)  # path params -> fingerprint of what they name

    @property
    def params_dict(self) -> dict:
        return params_to_dict(self.params)

    @property
    def fingerprint(self) -> str:
        return step_fingerprint(self.stage.name, self.stage.version, self.params_dict, [i.fingerprint for i in self.inputs], self.param_fingerprints)

    @property
    def waits_on_upstream(self) -> bool:
        """Some input is an earlier step's artifact that is not made yet (a provisional fingerprint)."""
        return any(is_planned(fp) for fp in [i.fingerprint for i in self.inputs] + list(self.param_fingerprints.values()))

    def plan(self) -> Plan:
        return self.stage.plan(self.params, self.inputs)

    def run_record(self, plan: Plan) -> dict:
        return {
            "step": self.name,
            "stage": self.stage_ref,
            "version": self.stage.version,
            "params": self.params_dict,
            "fingerprint": self.fingerprint,
            "inputs": [i.to_json() for i in self.inputs],
            "param_fingerprints": self.param_fingerprints,
            "phases": [{"name": name, "tasks": tasks} for name, tasks in plan.phases],
            "files": plan.files,
            "launcher": self.stage.launcher,
            "output_kind": self.stage.output_kind,
        }


@dataclass
class TaskContext:
    """What a task function sees: params, inputs, where to write, which task it is."""

    out: Path
    params: Any
    inputs: list[Input]
    phase: str
    task_index: int
    n_tasks: int
    run: dict

    def work_dir(self, phase: str | None = None) -> Path:
        d = self.out / WORK / (phase or self.phase)
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def input_files(self) -> list[str]:
        return [f for i in self.inputs for f in i.files]


# --- state on disk ------------------------------------------------------------------------------


def state(step: Step) -> tuple[str, str]:
    """('fresh'|'stale'|'incomplete'|'missing', why) for the step's output directory."""
    out = step.out
    if (out / MANIFEST).exists():
        try:
            m = read_json(out / MANIFEST)
        except (OSError, ValueError):
            return "stale", f"unreadable {MANIFEST}"
        if not isinstance(m, dict):
            return "stale", f"unreadable {MANIFEST}"
        if m.get("fingerprint") == step.fingerprint:
            changed = damage(out, m)  # a truncated or edited artifact is made again, not passed on
            return ("stale", changed) if changed else ("fresh", "")
        resumes = _set_aside_run(step)
        return ("incomplete", f"{resumes}, kept at {partial_path(out).name} after a failed run") if resumes else ("stale", _why_stale(m, step))
    if (out / RUN).exists():
        run = read_json(out / RUN)
        if _resumable(run, step):
            return "incomplete", _tasks_done(out, run)
        return "stale", "interrupted run with other params or inputs"
    return "missing", ""


def _tasks_done(out: Path, run: dict) -> str:
    done = sum(len(list((out / TASKS / p["name"]).glob("*.json"))) for p in run["phases"] if (out / TASKS / p["name"]).exists())
    return f"{done}/{sum(len(p['tasks']) for p in run['phases'])} tasks done"


def _set_aside_run(step: Step) -> str | None:
    """'N/M tasks done' when a failed run of this very step waits at `.<name>.partial` to resume."""
    partial = partial_path(step.out)
    if not (partial / RUN).exists():
        return None
    run = read_json(partial / RUN)
    return _tasks_done(partial, run) if _resumable(run, step) else None


def _why_stale(manifest: dict, step: Step) -> str:
    if manifest.get("version") != step.stage.version:
        return f"stage version {manifest.get('version')} -> {step.stage.version}"
    # path params are compared by what they name (below), not by where it is
    old, new = manifest.get("params", {}), step.params_dict
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in step.param_fingerprints)
    if changed:
        return "params changed: " + ", ".join(f"{k}={old.get(k)!r}->{new.get(k)!r}" for k in changed)
    old_inputs = [i.get("fingerprint") for i in manifest.get("inputs", [])]
    if old_inputs != [i.fingerprint for i in step.inputs]:
        return "inputs changed"
    changed = sorted(k for k, v in step.param_fingerprints.items() if manifest.get("param_fingerprints", {}).get(k) != v)
    if changed:
        return "file named by " + ", ".join(changed) + " changed"
    return "fingerprint changed"


def fresh_if_upstream_unchanged(step: Step) -> bool:
    """Would the step be fresh if each input still to be made comes out as it did for the last run?

    That is the case `llmpipe status` reports as "may re-run": only running upstream can tell.
    """
    if not (step.out / MANIFEST).exists():
        return False
    m = read_json(step.out / MANIFEST)
    old_inputs = [i.get("fingerprint") for i in m.get("inputs", [])]
    if len(old_inputs) != len(step.inputs):
        return False
    inputs = [old if is_planned(i.fingerprint) else i.fingerprint for i, old in zip(step.inputs, old_inputs)]
    old_params = m.get("param_fingerprints", {})
    params = {k: old_params.get(k, v) if is_planned(v) else v for k, v in step.param_fingerprints.items()}
    return step_fingerprint(step.stage.name, step.stage.version, step.params_dict, inputs, params) == m.get("fingerprint")


def settle(run: dict, stage: Stage) -> dict:
    """The run record with provisional input fingerprints replaced by what their steps made, where made.

    A Slurm job is submitted before its upstream has run, so its `_run.json` holds `planned:<fp>`
    fingerprints; once that upstream's manifest exists (made under that plan), its content
    fingerprint takes their place and the step's fingerprint is recomputed from it, so the
    manifest matches what the next `llmpipe run` computes from the finished artifacts.
    """

    def real(fp: str, path: str) -> str:
        if not is_planned(fp) or not (Path(path) / MANIFEST).exists():
            return fp
        m = read_json(Path(path) / MANIFEST)
        made_under = {m.get("fingerprint"), m.get("planned_fingerprint")}
        return content_fingerprint(m) if fp[len(PLANNED):] in made_under else fp

    inputs = [{**i, "fingerprint": real(i["fingerprint"], i["path"])} for i in run["inputs"]]
    params = {k: real(v, run["params"].get(k, "")) for k, v in run.get("param_fingerprints", {}).items()}
    fp = step_fingerprint(stage.name, run["version"], run["params"], [i["fingerprint"] for i in inputs], params)
    return {**run, "inputs": inputs, "param_fingerprints": params, "fingerprint": fp}


def _resumable(run: dict, step: Step) -> bool:
    """An interrupted run of this very step (same fingerprint once its inputs are settled) resumes."""
    return run.get("fingerprint") == step.fingerprint or settle(run, step.stage)["fingerprint"] == step.fingerprint


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Serialise preparation of one output dir between processes (Slurm array tasks start together)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def check_output_is_ours(out: Path, where: str) -> None:
    """Never delete a user's directory: only llmpipe artifacts are replaced."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{where}: output {out} exists and is a file")
    blocker = next((p for p in out.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise InputError(f"{where}: output {out} cannot be made: {blocker} is a file")
    if out.is_dir() and any(out.iterdir()) and not ((out / RUN).exists() or (out / MANIFEST).exists() or _killed_in_prepare(out)):
        raise InputError(f"{where}: output {out} exists and is not an llmpipe artifact; choose another path or remove it")


def _killed_in_prepare(out: Path) -> bool:
    """Only the temporary of `_run.json` is there: prepare made the directory and was killed before the rename."""
    return all(p.name.startswith(RUN + TMP_MARK) for p in out.iterdir())


def prepare(step: Step, plan: Plan | None = None) -> dict:
    """Write `_run.json` for this step, clearing a stale artifact; an interrupted same-fingerprint run is kept to resume."""
    out = step.out
    check_step_inputs(step)  # every artifact it reads is as its step wrote it, before anything is written
    with _locked(out):
        _take_back(out, step)
        if (out / RUN).exists() and not (out / MANIFEST).exists():
            run = read_json(out / RUN)
            if _resumable(run, step):
                current = json.loads(canonical_json({**step.run_record(plan or step.plan()), "started": run.get("started")}))
                if current != run:
                    # same work, other paths (a copied workdir, a settled input): the tasks left read from here
                    write_json_atomic(out / RUN, current)
                return current
        _clear(out)
        out.mkdir(parents=True)
        run = step.run_record(plan or step.plan())
        run["started"] = time.time()
        write_json_atomic(out / RUN, run)
        return run


# --- the previous artifact while its successor is built ------------------------------------------
# A stale artifact is not deleted when its step runs again: it moves aside to `.<name>.previous` and is
# deleted only once the new one is complete. If the run fails (a full disk, a failed task, Ctrl-C), the
# previous artifact moves back into place and the unfinished one waits at `.<name>.partial`, where the
# next run of the same step resumes it. Readers of the workdir thus never find a hole where a complete
# artifact was. (Hidden names: a step name cannot start with a dot, so no step's directory is one.)


def previous_path(out: Path) -> Path:
    return out.parent / f".{out.name}.previous"


def partial_path(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def _replace(src: Path, dst: Path) -> None:
    """Rename src to dst, dropping what dst held (renames within one directory: no space needed)."""
    if dst.exists():
        remove_artifact(dst)
    src.rename(dst)


def _take_back(out: Path, step: Step) -> None:
    """An unfinished run set aside after a failure comes back to resume, if it is this step's; else it goes."""
    partial = partial_path(out)
    if not (partial / RUN).exists():
        return
    if not _resumable(read_json(partial / RUN), step):
        remove_artifact(partial)
        return
    _clear(out)
    partial.rename(out)


def set_aside(out: Path) -> bool:
    """After a failed run: the previous complete artifact back in place, the unfinished one kept to resume.
    True when there was a previous artifact to restore."""
    previous = previous_path(out)
    with _locked(out):
        if not (previous / MANIFEST).exists() or (out / MANIFEST).exists():
            return False
        if out.exists():
            _replace(out, partial_path(out))
        previous.rename(out)
        return True


def start_over(out: Path) -> None:
    """Before a forced run: no resume, and the complete artifact (if any) kept aside until the new one is done."""
    with _locked(out):
        if partial_path(out).exists():
            remove_artifact(partial_path(out))
        _clear(out)


def _clear(out: Path) -> None:
    """Make room for a new run at out: a complete artifact moves aside (it stays until its successor is complete),
    an incomplete one goes."""
    if (out / MANIFEST).exists():
        _replace(out, previous_path(out))
    elif out.exists():
        remove_artifact(out)


def _drop_previous(out: Path) -> None:
    for path in (previous_path(out), partial_path(out)):
        if path.exists():
            remove_artifact(path)


def pending_tasks(out: Path, run: dict, phase_index: int) -> list[int]:
    phase = run["phases"][phase_index]
    return [i for i in range(len(phase["tasks"])) if not task_record_path(out, phase["name"], i).exists()]


def load_run(out: Path) -> dict:
    return read_json(Path(out) / RUN)


def _context(out: Path, run: dict, phase_index: int, task_index: int) -> tuple[Stage, TaskContext]:
    stage = get_stage(run["stage"], where=f"{out}/{RUN}")
    params = params_from_mapping(stage.params, run["params"], where=f"{out}/{RUN}", stage=stage.name)
    phase = run["phases"][phase_index]
    inputs = [Input.from_json(i) for i in run["inputs"]]
    ctx = TaskContext(Path(out), params, inputs, phase["name"], task_index, len(phase["tasks"]), run)
    return stage, ctx


def run_task(out: Path, phase_index: int, task_index: int) -> dict:
    """Run one task from `_run.json` and record it; a task with a record is not run again."""
    out = Path(out)
    run = load_run(out)
    phase = run["phases"][phase_index]
    record_path = task_record_path(out, phase["name"], task_index)
    if record_path.exists():
        return read_json(record_path)
    stage, ctx = _context(out, run, phase_index, task_index)
    reset_peak()
    t0 = time.time()
    stats = stage.run_task[phase["name"]](ctx, phase["tasks"][task_index]) or {}
    record = {"stats": stats, "seconds": round(time.time() - t0, 3), "peak_rss_bytes": peak_rss_bytes(),
              "host": os.uname().nodename, "pid": os.getpid()}
    # Under torchrun every rank runs the task; rank 0 alone says it is done.
    if int(os.environ.get("RANK", "0")) == 0:
        write_json_atomic(record_path, record)
    return record


def finalize(out: Path) -> dict:
    """Merge task records into the manifest, written last; the artifact is complete from then on."""
    out = Path(out)
    run = load_run(out)
    missing = [(p["name"], i) for k, p in enumerate(run["phases"]) for i in pending_tasks(out, run, k)]
    if missing:
        raise RuntimeError(f"{out}: cannot finalize, {len(missing)} tasks have no record (first: {missing[0]})")
    records = {p["name"]: [read_json(task_record_path(out, p["name"], i)) for i in range(len(p["tasks"]))] for p in run["phases"]}
    last = run["phases"][-1]["name"]
    stats = merge([r["stats"] for r in records[last]])
    stage, ctx = _context(out, run, len(run["phases"]) - 1, 0)
    planned_fp, run = run["fingerprint"], settle(run, stage)
    extra = stage.finalize(ctx, stats, records) if stage.finalize else {"stats": stats}
    remove_temporaries(out)
    if not stage.extra.get("keep_work"):
        shutil.rmtree(out / WORK, ignore_errors=True)
    manifest = {
        "stage": stage.name,
        "step": run["step"],
        "version": run["version"],
        "params": run["params"],
        "fingerprint": run["fingerprint"],
        "inputs": [{"path": i["path"], "kind": i["kind"], "fingerprint": i["fingerprint"]} for i in run["inputs"]],
        "param_fingerprints": run.get("param_fingerprints", {}),
        "output_kind": run["output_kind"],
        "files": run["files"],
        "llmpipe_version": llmpipe.__version__,
        "timings": {
            "wall_seconds": round(time.time() - run.get("started", time.time()), 3),
            "task_seconds": {name: round(sum(r["seconds"] for r in recs), 3) for name, recs in records.items()},
            # the largest task's peak resident memory (records written before it was measured have none)
            "peak_rss_bytes": max((r["peak_rss_bytes"] for recs in records.values() for r in recs if "peak_rss_bytes" in r), default=None),
        },
        **extra,
    }
    missing_files = [f for f in run["files"] if not (out / f).exists()]
    if missing_files:
        raise RuntimeError(f"{out}: planned files were not written: {missing_files[:3]}")
    # content_hash: what readers' fingerprints take from this artifact; checksums: each file's size and hash, checked by readers
    manifest["content_hash"], manifest["checksums"] = seal(out, run["files"])
    if planned_fp != run["fingerprint"]:
        manifest["planned_fingerprint"] = planned_fp  # lets dependents planned under it settle theirs
    (out / LOGS).mkdir(exist_ok=True)
    write_manifest(out, manifest)
    _drop_previous(out)
    return manifest
