"""GRPO's rewards: a number per completion, from a verifiable answer, a format, or a reward model.

- "exact_match": 1.0 when the completion's final answer equals the example's answer, else 0.0. When the answer
  holds a number (GSM8K's "... #### 72" too), the completion's LAST number is compared with the answer's last
  number as a value ("12" and "12.0" are equal, so are "1,200" and "1200"; "12" and "12.5" are not);
  otherwise the texts are compared with case and surrounding/repeated whitespace ignored.
- "regex:<pattern>": 1.0 when re.search(pattern, completion) finds it (DOTALL: "." crosses lines; anchor with
  ^...$ to judge the whole completion), else 0.0: a format reward (TRL's examples reward <think>...</think> so).
- a directory: a reward-model checkpoint (llmpipe reward-model's output, num_labels 1): its score of the prompt
  turns and the completion as the assistant's reply, rendered through the chat template with its own tokenizer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def final_number(text: str) -> float | None:
    """The value of the last number written in `text` (thousands commas allowed), or None."""
    for found in reversed(NUMBER.findall(text)):
        try:
            return float(found.replace(",", ""))
        except ValueError:  # "1,,2" and the like
            continue
    return None


def exact_match(completion: str, answer: str) -> float:
    """1.0 when the completion's final answer is the answer (see the module docstring), else 0.0."""
    expected = final_number(answer)
    if expected is not None:
        return float(final_number(completion) == expected)
    return float(" ".join(completion.split()).lower() == " ".join(answer.split()).lower())


def describe_problem(spec: str) -> str | None:
    """What is wrong with a reward spec (one line naming the param), or None."""
    if spec == "exact_match":
        return None
    if spec.startswith("regex:"):
        try:
            re.compile(spec[len("regex:"):])
        except re.error as e:
            return f"reward: regex:{spec[len('regex:'):]!r} is not a regular expression ({e})"
        return None
    path = Path(spec)
    if path.is_dir():
        config = path / "config.json"
        if not (config.is_file() and json.loads(config.read_text()).get("num_labels") == 1):
            return f"reward: {spec} is not a reward model (no config.json with num_labels 1); give the output of llmpipe reward-model"
        return None
    return f"reward: unknown reward {spec!r}; expected exact_match, regex:<pattern> or a reward-model checkpoint directory"


def make_reward(spec: str, device: str = "cpu") -> Callable[[list[list[dict]], list[str], list[str]], list[float]]:
    """reward(prompts (message lists), completions, answers) -> one float per completion, for a checked spec."""
    if spec == "exact_match":
        return lambda prompts, completions, answers: [exact_match(c, a) for c, a in zip(completions, answers)]
    if spec.startswith("regex:"):
        pattern = re.compile(spec[len("regex:"):], re.DOTALL)
        return lambda prompts, completions, answers: [float(pattern.search(c) is not None) for c in completions]
    return _reward_model(spec, device)


def _reward_model(path: str, device: str):
    import torch

    from llmpipe.model import Model
    from llmpipe.text.chat_template import render
    from llmpipe.text.tokenizer import load_tokenizer
    from llmpipe.train.examples import pad_rows
    from llmpipe.train.reward import sequence_rewards

    model, tokenizer = Model.from_checkpoint(path, device=device).eval(), load_tokenizer(path)
    for weight in model.parameters():
        weight.requires_grad_(False)
    context = model.config.max_seq_len

    def score(prompts: list[list[dict]], completions: list[str], answers: list[str]) -> list[float]:
        rows = [render([*p, {"role": "assistant", "content": c}], tokenizer)[0][-context:]
                for p, c in zip(prompts, completions)]
        ids, mask = pad_rows([(r, [1] * len(r)) for r in rows], model.config.pad_token_id)
        with torch.no_grad():
            return sequence_rewards(model, ids.to(device), mask.sum(1).to(device)).tolist()

    return score
