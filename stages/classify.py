"""Score documents with a fastText model and filter by the score: language ID or a quality classifier.

mode = "language" adds `lang` and `lang_score` (top label of a language-ID model; the default is
fastText's lid.176, shipped with the install) and keeps documents in `languages` with a score of
at least `min_score`; a text without a single letter (empty, emoji, digits) is `und` with score 0. mode = "score" adds a `<column>` holding P(`label`) under the model (a
classifier from `llmpipe train-classifier`, or any fastText model) and keeps those at or above
`min_score`. One task per input part; removed documents can be kept beside with a reason.

    llmpipe classify --input runs/pretrain/ingest --output runs/english --languages en --min-score 0.65
    llmpipe classify --input runs/english --output runs/hq --mode score --model runs/quality_model --label hq --min-score 0.5
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from llmpipe.artifacts.layout import part_name
from llmpipe.registry import Plan, Stage

UNDETERMINED = "und"  # the language of a text without letters


@dataclass(frozen=True)
class Params:
    mode: Literal["language", "score"] = field(default="language", metadata={"help": "language: add lang/lang_score; score: add P(label) as a column."})
    model: str = field(default="builtin:lid.176", metadata={"help": "fastText model: builtin:lid.176, a .bin/.ftz path, or a train-classifier artifact."})
    languages: tuple[str, ...] = field(default=(), metadata={"help": "Languages to keep in language mode (ISO codes as the model labels them); empty keeps all."})
    label: str = field(default="hq", metadata={"help": "Label whose probability is the score in score mode."})
    column: str = field(default="quality", metadata={"help": "Column that receives the score in score mode."})
    min_score: float = field(default=0.0, metadata={"help": "Drop documents scoring below this (FineWeb keeps English at lid score >= 0.65)."})
    keep_rejected: bool = field(default=False, metadata={"help": "Write removed documents to rejected/ with a reason column."})
    batch_size: int = field(default=1024, metadata={"help": "Documents per prediction batch."})

    def __post_init__(self):
        if not 0 <= self.min_score <= 1:
            raise ValueError(f"min_score: expected a number in [0, 1], got {self.min_score}")
        if self.mode == "score" and self.model.startswith("builtin:"):
            raise ValueError(f"model: score mode needs a quality model (a train-classifier artifact or a .bin), got {self.model}")


def plan(params: Params, inputs) -> Plan:
    parts = [f for inp in inputs for f in inp.files]
    return Plan(phases=[("score", [{"part": p} for p in parts])], files=[part_name(i) for i in range(len(parts))])


def score_task(ctx, task: dict) -> dict:
    import contextlib

    import pyarrow as pa
    import pyarrow.compute as pc

    from llmpipe.artifacts.documents import BASE_SCHEMA, DocumentWriter, iter_batches
    from llmpipe.stats import TaskStats
    from llmpipe.text.classifier import load_classifier

    p: Params = ctx.params
    clf = load_classifier(p.model)
    stats = TaskStats()
    writer = rejected = None
    with contextlib.ExitStack() as stack:  # writers open on the first batch, when the schema is known
        for batch in iter_batches(task["part"], batch_size=p.batch_size):
            batch, reasons = _score(clf, p, batch, stats)
            if writer is None:
                writer = stack.enter_context(DocumentWriter(ctx.out / part_name(ctx.task_index), batch.schema))
                if p.keep_rejected:
                    schema = batch.schema.append(pa.field("reason", pa.string()))
                    rejected = stack.enter_context(DocumentWriter(ctx.out / "rejected" / part_name(ctx.task_index), schema))
            keep = pa.array([r is None for r in reasons])
            writer.write_batch(batch.filter(keep))
            stats.count("documents", sum(r is None for r in reasons))
            dropped = [r for r in reasons if r]
            for r in dropped:
                stats.drop(r)
            if rejected is not None and dropped:
                rb = batch.filter(pc.invert(keep))
                rejected.write_batch(pa.RecordBatch.from_arrays([*rb.columns, pa.array(dropped)], schema=rejected.schema))
        if writer is None:  # an empty input part still gets its (empty) output part
            stack.enter_context(DocumentWriter(ctx.out / part_name(ctx.task_index), BASE_SCHEMA))
    return stats.to_json()


def _score(clf, p: Params, batch, stats):
    """The batch with its score columns added, and a drop reason (or None) per document."""
    import pyarrow as pa

    texts = batch.column("text").to_pylist()
    if p.mode == "language":
        labels, probs = clf.predict(texts, k=1)
        langs, scores = [row[0] for row in labels], [round(row[0], 4) for row in probs]
        # fastText labels even an empty or emoji-only text (lid.176 says "en"): text without a letter
        # is in no language, "und" (undetermined, as ISO 639-2 and CLD name it) with score 0
        for k, text in enumerate(texts):
            if not any(c.isalpha() for c in text):
                langs[k], scores[k] = UNDETERMINED, 0.0
        for lang in langs:
            stats.count(f"lang_{lang}")
        reasons = [("no_letters" if lang == UNDETERMINED else "lang_not_allowed") if p.languages and lang not in p.languages
                   else "low_lang_score" if s < p.min_score else None for lang, s in zip(langs, scores)]
        return _with_columns(batch, {"lang": pa.array(langs, pa.string()), "lang_score": pa.array(scores, pa.float32())}), reasons
    scores = [round(s, 4) for s in clf.probability(texts, p.label)]
    reasons = ["low_score" if s < p.min_score else None for s in scores]
    return _with_columns(batch, {p.column: pa.array(scores, pa.float32())}), reasons


def _with_columns(batch, columns: dict):
    """Add or replace columns (re-classifying replaces an earlier lang column)."""
    import pyarrow as pa

    names = [n for n in batch.schema.names if n not in columns]
    arrays = [batch.column(n) for n in names] + list(columns.values())
    return pa.RecordBatch.from_arrays(arrays, names=names + list(columns))


def finalize(ctx, stats: dict, records: dict) -> dict:
    counts = stats.get("counts", {})
    languages = {k.removeprefix("lang_"): v for k, v in counts.items() if k.startswith("lang_")}
    top = dict(sorted(languages.items(), key=lambda kv: -kv[1])[:20])
    result = {"counts": {"documents": counts.get("documents", 0), "removed": sum(stats.get("dropped", {}).values())}, "stats": stats}
    if top:
        result["languages"] = top
    return result


STAGE = Stage(
    name="classify", version=1, params=Params, doc=__doc__, plan=plan, run_task={"score": score_task},
    finalize=finalize, output_kind="documents", path_params=("model",),
)
