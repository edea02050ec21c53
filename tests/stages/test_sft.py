"""sft: loss on assistant tokens only (multi-turn, across batch rows), no attention across examples, held-out
assistant-token loss falls on real Alpaca data against the base checkpoint, the saved chat template gives the
trained ids in transformers, and user mistakes are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.test_errors import _one_line_error

torch = pytest.importorskip("torch")
pytest.importorskip("sentencepiece")

@pytest.fixture(scope="module")
def base(chat_base):
    return chat_base


def _conversation():
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another one?"},
            {"role": "assistant", "content": "Green, of course."}]


def test_only_assistant_tokens_carry_loss_across_turns_and_rows(base):
    from llmpipe.text.chat_template import render
    from llmpipe.text.tokenizer import load_tokenizer
    from stages.sft import batch_tensors

    tok = load_tokenizer(base / "model")
    long_ids, long_mask = render(_conversation(), tok)
    short_ids, short_mask = render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}], tok)
    x, y = batch_tensors([(long_ids, long_mask), (short_ids, short_mask)], pad_id=tok.special["pad"], device="cpu")
    assert x.shape == y.shape == (2, len(long_ids) - 1)
    for row, (ids, mask) in enumerate([(long_ids, long_mask), (short_ids, short_mask)]):
        expected = [t if m else -1 for t, m in zip(ids[1:], mask[1:])] + [-1] * (x.shape[1] - len(ids) + 1)
        assert y[row].tolist() == expected, "labels are the next token on assistant tokens, -1 elsewhere and on padding"
    learned = tok.decode([t for t in y[0].tolist() if t != -1])  # <|end|> decodes to nothing
    assert learned == "Blue. Green, of course.", "both assistant turns (each piece keeps its dummy-prefix space), nothing else"
    assert sum(t == tok.special["end"] for t in y[0].tolist()) == 2, "each assistant turn's <|end|> is learned"


def test_no_attention_across_examples(base):
    """A row's logits are the same alone and beside a longer row (right padding, causal attention)."""
    from llmpipe.model import Model
    from llmpipe.text.chat_template import render
    from llmpipe.text.tokenizer import load_tokenizer
    from stages.sft import batch_tensors

    model, tok = Model.from_checkpoint(base / "model").eval(), load_tokenizer(base / "model")
    a = render(_conversation(), tok)
    b = render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], tok)
    with torch.no_grad():
        alone, _ = model(batch_tensors([b], tok.special["pad"], "cpu")[0])
        together, _ = model(batch_tensors([a, b], tok.special["pad"], "cpu")[0])
    n = len(b[0]) - 1
    torch.testing.assert_close(together[1, :n], alone[0, :n], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_sft_on_alpaca_lowers_held_out_assistant_loss(base, shared_data):
    from transformers import AutoTokenizer

    from llmpipe.text.chat_template import render
    from llmpipe.text.tokenizer import load_tokenizer

    data = shared_data / "sft" / "alpaca_en_demo.json"
    res = run_cli("sft", "--input", str(data), "--checkpoint", "model", "--output", "sft", "--max-steps", "60",
                  "--batch-size", "16", "--micro-batch", "8", "--max-seq-len", "256", "--lr", "3e-3", "--device", "cpu", cwd=base, check=True)
    m = json.loads((base / "sft" / "_manifest.json").read_text())
    before, after = m["metrics"]["val_loss_before"], m["metrics"]["val_loss"]
    print(f"sft on {data.name}: held-out assistant-token loss {before:.3f} -> {after:.3f} nats "
          f"({m['counts']['train_conversations']} train / {m['counts']['val_conversations']} held-out conversations, 60 steps)")
    assert after < 0.95 * before, (before, after)
    cut = m["stats"].get("dropped", {}).get("no_assistant_token_within_max_seq_len", 0)  # a prompt longer than 256 tokens
    assert m["counts"]["conversations"] + cut == 999 and cut < 10 and 20 <= m["counts"]["val_conversations"] <= 80
    assert m["stats"]["counts"]["format_alpaca"] == 999 and not m["stats"].get("skipped")
    assert len(m["samples"]) == 2 and all(s["answer"] for s in m["samples"]), m["samples"]
    assert "sample (" in res.stderr
    # `llmpipe chat --message` answers through the saved template, greedy, as the manifest's sample did
    sample = m["samples"][0]
    chat = run_cli("chat", "sft", "--message", sample["prompt"], "--max-new-tokens", "48", cwd=base, check=True)
    assert chat.stdout == sample["answer"] + "\n", "the same ids as the stage's greedy sample: the template's prompt"
    records = [json.loads(line) for line in (base / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert records[0] == {"eval": True, "step": 0, "val_loss": pytest.approx(before, abs=1e-5)}, "measured before training"
    # transformers' apply_chat_template on the saved checkpoint gives the ids sft trained on
    hf = AutoTokenizer.from_pretrained(str(base / "sft"))
    tok = load_tokenizer(base / "sft")
    messages = _conversation()
    assert hf.apply_chat_template(messages, tokenize=True, return_dict=False) == render(messages, tok)[0]
    assert hf.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True, return_dict=False) == render(messages[:-1], tok, add_generation_prompt=True)[0]


def test_mistakes_are_one_line(base, tmp_path):
    (tmp_path / "notes.txt").write_text("not instruction data\n")
    (tmp_path / "data.jsonl").write_text(json.dumps({"instruction": "Say hi", "output": "Hi"}) + "\n")
    line = _one_line_error(tmp_path, "sft", "--input", "data.jsonl", "--output", "out")
    assert line == "error: sft --checkpoint: give the model to tune (an earlier step or a checkpoint directory)"
    line = _one_line_error(tmp_path, "sft", "--input", "notes.txt", "--output", "out", "--checkpoint", str(base / "model"))
    assert line == "error: sft inputs: <tmp>/notes.txt is not instruction data; sft reads .json, .jsonl, .jsonl.gz, .jsonl.zst, .parquet files"
    line = _one_line_error(tmp_path, "sft", "--input", "data.jsonl", "--output", "out", "--checkpoint", str(base / "tok"))
    assert line == f"error: sft --checkpoint: {base}/tok has no model.safetensors; give a pretrain output or a checkpoint directory transformers loads"


def test_lora_sft_saves_a_peft_adapter_and_a_merged_checkpoint(base, shared_data):
    """Item 5 through the stage: trainable parameters = the formula; PEFT's model on the base checkpoint with the
    saved adapter gives the merged checkpoint's logits (to 1e-5)."""
    peft = pytest.importorskip("peft", reason="peft is a compared peer (the compare extra)")
    from transformers import AutoModelForCausalLM

    from llmpipe.model import Model
    from llmpipe.train.lora import lora_parameter_count

    run_cli("sft", "--input", str(shared_data / "sft" / "alpaca_en_demo.json"), "--checkpoint", "model", "--output", "lora",
            "--max-steps", "3", "--lora-rank", "4", "--lora-alpha", "8", "--lr", "1e-2", "--max-seq-len", "128", "--device", "cpu",
            cwd=base, check=True)
    m = json.loads((base / "lora" / "_manifest.json").read_text())
    merged = Model.from_checkpoint(base / "lora")
    assert m["counts"]["trainable_parameters"] == lora_parameter_count(merged.config, 4)
    ids = torch.tensor([[5, 17, 99, 230, 7, 41]])
    hf = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base / "model")), str(base / "lora" / "adapter")).eval()
    with torch.no_grad():
        ours, _ = merged.eval()(ids)
        theirs = hf(ids).logits
        plain, _ = Model.from_checkpoint(base / "model").eval()(ids)
    assert (ours - plain).abs().max() > 1e-3, "the adapter changed the model"
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def _sft_cmd(data, out, *extra):
    import sys

    return [sys.executable, "-m", "llmpipe", "sft", "--input", str(data), "--checkpoint", "model", "--output", out, "--max-seq-len", "128",
            "--batch-size", "8", "--micro-batch", "4", "--lr", "1e-3", "--device", "cpu", "--val-fraction", "0", *extra]


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if not r.get("eval")]


@pytest.mark.slow
def test_killed_sft_resumes_with_the_same_losses(base, shared_data):
    import signal
    import subprocess
    import time

    data = shared_data / "sft" / "alpaca_en_demo.json"
    subprocess.run(_sft_cmd(data, "full", "--max-steps", "30", "--checkpoint-every", "10"), cwd=base, check=True, capture_output=True)
    proc = subprocess.Popen(_sft_cmd(data, "killed", "--max-steps", "30", "--checkpoint-every", "10"), cwd=base,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (base / "killed" / "checkpoints" / "step-10").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (base / "killed" / "_manifest.json").exists(), "killed before the end"
    resumed = subprocess.run(_sft_cmd(data, "killed", "--max-steps", "30", "--checkpoint-every", "10"), cwd=base, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    assert _losses(base / "killed") == _losses(base / "full") and len(_losses(base / "full")) == 30


@pytest.mark.slow
def test_two_process_ddp_sft_matches_one_process(base, shared_data):
    """2 ranks x 1 micro-batch of 4 conversations = 1 process x 2 micro-batches of 4: the same loss per step."""
    import subprocess

    data = shared_data / "sft" / "alpaca_en_demo.json"
    subprocess.run(_sft_cmd(data, "one", "--max-steps", "6"), cwd=base, check=True, capture_output=True)
    two = subprocess.run(_sft_cmd(data, "two", "--max-steps", "6", "--nproc-per-node", "2"), cwd=base, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr
    a, b = _losses(base / "one"), _losses(base / "two")
    assert len(a) == len(b) == 6 and max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)
    assert json.loads((base / "two" / "_manifest.json").read_text())["world_size"] == 2
