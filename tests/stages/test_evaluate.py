"""evaluate: per-item log-likelihoods and acc/acc_norm equal lm-evaluation-harness's `hf` backend on HellaSwag (zero- and
few-shot, with left truncation), bits per byte equals pretrain's validation, BLiMP-style pairs and the generic format score
as transformers' own log-probabilities say, GSM8K-style answers are extracted, and user mistakes are one line."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli, write

torch = pytest.importorskip("torch")
pq = pytest.importorskip("pyarrow.parquet")

HELLASWAG_ITEMS = 20


def _samples(out: Path, task: str) -> list[dict]:
    return pq.read_table(out / "samples" / f"{task}.parquet").to_pylist()


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())["results"]


def _hellaswag_sample(shared: Path, dest: Path) -> Path:
    """The first items of ../shared/data's HellaSwag (joined `ctx`), plus the ctx_a/ctx_b split lm-eval's preprocessing reads."""
    from llmpipe.evaluation.tasks import split_context

    rows = [json.loads(line) for line in (shared / "eval" / "hellaswag_val.jsonl").read_text().splitlines()[:HELLASWAG_ITEMS]]
    with open(dest, "w") as f:
        for row in rows:
            ctx_a, ctx_b = split_context(row["ctx"])
            f.write(json.dumps({**row, "ctx_a": ctx_a, "ctx_b": ctx_b}) + "\n")
    return dest


LM_EVAL_TASK = """task: {name}
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


def _lm_eval_samples(model: Path, data: Path, tmp: Path, shots: dict[str, int]) -> dict[str, list[dict]]:
    """lm-eval's --log_samples records of local HellaSwag tasks (lm-eval's own process_docs), one run, offline."""
    tasks = tmp / "lm_tasks"
    write(tasks / "utils.py", "from lm_eval.tasks.hellaswag.utils import process_docs  # noqa: F401\n")
    for name, n in shots.items():
        write(tasks / f"{name}.yaml", LM_EVAL_TASK.format(name=name, data=data, shots=n))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32", "--tasks", ",".join(shots),
           "--include_path", str(tasks), "--device", "cpu", "--batch_size", "8", "--log_samples", "--output_path", str(tmp / "lm_out")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    found = {}
    for name in shots:
        (path,) = (tmp / "lm_out").rglob(f"samples_{name}_*.jsonl")
        found[name] = sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda r: r["doc_id"])
    return found


@pytest.mark.slow  # ~40 s: lm-eval's own start and its transformers model on 112 requests
def test_hellaswag_equals_lm_evaluation_harness(chat_base, shared_data, tmp_path):
    """Must-show 1: the same per-item log-likelihoods (1e-4) and identical acc/acc_norm, zero-shot and 3-shot (whose contexts
    pass the model's 256 tokens, so lm-eval's left truncation is exercised too)."""
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is the compared peer (pip install 'lm-eval==0.4.13')")
    data = _hellaswag_sample(shared_data, tmp_path / "hellaswag.jsonl")
    lm = _lm_eval_samples(chat_base / "model", data, tmp_path, {"hs_zero": 0, "hs_three": 3})
    lines = (shared_data / "eval" / "hellaswag_val.jsonl").read_text().splitlines()[:HELLASWAG_ITEMS]
    joined = write(tmp_path / "joined.jsonl", "\n".join(lines) + "\n")
    import llmpipe

    llmpipe.run_stage("evaluate", [chat_base / "model"], tmp_path / "zero", tasks=[f"hellaswag={data}", f"joined={joined}"], device="cpu")
    llmpipe.run_stage("evaluate", [chat_base / "model"], tmp_path / "three", tasks=[f"hellaswag={data}"], num_fewshot=3, limit=8, device="cpu")
    for out, theirs in ((tmp_path / "zero", lm["hs_zero"]), (tmp_path / "three", lm["hs_three"][:8])):
        ours = _samples(out, "hellaswag")
        assert len(ours) == len(theirs) and [r["doc_id"] for r in ours] == [r["doc_id"] for r in theirs]
        for mine, peer in zip(ours, theirs):
            assert mine["context"] == peer["arguments"]["gen_args_0"]["arg_0"], "the same (few-shot) context"
            lls = [float(resp[0][0]) for resp in peer["resps"]]
            assert mine["loglikelihoods"] == pytest.approx(lls, abs=1e-4)
            assert (mine["acc"], mine["acc_norm"], mine["gold"]) == (peer["acc"], peer["acc_norm"], int(peer["target"]))
    assert _samples(tmp_path / "zero", "joined") == [{**r, "task": "joined"} for r in _samples(tmp_path / "zero", "hellaswag")], \
        "the joined-ctx layout of ../shared/data scores as HellaSwag's own ctx_a/ctx_b"
    res = _results(tmp_path / "zero")["hellaswag"]
    accs = [r["acc"] for r in lm["hs_zero"]]
    assert res["n"] == HELLASWAG_ITEMS and res["acc"] == pytest.approx(sum(accs) / len(accs))


def test_bits_per_byte_equals_pretrain_validation(chat_base, tmp_path):
    """The val split scored in windows of the context is pretrain's validation: its first eval batch (4 x 256) gives its figures."""
    import llmpipe

    m = llmpipe.run_stage("evaluate", [chat_base / "model", chat_base / "tokens"], tmp_path / "ev", limit=4, device="cpu")
    pretrain = json.loads((chat_base / "model" / "_manifest.json").read_text())["metrics"]
    assert m["metrics"]["perplexity/bits_per_byte"] == pytest.approx(pretrain["val_bpb"], abs=2e-5)
    assert m["metrics"]["perplexity/loss"] == pytest.approx(pretrain["val_loss"], abs=2e-5)
    assert (m["metrics"]["perplexity/n"], m["metrics"]["perplexity/tokens"]) == (4, 1024)


def test_documents_perplexity_scores_every_token_once(chat_base, tmp_path):
    """Each document is scored from bos in windows of the context: a 600-token document is as many predictions."""
    import llmpipe
    from llmpipe.text.tokenizer import load_tokenizer

    tok = load_tokenizer(chat_base / "model")
    texts = ["The cat sat on the mat.", " ".join(["a long document about the weather and the sea"] * 80)]
    docs = write(tmp_path / "held_out.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in texts))
    llmpipe.run_stage("evaluate", [chat_base / "model", docs], tmp_path / "ev", device="cpu")
    rows = _samples(tmp_path / "ev", "perplexity")
    assert [r["tokens"] for r in rows] == [len(tok.encode(t)) for t in texts] and rows[1]["tokens"] > 256
    res = _results(tmp_path / "ev")["perplexity"]
    assert res["loss"] == pytest.approx(sum(r["nats"] for r in rows) / sum(r["tokens"] for r in rows))


def test_a_checkpoint_transformers_wrote_and_a_documents_artifact(chat_base, tmp_path):
    """Any Llama directory transformers saved (with the llmpipe tokenizer files beside it) scores as the llmpipe checkpoint;
    a documents artifact is held-out text, one row per document."""
    transformers = pytest.importorskip("transformers")
    import shutil

    import llmpipe
    from llmpipe.artifacts.checkpoint import TOKENIZER_FILES

    transformers.AutoModelForCausalLM.from_pretrained(chat_base / "model", dtype=torch.float32).save_pretrained(tmp_path / "hf")
    for name in TOKENIZER_FILES:
        shutil.copy(chat_base / "model" / name, tmp_path / "hf" / name)
    for model, out in ((tmp_path / "hf", "from_hf"), (chat_base / "model", "ours")):
        llmpipe.run_stage("evaluate", [model, chat_base / "docs"], tmp_path / out, tasks=["blimp_mini"], limit=5, device="cpu")
    hf, ours = _samples(tmp_path / "from_hf", "blimp_mini"), _samples(tmp_path / "ours", "blimp_mini")
    assert [x for r in hf for x in r["loglikelihoods"]] == pytest.approx([x for r in ours for x in r["loglikelihoods"]], abs=1e-5)
    assert len(_samples(tmp_path / "ours", "perplexity")) == 5 and _results(tmp_path / "ours")["perplexity"]["bits_per_byte"] > 0


def _hf_logprob(model, ids: list[int], n_continuation: int) -> float:
    """transformers' own sum of log-probabilities of the last n_continuation ids."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return float(sum(logits[i - 1, ids[i]] for i in range(len(ids) - n_continuation, len(ids))))


def test_blimp_pairs_and_generic_format_score_as_transformers_does(chat_base, tmp_path):
    """Hand-made files: BLiMP-style pairs score each sentence whole after bos; the generic format the choice after its
    context; both as transformers' model computes them, and acc/acc_norm follow from those numbers."""
    transformers = pytest.importorskip("transformers")
    import llmpipe
    from llmpipe.text.tokenizer import load_tokenizer

    pairs = [("The dogs bark loudly.", "The dogs barks loudly."), ("She wrote a letter.", "She writed a letter."),
             ("I saw nobody.", "I saw nobody nobody.")]
    blimp = write(tmp_path / "pairs.jsonl", "".join(json.dumps({"sentence_good": g, "sentence_bad": b}) + "\n" for g, b in pairs))
    items = [{"context": "Question: what colour is the sky?\nAnswer:", "choices": ["blue", "a very long answer made of many words"], "gold": 1},
             {"context": "The capital of France is ", "choices": ["Paris.", "London."], "gold": 0}]
    generic = write(tmp_path / "mine.jsonl", "".join(json.dumps(i) + "\n" for i in items))
    llmpipe.run_stage("evaluate", [chat_base / "model"], tmp_path / "ev", tasks=[f"blimp={blimp}", str(generic)], device="cpu")
    hf = transformers.AutoModelForCausalLM.from_pretrained(chat_base / "model", dtype=torch.float32).eval()
    tok = load_tokenizer(chat_base / "model")
    for row, (good, bad) in zip(_samples(tmp_path / "ev", "blimp"), pairs):
        expected = [_hf_logprob(hf, [tok.bos_id] + tok.encode(" " + s), len(tok.encode(" " + s))) for s in (good, bad)]
        assert row["loglikelihoods"] == pytest.approx(expected, abs=1e-4)
        assert (row["gold"], row["acc"]) == (0, float(expected[0] > expected[1]))
    for row, item in zip(_samples(tmp_path / "ev", "mine"), items):
        context = item["context"].rstrip()  # the trailing space moves to the continuation, as in lm-eval
        moved = item["context"][len(context):]
        expected = []
        for choice in item["choices"]:
            whole, ctx = [tok.bos_id] + tok.encode(context + moved + " " + choice), [tok.bos_id] + tok.encode(context)
            expected.append(_hf_logprob(hf, whole, len(whole) - len(ctx)))
        assert row["loglikelihoods"] == pytest.approx(expected, abs=1e-4)
        per_char = [ll / len(c) for ll, c in zip(expected, item["choices"])]
        assert row["acc"] == float(max(range(2), key=expected.__getitem__) == item["gold"])
        assert row["acc_norm"] == float(max(range(2), key=per_char.__getitem__) == item["gold"])
    res = _results(tmp_path / "ev")
    assert res["blimp"]["n"] == 3 and res["mine"]["n"] == 2 and set(res["mine"]) >= {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}


def test_metrics_as_lm_eval_computes_them():
    from llmpipe.evaluation.metrics import mean_stderr, multiple_choice

    assert multiple_choice([-4.0, -6.0], ["ab", "abcdef"], 1) == {"pred": 0, "acc": 0.0, "acc_norm": 1.0}  # -2/char vs -1/char
    assert multiple_choice([-3.0, -3.0], ["a", "b"], 0)["pred"] == 0, "a tie goes to the first choice (numpy argmax)"
    assert mean_stderr([1.0, 0.0, 1.0, 1.0]) == pytest.approx(0.25)  # sample std 0.5 / sqrt(4)
    assert mean_stderr([1.0]) is None


def test_fewshot_contexts_are_reproducible_with_the_seed(tmp_path):
    from llmpipe.evaluation.fewshot import contexts
    from llmpipe.evaluation.tasks import Doc

    docs = [Doc(f"q{i}", ("wrong", f"a{i}"), 1) for i in range(12)]
    first = contexts(docs, 5, 3, seed=1234)
    assert first == contexts(docs, 5, 3, seed=1234) and first != contexts(docs, 5, 3, seed=7)
    for i, ctx in enumerate(first):
        shots = ctx.split("\n\n")
        assert len(shots) == 4 and shots[-1] == f"q{i}" and f"q{i} a{i}" not in shots, "three other solved items, then the item"
        assert all(s.startswith("q") and s.split(" ")[1] == "a" + s.split(" ")[0][1:] for s in shots[:-1])
    assert contexts(docs, 5, 3, seed=1234)[:2] == contexts(docs, 2, 3, seed=1234), "a limit keeps the draws of the items before it"


def test_gsm8k_style_answers_are_extracted():
    from llmpipe.evaluation.metrics import cut_at_stop, extract_answer

    assert extract_answer("She sold 48 + 24 = 72 clips.\n#### 72") == "72"
    assert extract_answer("Total: $1,234.50. So #### 1,234") == "1234"
    assert extract_answer("Weng earns 12/60 = $0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $10.") == "10"
    assert extract_answer("It is -3 degrees") == "-3"
    assert extract_answer("no number here") == ""
    assert cut_at_stop(" 5 apples.\n\nQuestion: next", ("\n\n", "Question:")) == " 5 apples."


def test_generation_task_on_gsm8k_items(chat_base, shared_data, tmp_path):
    """GSM8K items from ../shared/data (Alpaca layout) as question/answer rows: greedy answers, extracted and compared."""
    import llmpipe
    from llmpipe.evaluation.metrics import extract_answer

    rows = json.loads((shared_data / "sft" / "gsm8k_train_alpaca.json").read_text())[:6]
    data = write(tmp_path / "gsm.jsonl", "".join(json.dumps({"question": r["instruction"], "answer": r["output"]}) + "\n" for r in rows))
    llmpipe.run_stage("evaluate", [chat_base / "model"], tmp_path / "ev", tasks=[f"gsm={data}"], num_fewshot=1, limit=3,
                      max_new_tokens=24, device="cpu")
    samples = _samples(tmp_path / "ev", "gsm")
    assert [s["gold"] for s in samples] == ["72", "10", "5"]
    for s in samples:
        assert s["context"].count("Question: ") == 2 and s["context"].endswith("\nAnswer:")
        assert "\n\n" not in s["generation"] and s["pred"] == extract_answer(s["generation"])
        assert s["exact_match"] == float(s["pred"] == s["gold"])
    assert _results(tmp_path / "ev")["gsm"]["n"] == 3


def test_a_pipeline_step_puts_metrics_in_the_manifest_and_reruns_when_a_task_file_changes(chat_base, tmp_path):
    pairs = write(tmp_path / "pairs.jsonl", json.dumps({"sentence_good": "The cat sleeps.", "sentence_bad": "The cat sleep."}) + "\n")
    write(tmp_path / "eval.toml", f'[pipeline]\nworkdir = "runs"\n\n[steps.evaluate]\ninputs = ["{chat_base / "model"}", "{chat_base / "tokens"}"]\n'
                                  f'tasks = ["blimp_mini", "mine={pairs}"]\nlimit = 2\ndevice = "cpu"\n')
    run_cli("run", "eval.toml", cwd=tmp_path, check=True)
    m = json.loads((tmp_path / "runs" / "evaluate" / "_manifest.json").read_text())
    assert {"blimp_mini/acc", "blimp_mini/acc_stderr", "mine/acc", "perplexity/bits_per_byte"} <= set(m["metrics"])
    assert "fresh, skipped" in run_cli("run", "eval.toml", cwd=tmp_path, check=True).stderr
    write(pairs, json.dumps({"sentence_good": "The dogs sleep.", "sentence_bad": "The dogs sleeps."}) + "\n")
    assert "fresh, skipped" not in run_cli("run", "eval.toml", cwd=tmp_path, check=True).stderr


@pytest.mark.parametrize("args, message", [
    (["--tasks", "hellaswg"], 'error: evaluate --tasks: unknown task "hellaswg"; give NAME=PATH.jsonl, a .jsonl file, or one that ships with llmpipe: blimp_mini'),
    (["--tasks", "hellaswag=nope.jsonl"], "error: evaluate --tasks: hellaswag data file nope.jsonl does not exist"),
    (["--tasks", "hellaswag"], "error: evaluate --tasks: hellaswag needs its data file: hellaswag=PATH.jsonl"),
    (["--tasks", "bad.jsonl"], "error: evaluate --tasks: bad.jsonl row 1 fits no task format (fields question, text; expected hellaswag: "
                               "activity_label, ctx, endings, label; blimp: sentence_good, sentence_bad; choice: context, choices, gold; generation: question, answer)"),
    (["--tasks", "blimp=bad.jsonl"], "error: evaluate --tasks: bad.jsonl is not in the blimp format (rows need sentence_good, sentence_bad; its first row has question, text)"),
    ([], "error: evaluate --tasks: nothing to evaluate; give --tasks (hellaswag=PATH, blimp_mini, a .jsonl task) or held-out text as another --input"),
])
def test_user_mistakes_are_one_line(chat_base, tmp_path, args, message):
    write(tmp_path / "bad.jsonl", json.dumps({"question": "q", "text": "t"}) + "\n")
    before = set(tmp_path.iterdir())
    res = run_cli("evaluate", "--input", str(chat_base / "model"), "--output", "out", *args, cwd=tmp_path, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().replace(str(tmp_path.resolve()), "<tmp>").replace(str(tmp_path), "<tmp>") == message
    assert set(tmp_path.iterdir()) == before, "nothing written"


def test_max_seq_len_evaluates_past_the_trained_context(chat_base, tmp_path):
    """The val split in windows of 512 (twice the 256 trained): RoPE extends and the windows hold 512 tokens (the losses
    are printed; tests/test_model_options.py compares RoPE and ALiBi past their trained length)."""
    import llmpipe

    trained = llmpipe.run_stage("evaluate", [chat_base / "model", chat_base / "tokens"], tmp_path / "at256", limit=2, device="cpu")["metrics"]
    longer = llmpipe.run_stage("evaluate", [chat_base / "model", chat_base / "tokens"], tmp_path / "at512", limit=2, device="cpu", max_seq_len=512)["metrics"]
    print(f"val loss in windows of 256 (trained): {trained['perplexity/loss']:.4f}; of 512: {longer['perplexity/loss']:.4f}")
    assert (trained["perplexity/tokens"], longer["perplexity/tokens"]) == (512, 1024)
    assert longer["perplexity/loss"] != trained["perplexity/loss"] and math.isfinite(longer["perplexity/loss"])


def test_max_seq_len_past_learned_positions_is_one_line(chat_base, tmp_path):
    from safetensors.torch import save_file

    from llmpipe.model import Model, ModelConfig

    model = Model(ModelConfig(n_layer=1, n_embd=32, n_head=2, n_kv_head=2, vocab_size=1000, max_seq_len=64, positions="learned"))
    ckpt = tmp_path / "learned"
    ckpt.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if "lm_head" not in k}, ckpt / "model.safetensors")
    (ckpt / "config.json").write_text(json.dumps(model.config.to_hf()))
    shutil.copy(chat_base / "model" / "tokenizer.model", ckpt)
    write(tmp_path / "held_out.jsonl", json.dumps({"text": "a held-out sentence"}) + "\n")
    res = run_cli("evaluate", "--input", "learned", "--input", "held_out.jsonl", "--output", "out", "--max-seq-len", "128", cwd=tmp_path, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip() == ("error: evaluate --max-seq-len: 128 is past the 64 learned absolute positions of learned; RoPE and "
                                  "ALiBi models extend past their trained context, this one cannot (give at most its trained context)")
    assert not (tmp_path / "out").exists()
