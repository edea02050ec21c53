"""pipelines/pretrain.toml, the README's quickstart, runs end to end; a second run skips everything."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, run_cli


@pytest.mark.slow
def test_quickstart_pipeline_end_to_end(tmp_path):
    pipeline = REPO / "pipelines" / "pretrain.toml"
    first = run_cli("run", str(pipeline), cwd=tmp_path, check=True)
    work = tmp_path / "runs" / "pretrain"
    import tomllib

    steps = list(tomllib.loads(pipeline.read_text())["steps"])
    for step in steps:
        manifest = json.loads((work / step / "_manifest.json").read_text())
        # ~480 documents (2 MB) in a bare venv, more where more packages are installed
        assert manifest["counts"]["documents"] > 300, (step, manifest["counts"])
    assert first.stderr.count("running") == len(steps)
    second = run_cli("run", str(pipeline), cwd=tmp_path, check=True)
    assert second.stderr.count("fresh, skipped") == len(steps)
