"""Quantize a checkpoint's linear layers (int8, int4 round-to-nearest or GPTQ) and export GGUF for llama.cpp.

Input: one float checkpoint (a pretrain/sft/dpo step, or a Llama checkpoint directory with llmpipe's
tokenizer). Output: a checkpoint directory like every other (config.json, model.safetensors, the
tokenizer files) whose block projections (and lm_head with quantize_lm_head) are stored as integers
with float16 scales (llmpipe/quant.py has the layout) and whose config.json names the scheme under
`quantization`; `Model.from_checkpoint`, and so `llmpipe generate`, `chat` and `evaluate`, load it as
it is. A mixture of experts has each expert's projections quantized as layers of their own
(`mlp.experts.gate_up_proj.3`); embeddings, norms and the router stay float.

Schemes: int8 per output channel, symmetric; int4 in groups of group_size input features, asymmetric
with zero points (or symmetric), by round-to-nearest (rtn) or by GPTQ (method = "gptq"), which reads
calibration_samples sequences from the train split of a tokenize artifact (`calibration`) and moves
each column's rounding error onto the columns after it (llmpipe/gptq.py).
Kernels: on CPU with bf16/fp16 activations (CPU autocast, a bf16 model) torch's int8 and int4
weight-only kernels run; with fp32 activations (the default) and on CUDA the weights are dequantized
on the fly (torch's kernels take fp32 on CPU but run a reference loop 15-30x slower than F.linear).

format = "gguf" also writes model-<TYPE>.gguf for each of gguf_types beside the checkpoint, from the
float weights (llama.cpp quantizes with its own schemes): F16, Q8_0 and Q4_0 by default
(llmpipe/gguf_export.py; needs the `gguf` package).

    llmpipe quantize --input runs/pretrain/model --output runs/model-int8
    llmpipe quantize --input runs/pretrain/model --output runs/model-gptq --scheme int4 --group-size 32 --method gptq --calibration runs/pretrain/tokens
    llmpipe quantize --input runs/pretrain/sft --output runs/sft-gguf --format gguf --gguf-types F16 --gguf-types Q8_0
    [steps.quantize]
    inputs = ["dpo"]
    scheme = "int4"
    method = "gptq"
    calibration = "tokens"     # an earlier tokenize step, or a tokenize artifact
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llmpipe.registry import Plan, Stage

GGUF_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")  # llmpipe.gguf_export.GGUF_TYPES (no numpy import here)


@dataclass(frozen=True)
class Params:
    scheme: Literal["int8", "int4"] = field(default="int8", metadata={"help": "int8: per output channel, symmetric; int4: groups of group_size input features."})
    method: Literal["rtn", "gptq"] = field(default="rtn", metadata={"help": "rtn: round to nearest; gptq: error-compensating rounding on calibration tokens (GPTQ, arXiv:2210.17323)."})
    group_size: int = field(default=128, metadata={"help": "int4: input features per scale (0: one per row); must divide every layer's in_features (n_embd 64 takes 64 or 32)."})
    symmetric: bool = field(default=False, metadata={"help": "int4: symmetric grid without zero points (GPTQ's sym); default asymmetric with zero points. int8 is always symmetric."})
    calibration: str = field(default="", metadata={"help": "gptq: a tokenize artifact or step whose tokens calibrate the Hessians."})
    calibration_split: str = field(default="train", metadata={"help": "gptq: the split of the calibration tokens to read (keep val for measuring)."})
    calibration_samples: int = field(default=128, metadata={"help": "gptq: sequences of calibration_seq_len tokens (the GPTQ paper's 128), fewer if the split is smaller."})
    calibration_seq_len: int = field(default=0, metadata={"help": "gptq: tokens per calibration sequence; 0: the model's context, at most 2048."})
    damp: float = field(default=0.01, metadata={"help": "gptq: damp x mean(diag H) is added to the Hessian's diagonal (the reference's percdamp)."})
    act_order: bool = field(default=False, metadata={"help": "gptq: quantize columns by decreasing Hessian diagonal (desc_act), with static groups."})
    quantize_lm_head: bool = field(default=False, metadata={"help": "Quantize lm_head too (untied from the float embedding); embeddings and norms stay float."})
    format: Literal["safetensors", "gguf"] = field(default="safetensors", metadata={"help": "gguf: also write model-<TYPE>.gguf files for llama.cpp beside the checkpoint."})
    gguf_types: tuple[str, ...] = field(default=("F16", "Q8_0", "Q4_0"), metadata={"help": f"GGUF files to write with format gguf: {', '.join(GGUF_TYPES)}."})
    seed: int = field(default=0, metadata={"help": "Seed of the calibration sample."})

    def __post_init__(self):
        if self.scheme not in ("int8", "int4"):
            raise ValueError(f"scheme: expected int8 or int4, got {self.scheme!r}")
        if self.method not in ("rtn", "gptq"):
            raise ValueError(f"method: expected rtn or gptq, got {self.method!r}")
        if self.group_size < 0 or self.group_size % 2:
            raise ValueError(f"group_size: expected 0 (one group per row) or an even number of input features, got {self.group_size}")
        if self.method == "gptq" and not self.calibration:
            raise ValueError("calibration: method gptq needs calibration tokens; give a tokenize artifact or step")
        if self.method == "rtn" and self.calibration:
            raise ValueError('calibration: only method "gptq" reads calibration tokens; set method = "gptq" or drop calibration')
        if not 0 < self.damp < 1 or self.calibration_samples < 1 or self.calibration_seq_len < 0:
            raise ValueError(f"damp: expected damp in (0, 1), calibration_samples >= 1, calibration_seq_len >= 0; got {self.damp}, "
                             f"{self.calibration_samples}, {self.calibration_seq_len}")
        unknown = [t for t in self.gguf_types if t not in GGUF_TYPES]
        if unknown or (self.format == "gguf" and not self.gguf_types):
            raise ValueError(f"gguf_types: {unknown[0] if unknown else 'none'} is not a type gguf 0.19 writes; choose from {', '.join(GGUF_TYPES)}")

    @property
    def bits(self) -> int:
        return 8 if self.scheme == "int8" else 4


def _checkpoint_dir(inputs) -> Path:
    if len(inputs) != 1:
        raise ValueError(f"inputs: expected one checkpoint, got {len(inputs)}")
    return Path(inputs[0].path)


def check_checkpoint(path: Path, p: Params) -> dict:
    """The checkpoint's config.json, after checking it is a float checkpoint the scheme fits; {} while not made yet."""
    from llmpipe.artifacts.layout import MANIFEST, RUN

    if not path.exists() or ((path / RUN).exists() and not (path / MANIFEST).exists()):
        return {}
    from llmpipe.text.tokenizer import is_wordpiece_dir

    if p.format == "gguf" and is_wordpiece_dir(path):  # llama.cpp's WordPiece vocabulary ("bert") goes with BERT encoders; untested here
        raise ValueError(f"format: {path.name} has a WordPiece tokenizer and llmpipe's GGUF export writes only the sentencepiece "
                         "(\"llama\") vocabulary; use format safetensors, or a bpe/unigram tokenizer")
    for name in ("config.json", "model.safetensors", "tokenizer.model" if p.format == "gguf" else "config.json"):
        if not (path / name).is_file():
            raise ValueError(f"inputs: {path} has no {name}; give a checkpoint directory (a pretrain, sft or dpo output)")
    config = json.loads((path / "config.json").read_text())
    if config.get("quantization"):
        q = config["quantization"]
        raise ValueError(f"inputs: {path} is already quantized ({q.get('method')} int{q.get('bits')}); give the float checkpoint")
    rope_type = (config.get("rope_parameters") or {}).get("rope_type", "default")
    if p.format == "gguf" and (config.get("model_type") != "llama" or rope_type != "default"):
        why = config.get("llmpipe_export_blocker") or f"model_type {config.get('model_type')}, rope_type {rope_type}"
        raise ValueError(f"format: GGUF export writes llama.cpp's plain llama architecture, which {path.name} is not ({why}); use format safetensors")
    if p.scheme == "int4" and p.group_size:
        sizes = {"n_embd": config["hidden_size"], "intermediate_size": config["intermediate_size"]}
        for what, size in sizes.items():
            if size % p.group_size:
                divisors = [g for g in (128, 64, 32) if not any(s % g for s in sizes.values())]
                hint = f"use {' or '.join(map(str, divisors))}" if divisors else "use a divisor of both"
                raise ValueError(f"group_size: {p.group_size} does not divide in_features {size} ({what}) of {path.name}; {hint}, or 0 for one group per row")
    return config


def check_calibration(p: Params) -> None:
    from llmpipe.artifacts.layout import MANIFEST

    path = Path(p.calibration)
    if not (path / MANIFEST).is_file():
        return  # an earlier step yet to run (a missing path given by hand is refused before the plan)
    manifest = json.loads((path / MANIFEST).read_text())
    if manifest.get("output_kind") != "tokens":
        raise ValueError(f"calibration: {path} is a {manifest.get('output_kind')} artifact; give a tokenize artifact")
    if p.calibration_split not in manifest.get("splits", {}):
        raise ValueError(f"calibration_split: {path} has no {p.calibration_split!r} split (has {', '.join(sorted(manifest.get('splits', {})))})")


def plan(params: Params, inputs) -> Plan:
    from llmpipe.artifacts.checkpoint import TOKENIZER_FILES

    path = _checkpoint_dir(inputs)
    check_checkpoint(path, params)
    if params.calibration:
        check_calibration(params)
    if params.format == "gguf":
        from importlib.util import find_spec

        if find_spec("gguf") is None:
            raise ValueError('format: GGUF export needs the gguf package: pip install -c .ci/constraints.txt "gguf==0.19.0"')
    tokenizer_files = [f for f in TOKENIZER_FILES if (path / f).exists()] or list(TOKENIZER_FILES)
    gguf = [f"model-{t}.gguf" for t in params.gguf_types] if params.format == "gguf" else []
    return Plan(phases=[("quantize", [{}])], files=["model.safetensors", "config.json", *tokenizer_files, *gguf])


def calibration_batches(p: Params, max_seq_len: int, batch: int = 8) -> list:
    """The calibration sequences [b, T], a seeded sample of the split, in batches."""
    from llmpipe.train.data import PackedBatches, TokenStream, split_shards

    shards = split_shards(p.calibration, p.calibration_split)
    seq_len = min(p.calibration_seq_len or max_seq_len, max_seq_len, 2048)
    available = (len(TokenStream(shards)) - 1) // seq_len
    if available < 1:
        raise ValueError(f"calibration: the {p.calibration_split} split of {p.calibration} holds fewer than {seq_len + 1} tokens; lower calibration_seq_len")
    n = min(p.calibration_samples, available)
    x, _ = PackedBatches(shards, seq_len=seq_len, batch_size=n, seed=p.seed).batch(0, "cpu")
    return list(x.split(batch))


def quantize_task(ctx, task: dict) -> dict:
    import time

    import torch

    from llmpipe.artifacts.checkpoint import write_model_dir
    from llmpipe.artifacts.layout import atomic_path
    from llmpipe.errors import InputError
    from llmpipe.log import log
    from llmpipe.model import Model
    from llmpipe.moe import split_experts
    from llmpipe.quant import QuantLinear, quantize_rtn, set_module, target_names

    p: Params = ctx.params
    path = _checkpoint_dir(ctx.inputs)
    try:
        config = check_checkpoint(path, p)
    except ValueError as e:
        raise InputError(f"{ctx.run['step']} {e}") from None
    if config.get("llmpipe_export_blocker"):
        log(f"note: the quantized {path.name} loads in llmpipe but not in transformers: {config['llmpipe_export_blocker']}")
    t0 = time.time()
    model = Model.from_checkpoint(path).eval()
    split_experts(model)  # a mixture's experts are quantized one by one
    names = target_names(model, p.quantize_lm_head)
    if p.quantize_lm_head and model.lm_head.weight is model.model.embed_tokens.weight:  # the embedding stays float
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    originals = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    group_size = p.group_size if p.bits == 4 else 0
    counts = {}
    if p.method == "gptq":
        from llmpipe.gptq import gptq_model

        try:
            batches = calibration_batches(p, model.config.max_seq_len)
        except ValueError as e:
            raise InputError(f"{ctx.run['step']} {e}") from None
        counts = {"calibration_sequences": sum(len(b) for b in batches), "calibration_tokens": sum(b.numel() for b in batches)}
        found = gptq_model(model, batches, names, p.bits, group_size, p.symmetric, p.damp, p.act_order, log=log)
    else:
        found = {n: quantize_rtn(originals[n], p.bits, group_size, p.symmetric) for n in names}
    errors = []
    for name in names:
        layer = QuantLinear.from_quantized(*found[name], p.bits, group_size, p.symmetric)
        set_module(model, name, layer)
        w = originals[name]
        errors.append(((layer.dequantize() - w).norm() / w.norm()).item())
    spec = {"format": "llmpipe", "method": p.method, "bits": p.bits, "group_size": group_size, "symmetric": p.bits == 8 or p.symmetric,
            "scale_dtype": "float16", "modules": names}
    if p.method == "gptq":
        spec.update(damp=p.damp, act_order=p.act_order, calibration_tokens=counts["calibration_tokens"])
    state = model.state_dict()
    if "lm_head" not in names and model.lm_head.weight is model.model.embed_tokens.weight:
        del state["lm_head.weight"]  # tied: one matrix, stored once (from_checkpoint ties it again)
    write_model_dir(ctx.out, state, {**config, "quantization": spec}, path)
    float_bytes = sum(w.numel() * 4 for w in originals.values())
    stored = sum(t.numel() * t.element_size() for k, t in state.items() if k.rpartition(".")[0] in set(names))
    sizes = {"quantized_layers_fp32_bytes": float_bytes, "quantized_layers_bytes": stored,
             "model_safetensors_bytes": (ctx.out / "model.safetensors").stat().st_size,
             "input_safetensors_bytes": (path / "model.safetensors").stat().st_size}
    if p.format == "gguf":
        from llmpipe.gguf_export import write_gguf

        for t in p.gguf_types:
            with atomic_path(ctx.out / f"model-{t}.gguf") as tmp:
                write_gguf(path, tmp, t)
            sizes[f"gguf_{t}_bytes"] = (ctx.out / f"model-{t}.gguf").stat().st_size
    log(f"quantize: {len(names)} layers to {p.scheme} ({p.method}), linear weights {float_bytes / 1e6:.2f} MB -> {stored / 1e6:.2f} MB "
        f"({float_bytes / stored:.1f}x), mean relative weight error {sum(errors) / len(errors):.4f}")
    metrics = {"weight_relative_error_mean": round(sum(errors) / len(errors), 6), "weight_relative_error_max": round(max(errors), 6),
               "compression_of_quantized_layers": round(float_bytes / stored, 3)}
    return {"counts": {"quantized_layers": len(names), **counts, **sizes}, "metrics": metrics, "seconds": round(time.time() - t0, 2)}


def finalize(ctx, stats: dict, records: dict) -> dict:
    record = records["quantize"][0]["stats"]
    # decode speed of the quantized checkpoint beside its float input, both as loaded from disk (the report's table)
    metrics = {**record.get("metrics", {}), "decode_tokens_per_s": decode_speed(ctx.out),
               "input_decode_tokens_per_s": decode_speed(_checkpoint_dir(ctx.inputs))}
    return {"counts": record.get("counts", {}), "metrics": metrics, "stats": {"counts": record.get("counts", {})}}


def decode_speed(checkpoint, new_tokens: int = 32) -> float:
    """Greedy tokens per second of one sequence with the KV cache, after a short warm-up (one CPU/GPU, this process)."""
    import time

    import torch

    from llmpipe.model import Model

    model = Model.from_checkpoint(checkpoint).eval()
    prompt = torch.zeros((1, 1), dtype=torch.long)
    model.generate(prompt, 4)  # first calls pay for allocations and kernel selection
    t0 = time.perf_counter()
    model.generate(prompt, new_tokens)
    return round(new_tokens / (time.perf_counter() - t0), 1)


STAGE = Stage(
    name="quantize", version=1, params=Params, doc=__doc__, plan=plan, run_task={"quantize": quantize_task}, finalize=finalize,
    output_kind="checkpoint", input_kinds=("checkpoint", "raw"), path_params=("calibration",),
)
