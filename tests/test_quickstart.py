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
    counts = [json.loads((work / step / "_manifest.json").read_text())["counts"]["documents"] for step in steps]
    # ~480 documents (2 MB) in a bare venv, more where more packages are installed; every
    # later step keeps a part of what came before, and something survives to the end
    assert counts[0] > 300 and counts[-1] > 50, dict(zip(steps, counts))
    assert counts == sorted(counts, reverse=True), dict(zip(steps, counts))
    assert (work / "filter" / "funnel.png").stat().st_size > 10_000
    assert first.stderr.count("running") == len(steps)
    second = run_cli("run", str(pipeline), cwd=tmp_path, check=True)
    assert second.stderr.count("fresh, skipped") == len(steps)
