"""pipelines/pretrain.toml, the README's quickstart, runs end to end; a second run skips everything."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import REPO, run_cli


@pytest.mark.slow
def test_quickstart_pipeline_end_to_end(tmp_path):
    pipeline = REPO / "pipelines" / "pretrain.toml"
    first = run_cli("run", str(pipeline), cwd=tmp_path, check=True)
    work = tmp_path / "runs" / "pretrain"
    import tomllib

    steps = list(tomllib.loads(pipeline.read_text())["steps"])
    manifests = {step: json.loads((work / step / "_manifest.json").read_text()) for step in steps}
    doc_steps = [s for s in steps if manifests[s]["output_kind"] == "documents"]
    counts = [manifests[s]["counts"]["documents"] for s in doc_steps]
    # ~480 documents (2 MB) in a bare venv, more where more packages are installed; every
    # later step keeps a part of what came before, and something survives to the end
    assert counts[0] > 300 and counts[-1] > 50, dict(zip(doc_steps, counts))
    assert counts == sorted(counts, reverse=True), dict(zip(doc_steps, counts))
    assert (work / "filter" / "funnel.png").stat().st_size > 10_000
    model = manifests["model"]
    # learned something: validation loss well below a uniform guess over the vocabulary, ln(4096) = 8.3 nats
    assert model["metrics"]["val_loss"] < 0.85 * math.log(4096), model["metrics"]
    assert set(model["samples"]) == {"greedy", "top_p"} and all(model["samples"].values())
    assert "sample (greedy):" in first.stderr
    assert first.stderr.count("running") == len(steps)
    second = run_cli("run", str(pipeline), cwd=tmp_path, check=True)
    assert second.stderr.count("fresh, skipped") == len(steps)
