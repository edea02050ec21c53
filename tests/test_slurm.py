"""The Slurm executor against the real local cluster (.ci/start-slurm.sh starts it); skipped without one."""

from __future__ import annotations

import json
import subprocess


from tests.conftest import REPO, SLURM_MARKS, make_jsonl_corpus, run_cli, write
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
    assert res.stderr.strip().splitlines()[-1].startswith(f"error: SlurmFailed: step ingest: finalize failed; log {log_path}/finalize-")
    assert not (tmp_path / "runs/f/dedup/_manifest.json").exists()


def test_hand_written_array_job_shards_a_stage_command(tmp_path, shared_data):
    """examples/slurm/ingest_array.sbatch: users' own sbatch arrays split a stage by SLURM_ARRAY_TASK_ID."""
    make_jsonl_corpus(shared_data, tmp_path / "corpus", n_files=4)
    script = (REPO / "examples/slurm/ingest_array.sbatch").read_text()
    write(tmp_path / "job.sbatch", script)
    res = subprocess.run(["sbatch", "--wait", "--output=job-%a.out", "job.sbatch"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr + "".join(p.read_text() for p in tmp_path.glob("job-*.out"))
    run_cli("ingest", "--input", "corpus/*.jsonl", "--output", "runs/local", cwd=tmp_path, check=True)
    assert rows(tmp_path / "runs/docs") == rows(tmp_path / "runs/local")
    # The cluster has 2 CPUs: elements 0 and 1 run first and claim the work of 2 and 3, which then
    # find nothing left to do (with a fixed share, 0 and 1 would wait on them forever).
    pids = {json.loads(p.read_text())["pid"] for p in (tmp_path / "runs/docs/_tasks/read").glob("*.json")}
    assert 1 <= len(pids) <= 4 and len(list((tmp_path / "runs/docs/_tasks/read").glob("*.json"))) == 4
