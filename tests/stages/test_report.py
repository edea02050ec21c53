"""The report: `llmpipe report PIPELINE` over a small real pipeline (C4 sample -> filter -> dedup -> tokenizer ->
tokens -> a tiny model -> evaluate), its three twins (HTML, Markdown with PNGs, JSON), lineage from a removed and a
kept document back to the input record, the page as headless Chromium renders it, and the one-line mistakes."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, run_cli

from llmpipe.report.collect import SECTIONS

C4 = SHARED_DATA / "text" / "c4_demo.jsonl"
DUPLICATED_LINES = 40  # the C4 sample's first lines, copied into a second input: dedup has exact duplicates to remove

PIPELINE = """
[pipeline]
name = "tiny"
workdir = "{work}"

[steps.ingest]
inputs = ["{c4}", "{copy}"]

[steps.filter]
inputs = ["ingest"]
keep_rejected = true

[steps.dedup]
inputs = ["filter"]
keep_rejected = true

[steps.tokenizer]
stage = "train_tokenizer"
inputs = ["dedup"]
vocab_size = 1000

[steps.tokens]
stage = "tokenize"
inputs = ["dedup"]
tokenizer = "tokenizer"
val_fraction = 0.1

[steps.model]
stage = "pretrain"
inputs = ["tokens"]
tokenizer = "tokenizer"
max_steps = 6
n_layer = 2
n_embd = 64
n_head = 4
n_kv_head = 4
seq_len = 256
micro_batch = 4
batch_tokens = 2048
warmup_steps = 2
eval_steps = 1
device = "cpu"

[steps.evaluate]
inputs = ["model", "tokens"]
limit = 10

[steps.quantize]
inputs = ["model"]

[steps.evaluate_int8]
stage = "evaluate"
inputs = ["quantize", "tokens"]
limit = 10

[steps.sft]
inputs = ["embedded:python-qa"]
checkpoint = "model"
max_steps = 2
batch_size = 8
val_fraction = 0.01
device = "cpu"
"""
STEPS = ["ingest", "filter", "dedup", "tokenizer", "tokens", "model", "evaluate", "quantize", "evaluate_int8", "sft"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The pipeline run in-process, then `llmpipe report` on it as a user types it; returns the tmp dir."""
    from llmpipe.pipeline import load_pipeline
    from llmpipe.runner import run_pipeline

    if not C4.exists():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    tmp = tmp_path_factory.mktemp("report")
    copy = tmp / "copied.jsonl"
    copy.write_text("".join(C4.read_text().splitlines(keepends=True)[:DUPLICATED_LINES]))
    (tmp / "tiny.toml").write_text(PIPELINE.format(work=tmp / "work", c4=C4, copy=copy))
    run_pipeline(load_pipeline(tmp / "tiny.toml"))
    res = run_cli("report", "tiny.toml", cwd=tmp, check=True)
    assert "report.html" in res.stderr and "sections_filled=9" in res.stdout, res.stdout + res.stderr
    return tmp


def _report(run: Path) -> dict:
    return json.loads((run / "work" / "report" / "report.json").read_text())


def _section(report: dict, section_id: str) -> dict:
    return next(s for s in report["sections"] if s["id"] == section_id)


def test_every_section_filled_from_what_the_steps_recorded(run):
    report, work = _report(run), run / "work"
    manifests = {p.parent.name: json.loads(p.read_text()) for p in work.glob("*/_manifest.json")}
    assert [s["id"] for s in report["sections"]] == [i for i, _ in SECTIONS]
    assert [s["name"] for s in report["steps"]] == STEPS
    assert [s["id"] for s in report["sections"] if s["empty"]] == []
    funnel = {r["step"]: r for r in _section(report, "funnel")["steps"]}
    # 300 C4 documents + 40 of them copied; the filter's rules remove 85 + 10 copies, dedup the 30 copies that survived
    assert [(s, funnel[s]["documents_in"], funnel[s]["documents_out"]) for s in funnel] == [
        ("ingest", 340, 340), ("filter", 340, 245), ("dedup", 245, 215)]
    assert dict((x["reason"], x["documents"]) for x in funnel["filter"]["removed"]) == manifests["filter"]["funnel"]["removed_by_reason"]
    assert funnel["dedup"]["removed"] == [{"reason": "exact_duplicate", "documents": 30}]
    assert _section(report, "dedup")["steps"][0]["cluster_sizes"] == {"2": 30}
    tokens = _section(report, "tokens")["steps"][0]
    assert tokens["sources"][0]["step"] == "dedup" and tokens["splits"]["train"]["tokens"] == manifests["tokens"]["counts"]["train_tokens"]
    training = _section(report, "training")["steps"]
    assert [(t["step"], [p for p, _ in t["train_loss"]]) for t in training] == [("model", [1, 2, 3, 4, 5, 6]), ("sft", [1, 2])]
    assert [t["metrics"] for t in training] == [manifests["model"]["metrics"], manifests["sft"]["metrics"]]
    evaluation = _section(report, "evaluation")["rows"]
    assert [(r["step"], r["checkpoint"], r["task"], r["metrics"]["n"]) for r in evaluation] == [
        ("evaluate", "model", "perplexity", 10), ("evaluate_int8", "quantize", "perplexity", 10)]
    # the int8 checkpoint beside its float input: sizes and speeds quantize recorded, bits per byte from the evaluate step on each
    (quantized,) = _section(report, "quantization")["rows"]
    q = manifests["quantize"]
    assert (quantized["checkpoint"], quantized["bits"], quantized["method"], quantized["model_bytes"], quantized["decode_tokens_per_s"]) == (
        "model", 8, "rtn", q["counts"]["model_safetensors_bytes"], q["metrics"]["decode_tokens_per_s"])
    assert quantized["bits_per_byte"] == pytest.approx(manifests["evaluate_int8"]["metrics"]["perplexity/bits_per_byte"], abs=1e-6)
    assert quantized["input_bits_per_byte"] == pytest.approx(manifests["evaluate"]["metrics"]["perplexity/bits_per_byte"], abs=1e-6)
    samples = _section(report, "samples")
    assert [g["decoding"] for g in samples["generations"]] == ["greedy", "top_p"]
    assert [(c["step"], c["prompt"], c["answer"]) for c in samples["chat"]] == [("sft", x["prompt"], x["answer"]) for x in manifests["sft"]["samples"]]
    resources = _section(report, "resources")["rows"]
    assert all(r["wall_seconds"] is not None and r["peak_rss_bytes"] > 10e6 for r in resources), resources
    # lineage: every step names its inputs (steps, files) and the params it was given
    steps = {s["name"]: s for s in report["steps"]}
    assert [i["path"] for i in steps["ingest"]["inputs"]] == [str(C4), str(run / "copied.jsonl")]
    assert [(i["step"], i["kind"]) for i in steps["filter"]["inputs"]] == [("ingest", "artifact")]
    assert [(p["param"], p["step"]) for p in steps["tokens"]["param_inputs"]] == [("tokenizer", "tokenizer")]
    assert steps["tokens"]["params_changed"] == ["tokenizer", "val_fraction"] and steps["filter"]["params_changed"] == ["keep_rejected"]


def test_a_section_with_nothing_to_show_says_so_in_one_line(run):
    """The stage alone on one artifact: sections it has no data for stay, each with its line."""
    res = run_cli("report", "--input", "work/tokens", "--output", "partial", cwd=run, check=True)
    assert res.stdout.strip() == "plots=3 sections=9 sections_filled=3 steps=1"
    report = json.loads((run / "partial" / "report.json").read_text())
    assert {s["id"]: s["empty"] for s in report["sections"] if s["empty"]} == {
        "funnel": "No documents step among the report's inputs.",
        "dedup": "No dedup step among the report's inputs.",
        "training": "No training step (metrics.jsonl) among the report's inputs.",
        "evaluation": "No evaluate step among the report's inputs.",
        "quantization": "No quantized checkpoint among the report's inputs.",
        "samples": "No step among the report's inputs recorded generations or chat answers.",
    }
    md, html = (run / "partial" / "report.md").read_text(), (run / "partial" / "report.html").read_text()
    assert "## Quantization\n\n_No quantized checkpoint among the report's inputs._\n" in md
    assert '<h2>Quantization</h2><p class="empty">No quantized checkpoint among the report&#x27;s inputs.</p>' in html


def test_lineage_leads_from_a_removed_and_a_kept_document_to_its_input_record(run):
    from llmpipe.artifacts.tokens import read_token_shard
    from llmpipe.text.tokenizer import load_tokenizer

    lineage = _section(_report(run), "lineage")

    def record(doc: dict) -> dict:
        return json.loads(Path(doc["path"]).read_text().splitlines()[doc["line"] - 1])

    # removed by a filter rule: the rejected document is the input file's record at that line
    removed = next(e for e in lineage["removed"] if e["step"] == "filter" and e["rule"] == "gopher_quality/gopher_below_alpha_threshold")
    assert removed["documents_removed"] == 28 and len(removed["documents"]) == 3
    doc = removed["documents"][0]
    assert (doc["path"], doc["line"], doc["artifact_file"], doc["row"]) == (str(C4), 21, "rejected/part-00000.parquet", 3)
    assert doc["text"] == record(doc)["text"][:300] and doc["text_chars"] == len(record(doc)["text"])
    # removed by dedup: a copy, traced to the copied file's line
    duplicate = next(e for e in lineage["removed"] if e["step"] == "dedup")["documents"][0]
    assert duplicate["path"] == str(run / "copied.jsonl") and duplicate["text"] == record(duplicate)["text"][:300]
    # kept into the token shards: the document's tokens (bos, text, eos) are in a shard, and its record is the input's line
    kept = next(e for e in lineage["kept"] if e["step"] == "tokens")
    assert kept["input"] == "dedup" and len(kept["documents"]) == 3
    doc = kept["documents"][0]
    text = record(doc)["text"]
    assert (doc["path"], doc["line"]) == (str(C4), 1) and doc["text"] == text[:300]
    tok = load_tokenizer(run / "work" / "tokenizer")
    ids = [tok.bos_id, *tok.encode(text), tok.eos_id]
    shards = sorted((run / "work" / "tokens").glob("*/shard-*.safetensors"))
    assert any(_contains(read_token_shard(s).tolist(), ids) for s in shards)


def _contains(tokens: list[int], ids: list[int]) -> bool:
    return any(tokens[i:i + len(ids)] == ids for i, t in enumerate(tokens) if t == ids[0])


def test_markdown_and_plots_beside_it(run):
    import matplotlib.image as mpimg
    import numpy as np

    out, report = run / "work" / "report", _report(run)
    md = (out / "report.md").read_text()
    plots = [p["file"] for s in report["sections"] for p in s["plots"]]
    assert plots == ["plots/funnel.png", "plots/dedup-dedup.png", "plots/tokens.png", "plots/loss-model.png", "plots/loss-sft.png",
                     "plots/wall_time.png", "plots/peak_memory.png"]
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(Path(p).name for p in plots)
    for title in (t for _, t in SECTIONS):
        assert f"\n## {title}\n" in md
    for plot in plots:
        assert f"]({plot})" in md
        image = mpimg.imread(out / plot)  # a real PNG: decodes, a sensible size, more than a blank canvas
        height, width = image.shape[:2]
        assert 300 <= width <= 2000 and 150 <= height <= 2000, (plot, image.shape)
        assert len(np.unique(image.reshape(-1, image.shape[2]), axis=0)) > 20, plot


def test_html_is_self_contained(run):
    import re

    html = (run / "work" / "report" / "report.html").read_text()
    assert "<script" not in html.lower()
    links = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert links and all(link.startswith(("data:image/png;base64,", "#")) for link in links), [x[:40] for x in links if not x.startswith(("data:", "#"))]
    ids = set(re.findall(r'id="([^"]+)"', html))
    assert {link[1:] for link in links if link.startswith("#")} <= ids  # every link inside the page lands somewhere


def test_report_step_in_a_pipeline_is_the_same_report(run):
    """A [steps.report] over every step, with the title `llmpipe report` gave it, is the artifact that command made: fresh."""
    from llmpipe.pipeline import build_steps, load_pipeline
    from llmpipe.step import state

    text = (run / "tiny.toml").read_text()
    steps = '", "'.join(STEPS)
    (run / "with_report.toml").write_text(text + f'\n[steps.report]\ninputs = ["{steps}"]\ntitle = "tiny: report"\n')
    built = build_steps(load_pipeline(run / "with_report.toml"))
    assert {name: state(st)[0] for name, st in built.items()} == {name: "fresh" for name in built}
    again = run_cli("report", "with_report.toml", cwd=run, check=True)
    assert "report: fresh, skipped" in again.stderr


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.headings, self.images, self._in_h2 = [], [], False

    def handle_starttag(self, tag, attrs):
        self._in_h2 = self._in_h2 or tag == "h2"
        if tag == "img":
            self.images.append(dict(attrs))

    def handle_endtag(self, tag):
        self._in_h2 = self._in_h2 and tag != "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)")
def test_page_renders_in_headless_chromium(run, tmp_path):
    assert_renders_in_chromium(run / "work" / "report", tmp_path)


def assert_renders_in_chromium(report_dir: Path, tmp_path: Path) -> None:
    """report.html in headless Chromium: every section heading and every plot in the DOM (images as data URIs), and a
    screenshot that is a rendered page (many colours, none filling it). The quickstart test calls it too."""
    from PIL import Image

    page, report = (report_dir / "report.html").resolve(), json.loads((report_dir / "report.json").read_text())
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = _Page()
    parsed.feed(dom.stdout)
    assert parsed.headings == [title for _, title in SECTIONS]
    plots = [p["alt"] for s in report["sections"] for p in s["plots"]]
    assert [img["alt"] for img in parsed.images] == plots
    assert all(img["src"].startswith("data:image/png;base64,") for img in parsed.images)
    shot = subprocess.run([*base, f"--screenshot={tmp_path / 'page.png'}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0, shot.stderr[-2000:]
    image = Image.open(tmp_path / "page.png").convert("RGB")
    assert image.size == (1200, 900)
    colours = image.getcolors(maxcolors=1 << 20)
    assert len(colours) > 200, len(colours)  # header, text, the funnel plot's bars: not a blank page
    assert max(n for n, _ in colours) < 0.8 * 1200 * 900  # no single colour fills the page


def test_one_line_mistakes(run, tmp_path):
    from tests.test_errors import _one_line_error

    assert _one_line_error(tmp_path, "report", "missing.toml") == "error: missing.toml: no such pipeline file"
    assert _one_line_error(tmp_path, "report") == ("error: report: give a pipeline file (llmpipe report pipelines/pretrain.toml) "
                                                   "or --input ARTIFACT ... --output DIR")
    assert _one_line_error(tmp_path, "report", "--input", str(C4), "--output", "r").startswith(
        f"error: report inputs: {C4} is not an llmpipe artifact;")
    # a step not run yet is named
    (run / "more.toml").write_text((run / "tiny.toml").read_text() + '\n[steps.strict]\nstage = "filter"\ninputs = ["dedup"]\nmin_chars = 2000\n')
    assert _one_line_error(run, "report", "more.toml") == ("error: report: more.toml: 1 of 11 steps have no complete artifact yet (strict); "
                                                           "run them first: llmpipe run more.toml")
