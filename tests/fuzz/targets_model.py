"""Fuzz targets for the model-side files: fine-tuning data (sft, dpo/kto, grpo prompts), checkpoints, token shards,
tokenizers (sentencepiece and WordPiece), GGUF.

Data seeds are a few rows of each real file in ../shared/data/sft and ../shared/data/preference, re-serialised with
their long strings cut (small seeds let the mutations reach the structure). Model-side seeds are made at seed time
from the real text (tests/fuzz/model_seeds.py): a tiny tokenizer, token shards, a tiny checkpoint and its GGUF.

A reader that needs more than the mutated file (a tokenizer to render chats with, the config beside mutated weights)
finds the session's fixtures at <fuzz run dir>/fixtures, which the seeds function links there: the worker writes each
input to <fuzz run dir>/scratch/input<suffix>.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
from functools import cache
from pathlib import Path

from tests.fuzz.model_seeds import model_fixtures
from tests.fuzz.targets import Target, target

ROWS = 3  # per real file
CUT = 240  # characters kept of each string


# --- seeds --------------------------------------------------------------------------------------


def _cut(value):
    if isinstance(value, str):
        return value[:CUT]
    if isinstance(value, list):
        return [_cut(v) for v in value]
    if isinstance(value, dict):
        return {k: _cut(v) for k, v in value.items()}
    return value


def _json_rows(path: Path) -> list:
    return [_cut(row) for row in json.loads(path.read_text(encoding="utf-8"))[:ROWS]]


def _jsonl_rows(path: Path) -> list:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [_cut(json.loads(next(f))) for _ in range(ROWS)]


def _with_fixtures(make_seeds):
    """seeds(shared, tmp) that also links the session's model fixtures at tmp/fixtures for the reader."""
    def seeds(shared: Path, tmp: Path) -> list[bytes]:
        fixtures = model_fixtures(shared, tmp)
        if fixtures is None:
            return []
        (tmp / "fixtures").symlink_to(fixtures, target_is_directory=True)
        return make_seeds(shared, fixtures)
    return seeds


def _fixtures(path: Path) -> Path:
    return path.parent.parent / "fixtures"


def _as_json(rows: list) -> bytes:
    return json.dumps(rows, ensure_ascii=False, indent=1).encode()


def _as_jsonl(rows: list) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def _sft_sources(shared: Path) -> list[list]:
    sft, pref = shared / "sft", shared / "preference"
    return [
        _json_rows(sft / "alpaca_en_demo.json"), _json_rows(sft / "gsm8k_train_alpaca.json"),
        _json_rows(sft / "litgpt_fixtures" / "dolly.json"), _json_rows(sft / "litgpt_fixtures" / "longform_train.json"),
        _jsonl_rows(sft / "alpaca_seed_tasks.jsonl"), _jsonl_rows(sft / "dolly_hhrlhf_train_small.jsonl"),
        _jsonl_rows(sft / "llmfoundry_finetune_example.jsonl"),
        _json_rows(pref / "dpo_en_demo.json"),  # ShareGPT with a chosen reply
        [{"messages": r["messages"]} for r in _json_rows(pref / "kto_en_demo.json")],  # OpenAI messages
    ]


def _preference_sources(shared: Path) -> list[list]:
    pref = shared / "preference"
    return [_json_rows(pref / "dpo_en_demo.json"), _json_rows(pref / "kto_en_demo.json"),
            _jsonl_rows(pref / "hh-rlhf" / "harmless-base-test.jsonl.gz")]


def _prompt_sources(shared: Path) -> list[list]:
    """grpo's rows: a question with its answer, a prompt of chat turns, and what sft reads (its reply the answer)."""
    gsm8k = _json_rows(shared / "sft" / "gsm8k_train_alpaca.json")
    return [[{"question": r["instruction"], "answer": r["output"][-20:]} for r in gsm8k],
            [{"prompt": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": r["instruction"]}], "answer": 3}
             for r in gsm8k],
            *_sft_sources(shared)[:3]]


# --- readers ------------------------------------------------------------------------------------


@cache
def _tokenizer(fixtures: Path):
    from llmpipe.text.tokenizer import load_tokenizer

    return load_tokenizer(fixtures / "tok")


def _sft(path: Path) -> None:
    """As sft's load_examples: every conversation of the file read and rendered on the chat template."""
    from llmpipe.stats import TaskStats, check_bad_fraction
    from llmpipe.text.chat_data import read_chat_file
    from llmpipe.text.chat_template import render

    tok, stats = _tokenizer(_fixtures(path)), TaskStats()
    for _, messages in read_chat_file(path, "auto", stats):
        render(messages, tok)
    check_bad_fraction(stats.to_json(), "rows", 0.5, "sft")


def _dpo(path: Path) -> None:
    """As dpo's load_examples with a pairwise loss: every pair read and rendered."""
    from llmpipe.stats import TaskStats, check_bad_fraction
    from llmpipe.text.preference_data import read_preferences, render_pair

    tok, stats = _tokenizer(_fixtures(path)), TaskStats()
    for pair in read_preferences([path], "auto", stats):
        render_pair(pair, tok)
    check_bad_fraction(stats.to_json(), "rows", 0.5, "dpo")


def _kto(path: Path) -> None:
    """As dpo's load_examples with loss kto: every labelled completion read and rendered."""
    from llmpipe.stats import TaskStats, check_bad_fraction
    from llmpipe.text.preference_data import read_kto, render_kto

    tok, stats = _tokenizer(_fixtures(path)), TaskStats()
    for example in read_kto([path], "auto", stats):
        render_kto(example, tok)
    check_bad_fraction(stats.to_json(), "rows", 0.5, "dpo")


def _grpo(path: Path) -> None:
    """As grpo's load_examples: every prompt read and rendered with the assistant header, its answer kept."""
    from llmpipe.stats import TaskStats, check_bad_fraction
    from llmpipe.text.chat_template import render
    from stages.grpo import read_prompts

    tok, stats = _tokenizer(_fixtures(path)), TaskStats()
    for prompt in read_prompts([path], "auto", stats):
        render(prompt.messages, tok, add_generation_prompt=True)
    check_bad_fraction(stats.to_json(), "rows", 0.5, "grpo")


def _tokenizer_json(path: Path) -> None:
    """A WordPiece tokenizer directory whose tokenizer.json is the fuzz input: loaded as every stage given it loads
    it, then used to encode, decode and render a chat."""
    from llmpipe.text.chat_template import render
    from llmpipe.text.tokenizer import load_tokenizer

    tok = load_tokenizer(_dir_around(path, "tok-wordpiece", ("tokenizer.json", "special_tokens.json"), "tokenizer.json"))
    tok.decode(tok.encode("The quick brown fox, 1234 ünïcode 字 [CLS] ##ing"))
    render([{"role": "user", "content": "Hi <|user|>"}, {"role": "assistant", "content": "Hello."}], tok)


def _token_shard(path: Path) -> None:
    """As pretrain and evaluate read a tokens artifact: the shard mapped, every batch of an epoch cut from it."""
    from llmpipe.train.data import PackedBatches, TokenStream

    stream = TokenStream([path])
    stream.read(0, len(stream))
    if len(stream) > 4 * 8:  # pretrain's plan refuses a tokens artifact with less than one step of tokens
        data = PackedBatches([path], seq_len=8, batch_size=4, seed=0)
        for step in range(data.steps_per_epoch):
            data.batch_array(step)


def _dir_around(path: Path, fixture: str, files: tuple[str, ...], mutated: str) -> Path:
    """A directory beside the input, named as `fixture`, holding `files`: `mutated` is the fuzz input, the others are
    the fixture's."""
    out = path.parent / fixture
    if not out.exists():
        out.mkdir()
        for name in files:
            if name == mutated:
                (out / name).symlink_to(path)
            else:
                shutil.copyfile(_fixtures(path) / fixture / name, out / name)
    return out


def _checkpoint_dir(path: Path, mutated: str, fixture: str = "checkpoint-tiny") -> Path:
    return _dir_around(path, fixture, ("model.safetensors", "config.json"), mutated)


def _load_model(ckpt: Path, encoder: bool = False) -> None:
    """As generate, chat and evaluate load a checkpoint (an encoder: as llmpipe inspect does): the model built from it,
    and a forward pass."""
    import torch

    from llmpipe.model import Model

    model = Model.from_checkpoint(ckpt, encoder=encoder)
    with torch.no_grad():
        model(torch.tensor([[1, 5, 9, 2]]) % model.config.vocab_size)


def _tokenizer_model(path: Path) -> None:
    """As a stage given --tokenizer FILE.model: checked in its plan (a ValueError there is one line, api.py), loaded,
    and used to encode and decode."""
    from llmpipe.errors import ConfigError
    from llmpipe.text.tokenizer import check_tokenizer, load_tokenizer

    try:
        check_tokenizer(path)
    except ValueError as e:
        raise ConfigError(f"tokenize {e}") from None
    tok = load_tokenizer(path)
    ids = tok.encode("The quick brown fox, 1234 ünïcode 字 <s>")
    tok.decode(ids)


def _special_tokens(path: Path) -> None:
    """A tokenizer directory whose special_tokens.json is the fuzz input: checked as sft's plan checks a checkpoint's
    tokenizer (a ValueError there is one line, api.py), loaded, and a chat rendered."""
    from llmpipe.errors import ConfigError
    from llmpipe.text.chat_template import render, role_ids
    from llmpipe.text.tokenizer import load_tokenizer

    tok = load_tokenizer(_dir_around(path, "tok", ("tokenizer.model", "special_tokens.json"), "special_tokens.json"))
    try:
        role_ids(tok)
    except ValueError as e:
        raise ConfigError(f"sft {e}") from None
    render([{"role": "user", "content": "Hi <|user|>"}, {"role": "assistant", "content": "Hello."}], tok)


def _gguf(path: Path) -> None:
    """`llmpipe inspect FILE.gguf`, printed to a buffer."""
    from rich.console import Console

    from llmpipe.gguf_inspect import show_gguf

    show_gguf(path, Console(file=io.StringIO(), width=200))


# --- targets ------------------------------------------------------------------------------------


target(Target(name="sft_json", suffix=".json", read=_sft,
              seeds=_with_fixtures(lambda shared, fx: [_as_json(rows) for rows in _sft_sources(shared)])))
target(Target(name="sft_jsonl", suffix=".jsonl", read=_sft,
              seeds=_with_fixtures(lambda shared, fx: [_as_jsonl(rows) for rows in _sft_sources(shared)])))
target(Target(name="preference_json", suffix=".json", read=_dpo,
              seeds=_with_fixtures(lambda shared, fx: [_as_json(rows) for rows in _preference_sources(shared)])))
target(Target(name="preference_jsonl", suffix=".jsonl", read=_dpo,
              seeds=_with_fixtures(lambda shared, fx: [_as_jsonl(rows) for rows in _preference_sources(shared)])))
target(Target(name="kto_json", suffix=".json", read=_kto,
              seeds=_with_fixtures(lambda shared, fx: [_as_json(rows) for rows in _preference_sources(shared)])))
target(Target(name="token_shard", suffix=".safetensors", read=_token_shard,
              seeds=_with_fixtures(lambda shared, fx: [p.read_bytes() for p in sorted((fx / "shards").iterdir())])))
target(Target(name="checkpoint_weights", suffix=".safetensors", read=lambda p: _load_model(_checkpoint_dir(p, "model.safetensors")),
              seeds=_with_fixtures(lambda shared, fx: [(fx / "checkpoint-tiny" / "model.safetensors").read_bytes()])))
target(Target(name="checkpoint_config", suffix=".json", read=lambda p: _load_model(_checkpoint_dir(p, "config.json")),
              seeds=_with_fixtures(lambda shared, fx: [(fx / "checkpoint-tiny" / "config.json").read_bytes()])))
for _kind in ("moe", "encoder", "int8"):  # the other checkpoint layouts (tests/fuzz/model_seeds.py)
    target(Target(name=f"checkpoint_{_kind}_config", suffix=".json",
                  read=lambda p, f=f"checkpoint-{_kind}": _load_model(_checkpoint_dir(p, "config.json", f), encoder=f.endswith("encoder")),
                  seeds=_with_fixtures(lambda shared, fx, f=f"checkpoint-{_kind}": [(fx / f / "config.json").read_bytes()])))
target(Target(name="checkpoint_int8_weights", suffix=".safetensors",
              read=lambda p: _load_model(_checkpoint_dir(p, "model.safetensors", "checkpoint-int8")),
              seeds=_with_fixtures(lambda shared, fx: [(fx / "checkpoint-int8" / "model.safetensors").read_bytes()])))
target(Target(name="tokenizer_model", suffix=".model", read=_tokenizer_model,
              seeds=_with_fixtures(lambda shared, fx: [(fx / "tok" / "tokenizer.model").read_bytes()])))
target(Target(name="special_tokens", suffix=".json", read=_special_tokens,
              seeds=_with_fixtures(lambda shared, fx: [(fx / "tok" / "special_tokens.json").read_bytes()])))
target(Target(name="gguf", suffix=".gguf", read=_gguf,
              seeds=_with_fixtures(lambda shared, fx: [(fx / f"model-{k}.gguf").read_bytes() for k in ("F32", "F16")])))
target(Target(name="grpo_prompts_json", suffix=".json", read=_grpo,
              seeds=_with_fixtures(lambda shared, fx: [_as_json(rows) for rows in _prompt_sources(shared)])))
target(Target(name="grpo_prompts_jsonl", suffix=".jsonl", read=_grpo,
              seeds=_with_fixtures(lambda shared, fx: [_as_jsonl(rows) for rows in _prompt_sources(shared)])))
target(Target(name="tokenizer_json", suffix=".json", read=_tokenizer_json,
              seeds=_with_fixtures(lambda shared, fx: [(fx / "tok-wordpiece" / "tokenizer.json").read_bytes()])))
