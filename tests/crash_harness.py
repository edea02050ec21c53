"""Crash anywhere: run a pipeline, SIGKILL it at a chosen moment, look at what it left, run it again to the end.

What a killed run may leave and what it may not:
- an artifact with `_manifest.json` is complete: its manifest and files verify, a consumer takes it, and it
  already equals the uninterrupted run's artifact (a complete artifact is never rewritten by the re-run);
- any other artifact directory is refused by its consumers in one line, and the re-run makes it (never skips it);
- after the re-run, every artifact equals the uninterrupted run's, file for file.

"Equals" means byte for byte, except for what the code makes run-specific on purpose (see `artifact_view`):
wall times and resource figures (manifest `timings`, task records' seconds/pid/host/peak RSS, `_run.json`'s
`started`, metrics.jsonl's dt/tokens_per_s/flops_per_s/mfu), the hashes that cover those (the manifest's
own `manifest_sha256`; the content hash and checksum of metrics.jsonl), the names and wall times of
TensorBoard event files (their scalars are compared), and `_verified.json` stamps (a cache of hashes).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmpipe.artifacts.layout import MANIFEST, RUN, TASKS, read_json
from llmpipe.artifacts.manifest import read_manifest
from llmpipe.artifacts.verify import STAMP, damage
from llmpipe.errors import InputError
from llmpipe.inputs import resolve_input
from llmpipe.train.loop import CHECKPOINTS, checkpoint_dirs

# metrics.jsonl keys measured with a clock (llmpipe/train/loop.py's record); the rest (loss, lr, grad_norm, evals) must match
CLOCK_KEYS = {"dt", "tokens_per_s", "flops_per_s", "mfu"}
RUN_SPECIFIC_FILES = {"metrics.jsonl"}  # files holding clock figures: compared by their other fields, not their bytes
TENSORBOARD = "tensorboard"
LOG_STATE = re.compile(r"^\S+ (\w+): (fresh|missing|incomplete|stale)\b(.*?)(?:, running \w+|, skipped.*)$")
LOG_RESUME = re.compile(r"resuming from .*?step-(\d+) \(step")
LOG_PROGRESS = re.compile(r"^\S+ (\w+)(?: \\?\[(\w+)\])?: (\d+)/(\d+) ")
LOG_TRAIN = re.compile(r"^\S+ step (\d+)/(\d+) \| loss")
LOG_DONE = re.compile(r"^\S+ (\w+): done in ")


def subprocess_env() -> dict:
    """One thread per process: the machine is shared, and every run sums floats in the same order."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200"}


@dataclass
class Killed:
    moment: float  # seconds after the start when SIGKILL was sent
    anchor: str  # where the moment falls in the reference run: after which line of its log, and how long after
    finished_first: bool  # the run ended on its own before the moment came
    log: str  # what the run wrote on stderr until then


def start(site: Path, pipeline: str, logs: Path) -> subprocess.Popen:
    """`llmpipe run PIPELINE` in its own process group, stdout and stderr to files beside `logs`."""
    with open(logs.with_suffix(".stdout"), "w") as out, open(logs.with_suffix(".stderr"), "w") as err:
        return subprocess.Popen([sys.executable, "-m", "llmpipe", "run", pipeline], cwd=site, stdout=out, stderr=err,
                                env=subprocess_env(), start_new_session=True)


def lines_in(path: Path) -> int:
    with open(path, "rb") as f:
        return f.read().count(b"\n")


def run_watched(site: Path, pipeline: str, logs: Path) -> tuple[float, list[float]]:
    """Run to the end, noting when each line of its log appeared (seconds after the start): the timeline kills are
    placed on. The log is dense (a line per step, per tenth of a step's tasks, per training step) and comes in
    the same order in every run from the same workdir."""
    t0 = time.monotonic()
    proc, seen = start(site, pipeline, logs), []
    err = logs.with_suffix(".stderr")
    while proc.poll() is None:
        n = lines_in(err)
        seen += [time.monotonic() - t0] * (n - len(seen))
        time.sleep(0.002)
    seconds = time.monotonic() - t0
    text = err.read_text()
    assert proc.returncode == 0 and "Traceback" not in text, f"llmpipe run {pipeline} exited {proc.returncode}:\n{text}"
    return seconds, seen


def place(moment: float, line_times: list[float]) -> tuple[int, float]:
    """(n, seconds): a moment of the reference run is `seconds` after its log's n-th line appeared (n = 0: the start)."""
    n = sum(t <= moment for t in line_times)
    return n, moment - (line_times[n - 1] if n else 0.0)


def run_and_kill(site: Path, pipeline: str, moment: float, line_times: list[float], logs: Path) -> Killed:
    """Start `llmpipe run` and SIGKILL its whole process group (the driver, its pool workers and the forkserver,
    as the OOM killer or scancel would) at `moment` of the reference run's timeline.

    The moment is placed on the run's own pace: the kill comes once the log line the moment follows in the
    reference has appeared, as far after it (scaled by how much slower this run got there), so a machine
    busier than during the reference run still sees kills spread over every step."""
    t0 = time.monotonic()
    proc = start(site, pipeline, logs)
    err = logs.with_suffix(".stderr")
    n, offset = place(moment, line_times)
    while n and proc.poll() is None and lines_in(err) < n:
        time.sleep(0.001)
    pace = (time.monotonic() - t0) / line_times[n - 1] if n else 1.0
    deadline = time.monotonic() + offset * pace
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        finished = True
    except subprocess.TimeoutExpired:
        finished = False
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    at = time.monotonic() - t0
    wait_group_gone(proc.pid)
    text = err.read_text()
    if finished and proc.returncode != 0:
        raise AssertionError(f"the run to be killed failed by itself (exit {proc.returncode}):\n{text}")
    anchor = f"line {n} +{offset:.2f}s" if n else "startup"
    return Killed(round(at, 2), anchor, finished, text)


def wait_group_gone(pgid: int, timeout: float = 10) -> None:
    """No process of the killed group may go on writing while the workdir is checked."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    raise AssertionError(f"processes of group {pgid} outlived SIGKILL")


def run_to_end(site: Path, pipeline: str, logs: Path) -> tuple[float, str]:
    """`llmpipe run` with no flags, to completion; (seconds, stderr)."""
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "llmpipe", "run", pipeline], cwd=site, capture_output=True, text=True,
                         env=subprocess_env(), timeout=900)
    seconds = time.monotonic() - t0
    logs.with_suffix(".stderr").write_text(res.stderr)
    assert res.returncode == 0, f"llmpipe run {pipeline} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    return seconds, res.stderr


# --- what an artifact is, without what is run-specific ------------------------------------------


def artifact_view(artifact: Path) -> dict[str, object]:
    """{path below the artifact: what must be equal between runs} for every file of the artifact."""
    artifact = Path(artifact)
    view: dict[str, object] = {}
    for path in sorted(p for p in artifact.rglob("*") if p.is_file()):
        name = path.relative_to(artifact).as_posix()
        if name == STAMP:
            continue  # a cache of hashes that consumers write
        if name.startswith(TENSORBOARD + "/"):
            view.setdefault(TENSORBOARD, tensorboard_scalars(artifact / TENSORBOARD))
        elif name == MANIFEST:
            view[name] = manifest_view(read_json(path))
        elif name == RUN:
            view[name] = {k: v for k, v in read_json(path).items() if k != "started"}
        elif name.startswith(TASKS + "/") and name.endswith(".json"):
            view[name] = read_json(path).get("stats")  # seconds, pid, host and peak RSS are the run's
        elif path.name in RUN_SPECIFIC_FILES:
            view[name] = [{k: v for k, v in json.loads(line).items() if k not in CLOCK_KEYS} for line in path.read_text().splitlines()]
        else:
            view[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return view


def manifest_view(manifest: dict) -> dict:
    m = {k: v for k, v in manifest.items() if k not in ("timings", "manifest_sha256")}
    checksums = m.get("checksums", {})
    if RUN_SPECIFIC_FILES & set(checksums):  # the content hash covers a file with clock figures
        m.pop("content_hash", None)
        m["checksums"] = {k: v for k, v in checksums.items() if k not in RUN_SPECIFIC_FILES}
    return m


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} over all event files, clock tags left out; each point must be there once."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in sorted(acc.Tags()["scalars"])
            if tag.removeprefix("train/") not in CLOCK_KEYS}


def workdir_view(workdir: Path) -> dict[str, dict]:
    return {d.name: artifact_view(d) for d in sorted(Path(workdir).iterdir()) if d.is_dir() and not d.name.startswith(".")}


def differences(got: dict, want: dict) -> list[str]:
    """Readable differences between two artifact views (missing, extra and changed files)."""
    out = [f"extra {k}" for k in sorted(set(got) - set(want))] + [f"missing {k}" for k in sorted(set(want) - set(got))]
    for k in sorted(set(got) & set(want)):
        if got[k] != want[k]:
            if isinstance(got[k], dict) and isinstance(want[k], dict):
                keys = sorted(k2 for k2 in set(got[k]) | set(want[k]) if got[k].get(k2) != want[k].get(k2))
                out.append(f"{k}: differs in {', '.join(map(str, keys))}")
            else:
                out.append(f"{k}: differs")
    return out


# --- the workdir while the killed run is dead ------------------------------------------------------


def one_line_refusal(call) -> str:
    try:
        call()
    except InputError as e:
        message = str(e)
        assert "\n" not in message, message
        return message
    raise AssertionError("an incomplete artifact was accepted")


def check_dead_workdir(workdir: Path, reference: dict[str, dict], before: dict[str, dict]) -> dict[str, str]:
    """Every artifact the killed run left: complete ones verify, are read, and equal the reference's (or, made
    by the earlier run the workdir held, are as that run left them); incomplete ones are refused in one line.
    Returns {step: "complete" | "complete, earlier run's" | what an incomplete one holds}."""
    states = {}
    for d in sorted(p for p in Path(workdir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (d / MANIFEST).is_file():
            manifest = read_manifest(d)  # the manifest is whole and unedited (its self-hash holds)
            assert damage(d, manifest) is None, f"{d.name}: {damage(d, manifest)}"
            resolve_input(str(d), where="crash check")  # a consumer takes it
            current = manifest["fingerprint"] == reference[d.name][MANIFEST]["fingerprint"]
            wrong = differences(artifact_view(d), reference[d.name] if current else before[d.name])
            assert not wrong, f"{d.name} looks complete but differs from the run that made it: {wrong[:5]}"
            states[d.name] = "complete" if current else "complete, earlier run's"
            continue
        one_line_refusal(lambda: read_manifest(d))
        one_line_refusal(lambda: resolve_input(str(d), where="crash check"))
        states[d.name] = incomplete_state(d, reference.get(d.name, {}))
    return states


def incomplete_state(d: Path, reference: dict) -> str:
    """'tasks k/n' (and the newest checkpoint of a training step), after checking each checkpoint left is whole."""
    from llmpipe.artifacts.checkpoint import load_checkpoint

    if not (d / RUN).is_file():
        return "no _run.json"
    run = read_json(d / RUN)
    total = sum(len(p["tasks"]) for p in run["phases"])
    done = sum(len(list((d / TASKS / p["name"]).glob("*.json"))) for p in run["phases"] if (d / TASKS / p["name"]).is_dir())
    state = f"tasks {done}/{total}"
    found = checkpoint_dirs(d)
    for step, path in found:  # the loop resumes from the newest: each one it may pick loads and matches
        _, _, training_state, _ = load_checkpoint(path)
        assert training_state["step"] == step, (path, training_state)
        for name, digest in reference.items():
            if name.startswith(f"{CHECKPOINTS}/{path.name}/"):
                assert hashlib.sha256((d / name).read_bytes()).hexdigest() == digest, f"{d.name}/{name} differs from the uninterrupted run's"
    if found:
        state += f", checkpoint step {found[-1][0]}"
    return state


# --- what the logs say ----------------------------------------------------------------------------


def where_killed(log: str) -> str:
    """The step that was running at the kill and how far it was, from the killed run's log."""
    running, detail = "startup", ""
    for line in log.splitlines():
        if m := LOG_STATE.match(line):
            if "running" in line:
                running, detail = m.group(1), "started"
        elif m := LOG_DONE.match(line):
            if m.group(1) == running:
                running, detail = f"{running} (finalizing)", ""
        elif m := LOG_PROGRESS.match(line):
            if m.group(1) == running:
                detail = f"{m.group(2) + ' ' if m.group(2) else ''}{m.group(3)}/{m.group(4)} tasks"
        elif m := LOG_TRAIN.match(line):
            detail = f"train step {m.group(1)}/{m.group(2)}"
    return f"{running}: {detail}" if detail else running


def rerun_actions(log: str) -> dict[str, str]:
    """{step: fresh | missing | incomplete (k/n tasks done)} as the re-run saw each step, plus resumes."""
    actions: dict[str, str] = {}
    for line in log.splitlines():
        if m := LOG_STATE.match(line):
            actions[m.group(1)] = m.group(2) + (m.group(3) or "")
        elif m := LOG_RESUME.search(line):
            actions["resume"] = f"from step {m.group(1)}"
    return actions


def summarize_rerun(actions: dict[str, str]) -> str:
    fresh = [k for k, v in actions.items() if v == "fresh"]
    ran = [f"{k} {'stale' if v.startswith('stale') else v}" for k, v in actions.items() if k != "resume" and v != "fresh"]
    parts = ([f"{len(fresh)} fresh"] if fresh else []) + ran
    if "resume" in actions:
        parts.append(f"training resumed {actions['resume']}")
    return "; ".join(parts)


@dataclass
class Row:
    moment: float  # on the reference run's timeline
    killed_at: float  # seconds after the start of the killed run
    anchor: str  # where the moment falls in the reference run: after which line of its log, and how long after
    killed_in: str  # what the killed run's log says it was doing
    start: str  # what the workdir held before the killed run: empty, or an earlier run's (stale) artifacts
    left: dict[str, str] = field(default_factory=dict)
    rerun: str = ""
    rerun_seconds: float = 0.0


def table(rows: list[Row]) -> str:
    lines = [f"{'#':>2}  {'moment':>6}  {'killed':>6}  {'workdir':<13}  {'running at the kill':<30}  {'left incomplete':<36}  {'re-run':>6}  what the re-run did"]
    for k, r in enumerate(rows, 1):
        left = ", ".join(f"{s}: {v}" for s, v in r.left.items() if not v.startswith("complete")) or "-"
        lines.append(f"{k:>2}  {r.moment:>5.2f}s  {r.killed_at:>5.2f}s  {r.start:<13}  {r.killed_in:<30.30}  {left:<36.36}  "
                     f"{r.rerun_seconds:>5.1f}s  {r.rerun}")
    return "\n".join(lines)


# --- the whole harness ------------------------------------------------------------------------------


def crash_anywhere(tmp: Path, pipeline_text: str, kills: int, seed: int, earlier_text: str | None = None) -> tuple[list[Row], float]:
    """Run the pipeline once uninterrupted (the reference), then `kills` times: SIGKILL it at a moment drawn
    uniformly over the reference's duration, check what is left, re-run to the end and compare with the
    reference. Each run starts from an empty workdir, or, every other time when `earlier_text` is given, from
    the workdir that pipeline (other params) left: its artifacts are stale and are replaced.
    Returns the table rows and the reference's duration."""
    import random
    import shutil
    import tomllib

    site, logs = tmp / "site", tmp / "logs"  # every run at the same path: manifests name their inputs by path
    site.mkdir()
    logs.mkdir()
    workdir = site / "runs" / "crash"
    steps = list(tomllib.loads(pipeline_text)["steps"])
    before, earlier = {}, tmp / "earlier"
    if earlier_text is not None:
        (site / "earlier.toml").write_text(earlier_text)
        run_to_end(site, "earlier.toml", logs / "earlier")
        before = workdir_view(workdir)
        workdir.rename(earlier)
    (site / "crash.toml").write_text(pipeline_text)
    t_ref, line_times = run_watched(site, "crash.toml", logs / "reference")
    reference = workdir_view(workdir)
    rng = random.Random(seed)
    # one moment drawn uniformly in each of `kills` equal slices of the reference's duration: random, yet spread over all of it
    moments = [round(rng.uniform(k * t_ref / kills, (k + 1) * t_ref / kills), 2) for k in range(kills)]
    rows = []
    for k, moment in enumerate(moments):
        shutil.rmtree(workdir)
        reused = earlier_text is not None and k % 2 == 1
        if reused:
            shutil.copytree(earlier, workdir, symlinks=True)
        killed = run_and_kill(site, "crash.toml", moment, line_times, logs / f"kill-{k:02d}")
        where = "finished before the kill" if killed.finished_first else where_killed(killed.log)
        row = Row(moment, killed.moment, killed.anchor, where, "earlier run's" if reused else "empty")
        row.left = check_dead_workdir(workdir, reference, before) if workdir.is_dir() else {}
        row.rerun_seconds, log = run_to_end(site, "crash.toml", logs / f"rerun-{k:02d}")
        actions = rerun_actions(log)
        row.rerun = summarize_rerun(actions)
        for step in steps:  # what was complete is skipped, an earlier run's artifact is made again, and so is anything else
            left = row.left.get(step, "")
            want = ("fresh",) if left == "complete" else ("stale",) if left.startswith("complete") else ("incomplete", "missing")
            got = actions.get(step, "").split(" ")[0]
            assert got in want, f"kill {k} at {moment}s: re-run saw {step} as {actions.get(step)!r}, left {row.left}"
        got = workdir_view(workdir)
        for step in steps:
            wrong = differences(got.get(step, {}), reference[step])
            assert not wrong, f"kill {k} at {moment}s ({row.killed_in}): {step} differs from the uninterrupted run's: {wrong[:5]}"
        assert set(got) == set(reference), f"kill {k}: workdir holds {sorted(got)}, the reference {sorted(reference)}"
        leftovers = [str(p) for p in workdir.rglob("*.tmp*")]
        assert not leftovers, leftovers
        rows.append(row)
    return rows, t_ref
