"""llmpipe evaluate vs lm-evaluation-harness's `hf` backend on the same checkpoint and items, in one run.

HellaSwag (../shared/data/eval, the first N items; lm-eval reads them through its own hellaswag
process_docs from a local task YAML) zero-shot and few-shot, and the BLiMP-style pairs that ship
with llmpipe (blimp_mini, as lm-eval's blimp template scores them). For each: the largest
per-item log-likelihood difference, acc/acc_norm of each tool, how many items' acc/acc_norm
differ, and the wall time of each tool's process (model load included) with the ratio.

    python benchmarks/evaluate_vs_lm_eval.py                                  # trains a tiny model first (~30 s)
    python benchmarks/evaluate_vs_lm_eval.py --checkpoint runs/pretrain/model --items 500 --shots 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

HELLASWAG_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
output_type: multiple_choice
validation_split: validation
process_docs: !function utils.process_docs
doc_to_text: "{{{{query}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "choices"
num_fewshot: {shots}
metric_list:
  - metric: acc
  - metric: acc_norm
"""
BLIMP_YAML = """task: blimp_local
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
output_type: multiple_choice
validation_split: validation
doc_to_text: ""
doc_to_target: 0
doc_to_choice: "{{{{[sentence_good, sentence_bad]}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def tiny_checkpoint(tmp: Path) -> Path:
    """tests/conftest.py's chat_base model: 30 steps on the C4 sample, vocabulary 1000, context 256."""
    import llmpipe

    llmpipe.run_stage("ingest", [str(SHARED / "text" / "c4_demo.jsonl")], tmp / "docs")
    llmpipe.run_stage("train_tokenizer", [str(tmp / "docs")], tmp / "tok", vocab_size=1000, holdout_documents=30)
    llmpipe.run_stage("tokenize", [str(tmp / "docs")], tmp / "tokens", tokenizer=str(tmp / "tok"), val_fraction=0.1)
    llmpipe.run_stage("pretrain", [str(tmp / "tokens")], tmp / "model", tokenizer=str(tmp / "tok"), max_steps=30, n_layer=2, n_embd=64,
                      n_head=4, n_kv_head=4, seq_len=256, micro_batch=4, batch_tokens=2048, warmup_steps=2, eval_steps=1, device="cpu")
    return tmp / "model"


def timed(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if res.returncode:
        sys.exit(f"{' '.join(cmd[:4])} ... failed:\n{res.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="model directory (default: train the tests' tiny model)")
    ap.add_argument("--items", type=int, default=200, help="HellaSwag items")
    ap.add_argument("--shots", type=int, default=5, help="few-shot row")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    import pyarrow.parquet as pq

    sys.path.insert(0, str(REPO))
    from llmpipe.evaluation.tasks import SHIPPED, split_context

    tmp = Path(tempfile.mkdtemp(prefix="eval_bench_"))
    model = Path(args.checkpoint).resolve() if args.checkpoint else tiny_checkpoint(tmp)
    rows = [json.loads(line) for line in (SHARED / "eval" / "hellaswag_val.jsonl").read_text().splitlines()[:args.items]]
    data = tmp / "hellaswag.jsonl"
    data.write_text("".join(json.dumps({**r, "ctx_a": split_context(r["ctx"])[0], "ctx_b": split_context(r["ctx"])[1]}) + "\n" for r in rows))
    tasks = tmp / "lm_tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text("from lm_eval.tasks.hellaswag.utils import process_docs  # noqa: F401\n")
    runs = {"hellaswag 0-shot": ("hs0", 0), f"hellaswag {args.shots}-shot": (f"hs{args.shots}", args.shots), "blimp_mini": ("blimp_local", 0)}
    (tasks / "hs0.yaml").write_text(HELLASWAG_YAML.format(name="hs0", data=data, shots=0))
    (tasks / f"hs{args.shots}.yaml").write_text(HELLASWAG_YAML.format(name=f"hs{args.shots}", data=data, shots=args.shots))
    (tasks / "blimp_local.yaml").write_text(BLIMP_YAML.format(data=SHIPPED["blimp_mini"]))
    lines = ["| task | items | max abs diff of log-likelihoods | acc llmpipe / lm-eval | acc_norm llmpipe / lm-eval | items whose acc or acc_norm differ | seconds llmpipe / lm-eval | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    env = {"PYTHONPATH": str(REPO)}
    for label, (lm_task, shots) in runs.items():
        out_lm, out_ours = tmp / f"lm_{lm_task}", tmp / f"ours_{lm_task}"
        t_lm = timed([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32", "--tasks", lm_task,
                      "--include_path", str(tasks), "--device", "cpu", "--batch_size", str(args.batch_size), "--log_samples",
                      "--output_path", str(out_lm)], env=OFFLINE)
        spec = "blimp_mini" if lm_task == "blimp_local" else f"hellaswag={data}"
        t_ours = timed([sys.executable, "-m", "llmpipe", "evaluate", "--input", str(model), "--output", str(out_ours), "--tasks", spec,
                        "--num-fewshot", str(shots), "--batch-size", str(args.batch_size), "--device", "cpu"], env=env)
        (path,) = out_lm.rglob(f"samples_{lm_task}_*.jsonl")
        theirs = sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda r: r["doc_id"])
        ours = pq.read_table(next((out_ours / "samples").glob("*.parquet"))).to_pylist()
        diff = max(abs(a - float(r[0][0])) for o, t in zip(ours, theirs) for a, r in zip(o["loglikelihoods"], t["resps"]))
        differ = sum((o["acc"], o["acc_norm"]) != (t["acc"], t["acc_norm"]) for o, t in zip(ours, theirs))
        mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
        lines.append(f"| {label} | {len(ours)} | {diff:.1e} | {mean(ours, 'acc'):.3f} / {mean(theirs, 'acc'):.3f} | "
                     f"{mean(ours, 'acc_norm'):.3f} / {mean(theirs, 'acc_norm'):.3f} | {differ} | {t_ours:.1f} / {t_lm:.1f} | {t_lm / t_ours:.1f}x |")
    print(f"checkpoint: {model}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
