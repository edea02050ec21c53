"""Per-item scores and their aggregation as lm-evaluation-harness computes them.

Multiple choice (api/task.py process_results): pred is the argmax of the log-likelihoods (first on a
tie), acc_norm the argmax of log-likelihood / len(choice) - the choice's length in characters, the
delimiter not counted (lm-eval's acc_norm; bytes and characters agree on ASCII text). Means get
lm-eval's closed-form standard error (api/metrics.py mean_stderr: sample standard deviation / sqrt(n)).
Generation answers are compared after lm-eval's gsm8k filters: the number after "#### " (its
strict-match), else the last number (flexible-extract), without ",", "$" or a final ".".
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def mean_stderr(values: Sequence[float]) -> float | None:
    """Standard error of the mean (None for fewer than two values, lm-eval's "N/A")."""
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def multiple_choice(loglikelihoods: Sequence[float], choices: Sequence[str], gold: int) -> dict:
    lls = np.array(loglikelihoods, dtype=np.float64)
    pred = int(np.argmax(lls))
    pred_norm = int(np.argmax(lls / np.array([float(len(c)) for c in choices])))
    return {"pred": pred, "acc": float(pred == gold), "acc_norm": float(pred_norm == gold)}


def extract_answer(text: str) -> str:
    """The answer in a GSM8K-style solution: the number after "####", else the last number; "" when none."""
    strict = STRICT.search(text)
    if strict:
        return normalize_number(strict.group(1))
    found = FLEXIBLE.findall(text)
    return normalize_number(found[-1][0] or found[-1][1]) if found else ""


def normalize_number(text: str) -> str:
    """lm-eval's gsm8k regexes_to_ignore: no ",", no "$", no final "."."""
    return re.sub(r"\.$", "", text.replace(",", "").replace("$", "")).strip()


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """The generation up to the first stop string (lm-eval's `until`)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def aggregate(rows: Sequence[dict], names: Sequence[str]) -> dict:
    """Mean and standard error of each per-item metric, and n."""
    out: dict = {}
    for name in names:
        values = [float(r[name]) for r in rows]
        out[name] = sum(values) / len(values) if values else None
        out[f"{name}_stderr"] = mean_stderr(values)
    out["n"] = len(rows)
    return out
