"""The torchrun launcher runs a training-type stage as real DDP processes (gloo on CPU)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, run_cli, write

pytest.importorskip("torch")


@pytest.mark.slow
def test_local_torchrun_two_processes(tmp_path):
    write(tmp_path / "in.txt", "x")
    write(tmp_path / "p.toml", '[pipeline]\nworkdir = "runs"\n[steps.probe]\nstage = "tests.fixtures.ddp_probe"\ninputs = ["in.txt"]\nnproc_per_node = 2\n')
    run_cli("run", "p.toml", cwd=tmp_path, check=True, env={"PYTHONPATH": str(REPO)})
    result = json.loads((tmp_path / "runs/probe/result.json").read_text())
    assert result["world_size"] == 2 and result["sum"] == 3.0  # ranks 0 and 1 contributed 1 + 2
    assert len(set(result["ranks"])) == 2, "two separate processes"
    manifest = json.loads((tmp_path / "runs/probe/_manifest.json").read_text())
    assert manifest["stats"]["counts"]["world_size"] == 2
