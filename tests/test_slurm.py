"""The Slurm executor against the real local cluster (.ci/start-slurm.sh starts it); skipped without one."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmpipe.artifacts.verify import STAMP
from tests.conftest import REPO, SLURM_MARKS, ctrl_c_reaches_it, make_jsonl_corpus, run_cli, write
from tests.test_resume import rows


pytestmark = SLURM_MARKS

PIPELINE = """
[pipeline]
workdir = "runs/{name}"
executor = "{executor}"
workers = 2

[pipeline.slurm]
array_parallelism = 2
time = "00:10:00"
setup = "export PYTHONPATH={repo}"

[steps.ingest]
inputs = ["corpus/*.jsonl"]
task_bytes = 1          # a task and a part per file: four of each

[steps.dedup]
inputs = ["ingest"]
near_dedup = false      # exact only: three phases (signatures, clusters, filter), each with four tasks or one
keep_rejected = true
"""


def test_slurm_executor_matches_local(tmp_path, shared_data):
    corpus = make_jsonl_corpus(shared_data, tmp_path / "corpus", n_files=4)
    # a duplicate across files, so dedup's three phases all have work to do
    corpus[3].write_text(corpus[3].read_text() + corpus[0].read_text().splitlines()[0] + "\n")
    write(tmp_path / "local.toml", PIPELINE.format(name="local", executor="local", repo=REPO))
    # max_array_size = 3 makes each 4-task phase two arrays (tasks 0-2, and 3 with --task-offset 3)
    write(tmp_path / "slurm.toml", PIPELINE.format(name="slurm", executor="slurm", repo=REPO).replace("[pipeline.slurm]", "[pipeline.slurm]\nmax_array_size = 3"))
    run_cli("run", "local.toml", cwd=tmp_path, check=True)
    res = run_cli("run", "slurm.toml", cwd=tmp_path, check=True)
    assert "submitted jobs" in res.stderr

    for step in ("ingest", "dedup"):
        assert rows(tmp_path / "runs/slurm" / step) == rows(tmp_path / "runs/local" / step)
        local = json.loads((tmp_path / "runs/local" / step / "_manifest.json").read_text())
        slurm = json.loads((tmp_path / "runs/slurm" / step / "_manifest.json").read_text())
        assert slurm["fingerprint"] == local["fingerprint"] and slurm["counts"] == local["counts"]
    assert json.loads((tmp_path / "runs/slurm/dedup/_manifest.json").read_text())["counts"]["removed"] == 1
    assert "#SBATCH --array=0-2%2" in (tmp_path / "runs/slurm/dedup/_logs/2-filter.sbatch").read_text()
    assert "#SBATCH --array=0%2" in (tmp_path / "runs/slurm/dedup/_logs/2-filter-3.sbatch").read_text()
    assert (tmp_path / "runs/slurm/dedup/_logs/filter-3+0.out").exists()

    again = run_cli("run", "slurm.toml", cwd=tmp_path, check=True)
    assert again.stderr.count("fresh, skipped") == 2 and "submitted" not in again.stderr


def test_torchrun_under_srun_two_processes(tmp_path):
    write(tmp_path / "in.txt", "x")
    write(tmp_path / "p.toml", PIPELINE.split("[steps.ingest]")[0].format(name="t", executor="slurm", repo=REPO)
          + '[steps.probe]\nstage = "tests.fixtures.ddp_probe"\ninputs = ["in.txt"]\nnproc_per_node = 2\n')
    run_cli("run", "p.toml", cwd=tmp_path, check=True, timeout=300, env={"PYTHONPATH": str(REPO)})
    result = json.loads((tmp_path / "runs/t/probe/result.json").read_text())
    assert result["world_size"] == 2 and result["sum"] == 3.0
    script = (tmp_path / "runs/t/probe/_logs/0-train.sbatch").read_text()
    assert "srun --ntasks-per-node=1" in script and "torch.distributed.run" in script


def test_failed_task_is_reported_with_its_log(tmp_path, shared_data):
    make_jsonl_corpus(shared_data, tmp_path / "corpus", n_files=2)
    (tmp_path / "corpus/shard-01.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    write(tmp_path / "p.toml", PIPELINE.format(name="f", executor="slurm", repo=REPO).replace(
        'inputs = ["corpus/*.jsonl"]', 'inputs = ["corpus/*.jsonl"]\nmax_bad_fraction = 0.0'))
    res = run_cli("run", "p.toml", cwd=tmp_path)
    assert res.returncode == 1
    log_path = tmp_path / "runs/f/ingest/_logs"
    assert res.stderr.strip().splitlines()[-1].startswith(f"error: step ingest: finalize failed; log {log_path}/finalize-")
    assert not (tmp_path / "runs/f/dedup/_manifest.json").exists()


def test_hand_written_array_job_shards_a_stage_command(tmp_path, shared_data):
    """examples/slurm/ingest_array.sbatch: users' own sbatch arrays split a stage by SLURM_ARRAY_TASK_ID."""
    make_jsonl_corpus(shared_data, tmp_path / "corpus", n_files=4)
    script = (REPO / "examples/slurm/ingest_array.sbatch").read_text().replace("--output runs/docs", "--output runs/docs --task-bytes 1")  # 4 tasks
    write(tmp_path / "job.sbatch", script)
    res = subprocess.run(["sbatch", "--wait", "--output=job-%a.out", "job.sbatch"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr + "".join(p.read_text() for p in tmp_path.glob("job-*.out"))
    run_cli("ingest", "--input", "corpus/*.jsonl", "--output", "runs/local", cwd=tmp_path, check=True)
    assert rows(tmp_path / "runs/docs") == rows(tmp_path / "runs/local")
    # The cluster has 2 CPUs: elements 0 and 1 run first and claim the work of 2 and 3, which then
    # find nothing left to do (with a fixed share, 0 and 1 would wait on them forever).
    pids = {json.loads(p.read_text())["pid"] for p in (tmp_path / "runs/docs/_tasks/read").glob("*.json")}
    assert 1 <= len(pids) <= 4 and len(list((tmp_path / "runs/docs/_tasks/read").glob("*.json"))) == 4


QUICKSTART = str(REPO / "pipelines" / "pretrain.toml")
DATA_STEPS = ("ingest", "language", "filter", "dedup", "decontaminate", "tokenizer", "tokens")
TRAINING_STEPS = ("model", "evaluate", "sft", "dpo", "reward_model", "quantize", "eval_chat", "eval_int8", "report")
# The training steps shrunk to seconds each (the data steps' params stay as the file has them)
SHORT_TRAINING = ["--set", "model.max_steps=20", "--set", "sft.max_steps=10", "--set", "sft.eval_every=10",
                  "--set", "dpo.max_steps=4", "--set", "dpo.eval_every=4", "--set", "reward_model.max_steps=4",
                  "--set", "reward_model.eval_every=4"]


def summary_rows(stdout: str) -> dict[str, list[str]]:
    """The closing summary's rows: step -> [what, seconds, headline, path] (no headline: three fields)."""
    lines = stdout.split("summary of ", 1)[1].splitlines()[1:-1]
    return {fields[0]: fields[1:] for fields in (re.split(r"\s{2,}", line.strip()) for line in lines)}


def data_files(artifact: Path) -> dict[str, bytes]:
    """The artifact's data files (those its manifest lists; directories walked) and their bytes."""
    names = json.loads((artifact / "_manifest.json").read_text())["files"]
    paths = [q for n in names for q in (sorted((artifact / n).rglob("*")) if (artifact / n).is_dir() else [artifact / n]) if q.is_file()]
    return {str(q.relative_to(artifact)): q.read_bytes() for q in paths}


@pytest.mark.long  # ~3.5 min: CI runs it after the default run
def test_quickstart_on_slurm_makes_the_local_data(tmp_path):
    """pipelines/pretrain.toml under --executor slurm (training shrunk, ~3 min on 2 cores): its data steps'
    fingerprints and bytes equal a local run's, the training steps complete, and the summary shows each step."""
    (tmp_path / "local").mkdir()
    (tmp_path / "slurm").mkdir()
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    local = run_cli("run", QUICKSTART, "--until", "tokens", cwd=tmp_path / "local", check=True, env=env)
    slurm = run_cli("run", QUICKSTART, "--executor", "slurm", *SHORT_TRAINING, cwd=tmp_path / "slurm", check=True, timeout=900, env=env)
    assert slurm.stderr.count("submitted jobs") == len(DATA_STEPS + TRAINING_STEPS)

    for step in DATA_STEPS:
        here, there = tmp_path / "local/runs/pretrain" / step, tmp_path / "slurm/runs/pretrain" / step
        want, got = (json.loads((d / "_manifest.json").read_text()) for d in (here, there))
        assert (got["fingerprint"], got["content_hash"], got.get("counts")) == (want["fingerprint"], want["content_hash"], want.get("counts")), step
        assert data_files(there) == data_files(here), step
        assert rows(there) == rows(here), step  # the Parquet steps row for row (the others have no parts)
    assert len(rows(tmp_path / "slurm/runs/pretrain/decontaminate")) == 302

    # The summary: under Slurm each step's row has its time on the cluster, headline and path, and the
    # data steps' headlines are the local run's
    local_rows, slurm_rows = summary_rows(local.stdout), summary_rows(slurm.stdout)
    assert list(slurm_rows) == list(DATA_STEPS + TRAINING_STEPS)
    for step, row in slurm_rows.items():
        assert row[0] == "submitted" and re.fullmatch(r"\d+\.\ds", row[1]) and row[-1] == f"runs/pretrain/{step}", row
        if step in DATA_STEPS:
            assert row[2] == local_rows[step][2], (row, local_rows[step])
    assert slurm_rows["tokens"][2] == "tokens 329,836 train, 9,627 val"
    assert slurm_rows["model"][2].startswith("val bits per byte ")
    assert slurm_rows["dpo"][2].startswith("held-out reward accuracy ")
    assert slurm.stdout.splitlines()[-1] == f"{len(DATA_STEPS + TRAINING_STEPS)} submitted, 0 fresh; outputs in runs/pretrain"
    # the training steps ran on the cluster: their jobs' logs, and the report read every step
    assert list((tmp_path / "slurm/runs/pretrain/model/_logs").glob("train-*.out"))
    assert (tmp_path / "slurm/runs/pretrain/report/report.html").stat().st_size > 10_000

    again = run_cli("run", QUICKSTART, "--executor", "slurm", *SHORT_TRAINING, cwd=tmp_path / "slurm", check=True, env=env)
    assert again.stderr.count("fresh, skipped") == len(DATA_STEPS + TRAINING_STEPS) and "submitted jobs" not in again.stderr
    assert summary_rows(again.stdout)["tokens"] == ["fresh", "tokens 329,836 train, 9,627 val", "runs/pretrain/tokens"]


def our_jobs_in_queue(job_ids: set[str]) -> set[str]:
    res = subprocess.run(["squeue", "-h", "-o", "%F %A"], capture_output=True, text=True, check=True)
    return {i for line in res.stdout.splitlines() for i in line.split()} & job_ids


def run_until_every_step_is_submitted(tmp_path, shared_data) -> tuple[subprocess.Popen, list[str]]:
    """`llmpipe run slurm.toml` (ingest, dedup) left running once it has submitted both steps; the job ids it submitted.
    local.toml is the same pipeline run locally, to compare with."""
    make_jsonl_corpus(shared_data, tmp_path / "corpus", n_files=4)
    write(tmp_path / "local.toml", PIPELINE.format(name="local", executor="local", repo=REPO))
    write(tmp_path / "slurm.toml", PIPELINE.format(name="slurm", executor="slurm", repo=REPO))
    proc = subprocess.Popen([sys.executable, "-m", "llmpipe", "run", "slurm.toml"], cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=ctrl_c_reaches_it)
    submitted = []
    for line in proc.stderr:
        submitted += re.findall(r"\d+", line.split("submitted jobs", 1)[1].split("(")[0]) if "submitted jobs" in line else []
        if "dedup: submitted jobs" in line:
            break
    return proc, submitted


def test_ctrl_c_cancels_the_jobs_it_submitted(tmp_path, shared_data):
    """Ctrl-C while following leaves no job of this run in the queue, so the re-run the message suggests
    does not submit a second copy of tasks still in flight; that re-run finishes the work."""
    proc, submitted = run_until_every_step_is_submitted(tmp_path, shared_data)
    time.sleep(1)  # some jobs are running by now, the dependent ones pending
    assert our_jobs_in_queue(set(submitted)), "the jobs finished before Ctrl-C; nothing to check"
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, rest
    assert f"cancelled the {len(submitted)} Slurm jobs this run submitted: {', '.join(submitted)}" in rest
    assert "interrupted: finished tasks are kept; resume with: llmpipe run slurm.toml" in rest
    deadline = time.time() + 30  # cancelled jobs leave the queue once their processes are gone
    while our_jobs_in_queue(set(submitted)) and time.time() < deadline:
        time.sleep(0.5)
    assert not our_jobs_in_queue(set(submitted))
    assert not (tmp_path / "runs/slurm/dedup/_manifest.json").exists()

    run_cli("run", "slurm.toml", cwd=tmp_path, check=True, env={"PYTHONPATH": str(REPO)})
    run_cli("run", "local.toml", cwd=tmp_path, check=True)
    for step in ("ingest", "dedup"):
        assert rows(tmp_path / "runs/slurm" / step) == rows(tmp_path / "runs/local" / step)


def test_training_jobs_side_by_side_on_one_node_in_a_workdir_of_shell(tmp_path):
    """Three torchrun steps at once on the one node, as dpo and reward_model after sft in the quickstart (both took
    rendezvous port 29500 and one failed when the other's store closed under it), in a workdir made of shell: all
    finish, their scripts quote the paths, and nothing in the names runs."""
    hostile = "runs/$(touch x) `touch x`; q'uote"
    write(tmp_path / "in.txt", "x")
    header = PIPELINE.split("[steps.ingest]")[0].format(name="t", executor="slurm", repo=REPO).replace('"runs/t"', json.dumps(hostile))
    steps = "".join(f'[steps.{name}]\nstage = "tests.fixtures.ddp_probe"\ninputs = ["in.txt"]\nnproc_per_node = 1\nseconds = {seconds}\n\n'
                    for name, seconds in (("short", 2), ("long", 8), ("longer", 12)))
    write(tmp_path / "p.toml", header + steps)
    run_cli("run", "p.toml", cwd=tmp_path, check=True, timeout=300, env={"PYTHONPATH": str(REPO)})
    for name in ("short", "long", "longer"):
        result = json.loads((tmp_path / hostile / name / "result.json").read_text())
        assert result["world_size"] == 1 and result["sum"] == 1.0
        script = (tmp_path / hostile / name / "_logs" / "0-train.sbatch").read_text()
        assert "--standalone" in script and "29500" not in script
    assert not list(tmp_path.rglob("x"))


def test_hostile_names_in_generated_slurm_scripts_run_nothing(tmp_path):
    """A workdir and an input name made of shell (`$(touch x)`, backticks, `; rm -rf`, a quote) under --executor slurm:
    the scripts quote them, the run completes with the names as written, and nothing runs; a line break or a double
    quote, which an #SBATCH line cannot carry, is refused in one line before anything is written."""
    hostile = "runs/$(touch x) `touch x` a; rm -rf x; touch x q'uote"
    data = tmp_path / "in $(touch x).jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "text": f"document {i} with enough words to keep it " * 8}) + "\n" for i in range(4)))
    write(tmp_path / "p.toml", f'[pipeline]\nworkdir = {json.dumps(hostile)}\n\n[steps.ingest]\ninputs = [{json.dumps(data.name)}]\n')
    res = run_cli("run", "p.toml", "--executor", "slurm", cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr
    assert rows(tmp_path / hostile / "ingest") and not list(tmp_path.rglob("x"))
    assert json.loads((tmp_path / hostile / "ingest" / "_manifest.json").read_text())["counts"]["documents"] == 4
    write(tmp_path / "q.toml", '[pipeline]\nworkdir = "runs/a\\ntouch x"\n\n[steps.ingest]\ninputs = ["in $(touch x).jsonl"]\n')
    res = run_cli("run", "q.toml", "--executor", "slurm", cwd=tmp_path, timeout=120)
    refused = str(tmp_path / "runs" / "a\ntouch x" / "ingest")
    assert (res.returncode, res.stderr.strip()) == (2, f"error: --executor slurm: the output directory {refused!r} holds a line break, "
                                                       "which an #SBATCH line cannot carry; choose a name without one")
    assert not (tmp_path / "runs" / "a\ntouch x").exists() and not list(tmp_path.rglob("x"))


@pytest.mark.long  # ~30-50 s of cluster jobs: CI's long run
def test_a_failed_step_on_slurm_puts_the_previous_artifacts_back(tmp_path, shared_data):
    """As a local run does: submission moved the complete ingest and dedup aside; ingest fails on the cluster, dedup's
    job can never start; both previous artifacts are back in place, byte for byte, the failed run kept to resume."""
    make_jsonl_corpus(shared_data, tmp_path / "corpus", n_files=2)
    write(tmp_path / "p.toml", PIPELINE.format(name="f", executor="slurm", repo=REPO))
    run_cli("run", "p.toml", cwd=tmp_path, check=True)
    work = tmp_path / "runs/f"
    def files():  # not the logs, nor the verification stamps (a cache readers refresh), nor what is set aside
        return {p.relative_to(work): p.read_bytes() for p in sorted(work.rglob("*")) if p.is_file() and "_logs" not in p.parts
                and p.name != STAMP and not p.relative_to(work).parts[0].startswith(".")}

    before = files()
    with open(tmp_path / "corpus/shard-01.jsonl", "a") as f:
        f.write('{"text": broken\n')
    res = run_cli("run", "p.toml", "--set", "ingest.max_bad_fraction=0.0", cwd=tmp_path)
    assert res.returncode == 1 and res.stderr.strip().splitlines()[-1].startswith("error: step ingest: finalize failed; log "), res.stderr
    after = files()
    assert sorted(after) == sorted(before) and after == before
    assert (work / ".ingest.partial/_run.json").exists() and not (work / ".ingest.previous").exists()
    status = run_cli("status", "p.toml", "--set", "ingest.max_bad_fraction=0.0", cwd=tmp_path, check=True).stdout
    assert re.search(r"incomplete +ingest \(\d+/\d+ tasks done, kept at \.ingest\.partial after a failed run\)", status), status


@pytest.mark.long  # ~30-50 s of cluster jobs: CI's long run
def test_a_killed_driver_leaves_its_jobs_and_the_rerun_waits_for_them(tmp_path, shared_data):
    """SIGKILL of `llmpipe run` (no chance to cancel): its jobs run on. A re-run while they are queued would submit
    their tasks a second time; it is refused in one line naming them. Once they are gone, the re-run completes."""
    proc, submitted = run_until_every_step_is_submitted(tmp_path, shared_data)
    proc.kill()
    proc.wait()
    left = sorted(our_jobs_in_queue(set(submitted)))
    assert left, "the jobs finished before the kill; nothing to check"
    res = run_cli("run", "slurm.toml", cwd=tmp_path, env={"PYTHONPATH": str(REPO)})
    assert res.returncode == 2 and "Traceback" not in res.stderr and "submitted jobs" not in res.stderr, res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: step (ingest|dedup): Slurm jobs [\d, ]+ of an earlier run are still in the queue; wait for them to finish "
                        r"\(squeue -j [\d,]+\) or cancel them \(scancel [\d ]+\), then run again", line), line
    deadline = time.time() + 120
    while our_jobs_in_queue(set(submitted)) and time.time() < deadline:
        time.sleep(1)
    run_cli("run", "slurm.toml", cwd=tmp_path, check=True, env={"PYTHONPATH": str(REPO)})
    run_cli("run", "local.toml", cwd=tmp_path, check=True)
    for step in ("ingest", "dedup"):
        assert rows(tmp_path / "runs/slurm" / step) == rows(tmp_path / "runs/local" / step)
