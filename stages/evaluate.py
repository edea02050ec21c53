"""Evaluate a checkpoint: perplexity and bits per byte on held-out text, and tasks scored as lm-evaluation-harness scores them.

Inputs: one checkpoint (a pretrain/sft/dpo step, or any Llama checkpoint directory transformers
loads with an llmpipe tokenizer beside it), and optionally held-out text for perplexity and bits per
byte: a tokenize artifact (its val split, cut into windows of the model's context as pretrain's
validation cuts it), a documents artifact, or .jsonl/.parquet files with a `text` field (each
document scored from bos in windows of the model's context).

`tasks` (repeatable) names multiple-choice and generation tasks (llmpipe/evaluation/tasks.py):
`hellaswag=PATH` (HellaSwag's JSONL), `blimp=PATH` (sentence_good/sentence_bad pairs),
`NAME=PATH` or a bare PATH.jsonl in the generic format (`context`, `choices`, `gold`) or the
GSM8K-style one (`question`, `answer`), and `blimp_mini`, a small set of minimal pairs that ships
with llmpipe. Multiple choice is scored by the continuation's summed log-probability given the
context, with lm-eval's token boundaries, truncation, few-shot sampling and metrics (acc, acc_norm,
standard errors); generation tasks by exact match of the extracted answer after greedy decoding.

Output: results.json (per task: metrics, standard errors, n), samples/<task>.parquet (one row per
item: task, doc_id = the row's position in the task file, loglikelihoods per choice, pred, gold,
acc, acc_norm, context; as lm-eval's --log_samples), and the metrics in the manifest.

    llmpipe evaluate --input runs/pretrain/model --input runs/pretrain/tokens --output runs/eval --tasks blimp_mini
    llmpipe evaluate --input runs/model --output runs/eval-hs --tasks hellaswag=../shared/data/eval/hellaswag_val.jsonl --limit 200 --num-fewshot 5
    [steps.evaluate]
    inputs = ["model", "tokens"]     # the checkpoint, then held-out text
    tasks = ["blimp_mini"]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llmpipe.registry import Plan, Stage

TEXT_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
GENERATION_STOPS = ("\n\n", "Question:")  # a blank line ends the answer (lm-eval's gsm8k also stops at the next "Question:")


@dataclass(frozen=True)
class Params:
    tasks: tuple[str, ...] = field(default=(), metadata={"help": "Tasks (repeatable): hellaswag=PATH, blimp=PATH, NAME=PATH or PATH.jsonl (context/choices/gold, or question/answer), blimp_mini."})
    num_fewshot: int = field(default=0, metadata={"help": "Solved examples before each item, drawn from the rest of the task file (lm-eval's num_fewshot)."})
    fewshot_seed: int = field(default=1234, metadata={"help": "Seed of the few-shot draws (1234: lm-eval's default, so its contexts are reproduced)."})
    limit: int = field(default=0, metadata={"help": "Evaluate only the first N items of each task (sequences or documents of held-out text); 0: all."})
    batch_size: int = field(default=16, metadata={"help": "Sequences per forward pass."})
    max_seq_len: int = field(default=0, metadata={"help": (
        "Context to evaluate in, in tokens (0: the one the model was trained with). Past the trained length RoPE and ALiBi "
        "positions extend (RoPE as the model's rope_scaling says: none, linear, dynamic NTK or YaRN); learned absolute "
        "positions cannot.")})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest generated answer for generation tasks (lm-eval's max_gen_toks)."})
    device: Literal["auto", "cpu", "cuda", "mps"] = field(default="auto", metadata={"help": "Where to run: auto (cuda, else mps, else cpu), cpu, cuda or mps."})

    def __post_init__(self):
        if self.num_fewshot < 0 or self.limit < 0:
            raise ValueError(f"num_fewshot: num_fewshot and limit must be at least 0, got {self.num_fewshot} and {self.limit}")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError(f"batch_size: batch_size and max_new_tokens must be at least 1, got {self.batch_size} and {self.max_new_tokens}")
        if self.max_seq_len < 0:
            raise ValueError(f"max_seq_len: {self.max_seq_len} is negative; give a context in tokens, or 0 for the model's own")


def is_model(inp) -> bool:
    """A checkpoint: a checkpoint artifact, or a directory (made or planned) with config.json at its root."""
    root = Path(inp.path).resolve()
    return inp.output_kind == "checkpoint" or any(Path(f) == root / "config.json" for f in inp.files)


def eval_tasks(params: Params, inputs) -> list[dict]:
    """One task per held-out text input and per `tasks` entry; ValueError("param: ...") for what cannot run."""
    from llmpipe.evaluation.tasks import load_docs, parse_spec

    models = [i for i in inputs if is_model(i)]
    if len(models) != 1:
        raise ValueError(f"inputs: expected one checkpoint (a directory with config.json), got {len(models)}")
    texts = [i for i in inputs if not is_model(i)]
    out = []
    for k, inp in enumerate(texts):
        if inp.kind == "artifact" and inp.output_kind not in ("tokens", "documents"):
            raise ValueError(f"inputs: {inp.path} is a {inp.output_kind} artifact; held-out text is a tokenize or documents artifact")
        odd = [f for f in inp.files if inp.kind != "artifact" and not f.endswith(TEXT_SUFFIXES)]
        if odd:
            raise ValueError(f"inputs: {odd[0]} is not held-out text ({', '.join(TEXT_SUFFIXES)} with a text field)")
        name = "perplexity" if len(texts) == 1 else f"perplexity_{k}_{Path(inp.path).name.split('.')[0]}"
        out.append({"name": name, "format": "tokens" if inp.output_kind == "tokens" else "documents", "input": inputs.index(inp)})
    for spec in map(parse_spec, params.tasks):
        n = len(load_docs(spec))  # every row checked now, before anything is written
        if params.num_fewshot >= n:
            raise ValueError(f"num_fewshot: {params.num_fewshot} shots need at least {params.num_fewshot + 1} items, {spec.name} has {n}")
        out.append({"name": spec.name, "format": spec.format, "path": spec.path})
    names = [t["name"] for t in out]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:
        raise ValueError(f"tasks: {twice} is named twice; give one of them another name (NAME=PATH)")
    if not out:
        raise ValueError("tasks: nothing to evaluate; give --tasks (hellaswag=PATH, blimp_mini, a .jsonl task) or held-out text as another --input")
    return out


def plan(params: Params, inputs) -> Plan:
    from llmpipe.text.tokenizer import check_tokenizer, has_tokenizer
    from llmpipe.train.dist import check_device

    check_device(params.device, built_only=True)
    tasks = eval_tasks(params, inputs)
    model = next(i for i in inputs if is_model(i))
    if Path(model.path, "config.json").is_file():  # made (not an earlier step still to run): its tokenizer is checked now
        from llmpipe.encoder import encoder_refusal, is_encoder
        from llmpipe.model import ModelConfig

        hf_config = json.loads(Path(model.path, "config.json").read_text())
        if is_encoder(hf_config):
            raise ValueError(f"inputs: {encoder_refusal(model.path, 'be scored left to right (perplexity, log-likelihoods)')}")
        if not has_tokenizer(model.path):
            raise ValueError(f"inputs: {model.path} has no tokenizer.model (or WordPiece tokenizer.json); evaluate reads checkpoints with an llmpipe tokenizer beside the weights")
        check_tokenizer(model.path)
        try:
            config = ModelConfig.from_hf(hf_config)
        except (ValueError, KeyError, TypeError, AttributeError):
            config = None  # the task's loader says in one line what is wrong with it
        if config and params.max_seq_len > config.max_seq_len and config.positions == "learned":
            raise ValueError(f"max_seq_len: {params.max_seq_len} is past the {config.max_seq_len} learned absolute positions of {model.path}; "
                             "RoPE and ALiBi models extend past their trained context, this one cannot (give at most its trained context)")
    return Plan(phases=[("evaluate", tasks)], files=["results.json"] + [f"samples/{t['name']}.parquet" for t in tasks])


def evaluate_task(ctx, task: dict) -> dict:
    from llmpipe.errors import InputError
    from llmpipe.evaluation import runs
    from llmpipe.model import Model
    from llmpipe.text.tokenizer import load_tokenizer
    from llmpipe.train.dist import autodetect_device, check_device

    p: Params = ctx.params
    try:
        check_device(p.device)
    except ValueError as e:
        raise InputError(f"{ctx.run['step']} {e}") from None
    device = autodetect_device() if p.device == "auto" else p.device
    checkpoint = next(i for i in ctx.inputs if is_model(i)).path
    model, tok = Model.from_checkpoint(checkpoint, device=device).eval(), load_tokenizer(checkpoint)
    if p.max_seq_len:
        model.set_max_seq_len(p.max_seq_len)
    try:
        if task["format"] in ("tokens", "documents"):
            rows, metrics = runs.perplexity(model, tok, checkpoint, ctx.inputs[task["input"]], task["format"], p.limit, p.batch_size, device)
        elif task["format"] == "generation":
            rows, metrics = runs.generation(model, tok, task, p.num_fewshot, p.fewshot_seed, p.limit, p.max_new_tokens, GENERATION_STOPS, device)
        else:
            rows, metrics = runs.multiple_choice(model, tok, task, p.num_fewshot, p.fewshot_seed, p.limit, p.batch_size, device)
    except ValueError as e:
        raise InputError(f"{ctx.run['step']} {task['name']}: {e}") from None
    runs.write_samples(ctx.out / "samples" / f"{task['name']}.parquet", task["name"], rows)
    return {"task": task["name"], "format": task["format"], "metrics": metrics}


def finalize(ctx, stats: dict, records: dict) -> dict:
    from llmpipe.artifacts.layout import write_json_atomic
    from llmpipe.log import log

    p: Params = ctx.params
    results = {r["stats"]["task"]: r["stats"]["metrics"] for r in records["evaluate"]}
    config = {"checkpoint": next(i for i in ctx.inputs if is_model(i)).path, "num_fewshot": p.num_fewshot,
              "fewshot_seed": p.fewshot_seed, "limit": p.limit or None}
    write_json_atomic(ctx.out / "results.json", {"results": results, "config": config})
    flat = {f"{task}/{k}": round(v, 6) if isinstance(v, float) else v for task, m in results.items() for k, v in m.items() if v is not None}
    for task, m in results.items():
        log(f"{task}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items() if v is not None))
    return {"metrics": flat, "counts": {"tasks": len(results), "items": sum(m.get("n", 0) for m in results.values())}}


def task_files(params: Params) -> dict[str, str]:
    """The data file of each task, by its spec: a changed file makes the step stale (llmpipe/api.py)."""
    from llmpipe.evaluation.tasks import parse_spec

    return {f"tasks[{spec}]": parse_spec(spec).path for spec in params.tasks}


STAGE = Stage(
    name="evaluate", version=1, params=Params, doc=__doc__, plan=plan, run_task={"evaluate": evaluate_task}, finalize=finalize,
    output_kind="evaluation", input_kinds=("any",), extra={"param_files": task_files},
)
