"""One instruction-data row -> a checked conversation [{"role", "content"}, ...]; the formats chat_data reads.

Formats (see llmpipe/text/chat_data.py for the files and the list of spellings each accepts):
alpaca, messages, sharegpt, prompt_response, multiple_choice. A row that cannot become a
conversation raises BadRow with a reason from REASONS, which readers count instead of failing.
The message helpers (parse_messages, parse_message, message_text, with_system, check_conversation)
are shared with preference_formats, so both read messages with the same spellings and rules.
"""

from __future__ import annotations

FORMATS = ("alpaca", "messages", "sharegpt", "prompt_response", "multiple_choice")
REASONS = {
    "bad_json": "not valid JSON",
    "not_an_object": "the row is not a JSON object",
    "no_format": "the row's fields fit no format",
    "missing_field": "a field the format needs is absent (a forced format that does not fit)",
    "wrong_type": "a field has the wrong type",
    "unknown_role": "a role that is not system, user or assistant (tools, functions)",
    "empty_content": "a user or assistant message with no text",
    "roles_out_of_order": "not [system] user assistant user assistant ...",
    "no_assistant_turn": "no assistant reply to learn",
    "last_turn_not_assistant": "the conversation ends on a user turn, which has no reply",
    "bad_gold": "a multiple-choice answer index outside its choices",
    "bad_parquet": "a Parquet file that cannot be opened",
    "truncated_file": "a .gz/.zst file cut short (the rows before the cut are kept)",
}
# spellings of the three roles across datasets (ShareGPT's human/gpt, Gemini's model, OpenAI's developer)
ROLE_NAMES = {"system": "system", "developer": "system", "user": "user", "human": "user",
              "assistant": "assistant", "gpt": "assistant", "chatgpt": "assistant", "model": "assistant", "bot": "assistant"}


class BadRow(ValueError):
    """A row that cannot become a conversation; `reason` is a key of REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def detect_format(row) -> str | None:
    """The format a row's fields name, or None."""
    if not isinstance(row, dict):
        return None
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "prompt" in row and ("response" in row or "completion" in row):
        return "prompt_response"
    if {"query", "choices", "gold"} <= row.keys():
        return "multiple_choice"
    if ("instruction" in row or "input" in row) and ("output" in row or "response" in row or "instances" in row):
        return "alpaca"
    return None


def to_messages(row, fmt: str) -> list[dict]:
    """The normalised, checked conversation of one row read as `fmt`; BadRow when it has none."""
    if not isinstance(row, dict):
        raise BadRow("not_an_object", f"a JSON {type(row).__name__}")
    messages = _CONVERTERS[fmt](row)
    check_conversation(messages)
    return messages


def check_conversation(messages: list[dict]) -> None:
    """BadRow unless the messages are [system] user assistant (user assistant)* with text in every turn."""
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRow("no_assistant_turn")
    for m in messages:
        if m["role"] != "system" and not m["content"].strip():
            raise BadRow("empty_content", f"an empty {m['role']} message")
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles[0] == "system" else roles
    if any(role != ("user", "assistant")[i % 2] for i, role in enumerate(body)):
        raise BadRow("roles_out_of_order", " ".join(roles)[:200])
    if body[-1] != "assistant":
        raise BadRow("last_turn_not_assistant", " ".join(roles)[:200])


def message_text(value, field: str) -> str:
    """A message's text: a string, or the joined text parts of an OpenAI content list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    if value is None:
        raise BadRow("empty_content", f"{field} is null")
    raise BadRow("wrong_type", f"{field} is a {type(value).__name__}, not text")


def parse_message(role, content, field: str) -> dict:
    name = ROLE_NAMES.get(role.lower()) if isinstance(role, str) else None
    if name is None:
        raise BadRow("unknown_role", f"{field} role {role!r}")
    return {"role": name, "content": message_text(content, f"{field} content")}


def with_system(system, messages: list[dict]) -> list[dict]:
    """A non-empty top-level `system` field as the first message; an empty system message dropped."""
    if system is not None and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": message_text(system, "system")}, *messages]
    return [m for m in messages if m["role"] != "system" or m["content"].strip()]


def parse_messages(value, field: str, role_key: str, content_key: str) -> list[dict]:
    if value is None:
        raise BadRow("missing_field", f"no {field}")
    if not isinstance(value, list):
        raise BadRow("wrong_type", f"{field} is a {type(value).__name__}, not a list")
    if not value:
        raise BadRow("no_assistant_turn", f"{field} is empty")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise BadRow("wrong_type", f"{field}[{i}] is a {type(m).__name__}")
        # ShareGPT exports use from/value, some use role/content inside `conversations`: take either
        role = m.get(role_key, m.get("role"))
        out.append(parse_message(role, m.get(content_key, m.get("content")), f"{field}[{i}]"))
    return out


def _messages(row: dict) -> list[dict]:
    return with_system(row.get("system"), parse_messages(row.get("messages"), "messages", "role", "content"))


def _sharegpt(row: dict) -> list[dict]:
    messages = parse_messages(row.get("conversations"), "conversations", "from", "value")
    chosen = row.get("chosen")
    if isinstance(chosen, dict):  # a preference row: the preferred reply is the turn to learn
        messages += parse_messages([chosen], "chosen", "from", "value")
    return with_system(row.get("system"), messages)


def _prompt_response(row: dict) -> list[dict]:
    answer_key = "response" if "response" in row else "completion"
    prompt, answer = row.get("prompt"), row.get(answer_key)
    if answer is None:
        raise BadRow("no_assistant_turn", f"no {answer_key}")
    head = parse_messages(prompt, "prompt", "role", "content") if isinstance(prompt, list) else [{"role": "user", "content": message_text(prompt, "prompt")}]
    tail = parse_messages(answer, answer_key, "role", "content") if isinstance(answer, list) else [{"role": "assistant", "content": message_text(answer, answer_key)}]
    return with_system(row.get("system"), head + tail)


def _alpaca(row: dict) -> list[dict]:
    instruction = message_text(row.get("instruction", ""), "instruction")
    extra = message_text(row.get("input", row.get("context", "")), "input")
    output = row.get("output", row.get("response"))
    if output is None:
        raise BadRow("no_assistant_turn", "no output")
    messages = []
    for i, pair in enumerate(row.get("history") or []):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise BadRow("wrong_type", f"history[{i}] is not a [user, assistant] pair")
        messages += [{"role": "user", "content": message_text(pair[0], f"history[{i}]")}, {"role": "assistant", "content": message_text(pair[1], f"history[{i}]")}]
    # instruction and input joined by a newline, as LLaMA-Factory does with the same files
    user = "\n".join(part for part in (instruction, extra) if part)
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": message_text(output, "output")}]
    return with_system(row.get("system"), messages)


def _multiple_choice(row: dict) -> list[dict]:
    choices, gold = row.get("choices"), row.get("gold")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise BadRow("wrong_type", "choices is not a list of strings")
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
        raise BadRow("bad_gold", f"gold {gold!r} for {len(choices)} choices")
    question = message_text(row.get("query"), "query") + "\nOptions:" + "".join(f"\n - {c}" for c in choices) + "\nAnswer:"
    return [{"role": "user", "content": question}, {"role": "assistant", "content": choices[gold]}]


_CONVERTERS = {"alpaca": _alpaca, "messages": _messages, "sharegpt": _sharegpt,
               "prompt_response": _prompt_response, "multiple_choice": _multiple_choice}


def expand_instances(row) -> list:
    """Self-Instruct seed tasks hold several (input, output) instances of one instruction: one row each."""
    if isinstance(row, dict) and isinstance(row.get("instances"), list) and "output" not in row:
        base = {k: v for k, v in row.items() if k != "instances"}
        return [{**base, **inst} if isinstance(inst, dict) else inst for inst in row["instances"]]
    return [row]
