"""Few-shot contexts as lm-evaluation-harness builds them (api/samplers.py ContextSampler, api/task.py fewshot_context).

One `random.Random(seed)` per task draws, for each evaluated item in file order, num_fewshot + 1
items of the whole file, drops the item itself (and copies equal to it) and keeps the first
num_fewshot; each shot is rendered "query" + target delimiter + its gold answer + fewshot
delimiter, then the item's query follows. lm-eval's default seed is 1234, so with the same file,
limit and seed the contexts are lm-eval's.
"""

from __future__ import annotations

from random import Random
from typing import Sequence

from llmpipe.evaluation.tasks import Doc

TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"


def answer_text(doc: Doc) -> str:
    return doc.choices[doc.gold] if isinstance(doc.gold, int) else doc.gold


def contexts(docs: Sequence[Doc], n_eval: int, num_fewshot: int, seed: int) -> list[str]:
    """The context of each of the first n_eval docs, with num_fewshot shots drawn from all of `docs`."""
    if num_fewshot == 0:
        return [d.query for d in docs[:n_eval]]
    if num_fewshot >= len(docs):
        raise ValueError(f"num_fewshot: {num_fewshot} shots need at least {num_fewshot + 1} items, the task has {len(docs)}")
    rnd = Random(seed)
    out = []
    for doc in docs[:n_eval]:
        drawn = [docs[i] for i in rnd.sample(range(len(docs)), num_fewshot + 1)]
        shots = [d for d in drawn if d != doc][:num_fewshot]
        if len(shots) < num_fewshot:  # copies of the item were drawn: lm-eval draws again from the rest
            shots = [docs[i] for i in rnd.sample([i for i, d in enumerate(docs) if d != doc], num_fewshot)]
        out.append("".join(s.query + TARGET_DELIMITER + answer_text(s) + FEWSHOT_DELIMITER for s in shots) + doc.query)
    return out
