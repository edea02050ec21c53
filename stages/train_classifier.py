"""Train a fastText classifier (DCLM / FineWeb-Edu style quality model, or any labelled task).

Labels come from a column of the inputs (`label_key`), or one label per input in order (`labels`):
for example a high-quality artifact and a random-web artifact with labels = ["hq", "lq"]. A
held-out slice (chosen by a hash of the document id, so it is stable) measures precision, recall
and F1 per label; they go into the manifest. The output artifact holds `model.bin`, which
`llmpipe classify --mode score --model <artifact>` reads with the same preprocessing.

    llmpipe train-classifier --input runs/pretrain/filter --input runs/pretrain/filter/rejected --labels hq --labels lq --output runs/quality_model
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from llmpipe.registry import Plan, Stage


@dataclass(frozen=True)
class Params:
    labels: tuple[str, ...] = field(default=(), metadata={"help": "One label per input, in input order; empty reads label_key from the documents."})
    label_key: str = field(default="label", metadata={"help": "Column or JSON field holding each document's label when labels is empty."})
    text_key: str = field(default="text", metadata={"help": "Column or JSON field holding the text."})
    lowercase: bool = field(default=True, metadata={"help": "Lowercase text before training and scoring (as DCLM's fastText classifier does)."})
    holdout_fraction: float = field(default=0.1, metadata={"help": "Fraction of documents held out to measure precision/recall/F1."})
    max_docs_per_label: int = field(default=0, metadata={"help": "Cap documents per label to balance classes; 0 keeps all."})
    epoch: int = field(default=5, metadata={"help": "fastText training epochs."})
    lr: float = field(default=0.1, metadata={"help": "fastText learning rate."})
    word_ngrams: int = field(default=2, metadata={"help": "Word n-gram features (DCLM's quality classifier uses bigrams)."})
    dim: int = field(default=100, metadata={"help": "Embedding dimension."})
    min_count: int = field(default=1, metadata={"help": "Ignore words seen fewer times."})
    threads: int = field(default=1, metadata={"help": "Training threads; 1 makes the model reproducible."})
    seed: int = field(default=0, metadata={"help": "fastText random seed."})

    def __post_init__(self):
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction: expected a number in (0, 1), got {self.holdout_fraction}")


def plan(params: Params, inputs) -> Plan:
    if params.labels and len(params.labels) != len(inputs):
        raise ValueError(f"labels: {len(params.labels)} labels for {len(inputs)} inputs; give one label per input, in order")
    return Plan(phases=[("train", [{}])], files=["model.bin"])


def _documents(ctx):
    """(id, text, label) for every labelled document of every input."""
    from llmpipe.readers.text import iter_jsonl
    from llmpipe.stats import TaskStats

    p: Params = ctx.params
    for k, inp in enumerate(ctx.inputs):
        for path in inp.files:
            if path.endswith(".parquet"):
                import pyarrow.parquet as pq

                cols = [p.text_key] + ([] if p.labels else [p.label_key]) + (["id"] if "id" in pq.read_schema(path).names else [])
                rows = ((i, r) for b in pq.ParquetFile(path).iter_batches(columns=cols) for i, r in enumerate(b.to_pylist()))
            else:
                rows = iter_jsonl(path, p.text_key, TaskStats())
            for i, row in rows:
                label = p.labels[k] if p.labels else row.get(p.label_key)
                if label is not None and isinstance(row.get(p.text_key), str):
                    yield str(row.get("id", f"{path}:{i}")), row[p.text_key], str(label)


def train_task(ctx, task: dict) -> dict:
    import fasttext

    from llmpipe.artifacts.layout import atomic_path
    from llmpipe.text.classifier import Classifier

    p: Params = ctx.params
    work = ctx.work_dir()
    prep = Classifier(None, p.lowercase, []).prepare
    per_label: dict[str, int] = {}
    holdout: list[tuple[str, str]] = []
    n_train = 0
    with open(work / "train.txt", "w", encoding="utf-8") as train:
        for doc_id, text, label in _documents(ctx):
            if p.max_docs_per_label and per_label.get(label, 0) >= p.max_docs_per_label:
                continue
            per_label[label] = per_label.get(label, 0) + 1
            line = prep(text)
            if not line:
                continue
            if int(hashlib.sha1(doc_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < p.holdout_fraction:
                holdout.append((line, label))
            else:
                train.write(f"__label__{label} {line}\n")
                n_train += 1
    if len(per_label) < 2:
        from llmpipe.errors import InputError

        raise InputError(f"train_classifier: need at least two labels, found {sorted(per_label) or 'none'}")
    model = fasttext.train_supervised(
        input=str(work / "train.txt"), epoch=p.epoch, lr=p.lr, wordNgrams=p.word_ngrams, dim=p.dim,
        minCount=p.min_count, thread=p.threads, seed=p.seed, verbose=0,
    )
    with atomic_path(ctx.out / "model.bin") as tmp:
        model.save_model(str(tmp))
    metrics = evaluate(model, holdout)
    os.remove(work / "train.txt")
    return {"counts": {"train_documents": n_train, "holdout_documents": len(holdout), **{f"label_{k}": v for k, v in per_label.items()}}, "metrics": metrics}


def evaluate(model, holdout: list[tuple[str, str]]) -> dict:
    """Precision, recall and F1 per label, plus accuracy, on the held-out documents."""
    if not holdout:
        return {}
    predicted = [row[0].removeprefix("__label__") for row in model.predict([t for t, _ in holdout], k=1)[0]]
    gold = [lab for _, lab in holdout]
    out: dict = {"accuracy": round(sum(a == b for a, b in zip(predicted, gold)) / len(gold), 4)}
    for label in sorted(set(gold) | set(predicted)):
        tp = sum(pr == label and g == label for pr, g in zip(predicted, gold))
        prec = tp / max(1, sum(pr == label for pr in predicted))
        rec = tp / max(1, sum(g == label for g in gold))
        out[label] = {"precision": round(prec, 4), "recall": round(rec, 4), "f1": round(2 * prec * rec / (prec + rec), 4) if prec + rec else 0.0,
                      "support": sum(g == label for g in gold)}
    return out


def finalize(ctx, stats: dict, records: dict) -> dict:
    metrics = records["train"][0]["stats"]["metrics"]
    return {"counts": stats["counts"], "metrics": metrics, "preprocessing": {"lowercase": ctx.params.lowercase}, "stats": {"counts": stats["counts"]}}


STAGE = Stage(
    name="train_classifier", version=1, params=Params, doc=__doc__, plan=plan, run_task={"train": train_task},
    finalize=finalize, output_kind="classifier", input_kinds=("documents", "raw"),
)
