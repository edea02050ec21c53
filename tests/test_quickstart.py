"""pipelines/pretrain.toml, the README's quickstart, runs end to end; a second run skips everything."""

from __future__ import annotations

import json
import math
import os
import time

import pytest

from tests.conftest import REPO, run_cli


@pytest.mark.slow
@pytest.mark.long  # ~5.5 min: CI runs it right after the default run (python -m pytest -m long)
def test_quickstart_pipeline_end_to_end(tmp_path):
    pipeline = REPO / "pipelines" / "pretrain.toml"
    first = run_cli("run", str(pipeline), cwd=tmp_path, check=True)
    work = tmp_path / "runs" / "pretrain"
    import tomllib

    steps = list(tomllib.loads(pipeline.read_text())["steps"])
    manifests = {step: json.loads((work / step / "_manifest.json").read_text()) for step in steps}
    doc_steps = [s for s in steps if manifests[s]["output_kind"] == "documents"]
    counts = [manifests[s]["counts"]["documents"] for s in doc_steps]
    # 455 documents (2 MB) of Python 3.11's own docs; every later step keeps a part of what came
    # before, and something survives to the end
    assert counts[0] > 300 and counts[-1] > 50, dict(zip(doc_steps, counts))
    assert counts == sorted(counts, reverse=True), dict(zip(doc_steps, counts))
    assert (work / "filter" / "funnel.png").stat().st_size > 10_000
    model = manifests["model"]
    # learned something: validation loss well below a uniform guess over the vocabulary, ln(4096) = 8.3 nats
    assert model["metrics"]["val_loss"] < 0.85 * math.log(4096), model["metrics"]
    assert set(model["samples"]) == {"greedy", "top_p"} and all(model["samples"].values())
    # recognisable text, not "The.\n the the the": the samples use many distinct words of the corpus
    import re

    import pyarrow.parquet as pq

    corpus = {w.lower() for t in pq.read_table(sorted((work / "dedup").glob("part-*.parquet"))).column("text").to_pylist()
              for w in re.findall(r"[A-Za-z]{2,}", t)}
    words = {w.lower() for text in model["samples"].values() for w in re.findall(r"[A-Za-z]{2,}", text)}
    assert len(words & corpus) >= 10, model["samples"]
    assert "sample (greedy):" in first.stderr
    # evaluated as a pipeline step: bits per byte on the val split (pretrain's own measure) and blimp_mini
    ev = manifests["evaluate"]["metrics"]
    assert ev["perplexity/bits_per_byte"] == pytest.approx(model["metrics"]["val_bpb"], rel=0.05), ev
    assert 0 <= ev["blimp_mini/acc"] <= 1 and "blimp_mini/acc_stderr" in ev, ev
    # fine-tuned into a chat model: held-out answer loss falls, held-out preferences are learned
    sft, dpo = manifests["sft"], manifests["dpo"]
    assert sft["metrics"]["val_loss"] < 0.85 * sft["metrics"]["val_loss_before"], sft["metrics"]
    assert all(s["answer"] for s in sft["samples"]), sft["samples"]
    assert dpo["metrics"]["eval_rewards/accuracies"] >= 0.8, dpo["metrics"]
    # a reward model from the same pairs ranks held-out answers above their scrambled words (seen: 0.14 -> 0.97)
    rm = manifests["reward_model"]["metrics"]
    assert rm["eval_accuracy"] >= 0.8 and rm["eval_accuracy"] >= rm["eval_accuracy_before"] + 0.3, rm
    answer = run_cli("chat", "runs/pretrain/dpo", "--message", "What does json.dumps do?", cwd=tmp_path, check=True).stdout
    assert len(re.findall(r"[A-Za-z]{2,}", answer)) >= 3, answer
    # quantized: int8 weights and GGUF files; int8 moves held-out bits per byte by under 1 %
    assert {f.name for f in (work / "quantize").glob("*.gguf")} == {"model-F16.gguf", "model-Q8_0.gguf"}
    chat_bpb, int8_bpb = (manifests[s]["metrics"]["perplexity/bits_per_byte"] for s in ("eval_chat", "eval_int8"))
    assert abs(int8_bpb / chat_bpb - 1) < 0.01, (chat_bpb, int8_bpb)
    assert run_cli("chat", "runs/pretrain/quantize", "--message", "What does json.dumps do?", cwd=tmp_path, check=True).stdout.strip()
    _report_is_complete(work / "report", tmp_path)
    assert first.stderr.count("running") == len(steps)
    started = time.perf_counter()
    second = run_cli("run", str(pipeline), cwd=tmp_path, check=True)
    assert second.stderr.count("fresh, skipped") == len(steps) and time.perf_counter() - started < 30
    _help_examples_run_after_the_quickstart(tmp_path)


def _report_is_complete(report_dir, tmp_path):
    """Every section of the report filled, its PNGs real images of sensible size, and the page rendered by headless
    Chromium (where it is installed: .ci/run installs it)."""
    import shutil

    from PIL import Image

    from tests.stages.test_report import assert_renders_in_chromium

    report = json.loads((report_dir / "report.json").read_text())
    assert [s["id"] for s in report["sections"] if s["empty"]] == [], report["sections"]
    plots = sorted((report_dir / "plots").glob("*.png"))
    assert len(plots) >= 6, plots
    for png in plots:
        width, height = Image.open(png).size
        assert 400 <= width <= 4000 and 150 <= height <= 4000, (png.name, width, height)
    if shutil.which("chromium"):
        assert_renders_in_chromium(report_dir, tmp_path)


def _help_examples_run_after_the_quickstart(cwd):
    """Every stage's --help opens with an example; after the quickstart it runs as written (the one eval set
    decontaminate needs is a file of the user's: a HellaSwag-style line stands in for it)."""
    import shlex

    from llmpipe.cli import help_example
    from llmpipe.registry import builtin_stages, get_stage

    (cwd / "hellaswag_val.jsonl").write_text(json.dumps({"ctx": "Return the number of items in a container.", "endings": ["ok"], "label": 0}) + "\n")
    for name in sorted(builtin_stages()):
        shown = run_cli(name.replace("_", "-"), "--help", cwd=cwd, check=True).stdout
        example = help_example(get_stage(name).doc)
        block = [line.strip() for line in shown.split("\n\n")[2].splitlines()]
        assert block == ["Example (after the quickstart, from the repository root):", example], block
        args = shlex.split(example)
        assert args[:2] == ["llmpipe", name.replace("_", "-")]
        run_cli(*args[1:], cwd=cwd, check=True)


def test_quickstart_data_does_not_depend_on_installed_packages(tmp_path):
    """Two environments with different packages installed ingest the same quickstart corpus: one run sees an
    extra installed distribution (a dist-info with a long description), and the data steps' figures stay equal."""
    pipeline = REPO / "pipelines" / "pretrain.toml"
    site = tmp_path / "extra-site" / "zzz_extra_package-1.0.dist-info"
    site.mkdir(parents=True)
    (site / "METADATA").write_text("Metadata-Version: 2.1\nName: zzz-extra-package\nVersion: 1.0\n\n" + "An extra package README. " * 40 + "\n")
    figures = []
    extra_path = os.pathsep.join(p for p in [str(site.parent), os.environ.get("PYTHONPATH", "")] if p)
    for k, env in enumerate([{}, {"PYTHONPATH": extra_path}]):
        (tmp_path / f"env{k}").mkdir()
        run_cli("run", str(pipeline), "--until", "ingest", cwd=tmp_path / f"env{k}", check=True, env=env)
        figures.append(json.loads((tmp_path / f"env{k}" / "runs/pretrain/ingest/_manifest.json").read_text())["counts"])
    assert figures[0] == figures[1]
