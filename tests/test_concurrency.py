"""Two `llmpipe run` of one workdir at once: the second is refused in one line while the first runs on.

Before the lock, the second run saw the first's half-done step as "incomplete", resumed it beside
the first, deleted the first's in-flight temporaries, and the first died with FileNotFoundError
on a renamed part.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, make_jsonl_corpus, run_cli, slurm_up, write

PIPELINE = """
[pipeline]
workdir = "runs/p"
workers = 2

[steps.ingest]
inputs = ["corpus/*.jsonl"]
task_bytes = 1  # one task per file: the run is still mid-step once the first task is recorded

[steps.dedup]
inputs = ["ingest"]
near_dedup = false  # exact only: the lock is what is tested, not MinHash
"""
N_FILES = 8


def _start(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llmpipe", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})


def _wait_for(path: Path, proc: subprocess.Popen, n: int = 1, timeout: float = 60) -> None:
    """Until `n` task records exist under `path` (the first run is mid-step)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.is_dir() and len(list(path.glob("*.json"))) >= n:
            return
        time.sleep(0.01)
    raise AssertionError(f"the first run did not reach {path} (exit {proc.poll()})")


def test_second_run_of_one_workdir_is_refused_while_the_first_completes(tmp_path, shared_data):
    make_jsonl_corpus(shared_data, tmp_path / "corpus", n_files=N_FILES, copies=60)  # ~4 MB a file: a few seconds of ingest
    write(tmp_path / "p.toml", PIPELINE)
    first = _start(tmp_path, "run", "p.toml")
    _wait_for(tmp_path / "runs/p/ingest/_tasks/read", first)

    second = run_cli("run", "p.toml", cwd=tmp_path, timeout=120)
    out, err = first.communicate(timeout=300)

    assert first.returncode == 0, f"the first run failed:\n{err}"
    assert second.returncode == 2, f"exit {second.returncode}\n{second.stdout}\n{second.stderr}"
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
    host = os.uname().nodename
    assert lines[0].startswith(f"error: runs/p is in use by llmpipe run p.toml (pid {first.pid} on {host}, since "), lines[0]
    assert lines[0].endswith("; wait for it to finish, or stop it and run again"), lines[0]
    assert second.stdout == ""

    # the first run's artifacts are whole: every document once
    rows = [r for p in sorted((tmp_path / "runs/p/ingest").glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(rows) == 300 * 60 and len({r["id"] for r in rows}) == 300 * 60
    assert (tmp_path / "runs/p/dedup/_manifest.json").exists()

    # once the first is done the lock is free: the same command runs and finds everything fresh
    again = run_cli("run", "p.toml", cwd=tmp_path, check=True)
    assert "0 ran, 2 fresh" in again.stdout


def test_stage_command_writing_a_step_of_a_running_pipeline_is_refused(tmp_path, shared_data):
    make_jsonl_corpus(shared_data, tmp_path / "corpus", n_files=N_FILES, copies=60)
    write(tmp_path / "p.toml", PIPELINE)
    run_cli("ingest", "--input", "corpus/shard-00.jsonl", "--output", "docs", cwd=tmp_path, check=True)
    first = _start(tmp_path, "run", "p.toml")
    _wait_for(tmp_path / "runs/p/ingest/_tasks/read", first)
    # dedup has not started: the run holds it all the same, since it is about to write it
    res = run_cli("dedup", "--input", "docs", "--output", "runs/p/dedup", cwd=tmp_path, timeout=60)
    first.communicate(timeout=300)
    assert first.returncode == 0
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    dedup = (tmp_path / "runs/p/dedup").resolve()
    assert res.stderr.startswith(f"error: {dedup} is in use by llmpipe run p.toml (pid {first.pid} on {os.uname().nodename}, since ")


def test_pipeline_is_refused_while_a_stage_command_writes_one_of_its_steps(tmp_path, shared_data):
    make_jsonl_corpus(shared_data, tmp_path / "corpus", n_files=N_FILES, copies=150)  # long enough to start a run beside it
    write(tmp_path / "p.toml", PIPELINE)
    stage = _start(tmp_path, "ingest", "--input", "corpus/*.jsonl", "--output", "runs/p/ingest", "--task-bytes", "1", "--workers", "2")
    _wait_for(tmp_path / "runs/p/ingest/_tasks/read", stage)
    res = run_cli("run", "p.toml", cwd=tmp_path, timeout=60)
    stage.communicate(timeout=300)
    assert stage.returncode == 0
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    ingest = (tmp_path / "runs/p/ingest").resolve()
    assert res.stderr.startswith(f"error: {ingest} is in use by llmpipe ingest --input 'corpus/*.jsonl' --output runs/p/ingest --task-bytes 1 --workers 2 (pid {stage.pid} on ")
    assert not (tmp_path / "runs/p/dedup").exists(), "the refused run wrote nothing"
    # what the stage command made is what the pipeline's ingest step makes: the run finds it fresh
    assert "1 ran, 1 fresh" in run_cli("run", "p.toml", cwd=tmp_path, check=True).stdout


def test_a_run_killed_by_sigkill_leaves_no_lock_behind(tmp_path, shared_data):
    """The kernel drops a dead process's flock: the next run goes ahead at once, no --unlock as in Snakemake."""
    make_jsonl_corpus(shared_data, tmp_path / "corpus", n_files=N_FILES, copies=60)
    write(tmp_path / "p.toml", PIPELINE)
    first = subprocess.Popen([sys.executable, "-m", "llmpipe", "run", "p.toml"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_for(tmp_path / "runs/p/ingest/_tasks/read", first)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert json.loads((tmp_path / "runs/p/.llmpipe-run.lock").read_text())["pid"] == first.pid  # its record stays
    res = run_cli("run", "p.toml", cwd=tmp_path, check=True)
    assert "1 tasks done" not in res.stderr and "2 ran, 0 fresh" in res.stdout
    assert (tmp_path / "runs/p/.llmpipe-run.lock").read_text() == "", "released: the record is emptied"


def test_a_fresh_record_from_another_machine_refuses_a_stale_one_does_not(tmp_path, shared_data):
    """Where flock is local to each machine (NFS local_lock, Lustre localflock) the holder's renewed record decides."""
    make_jsonl_corpus(shared_data, tmp_path / "corpus", n_files=1)
    write(tmp_path / "p.toml", PIPELINE)
    record = {"host": "login2", "pid": 4242, "start": 1, "since": time.time() - 3600, "command": "llmpipe run p.toml"}
    lock_file = write(tmp_path / "runs/p/.llmpipe-run.lock", json.dumps(record))  # as a driver on login2 left it, renewed just now
    res = run_cli("run", "p.toml", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.startswith("error: runs/p is in use by llmpipe run p.toml (pid 4242 on login2, since "), res.stderr
    assert sorted(p.name for p in (tmp_path / "runs/p").iterdir()) == [".llmpipe-run.lock"], "nothing written"

    old = time.time() - 600  # not renewed for 10 minutes: that driver is gone
    os.utime(lock_file, (old, old))
    run_cli("run", "p.toml", cwd=tmp_path, check=True)
    assert (tmp_path / "runs/p/dedup/_manifest.json").exists()


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.skipif(not slurm_up(), reason="no Slurm cluster is up here (run .ci/start-slurm.sh as root to start one)")
def test_slurm_driver_holds_the_lock_and_its_jobs_run_under_it(tmp_path, shared_data):
    """The lock is the driver's: the `llmpipe task` jobs it submits take none, so following them cannot deadlock."""
    make_jsonl_corpus(shared_data, tmp_path / "corpus", n_files=4)
    write(tmp_path / "p.toml", PIPELINE.replace("workers = 2", f'executor = "slurm"\n[pipeline.slurm]\ntime = "00:10:00"\nsetup = "export PYTHONPATH={REPO}"'))
    first = _start(tmp_path, "run", "p.toml")
    deadline = time.time() + 120
    while not list((tmp_path / "runs/p/ingest/_logs").glob("*.sbatch")) and time.time() < deadline:
        time.sleep(0.05)
    second = run_cli("run", "p.toml", cwd=tmp_path, timeout=60)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 2 and second.stderr.startswith(f"error: runs/p is in use by llmpipe run p.toml (pid {first.pid} on "), second.stderr
    assert "2 submitted, 0 fresh" in out
    assert "2 fresh" in run_cli("run", "p.toml", cwd=tmp_path, check=True).stdout


def test_without_flock_a_record_from_this_machine_counts_while_its_process_lives(tmp_path):
    """Where flock fails (NFS nolock, Lustre noflock) the record alone decides: its process, checked by pid and start time."""
    from llmpipe.lock import _alive, _process_start

    fd = os.open(tmp_path / "lock", os.O_RDWR | os.O_CREAT)
    holder = subprocess.Popen(["sleep", "60"])
    record = {"host": os.uname().nodename, "pid": holder.pid, "start": _process_start(holder.pid)}
    try:
        assert _alive(record, fd, flocked=False)
        assert not _alive(record, fd, flocked=True), "with flock, getting it proves the holder on this machine is gone"
        assert not _alive({**record, "pid": os.getppid()}, fd, flocked=False), "a live pid with another start time is a reused pid"
    finally:
        holder.kill()
        holder.wait()
    assert not _alive(record, fd, flocked=False)
    os.close(fd)
