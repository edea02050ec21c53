"""Preference data in the formats users have -> prompt/chosen/rejected pairs (DPO) or labelled completions (KTO).

    for pair in read_preferences(["hh-rlhf/harmless-base-test.jsonl.gz"], stats=stats):
        prompt_ids, chosen_ids, rejected_ids = render_pair(pair, tokenizer)
    for example in read_kto(["kto_en_demo.json"], stats=stats):
        ...  # example.prompt, example.completion, example.desirable

Files: those chat_data reads (JSON, JSONL, Parquet; .gz/.zst), read by its iter_rows; rows numbered
from 1, keys "file:row" for provenance. Formats, detected per row from its fields or forced with
`format`:

- paired: TRL's preference rows. prompt + chosen + rejected as strings ("standard") or as messages
  ("conversational": prompt a list of messages, chosen/rejected a list holding the assistant
  message); the prompt may be spelled question (Orca DPO pairs) or instruction (+ input,
  LLaMA-Factory), with an optional system. Or TRL's implicit prompt: chosen and rejected whole
  conversations that share every turn but the last (UltraFeedback's, whose string prompt beside
  them is not used).
- hh_rlhf: Anthropic's chosen and rejected transcripts "\\n\\nHuman: ... \\n\\nAssistant: ...": the
  prompt is every turn up to the last "\\n\\nAssistant:", the replies what follows it; both must give
  the same prompt (a reply that itself holds "\\n\\nAssistant:" makes them differ: prompts_differ).
- sharegpt: LLaMA-Factory's ranking rows (dpo_en_demo.json): conversations [{from, value}] ending on
  the human turn, chosen and rejected {from: gpt, value}.
- kto: TRL's unpaired rows: prompt (string or messages) + completion + label (true = desirable).
- kto_messages: LLaMA-Factory's KTO rows (kto_en_demo.json): messages (or conversations) + label (or
  kto_tag); the last assistant message is the completion.

read_preferences counts a KTO row as bad (unpaired_row); read_kto reads every paired row as two
examples, chosen desirable and rejected undesirable (keys file:row#chosen / #rejected), as TRL's
KTOTrainer unpairs a preference dataset. Bad rows are skipped and counted in `stats.skipped` by reason
(preference_formats.REASONS) with a few "file:row: detail" samples; `stats.counts` holds rows,
format_<name> per row read, and pairs (or examples, desirable, undesirable).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from llmpipe.stats import TaskStats
from llmpipe.text.chat_data import iter_rows
from llmpipe.text.chat_formats import BadRow
from llmpipe.text.preference_formats import (FORMATS, PAIRED_FORMATS, REASONS, detect_preference_format,
                                             to_kto_example, to_pair)

__all__ = ["FORMATS", "REASONS", "PreferencePair", "KTOExample", "read_preferences", "read_kto", "render_pair", "render_kto",
           "detect_preference_format"]


@dataclass
class PreferencePair:
    """A prompt (messages ending on a user turn) with a preferred and a dispreferred assistant reply."""
    key: str  # "file:row"
    prompt: list[dict]
    chosen: str
    rejected: str


@dataclass
class KTOExample:
    """A prompt with one assistant reply labelled desirable or not (KTO's unpaired data)."""
    key: str  # "file:row", or "file:row#chosen" / "#rejected" for a pair read as two examples
    prompt: list[dict]
    completion: str
    desirable: bool


def _rows(paths: Iterable[str | Path], format: str, stats: TaskStats) -> Iterator[tuple[str, str | None, object]]:
    """(key, format, row) for every row of the files; the format None when the row's fields name none."""
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"preference data format: expected auto or one of {', '.join(FORMATS)}, got {format!r}")
    for path in paths:
        last = None
        for row_no, row in iter_rows(path, stats, detect_preference_format):
            stats.count("rows")
            # a row whose fields name no format is read as the one before it, so a pair missing its
            # rejected reply is reported as missing_field, not no_format (as chat_data does)
            fmt = format if format != "auto" else (detect_preference_format(row) or last)
            if isinstance(row, dict) and fmt is not None:
                last = fmt
                stats.count(f"format_{fmt}")
            yield f"{os.fspath(path)}:{row_no}", fmt, row


def _no_format(row) -> BadRow:
    if not isinstance(row, dict):
        return BadRow("not_an_object", f"a JSON {type(row).__name__}")
    return BadRow("no_format", ", ".join(list(row)[:12]) or "no fields")


def read_preferences(paths: Iterable[str | Path], format: str = "auto", stats: TaskStats | None = None) -> Iterator[PreferencePair]:
    """The good pairs of the files, in order; bad rows go to stats (see the module docstring)."""
    stats = stats if stats is not None else TaskStats()
    for key, fmt, row in _rows(paths, format, stats):
        try:
            if fmt is None:
                raise _no_format(row)
            prompt, chosen, rejected = to_pair(row, fmt)
        except BadRow as bad:
            stats.skip(bad.reason, f"{key}: {bad.detail}")
            continue
        stats.count("pairs")
        yield PreferencePair(key, prompt, chosen, rejected)


def read_kto(paths: Iterable[str | Path], format: str = "auto", stats: TaskStats | None = None) -> Iterator[KTOExample]:
    """The good labelled completions of the files, in order, a paired row giving two; bad rows go to stats."""
    stats = stats if stats is not None else TaskStats()
    for key, fmt, row in _rows(paths, format, stats):
        try:
            if fmt is None:
                raise _no_format(row)
            if fmt in PAIRED_FORMATS:
                prompt, chosen, rejected = to_pair(row, fmt)
                examples = [KTOExample(f"{key}#chosen", prompt, chosen, True), KTOExample(f"{key}#rejected", prompt, rejected, False)]
            else:
                examples = [KTOExample(key, *to_kto_example(row, fmt))]
        except BadRow as bad:
            stats.skip(bad.reason, f"{key}: {bad.detail}")
            continue
        for example in examples:
            stats.count("examples")
            stats.count("desirable" if example.desirable else "undesirable")
            yield example


def _reply_ids(text: str, tokenizer) -> list[int]:
    """The ids an assistant reply adds after the generation prompt: its content and end token.

    render() encodes each message on its own (chat_template's docstring says why), so a reply's ids
    do not depend on the turns before it; the assistant header is the generation prompt's last token.
    """
    from llmpipe.text.chat_template import render

    ids, _ = render([{"role": "assistant", "content": text}], tokenizer)
    return ids[1:]


def render_pair(pair: PreferencePair, tokenizer) -> tuple[list[int], list[int], list[int]]:
    """(prompt_ids, chosen_ids, rejected_ids) on the chat template: prompt_ids end with the generation
    prompt, and prompt_ids + chosen_ids are render(prompt + [chosen reply]) exactly (likewise rejected)."""
    from llmpipe.text.chat_template import render

    prompt_ids, _ = render(pair.prompt, tokenizer, add_generation_prompt=True)
    return prompt_ids, _reply_ids(pair.chosen, tokenizer), _reply_ids(pair.rejected, tokenizer)


def render_kto(example: KTOExample, tokenizer) -> tuple[list[int], list[int]]:
    """(prompt_ids, completion_ids), as render_pair renders a pair."""
    from llmpipe.text.chat_template import render

    prompt_ids, _ = render(example.prompt, tokenizer, add_generation_prompt=True)
    return prompt_ids, _reply_ids(example.completion, tokenizer)
