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

CONTEXT_FIELDS = ("goal", "question", "query", "prompt", "instruction", "input", "passage", "context", "sentence", "text")
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
    """(key, text) of every item in the files, in file order."""
    for path in files:
        name = Path(path).name
        if path.endswith(".parquet"):
            from llmpipe.artifacts.documents import iter_batches

            for batch in iter_batches(Path(path), ["id", "text"]):
                for doc_id, text in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist()):
                    yield f"{name}:{doc_id}", text
            continue
        with open(path, encoding="utf-8") as f:
            if path.endswith(".json"):
                objects = json.load(f)
                objects = objects if isinstance(objects, list) else [objects]
            else:
                objects = (json.loads(line) for line in f if line.strip())
            for n, obj in enumerate(objects):
                item_id = next((obj[k] for k in ID_FIELDS if k in obj), n)
                yield f"{name}:{item_id}", item_text(obj)
