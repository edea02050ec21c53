"""Evaluation tasks: what `--tasks` names, and each format's items as lm-evaluation-harness's task configs make them.

A task spec is `NAME=PATH` (NAME a format below, or any name for a file whose format is detected),
a bare PATH (.jsonl/.json; named after the file, format detected from its first row), or a task
that ships with llmpipe (`blimp_mini`). Formats, by the fields of a row:
- hellaswag   `activity_label`, `ctx_a` + `ctx_b` (HellaSwag's own JSONL) or the joined `ctx`, `endings`,
              `label`: lm-eval's hellaswag task (tasks/hellaswag/utils.py): query "label: ctx_a Ctx_b",
              "[title]" -> ". ", other [tags] dropped, double spaces closed. A joined `ctx` (llama.cpp's
              text layout, ../shared/data/eval) gets its trailing lowercase fragment back as ctx_b.
- blimp       `sentence_good`, `sentence_bad`: lm-eval's blimp tasks, each sentence scored whole (empty
              context, bos alone); correct when the good one is likelier.
- choice      `context`, `choices`, `gold` (an index): users' own multiple-choice tasks, no code.
- generation  `question`, `answer`: GSM8K-style; "Question: q\\nAnswer:" is completed greedily and the
              number after "####" (else the last number) must equal the answer's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SHIPPED = {"blimp_mini": ASSETS / "blimp_mini.jsonl"}  # name -> file that ships with llmpipe (no download)
FORMAT_FIELDS = {
    "hellaswag": ("activity_label", "ctx", "endings", "label"),  # or ctx_a + ctx_b for ctx
    "blimp": ("sentence_good", "sentence_bad"),
    "choice": ("context", "choices", "gold"),
    "generation": ("question", "answer"),
}
FORMAT_HINT = "; ".join(f"{k}: {', '.join(v)}" for k, v in FORMAT_FIELDS.items())


@dataclass(frozen=True)
class TaskSpec:
    name: str
    format: str
    path: str


@dataclass(frozen=True)
class Doc:
    """One item as lm-eval's process_docs leaves it: the query, the choices (or the answer text), the gold."""

    query: str
    choices: tuple[str, ...]
    gold: int | str  # choice index; for generation the full answer text
    row: str = ""  # the file's row as canonical JSON: two items are the same item when their rows are equal (as in lm-eval)


def parse_spec(spec: str) -> TaskSpec:
    """A `--tasks` value as a TaskSpec; ValueError("tasks: ...") for an unknown name or a missing file."""
    name, sep, path = spec.partition("=")
    if not sep:
        if spec in SHIPPED:
            return TaskSpec(spec, detect_format(str(SHIPPED[spec])), str(SHIPPED[spec]))
        if spec in FORMAT_FIELDS:
            raise ValueError(f"tasks: {spec} needs its data file: {spec}=PATH.jsonl")
        if not spec.endswith((".jsonl", ".json")) and not Path(spec).exists():
            shipped = ", ".join(SHIPPED)
            raise ValueError(f'tasks: unknown task "{spec}"; give NAME=PATH.jsonl, a .jsonl file, or one that ships with llmpipe: {shipped}')
        name, path = Path(spec).name.split(".")[0], spec
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f'tasks: task name "{name}" may hold only letters, digits, _, - and . (it names samples/{name}.parquet)')
    if not Path(path).is_file():
        raise ValueError(f"tasks: {name} data file {path} does not exist")
    if name in FORMAT_FIELDS:
        first = read_rows(path)[0]
        if not _fits(first, name):
            raise ValueError(f"tasks: {path} is not in the {name} format (rows need {', '.join(FORMAT_FIELDS[name])}; "
                             f"its first row has {', '.join(sorted(first)) or 'no field'})")
    fmt = name if name in FORMAT_FIELDS else detect_format(path)
    return TaskSpec(name, fmt, str(Path(path).resolve()))


def read_rows(path: str) -> list[dict]:
    """The JSON objects of a .jsonl file (or a .json list); ValueError naming the line that is not one."""
    from llmpipe.text.eval_items import read_json_objects

    try:
        rows = read_json_objects(path)
    except ValueError as e:
        raise ValueError(f"tasks: {e}") from None
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise ValueError(f"tasks: {path} row {bad + 1} is not a JSON object")
    if not rows:
        raise ValueError(f"tasks: {path} holds no rows")
    return rows


def _fits(row: dict, fmt: str) -> bool:
    need = [k for k in FORMAT_FIELDS[fmt] if not (k == "ctx" and "ctx_a" in row)]
    return all(k in row for k in need)


def detect_format(path: str) -> str:
    first = read_rows(path)[0]
    fmt = next((f for f in FORMAT_FIELDS if _fits(first, f)), None)
    if fmt is None:
        raise ValueError(f"tasks: {path} row 1 fits no task format (fields {', '.join(sorted(first)) or 'none'}; expected {FORMAT_HINT})")
    return fmt


def load_docs(spec: TaskSpec) -> list[Doc]:
    """Every row of the task file as a Doc, in file order (doc_id is the position); ValueError naming a bad row."""
    make = {"hellaswag": hellaswag_doc, "blimp": blimp_doc, "choice": choice_doc, "generation": generation_doc}[spec.format]
    docs = []
    for i, row in enumerate(read_rows(spec.path)):
        try:
            docs.append(replace(make(row), row=json.dumps(row, sort_keys=True)))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise ValueError(f"tasks: {spec.path} row {i + 1} is not a {spec.format} item ({type(e).__name__}: {e}); rows need "
                             f"{', '.join(FORMAT_FIELDS[spec.format])}") from None
    return docs


# --- formats --------------------------------------------------------------------------------------


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's tasks/hellaswag/utils.py `preprocess`: WikiHow's bracket tags out."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def split_context(ctx: str) -> tuple[str, str]:
    """(ctx_a, ctx_b) of a joined HellaSwag ctx: ctx_b is the lowercase start of the last sentence ("... roof. he"), if any."""
    m = re.fullmatch(r"(.*[.!?]) ([a-z][^.!?]*)", ctx, flags=re.S)
    return (m.group(1), m.group(2)) if m else (ctx, "")


def hellaswag_doc(row: dict) -> Doc:
    ctx_a, ctx_b = (row["ctx_a"], row["ctx_b"]) if "ctx_a" in row else split_context(row["ctx"])
    ctx = ctx_a + " " + ctx_b.capitalize()
    choices = tuple(hellaswag_preprocess(e) for e in row["endings"])
    return Doc(hellaswag_preprocess(row["activity_label"] + ": " + ctx), choices, _gold_index(row["label"], len(choices)))


def blimp_doc(row: dict) -> Doc:
    return Doc("", (_text(row["sentence_good"]), _text(row["sentence_bad"])), 0)


def choice_doc(row: dict) -> Doc:
    choices = tuple(_text(c) for c in row["choices"])
    if len(choices) < 2:
        raise ValueError("choices: expected a list of at least two strings")
    return Doc(_text(row["context"]), choices, _gold_index(row["gold"], len(choices)))


def generation_doc(row: dict) -> Doc:
    return Doc(f"Question: {_text(row['question'])}\nAnswer:", (), _text(row["answer"]))


def _text(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _gold_index(label, n: int) -> int:
    gold = int(label)  # HellaSwag's label is a string in some copies
    if not 0 <= gold < n:
        raise ValueError(f"gold {label} is not an index into the {n} choices")
    return gold
