"""llmpipe chat: a tiny model overfit on three conversations answers them word for word through the chat
template and stops at <|end|> (with --message, piped stdin and a terminal); history, /reset, /exit and
--system change the answer as they should; streamed pieces join to the full decode; transformers stops
at <|end|> too (generation_config.json); a base checkpoint gets one line."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import llmpipe
from llmpipe.errors import InputError
from tests.conftest import REPO, ctrl_c_reaches_it
from tests.test_errors import _one_line_error

pytest.importorskip("torch")
pytest.importorskip("sentencepiece")

from llmpipe.decoding import Decoding  # noqa: E402  (after the skip: it imports torch)

# what the model learns: U1 -> A1, then U2 -> A2 in that conversation; U2 alone -> B2; U1 after system S -> C1
U1, A1 = "What is the capital of France?", "Paris, the city of light. Grüße 🗼"
U2, A2, B2 = "And of Japan?", "Tokyo, 東京.", "Which country do you mean?"
S, C1 = "Answer in German.", "Die Hauptstadt ist Paris."
END, EOS = 7, 2
CONTEXT = 128


def _conversations() -> list[list[dict]]:
    def turns(*pairs):
        return [{"role": role, "content": text} for role, text in pairs]

    return [turns(("user", U1), ("assistant", A1), ("user", U2), ("assistant", A2)),
            turns(("user", U2), ("assistant", B2)),
            turns(("system", S), ("user", U1), ("assistant", C1))]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """pretrain: a 1-step base checkpoint (no chat template); chat: a tiny model overfit on _conversations(),
    saved with the chat template and generation_config.json, as sft will save one."""
    import torch
    import torch.nn.functional as F

    from llmpipe.model import Model, ModelConfig
    from llmpipe.text.chat_template import IGNORE_INDEX, collate, render, write_chat_template, write_generation_config
    from llmpipe.text.tokenizer import load_tokenizer
    from llmpipe.artifacts.checkpoint import write_model_dir
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "text" / "c4_demo.jsonl").exists():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    tmp = tmp_path_factory.mktemp("chat")
    llmpipe.run_stage("ingest", [str(SHARED_DATA / "text" / "c4_demo.jsonl")], tmp / "docs")
    llmpipe.run_stage("train_tokenizer", [str(tmp / "docs")], tmp / "tok", vocab_size=500, holdout_documents=30)
    llmpipe.run_stage("tokenize", [str(tmp / "docs")], tmp / "tokens", tokenizer=str(tmp / "tok"), val_fraction=0.1)
    llmpipe.run_stage("pretrain", [str(tmp / "tokens")], tmp / "pretrain", tokenizer=str(tmp / "tok"), max_steps=1, n_layer=1, n_embd=32,
                      n_head=2, n_kv_head=2, seq_len=64, micro_batch=2, batch_tokens=128, warmup_steps=1, eval_steps=1, device="cpu")

    shutil.copytree(tmp / "pretrain", tmp / "chat")
    tok = load_tokenizer(tmp / "chat")
    x, labels, _ = collate([render(c, tok) for c in _conversations()], tok.special["pad"], CONTEXT)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_embd=64, n_head=4, n_kv_head=4, max_seq_len=CONTEXT)
    model = Model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):  # about 1.5 s on a CPU core; the loss ends near 0.01
        logits, _ = model(x)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    write_model_dir(tmp / "chat", model.state_dict(), config.to_hf(), "")
    write_chat_template(tmp / "chat")
    write_generation_config(tmp / "chat")
    _reseal(tmp / "chat")
    return tmp


def _reseal(artifact: Path) -> None:
    """Record the rewritten files in the copied manifest, as a stage's finalize does (an artifact changed after its
    manifest was written is refused: llmpipe/artifacts/verify.py)."""
    from llmpipe.artifacts.manifest import read_manifest, write_manifest
    from llmpipe.artifacts.verify import seal

    manifest = read_manifest(artifact, verify=False)
    manifest["files"] = sorted({*manifest["files"], *(f.name for f in artifact.iterdir() if f.is_file() and not f.name.startswith("_"))})
    manifest["content_hash"], manifest["checksums"] = seal(artifact, manifest["files"])
    write_manifest(artifact, manifest)


@pytest.fixture(scope="module")
def loaded(ckpts):
    from llmpipe.chat import load_chat_model

    return load_chat_model(ckpts / "chat")


def _chat(ckpts: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """`llmpipe chat <chat checkpoint> ARGS` with `stdin` piped in (so not a terminal)."""
    return subprocess.run([sys.executable, "-m", "llmpipe", "chat", str(ckpts / "chat"), *args], cwd=ckpts, input=stdin,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


# ---------------------------------------------------------------- the answers


def test_message_answers_through_the_template_and_stops_at_end(ckpts):
    res = _chat(ckpts, "--message", U1, "--max-new-tokens", "60")
    assert (res.returncode, res.stdout, res.stderr) == (0, A1 + "\n", "")
    res = _chat(ckpts, "--message", U1, "--system", S)
    assert (res.returncode, res.stdout, res.stderr) == (0, C1 + "\n", "")


def test_the_answer_is_the_learned_reply_and_its_end_token(ckpts, loaded):
    from llmpipe.generate import new_tokens
    from llmpipe.text.chat_template import render

    model, tok = loaded
    prompt, _ = render([{"role": "user", "content": U1}], tok, add_generation_prompt=True)
    assert prompt[0] == 5 and prompt[-1] == 6  # <|user|> ... <|assistant|>, no bos
    made = list(new_tokens(model, prompt, Decoding(60), stop_ids={END, EOS}))
    assert made == tok.encode(A1) + [END]  # 60 allowed, stopped at <|end|>


def test_a_stop_string_cuts_the_streamed_answer_and_the_kept_turn(ckpts, loaded):
    from llmpipe.chat import Chat

    model, tok = loaded
    for stop, shown in (("city", "Paris, the "), ("light. G", "Paris, the city of "), ("never said", A1)):
        chat = Chat(model, tok, decoding=Decoding(60), stop=(stop,))
        pieces = list(chat.reply(U1))
        assert "".join(pieces) == shown and chat.messages[-1] == {"role": "assistant", "content": shown}
    res = _chat(ckpts, "--message", U1, "--stop", "city")
    assert (res.returncode, res.stdout) == (0, "Paris, the \n")


def test_piped_lines_are_turns_of_one_conversation_and_reset_and_exit_work(ckpts):
    res = _chat(ckpts, stdin=f"{U1}\n\n   \n{U2}\n")  # blank lines are no turns
    assert (res.returncode, res.stdout, res.stderr) == (0, f"{A1}\n{A2}\n", "")  # A2 needs U1 and A1 before U2
    res = _chat(ckpts, stdin=f"{U1}\n/reset\n{U2}\n/exit\n{U1}\n")
    assert (res.returncode, res.stdout, res.stderr) == (0, f"{A1}\n{B2}\n", "")  # B2: U2 with nothing before it


def test_reset_keeps_the_system_message_and_the_seed(loaded):
    from llmpipe.chat import Chat

    model, tok = loaded
    chat = Chat(model, tok, system=S, decoding=Decoding(40))
    assert "".join(chat.reply(U1)) == C1
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant"] and chat.messages[2]["content"] == C1
    chat.reset()
    assert chat.messages == [{"role": "system", "content": S}] and "".join(chat.reply(U1)) == C1

    sampled = Chat(model, tok, decoding=Decoding(20, temperature=1.5, seed=7))
    first = "".join(sampled.reply(U2))
    sampled.reset()
    assert "".join(sampled.reply(U2)) == first


def test_sampling_flags_are_generates_and_give_the_library_answer(ckpts, loaded):
    from llmpipe.chat import Chat
    from llmpipe.cli import cli

    def sampling(command):
        own = ("checkpoint", "prompt", "prompts_file", "output", "batch_size", "num_beams", "length_penalty", "message", "system")
        return {p.name: (p.opts, repr(p.type), p.default, p.help) for p in cli.commands[command].params if p.name not in own}

    assert sampling("chat") == sampling("generate") and len(sampling("chat")) == 8
    model, tok = loaded
    expected = "".join(Chat(model, tok, decoding=Decoding(12, temperature=1.5, top_p=0.95, seed=3)).reply(U2))
    res = _chat(ckpts, "--message", U2, "--max-new-tokens", "12", "--temperature", "1.5", "--top-p", "0.95", "--seed", "3")
    assert (res.returncode, res.stdout) == (0, expected + "\n")


# ---------------------------------------------------------------- the context


def test_a_long_conversation_drops_its_oldest_turns_and_says_so_once(ckpts, loaded):
    from llmpipe.chat import Chat
    from llmpipe.text.chat_template import render

    model, tok = loaded
    chat = Chat(model, tok, system=S, decoding=Decoding(40))
    for text in (U1, U2, U1, U2, U1):
        "".join(chat.reply(text))
        assert len(render(chat.messages[:-1], tok, add_generation_prompt=True)[0]) + 40 <= CONTEXT
    assert chat.dropped_turns >= 1 and chat.messages[0] == {"role": "system", "content": S}

    too_long = " ".join(["the capital of France"] * 30)
    n = len(render([{"role": "user", "content": too_long}], tok, add_generation_prompt=True)[0])
    assert n >= CONTEXT
    with pytest.raises(InputError) as e:
        Chat(model, tok).reply(too_long)
    assert str(e.value) == (f"chat: the message is {n} tokens with the chat template, which leaves no room for an answer in "
                            f"the model's context of {CONTEXT} tokens; shorten it")
    # piped: the note once, then a message too long for any answer ends the run with its one line
    res = _chat(ckpts, "--max-new-tokens", "40", stdin=f"{U1}\n{U2}\n{U1}\n{U2}\n{U1}\n{too_long}\n{U1}\n")
    assert res.returncode == 2 and res.stdout.startswith(f"{A1}\n{A2}\n") and res.stdout.count("\n") == 5, res.stdout
    assert res.stderr.splitlines() == [f"note: the conversation no longer fits the model's context of {CONTEXT} tokens; "
                                       "the oldest turns are dropped from now on (the system message is kept)", f"error: {e.value}"]


# ---------------------------------------------------------------- what is not a chat checkpoint


def test_a_base_checkpoint_or_no_checkpoint_is_one_line(ckpts, tmp_path):
    def error(path: Path) -> str:
        return _one_line_error(tmp_path, "chat", str(path), "--message", "hi").replace(str(ckpts), "<ckpts>")

    hint = "give the output of sft or dpo (a checkpoint with a chat template)"
    assert error(ckpts / "pretrain") == f"error: chat: <ckpts>/pretrain has no chat template, so it is a base model; fine-tune it with llmpipe sft first, or {hint}"
    assert error(ckpts / "tok") == f"error: chat: <ckpts>/tok is a tokenizer artifact, not a checkpoint; {hint}"
    assert error(ckpts / "nope") == f"error: chat: checkpoint <ckpts>/nope does not exist; {hint}"
    other = tmp_path / "other"
    shutil.copytree(ckpts / "chat", other)
    config = json.loads((other / "tokenizer_config.json").read_text())
    (other / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{{ messages[0]['content'] }}"}))
    assert _one_line_error(tmp_path, "chat", "other") == (
        "error: chat: other has a chat template other than the one llmpipe sft writes; llmpipe chat renders only that one")


def test_sampling_values_out_of_range_are_refused_as_generate_refuses_them(ckpts, tmp_path):
    assert _one_line_error(tmp_path, "chat", str(ckpts / "chat"), "--top-p", "0") == (
        "error: Invalid value for '--top-p': 0.0 is not in the range 0<x<=1. (see llmpipe chat --help)")


# ---------------------------------------------------------------- streaming


def test_streamed_pieces_join_to_the_full_decode(loaded):
    from llmpipe.chat import Chat
    from llmpipe.generate import decode_stream

    model, tok = loaded
    text = "Grüße, 世界! 🤖 ok  two\nlines"
    pieces = list(decode_stream(tok, tok.encode(text)))
    assert "".join(pieces) == tok.decode(tok.encode(text)) == text
    assert "世" in pieces and "界" in pieces and "🤖" in pieces  # a character's byte tokens come out as one piece, when complete
    assert not any("\ufffd" in p for p in pieces) and len(pieces) >= 15
    # any ids at all, control tokens and broken UTF-8 included
    rng = random.Random(0)
    for _ in range(2000):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 30))]
        assert "".join(decode_stream(tok, ids)) == tok.decode(ids), ids
    # through the model: pieces as they are made, no leading space, the emoji whole
    answer = list(Chat(model, tok, decoding=Decoding(60)).reply(U1))
    assert "".join(answer) == A1 and answer[0] == "P" and answer[-1] == "🗼" and len(answer) > 10


def test_new_tokens_stops_at_any_stop_id_and_samples_as_model_generate(loaded):
    import torch

    from llmpipe.generate import generate, new_tokens

    model, tok = loaded
    ids = [tok.special["bos"], *tok.encode("The city")]
    greedy = list(new_tokens(model, ids, Decoding(12)))
    assert len(greedy) == 12 and greedy == model.generate(torch.tensor([ids]), 12)[0, len(ids):].tolist()
    stop = greedy[4]
    assert list(new_tokens(model, ids, Decoding(12), stop_ids={stop, -5})) == greedy[:greedy.index(stop) + 1]
    reference = model.generate(torch.tensor([ids]), 12, temperature=1.2, top_p=0.9, eos_token_id=EOS, generator=torch.Generator().manual_seed(5))
    assert generate(model, tok, "The city", Decoding(12, temperature=1.2, top_p=0.9, seed=5)).text == tok.decode(reference[0, 1:].tolist())
    assert len(list(new_tokens(model, ids, Decoding(500)))) == CONTEXT - len(ids)  # the context bounds it


# ---------------------------------------------------------------- transformers


def test_transformers_reads_generation_config_and_stops_at_end(ckpts, loaded, tmp_path):
    transformers = pytest.importorskip("transformers")
    from llmpipe.text.chat_template import write_generation_config

    assert transformers.GenerationConfig.from_pretrained(ckpts / "chat").eos_token_id == [EOS, END]
    hf = transformers.AutoModelForCausalLM.from_pretrained(ckpts / "chat").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(ckpts / "chat")
    prompt = hf_tok.apply_chat_template([{"role": "user", "content": U1}], add_generation_prompt=True, return_dict=True,
                                        return_tensors="pt")["input_ids"]
    out = hf.generate(prompt, max_new_tokens=60, do_sample=False)
    _, tok = loaded
    assert out[0, prompt.size(1):].tolist() == tok.encode(A1) + [END]  # stopped at the end of the turn, not 60 tokens later

    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.7, "eos_token_id": 2}))
    for name in ("tokenizer.model", "special_tokens.json"):
        shutil.copy(ckpts / "chat" / name, tmp_path / name)
    write_generation_config(tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text()) == {
        "temperature": 0.7, "bos_token_id": 1, "eos_token_id": [EOS, END], "pad_token_id": 3}


# ---------------------------------------------------------------- a terminal


def _terminal(ckpts: Path, keys: list[str]) -> tuple[int | None, str]:
    """Run llmpipe chat on a pseudo-terminal, typing each of `keys` once the "> " prompt shows; (exit code, screen).

    None for the exit code when it has not quit 60 s after the last key (it is killed then)."""
    import fcntl
    import pty
    import select
    import termios
    import time

    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "llmpipe", "chat", str(ckpts / "chat")], stdin=child, stdout=child, stderr=child,
                            cwd=ckpts, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
                            preexec_fn=lambda: (fcntl.ioctl(0, termios.TIOCSCTTY, 0), ctrl_c_reaches_it()))  # Ctrl-C: a SIGINT, as in a shell
    os.close(child)
    screen, keys, deadline = "", list(keys), time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if keys and screen.endswith("> "):
                # a person types after the prompt is up; a key sent at once can beat input() to its read, and a
                # Ctrl-C there waits for the next key (CPython checks signals before blocking, not during)
                time.sleep(0.3)
                os.write(main, keys.pop(0).encode())
                screen += "\u2328"  # marks where a key was typed
                deadline = time.monotonic() + 60
            if select.select([main], [], [], 0.2)[0]:
                try:
                    screen += os.read(main, 4096).decode("utf-8", "replace").replace("\r\n", "\n")
                except OSError:  # the child closed the terminal
                    break
        code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    return code, screen


def test_a_terminal_gets_a_prompt_streamed_answers_reset_and_quits_on_ctrl_d_or_ctrl_c(ckpts):
    code, screen = _terminal(ckpts, [f"{U1}\n", "/reset\n", f"{U2}\n", "/nope\n", "\x04"])
    assert code == 0 and "Traceback" not in screen, screen
    typed = [part.split("\n", 1)[-1] for part in screen.split("\u2328")[1:]]  # what followed each key, past its echo
    assert typed[0] == f"{A1}\n> "
    assert typed[1] == "(the conversation starts over)\n> "
    assert typed[2] == f"{B2}\n> "
    assert typed[3] == "unknown command /nope: /reset starts the conversation over, /exit quits\n> "
    code, screen = _terminal(ckpts, [f"{U1}\n", "\x03"])
    assert code == 0 and "Traceback" not in screen and f"{A1}\n> " in screen, screen
