"""The templates users copy, each run as a user runs it on small real inputs: pipelines/data.toml on real
WARC and WET files, pipelines/finetune.toml on a tiny base model, pipelines/gpu.toml shrunk to the CPU;
and the Slurm examples, parsed here and submitted to the real local cluster when one is up."""

from __future__ import annotations

import json
import os
from collections import Counter
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from tests.conftest import REPO, SHARED_DATA, SLURM_MARKS, run_cli, write
from tests.test_resume import rows

SLURM_EXAMPLES = REPO / "examples" / "slurm"
DATA_STEPS = ["ingest", "language", "filter", "dedup", "decontaminate", "tokenizer", "tokens"]
# A sentence of the Creative Commons mission page in Dolma's WARC sample, as an eval item would leak it.
LEAKED_ITEM = {"id": "cc-mission", "question": "What is Creative Commons?",
               "answer": "Creative Commons (CC) is an international nonprofit organization that empowers people to grow and "
                         "sustain the thriving commons of shared knowledge and culture"}


def copy_template(name: str, cwd: Path) -> str:
    """Copy pipelines/NAME into cwd as a user copies a template; returns the path they then type."""
    (cwd / "pipelines").mkdir(exist_ok=True)
    shutil.copy(REPO / "pipelines" / name, cwd / "pipelines" / name)
    return f"pipelines/{name}"


def sets(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


def data_overrides(eval_dir: Path) -> list[str]:
    """data.toml pointed at real crawl files (two WARCs of Dolma's tests, resiliparse's WARC of mostly
    Chinese pages, a Common Crawl WET record in Aragonese) and eval sets, as a user types it; a 1,000-piece
    vocabulary and a 10% validation split fit a sample this small."""
    warc = SHARED_DATA / "warc"
    inputs = [f"{warc}/dolma/*.warc.gz", f"{warc}/resiliparse/warcfile.warc.gz", f"{warc}/commoncrawl/whirlwind.warc.wet.gz"]
    return sets(f"ingest.inputs={json.dumps(inputs)}", f"decontaminate.reference={eval_dir}", "tokenizer.vocab_size=1000",
                "tokens.val_fraction=0.1")


# Training runs use one thread per process: on a busy 2-core machine torch's second thread waits for a
# core, and a step takes ~10x longer (measured: dpo 4.3 s alone vs 49 s beside another training run).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def manifest(artifact: Path) -> dict:
    return json.loads((artifact / "_manifest.json").read_text())


@pytest.fixture(scope="module")
def data_run(tmp_path_factory) -> Path:
    """A directory where pipelines/data.toml ran on the WARC/WET sample (runs/data/<step>); ~12 s."""
    if not (SHARED_DATA / "warc" / "dolma").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    tmp = tmp_path_factory.mktemp("data_template")
    eval_dir = tmp / "eval"  # HellaSwag's validation set, plus one item leaked into the crawl
    eval_dir.mkdir()
    (eval_dir / "hellaswag_val.jsonl").symlink_to(SHARED_DATA / "eval" / "hellaswag_val.jsonl")
    write(eval_dir / "leaked.jsonl", json.dumps(LEAKED_ITEM) + "\n")
    run_cli("run", copy_template("data.toml", tmp), "--workers", "2", *data_overrides(eval_dir), cwd=tmp, check=True, timeout=120)
    return tmp


@pytest.mark.slow
def test_data_template_turns_warc_and_wet_into_token_shards(data_run):
    work = data_run / "runs" / "data"
    m = {step: manifest(work / step) for step in DATA_STEPS}
    # 58 documents: 41 pages of Dolma's two WARCs (trafilatura), 16 of resiliparse's, 1 WET record
    ingested = rows(work / "ingest")
    assert len(ingested) == m["ingest"]["counts"]["documents"] == 58
    wet = [r for r in ingested if r["path"].endswith("whirlwind.warc.wet.gz")]
    assert [r["url"] for r in wet] == ["https://an.wikipedia.org/wiki/Escopete"]
    # the funnel, step by step
    kept = [(m[s]["counts"]["documents"], m[s]["counts"].get("removed", 0)) for s in DATA_STEPS[1:5]]
    assert kept == [(40, 18), (24, 16), (22, 2), (21, 1)]
    # language ID drops 15 of resiliparse's 16 pages (11 Chinese), the WET record (Aragonese, taken for Spanish)
    # and two English pages scored below FineWeb's 0.65
    dropped = Counter((Path(r["path"]).name, r["lang"], r["reason"]) for r in rows(work / "language" / "rejected"))
    assert dropped == {("warcfile.warc.gz", "zh", "lang_not_allowed"): 11, ("warcfile.warc.gz", "de", "lang_not_allowed"): 2,
                       ("warcfile.warc.gz", "ru", "lang_not_allowed"): 1, ("warcfile.warc.gz", "nl", "lang_not_allowed"): 1,
                       ("whirlwind.warc.wet.gz", "es", "lang_not_allowed"): 1, ("sample-0000.warc.gz", "en", "low_lang_score"): 1,
                       ("sample-0001.warc.gz", "en", "low_lang_score"): 1}
    assert {r["lang"] for r in rows(work / "language")} == {"en"}
    assert (work / "filter" / "funnel.png").stat().st_size > 10_000
    assert {r["reason"] for r in rows(work / "dedup" / "rejected")} == {"exact_duplicate"}
    # MinHash ran with FineWeb's 14 bands of 8 hashes
    assert {k: m["dedup"]["params"][k] for k in ("num_perm", "bands", "rows", "ngram")} == {"num_perm": 112, "bands": 14, "rows": 8, "ngram": 5}
    # decontamination indexed all 10,042 HellaSwag items and the leaked one, and removed the page it came from
    decon = m["decontaminate"]["decontamination"]
    assert (decon["eval_items_indexed"], decon["documents_contaminated"], list(decon["found"])) == (10043, 1, ["leaked.jsonl:cc-mission"])
    assert [r["url"] for r in rows(work / "decontaminate" / "rejected")] == ["https://creativecommons.org/mission/"]
    # a tokenizer whose ids transformers' tokenizer.json reproduces, and uint16 shards with a held-out split
    assert m["tokenizer"]["metrics"]["hf_mismatches"] == 0 and (work / "tokenizer" / "tokenizer.model").exists()
    tokens = m["tokens"]
    assert (tokens["vocab_size"], tokens["dtype"]) == (1000, "uint16")
    assert tokens["counts"] == {"documents": 21, "train_documents": 18, "train_tokens": 26518, "val_documents": 3, "val_tokens": 1400}
    shard = load_file(str(work / "tokens" / tokens["splits"]["train"]["shards"][0]["file"]))["tokens"]
    assert shard.dtype.name == "uint16" and len(shard) == 26518 and shard.max() < 1000
    # a second run finds every step fresh
    status = run_cli("status", "pipelines/data.toml", *data_overrides(data_run / "eval"), cwd=data_run, check=True)
    assert status.stdout.count("fresh") == len(DATA_STEPS), status.stdout


def test_data_template_as_written_asks_for_the_crawl(tmp_path):
    """Before its inputs are replaced the template says which line to change, in one line, writing nothing."""
    res = run_cli("status", copy_template("data.toml", tmp_path), cwd=tmp_path)
    assert res.returncode == 2 and not (tmp_path / "runs").exists()
    assert res.stderr.strip() == 'error: pipelines/data.toml [steps.ingest] inputs: no file matches "data/crawl/*.warc.gz"'


def gpu_shrunk_to_cpu() -> list[str]:
    """Every GPU setting of gpu.toml turned into what a 2-core CPU runs in seconds, DDP under torchrun kept (2 processes);
    the evaluate step runs as written."""
    return sets("model.model=tiny", "model.seq_len=128", "model.micro_batch=2", "model.batch_tokens=1024", "model.nproc_per_node=2",
                "model.device=cpu", "model.compile=false", "model.max_steps=4", "model.warmup_steps=1", "model.eval_every=2",
                "model.eval_steps=1", "model.checkpoint_every=2")


def test_gpu_template_as_written_is_a_valid_124m_ddp_run():
    """As written, its params pass their checks (types, preset, batch arithmetic) and describe the run it promises;
    the checks against the data and the device run in the shrunk test below."""
    from llmpipe.config import params_from_mapping
    from llmpipe.model import Model
    from llmpipe.pipeline import load_pipeline
    from llmpipe.registry import get_stage
    from stages.pretrain import model_config

    pipe = load_pipeline(REPO / "pipelines" / "gpu.toml")
    assert list(pipe.steps) == ["model", "evaluate"]
    params = {name: params_from_mapping(get_stage(s.stage_ref).params, s.params, s.where, s.stage_ref) for name, s in pipe.steps.items()}
    p = params["model"]
    assert (p.model, p.device, p.compile, p.nproc_per_node, pipe.slurm["gpus_per_node"]) == ("124m", "cuda", True, 8, 8)
    assert p.batch_tokens // (p.micro_batch * p.seq_len * p.nproc_per_node) == 4  # gradient accumulation steps
    assert round(p.max_steps * p.batch_tokens / 1e9, 1) == 10.0  # FineWeb's 10B-token sample
    import torch

    with torch.device("meta"):  # the shape, without allocating it
        n = Model(model_config(p, 32000, {})).num_params()
    assert n == 109_529_856  # 124M with GPT-2's 50,257-token vocabulary
    assert (params["evaluate"].device, params["evaluate"].tasks, params["evaluate"].limit) == ("auto", ("blimp_mini",), 500)


@pytest.mark.slow
def test_gpu_template_shrunk_to_cpu_trains_with_ddp_and_evaluates(data_run):
    path = copy_template("gpu.toml", data_run)
    import torch

    if not torch.backends.cuda.is_built():  # as written it asks for CUDA, and says so before anything runs
        res = run_cli("status", path, cwd=data_run)
        assert res.returncode == 2 and res.stderr.strip() == (
            f"error: {path} [steps.model] device: torch {torch.__version__} is built without cuda support; "
            "use cpu (or auto), or install a torch built for cuda")
    run_cli("run", path, *gpu_shrunk_to_cpu(), cwd=data_run, check=True, timeout=120, env=ONE_THREAD)
    work = data_run / "runs" / "gpu"
    model = manifest(work / "model")
    assert model["world_size"] == 2 and model["counts"]["steps"] == 4  # two DDP processes under torchrun
    assert model["inputs"][0]["path"] == str(data_run / "runs" / "data" / "tokens")
    assert {"val_loss", "val_bpb"} <= set(model["metrics"])
    assert (work / "model" / "model.safetensors").exists() and (work / "model" / "tokenizer.model").exists()
    assert sorted(p.name for p in (work / "model" / "checkpoints").iterdir()) == ["step-2", "step-4"]
    results = json.loads((work / "evaluate" / "results.json").read_text())["results"]
    assert results["blimp_mini"]["n"] == 40 and results["perplexity"]["bits_per_byte"] > 0, results


@pytest.mark.slow
def test_finetune_template_tunes_quantizes_and_evaluates(chat_base, tmp_path):
    path = copy_template("finetune.toml", tmp_path)
    # as written it tunes the quickstart's model; before the quickstart it says so
    res = run_cli("status", path, cwd=tmp_path)
    assert res.returncode == 2 and not (tmp_path / "runs").exists()
    assert res.stderr.strip() == "error: pipelines/finetune.toml [steps.sft] checkpoint: input path runs/pretrain/model does not exist"
    # a user's own model and files (Alpaca rows; ShareGPT-style preference pairs), as the template's header shows
    sft_rows, pairs = SHARED_DATA / "sft/litgpt_fixtures/alpaca.json", SHARED_DATA / "preference/dpo_en_demo.json"
    shrink = sets(f"sft.checkpoint={chat_base / 'model'}", f"sft.inputs={json.dumps([str(sft_rows)])}", "sft.max_steps=10",
                  "sft.eval_every=10", f"dpo.inputs={json.dumps([str(pairs)])}", "dpo.max_steps=4", "dpo.eval_every=4", "dpo.max_seq_len=128")
    run_cli("run", path, *shrink, cwd=tmp_path, check=True, timeout=120, env=ONE_THREAD)
    work = tmp_path / "runs" / "finetune"
    m = {step: manifest(work / step) for step in ("sft", "dpo", "quantize", "evaluate")}
    assert m["sft"]["counts"]["steps"] == 10 and m["sft"]["counts"]["conversations"] == 23
    assert m["dpo"]["counts"]["steps"] == 4 and m["dpo"]["counts"]["examples"] == 300 and m["dpo"]["params"]["checkpoint"] == str(work / "sft")
    q = work / "quantize"
    scheme = json.loads((q / "config.json").read_text())["quantization"]
    assert (scheme["bits"], scheme["method"], len(scheme["modules"])) == (8, "rtn", 14)  # 2 blocks x 7 projections
    assert m["quantize"]["counts"]["quantized_layers"] == 14
    for gguf in ("F16", "Q8_0", "Q4_0"):
        assert (q / f"model-{gguf}.gguf").read_bytes()[:4] == b"GGUF"
        assert m["quantize"]["counts"][f"gguf_{gguf}_bytes"] == (q / f"model-{gguf}.gguf").stat().st_size
    assert m["evaluate"]["inputs"][0]["path"] == str(q)  # the quantized model is what was evaluated
    results = json.loads((work / "evaluate" / "results.json").read_text())["results"]
    assert results["blimp_mini"]["n"] == 40 and 0 <= results["blimp_mini"]["acc"] <= 1
    # the int8 chat model answers through its chat template
    answer = run_cli("chat", "runs/finetune/quantize", "--message", "What does os.path.join do?", "--max-new-tokens", "8",
                     cwd=tmp_path, check=True, env=ONE_THREAD)
    assert answer.stdout.strip()


# --- examples/slurm ----------------------------------------------------------------------------------


def shell_default(text: str) -> str:
    """${VAR:-default} -> default and "$@" -> the script's default pipeline: the words the command gets."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text).replace('"$@"', "pipelines/pretrain.toml")


def documented_commands() -> list[str]:
    """Every llmpipe command the Slurm examples run or show: the scripts' command lines, and `llmpipe ...`
    code in examples/slurm/README.md and in the README's Slurm section."""
    commands = []
    for script in sorted(SLURM_EXAMPLES.glob("*.sbatch")):
        commands += [line.strip() for line in script.read_text().splitlines() if re.match(r"\s*(python -m )?llmpipe ", line)]
    readme = (REPO / "README.md").read_text()
    section = readme.split("## On Slurm", 1)[1].split("\n## ", 1)[0]
    for text in ((SLURM_EXAMPLES / "README.md").read_text(), section):
        commands += re.findall(r"`(llmpipe [^`]+)`", text) + [line for line in text.splitlines() if line.startswith("llmpipe ")]
    commands = [shell_default(c).removeprefix("python -m ") for c in commands]
    return [c for c in commands if len(c.split()) > 2 and "--help" not in c]  # not the bare names (`llmpipe run`)


def test_slurm_scripts_are_valid_bash_with_llmpipe_commands_that_parse():
    for script in sorted(SLURM_EXAMPLES.glob("*.sbatch")):
        res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert res.returncode == 0, f"{script.name}: {res.stderr}"
        assert script.read_text().startswith("#!/bin/bash\n") and "#SBATCH" in script.read_text()
    import click

    from llmpipe.cli import cli

    commands = documented_commands()
    assert any("--executor slurm" in c for c in commands) and any(c.startswith("llmpipe ingest") for c in commands), commands
    for command in commands:
        words = shlex.split(command, comments=True)[1:]
        with cli.make_context("llmpipe", list(words)) as ctx:
            name, sub, rest = cli.resolve_command(ctx, words)
            try:
                sub.make_context(name, rest, parent=ctx)  # parses every flag and its value, runs nothing
            except click.UsageError as e:
                raise AssertionError(f"{command}: {e.format_message()}") from None


def sbatch_and_wait(args: list[str], cwd: Path, env: dict, timeout: float = 300) -> str:
    """Submit a job and wait for it to end; returns its final JobState (COMPLETED, FAILED, ...). Polls
    scontrol twice a second: sbatch --wait polls at growing intervals and returns ~30 s after a 10 s job."""
    res = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, capture_output=True, text=True, env=env, check=True)
    job = res.stdout.strip().split(";")[0]
    deadline = time.time() + timeout
    while time.time() < deadline:
        show = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
        state = re.search(r"JobState=(\w+)", show).group(1)
        if state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            return state
        time.sleep(0.5)
    subprocess.run(["scancel", job])
    raise AssertionError(f"job {job} still {state} after {timeout} s")


class TestOnSlurm:
    pytestmark = SLURM_MARKS

    def test_pipeline_sbatch_runs_the_data_template_in_one_allocation(self, data_run, tmp_path):
        """examples/slurm/pipeline.sbatch: the whole data.toml inside one Slurm job equals the local run, artifact by artifact."""
        path = copy_template("data.toml", tmp_path)
        args = ["--cpus-per-task=2", "--time=00:10:00", str(SLURM_EXAMPLES / "pipeline.sbatch"), path, *data_overrides(data_run / "eval")]
        state = sbatch_and_wait(args, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
        logs = "".join(p.read_text() for p in tmp_path.glob("llmpipe-pipeline-*.out"))
        assert state == "COMPLETED", logs
        assert "7 ran, 0 fresh" in logs
        for step in DATA_STEPS:
            slurm, local = manifest(tmp_path / "runs" / "data" / step), manifest(data_run / "runs" / "data" / step)
            assert (slurm["fingerprint"], slurm["counts"]) == (local["fingerprint"], local["counts"]), step
