"""dedup with MinHash as Slurm job arrays (one array per phase) keeps the same documents as a local run."""

from __future__ import annotations

import json


from tests.conftest import REPO, SLURM_MARKS, run_cli, write
from tests.stages.test_dedup import planted_corpus, write_parts
from tests.test_resume import rows


pytestmark = SLURM_MARKS

PIPELINE = """
[pipeline]
workdir = "runs/{name}"
executor = "{executor}"
workers = {workers}

[pipeline.slurm]
array_parallelism = 2
time = "00:10:00"
setup = "export PYTHONPATH={repo}"

[steps.ingest]
inputs = ["{corpus}"]
task_bytes = 1  # a task and a part per file: dedup's phases fan out over 4 parts

[steps.dedup]
inputs = ["ingest"]
near_dedup = true
keep_rejected = true
line_dedup_max_docs = 3
"""


def test_minhash_dedup_on_slurm_matches_a_single_local_task(tmp_path, shared_data):
    docs = planted_corpus(shared_data, n_base=300, n_planted=120)
    write_parts(docs, tmp_path / "four", 4)
    write_parts(docs, tmp_path / "one", 1)
    write(tmp_path / "local.toml", PIPELINE.format(name="local", executor="local", workers=1, repo=REPO, corpus="one/*.jsonl"))
    write(tmp_path / "slurm.toml", PIPELINE.format(name="slurm", executor="slurm", workers=2, repo=REPO, corpus="four/*.jsonl"))
    run_cli("run", "local.toml", cwd=tmp_path, check=True)
    res = run_cli("run", "slurm.toml", cwd=tmp_path, check=True, timeout=900)
    assert "submitted jobs" in res.stderr

    local, slurm = tmp_path / "runs/local/dedup", tmp_path / "runs/slurm/dedup"
    assert [(r["id"], r["text"]) for r in rows(slurm)] == [(r["id"], r["text"]) for r in rows(local)]
    m_local = json.loads((local / "_manifest.json").read_text())
    m_slurm = json.loads((slurm / "_manifest.json").read_text())
    assert m_slurm["dedup"] == m_local["dedup"] and m_slurm["dedup"]["near_duplicates"] > 0
    # every phase ran as an array on the cluster: 4 parts, 16 bands, 1 clusters task, 4 line partitions
    logs = sorted(p.name for p in (slurm / "_logs").glob("*.sbatch"))
    assert logs == ["0-signatures.sbatch", "1-buckets.sbatch", "2-clusters.sbatch", "3-lines.sbatch", "4-filter.sbatch", "finalize.sbatch"], logs
    assert "#SBATCH --array=0-15%2" in (slurm / "_logs/1-buckets.sbatch").read_text()
