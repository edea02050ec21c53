"""The chat format on llmpipe's role tokens: token ids with an assistant-loss mask, and the same as a Jinja template.

    <|system|>You are terse.<|end|><|user|>Hi<|end|><|assistant|>Hello.<|end|>
                                                                 ^^^^^^^^^^^^^ mask 1 (every assistant turn)

    ids, mask = render(messages, load_tokenizer(tokenizer_dir))
    write_chat_template(checkpoint_dir)   # AutoTokenizer(...).apply_chat_template(messages) == ids

Each turn is its role token, the content as written (no stripping, no newline after the header),
and <|end|>; add_generation_prompt appends <|assistant|>. Generation stops at <|end|>.

Why no bos: transformers renders the template to text and tokenizes it without special tokens,
and llmpipe's tokenizer never reads "<s>" in text as bos (tokenizer.py: split_special_tokens), so
a template cannot emit bos. The conversation starts at its first role token, as ChatML models do.

Why render tokenizes piece by piece: the Hugging Face tokenizer splits the rendered text at the
role tokens (matched in text, also inside a message, as transformers does by default) and
normalises each piece alone, so each piece gets sentencepiece's dummy-prefix "▁" (the tokenizer
prepends it per piece). Encoding each piece with sentencepiece therefore gives the same ids; the
tests check it against transformers on multi-turn, unicode and whitespace-edged content. That holds
for BPE tokenizers (the default); a unigram one inherits tokenizer.py's caveat (ties broken in
another float precision: 1 of 1,299 real conversations differed in one measurement).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from llmpipe.text.tokenizer import SPECIAL_TOKENS, load_tokenizer

ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100  # labels that carry no loss (the Hugging Face and PyTorch default)


def jinja_template(tokens: dict[str, str] = SPECIAL_TOKENS) -> str:
    """The Jinja `chat_template` that renders what render() encodes, from the role tokens' strings.

    The assistant content and its end token sit in a {% generation %} block, so transformers'
    `return_assistant_tokens_mask=True` (and TRL's assistant_only_loss) gives render()'s mask too.
    """
    for name in (*ROLES, "end"):
        if not re.fullmatch(r"[^'\\{}%#]+", tokens[name]):
            raise ValueError(f"chat template: token {tokens[name]!r} cannot be quoted in Jinja")
    t = {name: f"'{tokens[name]}'" for name in (*ROLES, "end")}
    # one line, every tag trimmed: transformers renders with trim_blocks and lstrip_blocks, and no
    # template whitespace may reach the text
    return (
        "{%- for message in messages -%}"
        "{%- if message['content'] is not string -%}{{- raise_exception('chat template: message content must be a string') -}}{%- endif -%}"
        f"{{%- if message['role'] == 'assistant' -%}}{{{{- {t['assistant']} -}}}}"
        f"{{%- generation -%}}{{{{- message['content'] + {t['end']} -}}}}{{%- endgeneration -%}}"
        f"{{%- elif message['role'] == 'user' -%}}{{{{- {t['user']} + message['content'] + {t['end']} -}}}}"
        f"{{%- elif message['role'] == 'system' -%}}{{{{- {t['system']} + message['content'] + {t['end']} -}}}}"
        "{%- else -%}{{- raise_exception('chat template: role must be system, user or assistant, got ' + message['role']) -}}{%- endif -%}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{- {t['assistant']} -}}}}{{%- endif -%}}"
    )


JINJA_TEMPLATE = jinja_template()


def role_ids(tokenizer) -> dict[str, int]:
    """The ids of system, user, assistant and end in a loaded llmpipe tokenizer; ValueError when it has none."""
    missing = [name for name in (*ROLES, "end") if name not in tokenizer.special]
    if missing:
        raise ValueError(f"chat template: the tokenizer at {tokenizer.path} has no {', '.join(missing)} token; "
                         "give a tokenizer made by llmpipe train-tokenizer (it holds the chat role tokens)")
    return {name: tokenizer.special[name] for name in (*ROLES, "end")}


def render(messages: list[dict], tokenizer, add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """(token ids, assistant mask) of a conversation: the mask is 1 on every assistant turn's content and
    its end token, 0 on system and user turns and on role headers. ValueError on an unknown role."""
    ids = role_ids(tokenizer)
    by_text = {tokenizer.piece(i): i for i in ids.values()}
    # as Hugging Face does, a role token's string inside a message is that token (leftmost match)
    splitter = re.compile("(" + "|".join(re.escape(s) for s in sorted(by_text, key=len, reverse=True)) + ")")
    pieces: list[tuple[str | int, int]] = []  # text to encode, or a token id; with its mask value
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"chat template: message {i}: role must be system, user or assistant, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"chat template: message {i}: content must be a string, got {type(content).__name__}")
        learn = int(role == "assistant")
        pieces.append((ids[role], 0))
        for k, part in enumerate(splitter.split(content)):
            if k % 2:
                pieces.append((by_text[part], learn))
            elif part:
                pieces.append((part, learn))
        pieces.append((ids["end"], learn))
    if add_generation_prompt:
        pieces.append((ids["assistant"], 0))
    texts = [p for p, _ in pieces if isinstance(p, str)]
    encoded = iter([e.tolist() for e in tokenizer.encode_batch(texts)]) if texts else iter(())
    out_ids: list[int] = []
    mask: list[int] = []
    for piece, learn in pieces:
        piece_ids = next(encoded) if isinstance(piece, str) else [piece]
        out_ids += piece_ids
        mask += [learn] * len(piece_ids)
    return out_ids, mask


def write_chat_template(directory: str | Path, template: str = JINJA_TEMPLATE) -> None:
    """Put `template` as `chat_template` into the directory's tokenizer_config.json (a tokenizer or checkpoint dir).

    A chat_template.jinja beside it (transformers 5 saves one, and it wins over the JSON key) is
    rewritten with the same template, so the two never disagree.
    """
    from llmpipe.artifacts.layout import atomic_path, write_json_atomic

    directory = Path(directory)
    config_path = directory / "tokenizer_config.json"
    if not config_path.is_file():
        raise ValueError(f"chat template: {directory} has no tokenizer_config.json; give a tokenizer or checkpoint directory")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = template
    write_json_atomic(config_path, config)
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.exists():
        with atomic_path(jinja_file) as tmp:
            tmp.write_text(template, encoding="utf-8")


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int, max_len: int):
    """(input_ids, labels, attention_mask) [B, T] tensors of (ids, mask) examples, one per row.

    T is the longest example, at most max_len (longer ones lose their end). Labels follow Hugging Face:
    the token itself where the mask is 1, IGNORE_INDEX elsewhere and on padding; the model shifts them.
    Right padding with attention_mask 0, so no token attends to or learns from another example.
    """
    import torch

    if not examples:
        raise ValueError("collate: no examples")
    width = min(max_len, max(len(ids) for ids, _ in examples))
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, mask) in enumerate(examples):
        if len(ids) != len(mask):
            raise ValueError(f"collate: example {row} has {len(ids)} ids but a mask of {len(mask)}")
        ids_t = torch.tensor(ids[:width], dtype=torch.long)
        keep = torch.tensor(mask[:width], dtype=torch.bool)
        n = len(ids_t)
        input_ids[row, :n] = ids_t
        labels[row, :n] = torch.where(keep, ids_t, IGNORE_INDEX)
        attention[row, :n] = 1
    return input_ids, labels, attention


def write_generation_config(directory: str | Path) -> None:
    """Write generation_config.json into a chat checkpoint so transformers' generate() stops at the end of an
    assistant turn: eos_token_id is [eos, <|end|>] (either ends the answer), with bos and pad beside it.

    Keys already in the file (sampling defaults a user set) are kept; only these three are replaced.
    """
    from llmpipe.artifacts.layout import write_json_atomic

    directory = Path(directory)
    tokenizer = load_tokenizer(directory)
    end = role_ids(tokenizer)["end"]  # ValueError when the tokenizer has no <|end|>
    special = tokenizer.special
    path = directory / "generation_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    config.update(bos_token_id=special["bos"], eos_token_id=[special["eos"], end], pad_token_id=special["pad"])
    write_json_atomic(path, config)
