"""The quickstart re-runs from the step whose param changed: a dedup threshold that changes dedup's output
recomputes dedup and every step after it and leaves the steps before it untouched; one that leaves dedup's
output as it was recomputes dedup alone (early cutoff). On the data steps (--until tokens, ~10 s); the
training steps after them follow the same rule and take minutes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmpipe.artifacts.verify import STAMP
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow

QUICKSTART = str(REPO / "pipelines" / "pretrain.toml")
BEFORE_DEDUP = ("ingest", "language", "filter")
FROM_DEDUP = ("dedup", "decontaminate", "tokenizer", "tokens")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("quickstart")
    run_cli("run", QUICKSTART, "--until", "tokens", cwd=cwd, check=True)
    return cwd


@pytest.fixture
def project(first_run, tmp_path) -> Path:
    """A copy of the first run (fingerprints name content, not places: the copy is fresh), one per test."""
    shutil.copytree(first_run / "runs", tmp_path / "runs", symlinks=True)  # keeps mtimes, as cp -a
    return tmp_path


def stamps(step_dir: Path) -> dict[str, int]:
    """Every file of an artifact with its mtime: any re-run rewrites at least _run.json and _manifest.json. Not the
    verification stamps (STAMP), a cache readers refresh: the copy gave every file a new inode, and a file whose
    change time has settled (under load, by the time a reader checks it) is stamped again."""
    return {str(p.relative_to(step_dir)): p.stat().st_mtime_ns for p in sorted(step_dir.rglob("*")) if p.is_file() and p.name != STAMP}


def manifest(project: Path, step: str) -> dict:
    return json.loads((project / "runs/pretrain" / step / "_manifest.json").read_text())


def snapshot(project: Path) -> dict[str, tuple[dict, float]]:
    """Per step: its files' mtimes and the start time its _run.json records (new for every run)."""
    work = project / "runs/pretrain"
    return {s: (stamps(work / s), json.loads((work / s / "_run.json").read_text())["started"]) for s in BEFORE_DEDUP + FROM_DEDUP}


def test_dedup_threshold_that_changes_its_output_reruns_dedup_and_everything_after(project):
    before = snapshot(project)
    assert manifest(project, "dedup")["counts"] == {"documents": 302, "removed": 0}

    res = run_cli("run", QUICKSTART, "--until", "tokens", "--set", "dedup.threshold=0.6", cwd=project, check=True)

    for step in BEFORE_DEDUP:
        assert f"{step}: fresh, skipped\n" in res.stderr
    assert "dedup: stale (params changed: threshold=0.8->0.6), running dedup" in res.stderr
    for step in FROM_DEDUP[1:]:
        assert f"{step}: stale (inputs changed), running" in res.stderr
    after = snapshot(project)
    assert [s for s in after if after[s] == before[s]] == list(BEFORE_DEDUP)
    for step in FROM_DEDUP:  # recomputed: a new start time, and every file written after the old ones
        assert after[step][1] > before[step][1], step
        assert min(after[step][0].values()) > max(before[step][0].values()), step
    # at Jaccard 0.6, one of the 302 pages is a near copy of another; the steps after dedup see 301
    assert manifest(project, "dedup")["counts"] == {"documents": 301, "removed": 1}
    assert manifest(project, "decontaminate")["counts"]["documents"] == 301
    assert manifest(project, "tokens")["sources"][0]["documents"] == 301

    again = run_cli("run", QUICKSTART, "--until", "tokens", "--set", "dedup.threshold=0.6", cwd=project, check=True)
    assert again.stderr.count("fresh, skipped") == 7 and "running" not in again.stderr


def test_dedup_threshold_that_keeps_its_output_reruns_dedup_alone(project):
    before = snapshot(project)
    hash_before = manifest(project, "dedup")["content_hash"]

    res = run_cli("run", QUICKSTART, "--until", "tokens", "--set", "dedup.threshold=0.7", cwd=project, check=True)

    assert "dedup: stale (params changed: threshold=0.8->0.7), running dedup" in res.stderr
    assert "decontaminate: fresh, skipped (dedup came out unchanged)" in res.stderr
    assert res.stderr.count("running") == 1
    after = snapshot(project)
    assert [s for s in after if after[s] != before[s]] == ["dedup"]
    assert manifest(project, "dedup")["content_hash"] == hash_before
    assert manifest(project, "dedup")["params"]["threshold"] == 0.7
