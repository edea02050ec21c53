"""chat_template: render()'s ids and assistant mask on a tokenizer trained here on real text, and the
saved Jinja template giving exactly those ids (and that mask) through transformers' apply_chat_template."""

from __future__ import annotations

import json

import pytest

import llmpipe
from llmpipe.text.chat_data import read_chat_file
from llmpipe.text.chat_template import IGNORE_INDEX, JINJA_TEMPLATE, collate, render, write_chat_template
from llmpipe.text.tokenizer import load_tokenizer

pytest.importorskip("sentencepiece")

SYSTEM, USER, ASSISTANT, END = 4, 5, 6, 7  # the ids llmpipe's tokenizer gives the chat role tokens

# where tokenizers and templates tend to disagree: whitespace at the edges, runs of it, newlines,
# bytes outside the vocabulary, special and role token strings inside a message
EDGE = [
    [{"role": "user", "content": " Hello  world "}, {"role": "assistant", "content": "  two leading, one trailing "}],
    [{"role": "system", "content": "\n"}, {"role": "user", "content": "\n\nstarts with newlines"}, {"role": "assistant", "content": "ends with newline\n"}],
    [{"role": "user", "content": "Ünïcode 中文 🤖 ÿ \u2581literal block"}, {"role": "assistant", "content": "日本語のテキスト。 emoji 🤖🤖"}],
    [{"role": "user", "content": "tab\there\r\nwindows"}, {"role": "assistant", "content": "\t"}, {"role": "user", "content": " "}, {"role": "assistant", "content": "x"}],
    [{"role": "user", "content": "<s> </s> <unk> <pad> stay text"}, {"role": "assistant", "content": "<|end|> and x<|assistant|>y<|user|>"}],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
    [{"role": "assistant", "content": "an assistant turn alone"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "12345.678 + 9?"}, {"role": "assistant", "content": "12354.678"},
     {"role": "user", "content": "And twice that?"}, {"role": "assistant", "content": "24709.356"}],
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    tmp = tmp_path_factory.mktemp("chat_tok")
    llmpipe.run_stage("ingest", [str(SHARED_DATA / "text/c4_demo.jsonl")], tmp / "docs")
    llmpipe.run_stage("train_tokenizer", [str(tmp / "docs")], tmp / "tok", vocab_size=2000, holdout_documents=30)
    write_chat_template(tmp / "tok")
    return tmp / "tok"


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


@pytest.fixture(scope="module")
def conversations(shared_data_dir):
    """Real conversations: multi-turn ShareGPT with system prompts, Alpaca, GSM8K, LLM Foundry prompts."""
    picks = [("preference/dpo_en_demo.json", 80), ("sft/alpaca_en_demo.json", 60), ("sft/gsm8k_train_alpaca.json", 20),
             ("sft/dolly_hhrlhf_train_small.jsonl", 20), ("sft/litgpt_fixtures/dolly.json", 12)]
    out = []
    for name, n in picks:
        rows = read_chat_file(shared_data_dir / name)
        out += [messages for _, (_, messages) in zip(range(n), rows)]
    return out


@pytest.fixture(scope="module")
def shared_data_dir():
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


def test_render_gives_role_tokens_content_and_a_mask_on_assistant_turns(tok):
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": " Later\n"}]
    enc = tok.encode
    ids, mask = render(messages, tok)
    assert ids == [SYSTEM, *enc("Be terse."), END, USER, *enc("Hi there"), END, ASSISTANT, *enc("Hello."), END,
                   USER, *enc("Bye"), END, ASSISTANT, *enc(" Later\n"), END]
    assert mask == [0] * (len(enc("Be terse.")) + 2) + [0] * (len(enc("Hi there")) + 2) + [0] + [1] * (len(enc("Hello.")) + 1) \
        + [0] * (len(enc("Bye")) + 2) + [0] + [1] * (len(enc(" Later\n")) + 1)
    assert 1 not in ids  # no bos: a template cannot emit it (see the module docstring)
    prompt, prompt_mask = render(messages[:4], tok, add_generation_prompt=True)
    assert prompt == ids[: len(prompt)] and prompt[-1] == ASSISTANT and prompt_mask == mask[: len(prompt)]


def test_mask_covers_exactly_every_assistant_turn_of_real_conversations(tok, conversations):
    turns = 0
    for messages in conversations:
        ids, mask = render(messages, tok)
        spans, start = [], None
        for i, m in enumerate(mask + [0]):
            if m and start is None:
                start = i
                assert ids[i - 1] == ASSISTANT  # every learnt span follows its role header, which carries no loss
            elif not m and start is not None:
                spans.append(ids[start:i])
                start = None
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        assert len(spans) == len(replies) and len(ids) == len(mask)
        for span, reply in zip(spans, replies):
            assert span == [*tok.encode(reply), END] and tok.decode(span[:-1]) == reply
        # everything else is headers, system and user turns: none of it carries loss
        assert sum(mask) == sum(len(tok.encode(r)) + 1 for r in replies)
        turns += len(replies)
    assert len(conversations) == 192 and turns == 143 + 112  # 80 dpo_en_demo rows (25 multi-turn) hold 143 replies


def test_transformers_apply_chat_template_gives_render_ids_exactly(tok_dir, tok, conversations):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(tok_dir)
    assert hf.chat_template == JINJA_TEMPLATE
    compared = tokens = 0
    for messages in conversations + EDGE:
        for generation in (False, True):
            ids, mask = render(messages, tok, add_generation_prompt=generation)
            out = hf.apply_chat_template(messages, add_generation_prompt=generation, tokenize=True, return_assistant_tokens_mask=True)
            assert out["input_ids"] == ids, messages
            assert out["assistant_masks"] == mask, messages  # the template's {% generation %} block marks the same tokens
            compared, tokens = compared + 1, tokens + len(ids)
        if messages[-1]["role"] == "assistant" and len(messages) > 1:  # a prompt for the next reply, as chat makes it
            ids, _ = render(messages[:-1], tok, add_generation_prompt=True)
            assert hf.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True)["input_ids"] == ids
    print(f"apply_chat_template == render on {compared} renderings, {tokens} tokens")
    assert compared == 2 * (192 + len(EDGE))


def test_whitespace_edged_real_contents_agree_with_transformers(tok_dir, tok, conversations):
    """Every message of the real conversations wrapped in seeded whitespace: where a piece's dummy-prefix
    "▁" meets a leading space or newline is where a template and its tokenizer part ways if any."""
    import random

    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(tok_dir)
    rng = random.Random(13)
    edges = ["", " ", "  ", "\n", "\n\n", "\t", " \n ", "\u3000", "\u2581"]
    differ = 0
    for messages in conversations:
        wrapped = [{"role": m["role"], "content": rng.choice(edges) + m["content"] + rng.choice(edges)} for m in messages]
        ids, mask = render(wrapped, tok)
        out = hf.apply_chat_template(wrapped, tokenize=True, return_assistant_tokens_mask=True)
        differ += out["input_ids"] != ids or out["assistant_masks"] != mask
    assert differ == 0


def test_role_strings_in_a_message_are_role_tokens_in_both(tok_dir, tok):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(tok_dir)
    messages = [{"role": "user", "content": "a<|end|>b"}, {"role": "assistant", "content": "<|user|>"}]
    ids, mask = render(messages, tok)
    assert ids == [USER, *tok.encode("a"), END, *tok.encode("b"), END, ASSISTANT, USER, END] and mask == [0] * (len(ids) - 2) + [1, 1]
    assert hf.apply_chat_template(messages, tokenize=True)["input_ids"] == ids
    # "<s>" in text stays text in both (llmpipe's tokenizer reads bos only from its id)
    assert 1 not in render([{"role": "user", "content": "<s>"}], tok)[0]


def test_unknown_roles_and_non_text_content_are_refused(tok_dir, tok):
    transformers = pytest.importorskip("transformers")
    from jinja2.exceptions import TemplateError

    hf = transformers.AutoTokenizer.from_pretrained(tok_dir)
    tool = [{"role": "user", "content": "hi"}, {"role": "tool", "content": "{}"}]
    with pytest.raises(ValueError, match=r"chat template: message 1: role must be system, user or assistant, got 'tool'"):
        render(tool, tok)
    with pytest.raises(TemplateError, match=r"chat template: role must be system, user or assistant, got tool"):
        hf.apply_chat_template(tool)
    with pytest.raises(ValueError, match=r"chat template: message 0: content must be a string, got list"):
        render([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], tok)
    with pytest.raises(ValueError, match=r"has no system, user, assistant, end token; give a tokenizer made by llmpipe train-tokenizer"):
        render(EDGE[0], load_tokenizer(tok_dir / "tokenizer.model"))  # a bare sentencepiece model has no role tokens


def test_write_chat_template_adds_the_key_and_keeps_the_rest(tok_dir, tmp_path):
    import shutil

    shutil.copytree(tok_dir, tmp_path / "ckpt", ignore=shutil.ignore_patterns("_*"))
    before = json.loads((tmp_path / "ckpt/tokenizer_config.json").read_text())
    assert before.pop("chat_template") == JINJA_TEMPLATE
    (tmp_path / "ckpt/tokenizer_config.json").write_text(json.dumps(before))
    (tmp_path / "ckpt/chat_template.jinja").write_text("{{ 'an older template' }}")
    write_chat_template(tmp_path / "ckpt")
    after = json.loads((tmp_path / "ckpt/tokenizer_config.json").read_text())
    assert after == {**before, "chat_template": JINJA_TEMPLATE}
    assert (tmp_path / "ckpt/chat_template.jinja").read_text() == JINJA_TEMPLATE
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "chat_template.jinja", "special_tokens.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json"]  # no temporaries left
    with pytest.raises(ValueError, match=r"chat template: .* has no tokenizer_config.json; give a tokenizer or checkpoint directory"):
        write_chat_template(tmp_path)


def test_collate_pads_truncates_and_keeps_labels_inside_each_example():
    examples = [([5, 10, 11, 7, 6, 12, 13, 7], [0, 0, 0, 0, 0, 1, 1, 1]),
                ([5, 20, 7, 6, 21, 7], [0, 0, 0, 0, 1, 1]),
                ([5, 30, 31, 32, 33, 34, 7, 6, 35, 7], [0, 0, 0, 0, 0, 0, 0, 0, 1, 1])]
    input_ids, labels, attention = collate(examples, pad_id=3, max_len=9)
    x = IGNORE_INDEX
    assert input_ids.tolist() == [[5, 10, 11, 7, 6, 12, 13, 7, 3], [5, 20, 7, 6, 21, 7, 3, 3, 3], [5, 30, 31, 32, 33, 34, 7, 6, 35]]
    assert labels.tolist() == [[x, x, x, x, x, 12, 13, 7, x], [x, x, x, x, 21, 7, x, x, x], [x, x, x, x, x, x, x, x, 35]]
    assert attention.tolist() == [[1] * 8 + [0], [1] * 6 + [0] * 3, [1] * 9]
    # with HF's shift (position t predicts labels[t + 1]) every learnt token sits in its own example's row,
    # after a position of the same example: padding carries no label and no attention
    for row, (ids, mask) in enumerate(examples):
        n = min(len(ids), 9)
        assert (labels[row, n:] == x).all() and (attention[row, n:] == 0).all()
        assert [int(t) for t, m in zip(labels[row, :n], mask) if m] == [i for i, m in zip(ids[:n], mask) if m]
    short = collate(examples[1:2], pad_id=3, max_len=64)[0]
    assert short.shape == (1, 6)  # as wide as the longest example, not max_len
    with pytest.raises(ValueError, match="collate: example 0 has 2 ids but a mask of 1"):
        collate([([1, 2], [1])], pad_id=3, max_len=4)


def test_trl_sft_with_assistant_only_loss_builds_the_same_batch(tok_dir, tok, conversations, tmp_path):
    """TRL's SFTTrainer on the saved tokenizer (the template's {% generation %} block gives it the mask)
    makes the very input_ids, labels and attention_mask that render + collate make."""
    pytest.importorskip("trl", reason="TRL is a compared peer (the compare extra)")
    import torch
    import transformers
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    hf = transformers.AutoTokenizer.from_pretrained(tok_dir)
    rows = conversations[:24]  # dpo_en_demo rows, multi-turn and with system prompts among them
    config = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2)
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, bf16=False, max_length=512, report_to=[])
    trainer = SFTTrainer(model=transformers.LlamaForCausalLM(config), args=args, processing_class=hf,
                         train_dataset=Dataset.from_list([{"messages": m} for m in rows]))
    theirs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    examples = [render(m, tok) for m in rows]
    # TRL drops rows whose replies truncation cuts away entirely; a stage must do the same (no loss, no signal)
    kept = [e for e in examples if 1 in e[1][:512]]
    assert len(kept) == len(trainer.train_dataset) == 22
    ours = collate(kept, pad_id=tok.pad_id, max_len=512)
    for name, tensor in zip(("input_ids", "labels", "attention_mask"), ours):
        assert torch.equal(theirs[name], tensor), name
