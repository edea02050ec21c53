"""One preference row -> (prompt messages, chosen, rejected) or (prompt messages, completion, desirable).

The formats preference_data reads (its docstring lists the spellings). The prompt is a checked
conversation that ends on a user turn ([system] user (assistant user)*); replies are strings kept
exactly as written. A row that cannot become a pair or an example raises BadRow with a reason from
REASONS, which readers count instead of failing. Messages are read with chat_formats' helpers, so
roles and content follow the same spellings and rules as SFT data.
"""

from __future__ import annotations

import re

from llmpipe.text.chat_formats import REASONS as CHAT_REASONS
from llmpipe.text.chat_formats import ROLE_NAMES, BadRow, check_conversation, message_text, parse_messages, with_system

PAIRED_FORMATS = ("paired", "hh_rlhf", "sharegpt")
KTO_FORMATS = ("kto", "kto_messages")
FORMATS = PAIRED_FORMATS + KTO_FORMATS
REASONS = {
    **{k: v for k, v in CHAT_REASONS.items() if k != "bad_gold"},
    "no_prompt": "no prompt: the prompt field is absent or empty, or no turn comes before the reply",
    "empty_chosen": "the chosen reply has no text",
    "empty_rejected": "the rejected reply has no text",
    "same_chosen_and_rejected": "chosen and rejected are the same text: nothing to prefer",
    "prompts_differ": "chosen and rejected continue different conversations (their turns before the reply differ)",
    "not_one_reply": "a chosen, rejected or completion given as messages that is not one assistant message",
    "not_a_transcript": "an hh-rlhf text without its Human:/Assistant: turns",
    "empty_completion": "a KTO completion with no text",
    "bad_label": "a KTO label that is not true or false",
    "unpaired_row": "a KTO row (one completion and a label) where pairs are read: read it with read_kto",
}
# the prompt's spellings: TRL's prompt, Orca DPO pairs' question, LLaMA-Factory's instruction (+ input)
PROMPT_KEYS = ("prompt", "question", "instruction", "input")
# Anthropic hh-rlhf turns: "\n\nHuman: ..." and "\n\nAssistant: ...", the space after the colon being
# the marker's (TRL's hh-rlhf script splits at "\n\nAssistant: " too); an empty last reply has no space
HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant): ?")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def detect_preference_format(row) -> str | None:
    """The preference format a row's fields name, or None."""
    if not isinstance(row, dict):
        return None
    if "chosen" in row and "rejected" in row:
        if "conversations" in row:
            return "sharegpt"
        if not any(k in row for k in PROMPT_KEYS) and isinstance(row["chosen"], str) and HH_TURN.search(row["chosen"]):
            return "hh_rlhf"
        return "paired"
    if "label" in row or "kto_tag" in row:
        if "messages" in row or "conversations" in row:
            return "kto_messages"
        if "completion" in row:
            return "kto"
    return None


def to_pair(row, fmt: str) -> tuple[list[dict], str, str]:
    """(prompt messages, chosen, rejected) of a row read as the paired format `fmt`; BadRow when it has none."""
    if not isinstance(row, dict):
        raise BadRow("not_an_object", f"a JSON {type(row).__name__}")
    if fmt in KTO_FORMATS:
        raise BadRow("unpaired_row", f"a {fmt} row")
    if fmt not in _PAIRED:
        raise ValueError(f"preference format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    prompt, chosen, rejected = _PAIRED[fmt](row)
    _check_prompt(prompt)
    for name, reply in (("chosen", chosen), ("rejected", rejected)):
        if not reply.strip():
            raise BadRow(f"empty_{name}", f"{name} is {reply!r}")
    if chosen == rejected:
        raise BadRow("same_chosen_and_rejected", chosen[:80])
    check_conversation(prompt + [{"role": "assistant", "content": chosen}])
    return prompt, chosen, rejected


def to_kto_example(row, fmt: str) -> tuple[list[dict], str, bool]:
    """(prompt messages, completion, desirable) of a row read as the KTO format `fmt`; BadRow when it has none."""
    if not isinstance(row, dict):
        raise BadRow("not_an_object", f"a JSON {type(row).__name__}")
    if fmt not in _KTO:  # read_kto turns a paired row into two examples itself
        raise ValueError(f"KTO format: expected one of {', '.join(KTO_FORMATS)}, got {fmt!r}")
    prompt, completion, label = _KTO[fmt](row)
    _check_prompt(prompt)
    if not completion.strip():
        raise BadRow("empty_completion", f"completion is {completion!r}")
    check_conversation(prompt + [{"role": "assistant", "content": completion}])
    return prompt, completion, label


def _check_prompt(prompt: list[dict]) -> None:
    if not any(m["role"] != "system" and m["content"].strip() for m in prompt):
        raise BadRow("no_prompt", " ".join(m["role"] for m in prompt) or "no turn before the reply")


def _messages(value, field: str) -> list[dict]:
    """role/content or from/value messages (parse_messages falls back to role/content); [] stays []."""
    if value is None:
        raise BadRow("missing_field", f"no {field}")
    return parse_messages(value, field, "from", "value") if value != [] else []


def _reply(value, field: str) -> str:
    """A reply's text: a string, one assistant message, or a list holding just that message."""
    if value is None:
        raise BadRow("missing_field", f"no {field}")
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        messages = _messages(value, field)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise BadRow("not_one_reply", f"{field} holds {' '.join(m['role'] for m in messages) or 'no message'}")
        return messages[0]["content"]
    return message_text(value, field)


def _last_reply(messages: list[dict], field: str) -> tuple[list[dict], str]:
    """(turns before, text) of a conversation's final assistant reply."""
    if not messages:
        raise BadRow("no_prompt", f"{field} is empty")
    if messages[-1]["role"] != "assistant":
        raise BadRow("last_turn_not_assistant", f"{field} ends on a {messages[-1]['role']} turn")
    return messages[:-1], messages[-1]["content"]


def _prompt(row: dict) -> list[dict]:
    """The prompt of a row with an explicit prompt: a string (one user turn) or messages."""
    key = next((k for k in ("prompt", "question") if k in row), None)
    if key is not None:
        value = row[key]
        if value is None:
            raise BadRow("no_prompt", f"{key} is null")
        return _messages(value, key) if isinstance(value, list) else [{"role": "user", "content": message_text(value, key)}]
    parts = [message_text(row[k], k) for k in ("instruction", "input") if row.get(k) is not None]
    if not parts:
        raise BadRow("no_prompt", f"no {', '.join(PROMPT_KEYS)} field (fields: {', '.join(list(row)[:12])})")
    # instruction and input joined by a newline, as chat_formats reads Alpaca rows
    return [{"role": "user", "content": "\n".join(p for p in parts if p)}]


def _holds_conversation(value) -> bool:
    """A chosen/rejected list with a turn other than the assistant's: a whole conversation (implicit prompt)."""
    return isinstance(value, list) and any(
        isinstance(m, dict) and ROLE_NAMES.get(str(m.get("role", m.get("from"))).lower()) != "assistant" for m in value)


def _same_prompt(chosen_prompt: list[dict], rejected_prompt: list[dict]) -> list[dict]:
    if chosen_prompt != rejected_prompt:
        k = next((i for i, (a, b) in enumerate(zip(chosen_prompt, rejected_prompt)) if a != b), min(len(chosen_prompt), len(rejected_prompt)))
        raise BadRow("prompts_differ", f"the turns before the replies differ from turn {k + 1} (turns before the chosen reply: {len(chosen_prompt)}, before the rejected: {len(rejected_prompt)})")
    return chosen_prompt


def _paired(row: dict) -> tuple[list[dict], str, str]:
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if _holds_conversation(chosen) or _holds_conversation(rejected):
        # TRL's implicit prompt: chosen and rejected are whole conversations sharing every turn but the
        # last; a string prompt beside them (UltraFeedback's) repeats their first user turn and is not used
        chosen_prompt, chosen = _last_reply(_messages(chosen, "chosen"), "chosen")
        rejected_prompt, rejected = _last_reply(_messages(rejected, "rejected"), "rejected")
        prompt = _same_prompt(chosen_prompt, rejected_prompt)
    else:
        prompt, chosen, rejected = _prompt(row), _reply(chosen, "chosen"), _reply(rejected, "rejected")
    return with_system(row.get("system"), prompt), chosen, rejected


def _transcript(text, field: str) -> tuple[list[dict], str]:
    """(turns before, text) of an hh-rlhf transcript's last reply: everything up to its last Assistant: is the prompt."""
    if text is None:
        raise BadRow("missing_field", f"no {field}")
    if not isinstance(text, str):
        raise BadRow("wrong_type", f"{field} is a {type(text).__name__}, not text")
    parts = HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise BadRow("not_a_transcript", f"{field} starts {text[:60]!r}")
    turns = [{"role": HH_ROLES[parts[i]], "content": parts[i + 1]} for i in range(1, len(parts), 2)]
    return _last_reply(turns, field)


def _hh_rlhf(row: dict) -> tuple[list[dict], str, str]:
    chosen_prompt, chosen = _transcript(row.get("chosen"), "chosen")
    rejected_prompt, rejected = _transcript(row.get("rejected"), "rejected")
    return _same_prompt(chosen_prompt, rejected_prompt), chosen, rejected


def _sharegpt(row: dict) -> tuple[list[dict], str, str]:
    """LLaMA-Factory's ranking rows: conversations [{from, value}] ending on the user, chosen and rejected replies."""
    prompt = _messages(row.get("conversations"), "conversations")
    return with_system(row.get("system"), prompt), _reply(row.get("chosen"), "chosen"), _reply(row.get("rejected"), "rejected")


def _label(row: dict) -> bool:
    label = row.get("label", row.get("kto_tag"))
    if not isinstance(label, bool):
        raise BadRow("bad_label", f"label {label!r}")
    return label


def _kto(row: dict) -> tuple[list[dict], str, bool]:
    return _prompt(row), _reply(row.get("completion"), "completion"), _label(row)


def _kto_messages(row: dict) -> tuple[list[dict], str, bool]:
    """LLaMA-Factory's KTO rows: messages (or conversations) and a label; the last assistant turn is the completion."""
    key = "messages" if "messages" in row else "conversations"
    prompt, completion = _last_reply(_messages(row.get(key), key), key)
    return with_system(row.get("system"), prompt), completion, _label(row)


_PAIRED = {"paired": _paired, "hh_rlhf": _hh_rlhf, "sharegpt": _sharegpt}
_KTO = {"kto": _kto, "kto_messages": _kto_messages}
