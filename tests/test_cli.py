"""The CLI is built from the stage registry: options mirror Params, help is documented, startup stays light,
and `llmpipe STAGE` and `llmpipe.run_stage` make the same artifact."""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from stages import STAGES
from tests.conftest import REPO, run_cli, write

import llmpipe
from llmpipe.cli import stage_command
from llmpipe.registry import get_stage

COMMON = {"--input", "--output", "--workers", "--force", "--help", "-h"}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_options_mirror_params(name):
    cmd = stage_command(name)
    stage = get_stage(name)
    fields = dataclasses.fields(stage.params)
    options = {}
    for p in cmd.get_params(click.Context(cmd)):
        if isinstance(p, click.Option) and not set(p.opts) & COMMON:
            assert len(p.opts) == 1, p.opts
            options[p.opts[0]] = p
    assert set(options) == {"--" + f.name.replace("_", "-") for f in fields}
    for f in fields:
        opt = options["--" + f.name.replace("_", "-")]
        assert opt.name == f.name
        assert opt.help.startswith(f.metadata["help"]), (opt.help, f.metadata["help"])
        if opt.is_flag and opt.secondary_opts:
            assert opt.secondary_opts == ["--no-" + f.name.replace("_", "-")]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_module_is_documented(name):
    module = importlib.import_module(STAGES[name])
    assert module.__doc__ and module.__doc__.strip()
    stage = get_stage(name)
    assert stage.name == name
    assert stage.doc and stage.doc.strip()
    assert isinstance(stage.version, int) and not isinstance(stage.version, bool) and stage.version > 0
    for f in dataclasses.fields(stage.params):
        assert f.metadata.get("help", "").strip(), f"{name}.Params.{f.name} has no help text"


def test_registry_lists_every_stage_module():
    modules = {p.stem for p in (REPO / "stages").glob("*.py") if not p.name.startswith("_")}
    assert set(STAGES) == modules
    assert all(STAGES[n] == f"stages.{n}" for n in STAGES)


_PROBE = """
import sys
import llmpipe.cli
sys.argv = ["llmpipe", *{args!r}]
try:
    llmpipe.cli.main()
except SystemExit as e:
    assert e.code in (0, None), e.code
print("TORCH", "torch" in sys.modules, file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["dedup", "--help"], ["ingest", "--help"], ["stages"]])
def test_help_does_not_import_torch(args):
    res = subprocess.run([sys.executable, "-c", _PROBE.format(args=args)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "Usage" in res.stdout or args == ["stages"]
    assert "TORCH False" in res.stderr, res.stderr


def test_cli_and_library_make_the_same_artifact(tmp_path, monkeypatch):
    write(tmp_path / "docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in ["tiny", "hello world", "a longer document here", "hi", "hello world"]))
    run_cli("ingest", "--input", "docs.jsonl", "--output", "a", "--min-chars", "5", cwd=tmp_path, check=True, timeout=60)
    monkeypatch.chdir(tmp_path)  # the same input as written: documents name their file as the user gave it
    llmpipe.run_stage("ingest", ["docs.jsonl"], tmp_path / "b", min_chars=5)

    ma = json.loads((tmp_path / "a" / "_manifest.json").read_text())
    mb = json.loads((tmp_path / "b" / "_manifest.json").read_text())
    assert ma["fingerprint"] == mb["fingerprint"]
    assert ma["params"] == mb["params"]
    assert ma["params"]["min_chars"] == 5
    assert ma["counts"] == mb["counts"]

    import pyarrow.parquet as pq

    def rows(d: Path) -> list[dict]:
        parts = sorted(d.glob("part-*.parquet"))
        assert parts
        return [r for p in parts for r in pq.read_table(p).to_pylist()]

    ra, rb = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert ra == rb
    assert [r["text"] for r in ra] == ["hello world", "a longer document here", "hello world"]


@pytest.mark.parametrize("metrics, line", [
    ({"val_loss_before": 0.73, "val_loss": 0.14, "eval_accuracy_before": 0.137, "eval_accuracy": 0.973}, "held-out accuracy 0.14 -> 0.97"),
    ({"eval_accuracy_before": 0.342, "eval_accuracy": 0.595, "eval_sampled_accuracy_before": 0.203, "eval_sampled_accuracy": 0.402},
     "held-out accuracy 0.34 -> 0.59 greedy, 0.20 -> 0.40 sampled"),
    ({"val_loss_before": 6.37, "val_loss": 4.69}, "held-out answer loss 6.37 -> 4.69"),
    ({"val_loss": 5.1, "val_mlm_acc": 0.2154, "val_unigram_acc": 0.0831}, "masked-token accuracy 0.215 (unigram 0.083)"),
])
def test_the_run_summary_headline_names_each_training_stage_figure(metrics, line):
    """reward-model and grpo report held-out accuracy (not the sft answer loss their val_loss_before would give), an
    encoder its masked-token accuracy."""
    from llmpipe.runner import headline

    assert headline({"output_kind": "checkpoint", "metrics": metrics}) == line
