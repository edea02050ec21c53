"""Slurm executor: one sbatch job array per phase of each step, chained with afterok, then followed.

Each array element runs `llmpipe task <artifact> --phase P` and picks its task from
SLURM_ARRAY_TASK_ID; only tasks without a completion record are submitted, so re-submitting after
a failure or preemption does only the missing work. Training steps run as one job of
`srun torchrun` across the requested nodes. Scripts are written to `<artifact>/_logs/` to read
and re-submit by hand; configuration reaches the jobs as `_run.json` (never pickled).
A Ctrl-C while following cancels every job this run submitted, as the local executor stops its workers.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from llmpipe import step as step_mod
from llmpipe.artifacts.layout import LOGS, MANIFEST, read_json, task_record_path
from llmpipe.errors import StepFailed, UserError
from llmpipe.executors.torchrun import nproc_of, slurm_command
from llmpipe.log import log

MAX_ARRAY_SIZE = 1001  # Slurm's default; larger phases go as several arrays, each with a task offset


class SlurmFailed(StepFailed):
    """sbatch refused a script, or a step's jobs ended without its manifest."""


def slurm_available() -> bool:
    return shutil.which("sbatch") is not None and shutil.which("squeue") is not None


def compress_ranges(ids: list[int]) -> str:
    """[0,1,2,5,7,8] -> "0-2,5,7-8", the form sbatch --array takes."""
    parts, start = [], None
    for i, cur in enumerate(ids):
        if start is None:
            start = cur
        if i + 1 == len(ids) or ids[i + 1] != cur + 1:
            parts.append(str(start) if start == cur else f"{start}-{cur}")
            start = None
    return ",".join(parts)


SETTINGS_IN_HEADER = ("partition", "time", "mem", "account", "qos")


def check_script_values(settings: dict, outputs: list[Path]) -> None:
    """One line unless every value an #SBATCH line carries is free of line breaks and double quotes: such a value
    cannot be carried there (a line break would start a line bash runs; sbatch's own quoting has no escape for
    a double quote). Called
    before a run takes its lock."""
    from llmpipe.errors import ConfigError

    values = [(f"[pipeline.slurm] {k}", settings.get(k)) for k in SETTINGS_IN_HEADER] + [("the output directory", str(o)) for o in outputs]
    for what, value in values:
        if isinstance(value, str) and ("\n" in value or "\r" in value or '"' in value):
            holds = "a double quote" if "\n" not in value and "\r" not in value else "a line break"
            raise ConfigError(f"--executor slurm: {what} {value!r} holds {holds}, which an #SBATCH line cannot carry; "
                              "choose a name without one")


def _header(settings: dict, name: str, log_pattern: str, dependency: str | None) -> list[str]:
    check_script_values(settings, [Path(log_pattern)])
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f'#SBATCH --output="{log_pattern}"']  # sbatch's quotes: spaces, ' and shell stay literal
    for key in SETTINGS_IN_HEADER:
        if settings.get(key):
            lines.append(f"#SBATCH --{key}={settings[key]}")
    lines += [f"#SBATCH {x}" for x in settings.get("extra_sbatch", [])]
    if dependency:
        lines.append(f"#SBATCH --dependency=afterok:{dependency}")
        lines.append("#SBATCH --kill-on-invalid-dep=yes")
    return lines


def _body(settings: dict, command: str) -> list[str]:
    lines = ["set -euo pipefail", "export LLMPIPE_EXECUTOR=slurm", f"cd {shlex.quote(os.getcwd())}"]
    if settings.get("setup"):
        lines.append(settings["setup"])
    return lines + [command, ""]


def phase_script(step: step_mod.Step, run: dict, phase: int, todo: list[int], settings: dict, dependency: str | None, offset: int = 0) -> str:
    out, python = step.out, settings.get("python", sys.executable)
    name = f"llmpipe-{step.name}-{run['phases'][phase]['name']}"
    if run["launcher"] == "torchrun":
        lines = _header(settings, name, str(out / LOGS / f"{run['phases'][phase]['name']}-%j.out"), dependency)
        lines += [f"#SBATCH --nodes={settings.get('nodes', 1)}", "#SBATCH --ntasks-per-node=1",
                  f"#SBATCH --cpus-per-task={settings.get('cpus_per_task', nproc_of(run))}"]
        if settings.get("gpus_per_node"):
            lines.append(f"#SBATCH --gpus-per-node={settings['gpus_per_node']}")
        return "\n".join(lines + _body(settings, slurm_command(out, phase, todo[0], nproc_of(run), python, int(settings.get("nodes", 1)))))
    log_name = f"{run['phases'][phase]['name']}-" + (f"{offset}+%a.out" if offset else "%a.out")
    lines = _header(settings, name, str(out / LOGS / log_name), dependency)
    limit = settings.get("array_parallelism")
    lines += [f"#SBATCH --array={compress_ranges([t - offset for t in todo])}" + (f"%{limit}" if limit else ""),
              f"#SBATCH --cpus-per-task={settings.get('cpus_per_task', 1)}", "#SBATCH --ntasks=1"]
    command = f"exec {shlex.quote(python)} -m llmpipe task {shlex.quote(str(out))} --phase {phase}" + (f" --task-offset {offset}" if offset else "")
    return "\n".join(lines + _body(settings, command))


def finalize_script(step: step_mod.Step, settings: dict, dependency: str | None) -> str:
    python = settings.get("python", sys.executable)
    lines = _header(settings, f"llmpipe-{step.name}-finalize", str(step.out / LOGS / "finalize-%j.out"), dependency)
    lines += ["#SBATCH --ntasks=1", "#SBATCH --cpus-per-task=1"]
    return "\n".join(lines + _body(settings, f"exec {shlex.quote(python)} -m llmpipe task {shlex.quote(str(step.out))} --finalize"))


JOBS = "jobs.txt"  # in a step's _logs: the id of every job submitted for it, one per line


def sbatch(script_path: Path) -> str:
    res = subprocess.run(["sbatch", "--parsable", str(script_path)], capture_output=True, text=True)
    if res.returncode != 0:
        raise SlurmFailed(f"sbatch {script_path} failed: {res.stderr.strip()}")
    job = res.stdout.strip().split(";")[0]
    with open(script_path.parent / JOBS, "a") as f:
        f.write(job + "\n")
    return job


def check_no_jobs_left(step: step_mod.Step) -> None:
    """Refuse to submit a step whose jobs from an earlier run are still queued or running (that run's driver was
    killed, or another run follows them): submitting its pending tasks again would make two jobs of one task."""
    try:
        earlier = (step.out / LOGS / JOBS).read_text().split()
    except OSError:
        return
    if left := sorted(_queue(earlier)):
        raise UserError(f"step {step.name}: Slurm jobs {', '.join(left)} of an earlier run are still in the queue; "
                        f"wait for them to finish (squeue -j {','.join(left)}) or cancel them (scancel {' '.join(left)}), then run again")


def submit_step(step: step_mod.Step, settings: dict, dependency: str | None, all_jobs: list[str]) -> tuple[list[str], list[Path]]:
    """Submit the pending phases of a step plus its finalize job; returns the job ids in order and the
    record paths of the tasks submitted (a resumed step has records from before). Each id is also
    appended to all_jobs as soon as sbatch gives it, so a Ctrl-C midway can cancel it."""
    check_no_jobs_left(step)
    run = step_mod.prepare(step)
    logs = step.out / LOGS
    logs.mkdir(parents=True, exist_ok=True)
    jobs: list[str] = []
    records: list[Path] = []
    for k, phase in enumerate(run["phases"]):
        todo = step_mod.pending_tasks(step.out, run, k)
        if not todo:
            continue
        records += [task_record_path(step.out, phase["name"], t) for t in todo]
        phase_jobs = []
        size = settings.get("max_array_size", MAX_ARRAY_SIZE)
        for offset in sorted({t // size * size for t in todo}):
            chunk = [t for t in todo if offset <= t < offset + size]
            script = logs / (f"{k}-{phase['name']}.sbatch" if not offset else f"{k}-{phase['name']}-{offset}.sbatch")
            script.write_text(phase_script(step, run, k, chunk, settings, dependency, offset))
            phase_jobs.append(sbatch(script))
            all_jobs.append(phase_jobs[-1])
        jobs += phase_jobs
        dependency = ":".join(phase_jobs)
    script = logs / "finalize.sbatch"
    script.write_text(finalize_script(step, settings, dependency))
    jobs.append(sbatch(script))
    all_jobs.append(jobs[-1])
    return jobs, records


def _queue(job_ids: list[str]) -> dict[str, str]:
    """job id -> 'STATE REASON' for our jobs still known to squeue."""
    res = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%F %T %r"], capture_output=True, text=True)
    out = {}
    for line in res.stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2:
            out[parts[0]] = " ".join(parts[1:])
    return out


def cancel(job_ids: list[str]) -> None:
    subprocess.run(["scancel", *job_ids], capture_output=True)


def wait_gone(job_ids: list[str], seconds: float = 60.0, poll_seconds: float = 0.5) -> bool:
    """Wait until none of these jobs is in the queue (a cancelled job stays until its processes are gone)."""
    deadline = time.time() + seconds
    while _queue(job_ids):
        if time.time() > deadline:
            return False
        time.sleep(poll_seconds)
    return True


def follow(steps: list[step_mod.Step], job_ids: list[str], settings: dict, poll_seconds: float = 2.0) -> None:
    """Wait until our jobs leave the queue; cancel the rest when a dependency can never be met."""
    done_steps: set[str] = set()
    while True:
        queue = _queue(job_ids)
        for st in steps:
            if st.name not in done_steps and (st.out / MANIFEST).exists():
                done_steps.add(st.name)
                log(f"{st.name}: done on slurm -> {st.out}")
        if not queue:
            break
        if any("DependencyNeverSatisfied" in v for v in queue.values()):
            cancel(job_ids)
            wait_gone(job_ids)
            break
        time.sleep(poll_seconds)
    failed = [st for st in steps if not (st.out / MANIFEST).exists()]
    if failed:
        raise SlurmFailed(_failure_report(failed[0], settings))


def _failure_report(st: step_mod.Step, settings: dict) -> str:
    run = step_mod.load_run(st.out)
    size = settings.get("max_array_size", MAX_ARRAY_SIZE)
    for k, phase in enumerate(run["phases"]):
        todo = step_mod.pending_tasks(st.out, run, k)
        if todo:
            t, offset = todo[0], todo[0] // size * size
            pattern = "<jobid>" if run["launcher"] == "torchrun" else (f"{offset}+{t - offset}" if offset else str(t))
            log_path = st.out / LOGS / f"{phase['name']}-{pattern}.out"
            return f"step {st.name}: {len(todo)} task(s) of phase {phase['name']} failed; first: task {todo[0]}, log {log_path}"
    return f"step {st.name}: finalize failed; log {st.out / LOGS}/finalize-*.out"


def submit_pipeline(pipe, built: dict, selected: list[str], force: bool = False, wait: bool = True):
    """Submit every selected, non-fresh step in order, chained by afterok; follow them when wait is set.

    No early cutoff here: a dependent is submitted before its upstream has run, so it cannot know
    whether that upstream's output will come out unchanged, and it re-runs whenever an upstream
    job is submitted. Its `_run.json` holds provisional input fingerprints that finalize settles
    from the finished upstream manifests (step.settle), so the next `llmpipe run` finds it fresh.
    """
    from llmpipe.pipeline import step_refs
    from llmpipe.runner import StepReport

    if not slurm_available():
        raise UserError("--executor slurm: sbatch/squeue not found on PATH; run on a Slurm login node or use --executor local")
    settings = dict(pipe.slurm)
    reports, submitted, job_ids = [], [], []
    last_job: dict[str, str] = {}
    records: dict[str, list[Path]] = {}  # step -> record paths of the tasks this run submitted
    try:
        for name in selected:
            st = built[name]
            state, why = step_mod.state(st)
            upstream_jobs = [last_job[i] for i in step_refs(pipe, pipe.steps[name]) if i in last_job]
            if state == "fresh" and not force and not upstream_jobs:
                log(f"{name}: fresh, skipped")
                reports.append(StepReport(name, state, why, "skipped", st.out))
                continue
            if force and st.out.exists():
                step_mod.start_over(st.out)
            jobs, records[name] = submit_step(st, settings, ":".join(upstream_jobs) or None, job_ids)
            last_job[name] = jobs[-1]
            submitted.append(st)
            log(f"{name}: submitted jobs {', '.join(jobs)} (scripts in {st.out / LOGS})")
            reports.append(StepReport(name, state, why, "submitted", st.out))
        if wait and job_ids:
            follow(submitted, job_ids, settings)
    except KeyboardInterrupt:
        # Left queued, these jobs would run on, and the re-run the interrupt message suggests would
        # submit again every task still in flight (it has no record yet): two jobs doing one task.
        if job_ids:
            cancel(job_ids)
            log(f"cancelled the {len(job_ids)} Slurm jobs this run submitted: {', '.join(job_ids)}")
            if wait_gone(job_ids, seconds=30):
                set_aside_unfinished(submitted)
        raise
    except SlurmFailed:
        if not job_ids or not _queue(job_ids):  # not while jobs submitted before a refused sbatch still run
            set_aside_unfinished(submitted)
        raise
    for r in reports:
        if r.action == "submitted":
            r.seconds = seconds_on_cluster(r.out, records[r.name])
    return reports


def set_aside_unfinished(steps: list[step_mod.Step]) -> None:
    """As a local run does after a failure: each submitted step that did not complete gets its previous complete
    artifact back in place (submission moved it aside) and keeps its unfinished run at .<name>.partial to resume.
    Only once no job of the run is left: a running task would write into whatever sits at its step's path."""
    for st in steps:
        if not (st.out / MANIFEST).exists():
            step_mod.set_aside(st.out)


def seconds_on_cluster(out: Path, records: list[Path]) -> float | None:
    """From the first of these tasks starting to the step's manifest, on the file system's clock (the
    nodes' clocks may differ). The manifest's wall_seconds counts from submission, so it includes the
    wait behind upstream jobs."""
    manifest = out / MANIFEST
    records = [p for p in records if p.exists()]
    if not manifest.exists() or not records:
        return None
    first_start = min(p.stat().st_mtime - read_json(p)["seconds"] for p in records)
    return max(manifest.stat().st_mtime - first_start, 0.0)
