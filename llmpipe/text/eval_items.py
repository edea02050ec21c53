"""Evaluation items as plain text, from the formats eval sets ship in, for decontamination.

JSONL or JSON (a list of objects): an item's text is its context fields followed by its gold answer,
which is what a contaminated training document would hold. HellaSwag: `ctx` + the ending at
`label`; multiple choice in general: question/prompt fields + `choices`/`options`/`endings` at
`label`/`gold`, or a free-text `answer`/`output`/`target`. Parquet (any document artifact): `text`.
Each item gets a key `<file name>:<id>` (its `idx`/`id` field, else its line number).

    for key, text in read_items(["eval/hellaswag_val.jsonl"]): ...
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

# sentence_good: a BLiMP pair's grammatical sentence (its ungrammatical twin is not text anyone trains on)
CONTEXT_FIELDS = ("goal", "question", "query", "prompt", "instruction", "input", "passage", "context", "sentence", "sentence_good", "text")
CHOICE_FIELDS = ("endings", "choices", "options")
LABEL_FIELDS = ("label", "gold", "answer_idx", "answerKey")
ANSWER_FIELDS = ("answer", "output", "target", "completion", "response")
ID_FIELDS = ("idx", "id", "ind", "uid")


def item_text(obj: dict[str, Any]) -> str:
    """The text of one eval item: its context fields, then its gold answer when it has one."""
    if isinstance(obj.get("ctx"), str):  # HellaSwag: ctx already joins ctx_a and ctx_b
        parts = [obj["ctx"]]
    else:
        parts = [obj[k] for k in CONTEXT_FIELDS if isinstance(obj.get(k), str) and obj[k].strip()]
    answer = _gold_choice(obj)
    if answer is None:
        answer = next((str(obj[k]) for k in ANSWER_FIELDS if isinstance(obj.get(k), (str, int, float)) and not isinstance(obj.get(k), bool)), None)
    return " ".join(parts + ([answer] if answer else []))


def _gold_choice(obj: dict[str, Any]) -> str | None:
    choices = next((obj[k] for k in CHOICE_FIELDS if k in obj), None)
    if isinstance(choices, dict):  # ARC style: {"text": [...], "label": ["A", ...]}
        labels, choices = choices.get("label", []), choices.get("text", [])
        label = next((obj[k] for k in LABEL_FIELDS if k in obj), None)
        return choices[labels.index(label)] if label in labels else None
    if not isinstance(choices, list):
        return None
    label = next((obj[k] for k in LABEL_FIELDS if k in obj), None)
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)
    return str(choices[label]) if isinstance(label, int) and 0 <= label < len(choices) else None


def read_items(files: list[str]) -> Iterator[tuple[str, str]]:
    """(key, text) of every item in the files, in file order; a line that is not JSON is a ValueError naming it."""
    for path in files:
        name = Path(path).name
        if path.endswith(".parquet"):
            from llmpipe.artifacts.documents import iter_batches

            for batch in iter_batches(Path(path), ["id", "text"]):
                for doc_id, text in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist()):
                    yield f"{name}:{doc_id}", text
            continue
        for n, obj in enumerate(read_json_objects(path)):
            item_id = next((obj[k] for k in ID_FIELDS if k in obj), n) if isinstance(obj, dict) else n
            yield f"{name}:{item_id}", item_text(obj) if isinstance(obj, dict) else ""


def read_json_objects(path: str) -> list:
    """The JSON values of a .json file (a list, or one value) or a JSON Lines file; UTF-8, else cp1252. ValueError names the bad line."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:  # eval sets saved by Windows tools: read as browsers read undeclared bytes
        text = raw.decode("cp1252", errors="replace")
    if path.endswith(".json"):
        try:
            objects = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON at line {e.lineno} ({e.msg})") from None
        return objects if isinstance(objects, list) else [objects]
    objects = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                objects.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {lineno} is not valid JSON ({e.msg}); expected one JSON object per line") from None
    return objects


def check_items(files: list[str]) -> int:
    """How many items have text; a reference with none (empty, or no field this module knows) is a ValueError."""
    total = usable = 0
    for _, text in read_items(files):
        total += 1
        usable += bool(text and text.strip())
    if not usable:
        what = "holds no items" if not total else f"has {total} items but none with a known text field"
        raise ValueError(f"{files[0] if len(files) == 1 else f'{len(files)} files'} {what}; an item needs one of {', '.join(('ctx',) + CONTEXT_FIELDS)} or a gold answer ({', '.join(ANSWER_FIELDS)})")
    return usable
