"""dpo: preference pairs with a learnable signal raise held-out reward accuracy; the reference log-probs are
computed once and stored; hh-rlhf runs and prints its held-out accuracy; KTO, SimPO and ORPO train; mistakes
are one line."""

from __future__ import annotations

import json
import random

import pytest

from tests.conftest import run_cli
from tests.test_errors import _one_line_error

torch = pytest.importorskip("torch")


def _shuffled_pairs(shared_data, path, n=400, seed=0):
    """Alpaca instructions with their real answer (chosen) against the same words shuffled (rejected)."""
    rng = random.Random(seed)
    rows = json.loads((shared_data / "sft" / "alpaca_en_demo.json").read_text())
    with open(path, "w") as f:
        for row in rows[:n]:
            words = row["output"].split()
            if len(words) < 4:
                continue
            shuffled = words[:]
            while shuffled == words:
                rng.shuffle(shuffled)
            prompt = row["instruction"] + ("\n" + row["input"] if row.get("input") else "")
            f.write(json.dumps({"prompt": prompt, "chosen": row["output"], "rejected": " ".join(shuffled)}) + "\n")
    return path


def _manifest(path):
    return json.loads((path / "_manifest.json").read_text())


COMMON = ["--checkpoint", "model", "--max-seq-len", "128", "--batch-size", "16", "--micro-batch", "8", "--device", "cpu"]


@pytest.mark.slow
def test_dpo_learns_a_learnable_preference(chat_base, shared_data):
    data = _shuffled_pairs(shared_data, chat_base / "shuffled.jsonl")
    run_cli("dpo", "--input", str(data), "--output", "dpo", "--max-steps", "40", "--lr", "1e-3", "--val-fraction", "0.1", *COMMON,
            cwd=chat_base, check=True)
    m = _manifest(chat_base / "dpo")
    before, after = m["metrics"]["eval_rewards/accuracies_before"], m["metrics"]["eval_rewards/accuracies"]
    print(f"dpo (sigmoid, beta 0.1) on real answers vs word-shuffled copies: held-out reward accuracy {before:.3f} -> {after:.3f}, "
          f"margin {m['metrics']['eval_rewards/margins']:.3f} ({m['counts']['train_examples']} train / {m['counts']['val_examples']} held-out pairs, 40 steps)")
    assert after >= 0.8, m["metrics"]
    assert before == 0.0, "at step 0 the policy is the reference: every reward is 0, none strictly above"
    assert (chat_base / "dpo" / "reference_logps.safetensors").is_file()
    train = [json.loads(line) for line in (chat_base / "dpo" / "metrics.jsonl").read_text().splitlines() if "eval" not in line]
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"} <= set(train[0])


@pytest.mark.slow
def test_hh_rlhf_held_out_accuracy_is_printed(chat_base, shared_data):
    data = shared_data / "preference" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    run_cli("dpo", "--input", str(data), "--output", "hh", "--max-steps", "20", "--lr", "1e-3", *COMMON, cwd=chat_base, check=True)
    m = _manifest(chat_base / "hh")
    print(f"dpo on hh-rlhf harmless-base-test: {m['counts']['train_examples']} train pairs, 20 steps: held-out reward accuracy "
          f"{m['metrics']['eval_rewards/accuracies']:.3f} on {m['counts']['val_examples']} pairs; bad rows {m['stats'].get('skipped')}")
    assert m["counts"]["examples"] > 2000 and m["stats"]["skipped"]["prompts_differ"] == 5


@pytest.mark.parametrize("loss, data", [("kto", "kto_en_demo.json"), ("simpo", "dpo_en_demo.json"), ("orpo", "dpo_en_demo.json")])
def test_kto_simpo_orpo_train(chat_base, shared_data, loss, data):
    out = f"pref-{loss}"
    run_cli("dpo", "--input", str(shared_data / "preference" / data), "--output", out, "--loss", loss, "--max-steps", "2",
            "--batch-size", "8", "--micro-batch", "4", "--max-seq-len", "64", "--checkpoint", "model", "--device", "cpu", cwd=chat_base, check=True)
    m = _manifest(chat_base / out)
    assert m["counts"]["steps"] == 2 and (chat_base / out / "loss.png").is_file()
    assert (chat_base / out / "reference_logps.safetensors").exists() == (loss == "kto"), "simpo and orpo need no reference"
    train = [json.loads(line) for line in (chat_base / out / "metrics.jsonl").read_text().splitlines() if "eval" not in line]
    expected = {"kl", "rewards/chosen", "rewards/rejected"} if loss == "kto" else {"rewards/accuracies", "rewards/margins"}
    assert expected <= set(train[-1]), train[-1]
    if loss == "orpo":
        assert train[-1]["nll_loss"] > 0


def test_mistakes_are_one_line(chat_base, tmp_path, shared_data):
    data = str(shared_data / "preference" / "dpo_en_demo.json")
    line = _one_line_error(tmp_path, "dpo", "--input", data, "--output", "out", "--checkpoint", str(chat_base / "model"),
                           "--loss", "simpo", "--reference", str(chat_base / "model"))
    assert line == "error: dpo --reference: loss = 'simpo' is reference-free; drop reference or choose a reference-based loss"
    line = _one_line_error(tmp_path, "dpo", "--input", data, "--output", "out", "--checkpoint", str(chat_base / "model"), "--format", "alpaca")
    assert line.startswith("error: dpo --format: expected auto or one of paired, ")


@pytest.mark.slow
def test_finetune_pipeline_runs_sft_then_dpo(chat_base):
    """pipelines/finetune.toml as users copy it, pointed at a base model and shortened with --set."""
    from tests.conftest import REPO

    run_cli("run", str(REPO / "pipelines" / "finetune.toml"), "--set", f"sft.checkpoint={chat_base / 'model'}",
            "--set", "sft.max_steps=3", "--set", "sft.eval_every=0", "--set", "dpo.max_steps=2", "--set", "dpo.eval_every=0",
            cwd=chat_base, check=True)
    sft, dpo = (_manifest(chat_base / "runs" / "finetune" / name) for name in ("sft", "dpo"))
    assert sft["counts"]["steps"] == 3 and dpo["counts"]["steps"] == 2
    assert dpo["param_fingerprints"]["checkpoint"] == sft["content_hash"], "dpo reads the sft step's output"
    # the tuned chat model's greedy answers to held-out prompts, kept for the report
    assert [sorted(s) for s in dpo["samples"]] == [["answer", "key", "prompt"]] * 2 and all(s["prompt"] for s in dpo["samples"])
