"""The report's data, gathered from the artifacts' manifests and files: steps, then one dict per section.

Nothing is recomputed: every figure is one a stage recorded (counts, stats, metrics, timings) or a
file it wrote (metrics.jsonl, results.json). A section with nothing to show carries an `empty`
line instead of disappearing, so a reader knows it was looked for.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from llmpipe.artifacts.manifest import read_manifest

SECTIONS = [  # (id, title), in the order the report shows them
    ("funnel", "Data funnel"),
    ("dedup", "Dedup clusters"),
    ("tokens", "Tokens per source"),
    ("training", "Training curves"),
    ("evaluation", "Evaluation"),
    ("quantization", "Quantization"),
    ("samples", "Samples and chat answers"),
    ("resources", "Wall time and peak memory"),
    ("lineage", "Lineage"),
]
CURVE_POINTS = 1000  # training records kept per curve in report.json; a long run is thinned evenly


def collect(paths: list[Path], samples_per_reason: int, kept_samples: int) -> dict:
    """{"steps": [...], "sections": [...]} for the artifacts at `paths`, in that order."""
    from llmpipe.report import lineage

    artifacts = [(Path(p).resolve(), read_manifest(p)) for p in paths]
    names = _step_names(artifacts)
    steps = [_step(path, m, names) for path, m in artifacts]
    by_name = {s["name"]: (path, m) for s, (path, m) in zip(steps, artifacts)}
    builders = {
        "funnel": lambda: _funnel(steps, by_name),
        "dedup": lambda: _dedup(steps, by_name),
        "tokens": lambda: _tokens(steps, by_name, names),
        "training": lambda: _training(steps, by_name),
        "evaluation": lambda: _evaluation(steps, by_name, names),
        "quantization": lambda: _quantization(steps, by_name, names),
        "samples": lambda: _samples(steps, by_name),
        "resources": lambda: _resources(steps, by_name),
        "lineage": lambda: lineage.collect(steps, by_name, names, samples_per_reason, kept_samples),
    }
    sections = []
    for section_id, title in SECTIONS:
        data, empty = builders[section_id]()
        sections.append({"id": section_id, "title": title, "empty": empty, "plots": [], **data})
    return {"steps": steps, "sections": sections}


def _step_names(artifacts: list[tuple[Path, dict]]) -> dict[str, str]:
    """Artifact path -> the name the report calls it: its step, or its directory when two share a step name."""
    steps = [m.get("step") or path.name for path, m in artifacts]
    return {str(path): (step if steps.count(step) == 1 else path.name) for (path, _), step in zip(artifacts, steps)}


def name_of(path: str, names: dict[str, str]) -> str | None:
    """The report's name of an artifact path, or the step named in its manifest; None for raw inputs."""
    resolved = str(Path(path).resolve()) if not path.startswith("embedded:") else path
    if resolved in names:
        return names[resolved]
    manifest = Path(resolved) / "_manifest.json"
    if manifest.is_file():
        return json.loads(manifest.read_text()).get("step")
    return None


def _step(path: Path, m: dict, names: dict[str, str]) -> dict:
    """One step's card: what made it (stage, params, inputs with their fingerprints) and what it cost."""
    timings = m.get("timings", {})
    inputs = [{"step": name_of(i["path"], names), "path": i["path"], "kind": i["kind"], "fingerprint": i["fingerprint"]}
              for i in m.get("inputs", [])]
    param_inputs = [{"param": k, "step": name_of(str(m["params"].get(k, "")), names), "path": m["params"].get(k), "fingerprint": fp}
                    for k, fp in sorted(m.get("param_fingerprints", {}).items())]
    return {
        "name": names[str(path)], "stage": m.get("stage"), "path": str(path), "output_kind": m.get("output_kind"),
        "fingerprint": m.get("fingerprint"), "content_hash": m.get("content_hash"), "params": m.get("params", {}),
        "params_changed": _changed_params(m.get("stage"), m.get("params", {})), "inputs": inputs, "param_inputs": param_inputs,
        "counts": m.get("counts", {}), "wall_seconds": timings.get("wall_seconds"), "task_seconds": timings.get("task_seconds", {}),
        "peak_rss_bytes": timings.get("peak_rss_bytes"),
    }


def _changed_params(stage: str | None, params: dict) -> list[str]:
    """Params set to something other than the stage's default: what the user chose."""
    from llmpipe.config import canonical_json
    from llmpipe.errors import ConfigError
    from llmpipe.registry import get_stage

    try:
        fields = get_stage(stage).param_fields() if stage else []
    except ConfigError:
        return sorted(params)
    defaults = {}
    for f in fields:
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    defaults = json.loads(canonical_json(defaults))  # as the manifest stores params: tuples become lists
    return [k for k in sorted(params) if k not in defaults or defaults[k] != params[k]]


def _funnel(steps: list[dict], by_name: dict) -> tuple[dict, str | None]:
    """Documents into and out of every documents step, and what each rule (reason) removed."""
    rows = []
    for s in steps:
        path, m = by_name[s["name"]]
        if m.get("output_kind") != "documents":
            continue
        stats = m.get("stats", {})
        removed = sorted(stats.get("dropped", {}).items(), key=lambda kv: -kv[1])
        bad = dict(sorted(stats.get("skipped", {}).items()))
        out = m.get("counts", {}).get("documents", 0)
        documents_in = m.get("funnel", {}).get("documents_in") or m.get("dedup", {}).get("documents_in") or out + sum(n for _, n in removed)
        if m.get("stage") == "ingest":
            documents_in = out + sum(n for _, n in removed) + sum(bad.values())  # records read
        rows.append({"step": s["name"], "stage": s["stage"], "documents_in": documents_in, "documents_out": out,
                     "removed": [{"reason": r, "documents": n} for r, n in removed if n], "bad_records": bad})
    return {"steps": rows}, None if rows else "No documents step among the report's inputs."


def _dedup(steps: list[dict], by_name: dict) -> tuple[dict, str | None]:
    rows = []
    for s in steps:
        m = by_name[s["name"]][1]
        if "dedup" in m:
            summary = dict(m["dedup"])
            summary["cluster_sizes"] = {k: v for k, v in sorted(summary.get("cluster_sizes", {}).items(), key=lambda kv: int(kv[0]))}
            rows.append({"step": s["name"], **summary})
    return {"steps": rows}, None if rows else "No dedup step among the report's inputs."


def _tokens(steps: list[dict], by_name: dict, names: dict) -> tuple[dict, str | None]:
    rows = []
    for s in steps:
        m = by_name[s["name"]][1]
        if m.get("output_kind") != "tokens":
            continue
        splits = {k: {"tokens": v.get("tokens", 0), "documents": v.get("documents", 0), "shards": len(v.get("shards", []))}
                  for k, v in m.get("splits", {}).items()}
        sources = [{"step": name_of(src["input"], names), **src} for src in m.get("sources", [])]
        rows.append({"step": s["name"], "splits": splits, "sources": sources, "vocab_size": m.get("vocab_size"),
                     "bytes_per_token": m.get("bytes_per_token"), "dtype": m.get("dtype")})
    return {"steps": rows}, None if rows else "No tokenize step among the report's inputs."


def _training(steps: list[dict], by_name: dict) -> tuple[dict, str | None]:
    rows = []
    for s in steps:
        path, m = by_name[s["name"]]
        if not (path / "metrics.jsonl").is_file():
            continue
        train, evals = _read_metrics(path / "metrics.jsonl")
        stride = max(1, -(-len(train) // CURVE_POINTS))
        curve = [[r["step"], r["loss"]] for r in train[::stride]]
        if train and curve[-1][0] != train[-1]["step"]:
            curve.append([train[-1]["step"], train[-1]["loss"]])
        rows.append({"step": s["name"], "stage": s["stage"], "metrics": m.get("metrics", {}), "counts": m.get("counts", {}),
                     "steps_trained": train[-1]["step"] if train else 0, "final_loss": train[-1]["loss"] if train else None,
                     "train_loss": curve, "evals": evals, "metrics_file": str(path / "metrics.jsonl")})
    return {"steps": rows}, None if rows else "No training step (metrics.jsonl) among the report's inputs."


def _read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    train, evals = [], []
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            (evals if record.get("eval") else train).append(record)
    return train, [{k: v for k, v in r.items() if k != "eval"} for r in evals]


def _evaluation(steps: list[dict], by_name: dict, names: dict) -> tuple[dict, str | None]:
    rows = []
    for s in steps:
        path, m = by_name[s["name"]]
        if not (path / "results.json").is_file():
            continue
        results = json.loads((path / "results.json").read_text())
        checkpoint = results.get("config", {}).get("checkpoint", "")
        for task, metrics in sorted(results.get("results", {}).items()):
            rows.append({"step": s["name"], "checkpoint": name_of(checkpoint, names) or checkpoint, "checkpoint_path": checkpoint,
                         "task": task, "metrics": {k: v for k, v in metrics.items() if v is not None},
                         "samples_file": str(path / "samples" / f"{task}.parquet")})
    return {"rows": rows}, None if rows else "No evaluate step among the report's inputs."


def _quantization(steps: list[dict], by_name: dict, names: dict) -> tuple[dict, str | None]:
    """Each quantized checkpoint beside its float input: sizes, errors, and perplexity where an evaluate step measured it."""
    ppl = {}
    for row in _evaluation(steps, by_name, names)[0]["rows"]:
        if "bits_per_byte" in row["metrics"] or "perplexity" in row["metrics"]:
            ppl.setdefault(str(Path(row["checkpoint_path"]).resolve()), row["metrics"])
    rows = []
    for s in steps:
        path, m = by_name[s["name"]]
        config = path / "config.json"
        spec = json.loads(config.read_text()).get("quantization") if config.is_file() else None
        if not spec:
            continue
        counts, metrics = m.get("counts", {}), m.get("metrics", {})
        source = next((i["path"] for i in m.get("inputs", [])), "")
        row = {"step": s["name"], "checkpoint": name_of(source, names) or source, "method": spec.get("method"), "bits": spec.get("bits"),
               "group_size": spec.get("group_size"), "model_bytes": counts.get("model_safetensors_bytes"),
               "input_model_bytes": counts.get("input_safetensors_bytes"), "compression": metrics.get("compression_of_quantized_layers"),
               "weight_relative_error_mean": metrics.get("weight_relative_error_mean"),
               "gguf_bytes": {k.removeprefix("gguf_").removesuffix("_bytes"): v for k, v in counts.items() if k.startswith("gguf_")},
               "decode_tokens_per_s": metrics.get("decode_tokens_per_s"), "input_decode_tokens_per_s": metrics.get("input_decode_tokens_per_s")}
        for who, key in (("", str(path)), ("input_", str(Path(source).resolve()) if source else "")):
            got = ppl.get(key, {})
            row[f"{who}perplexity"], row[f"{who}bits_per_byte"] = got.get("perplexity"), got.get("bits_per_byte")
        rows.append(row)
    return {"rows": rows}, None if rows else "No quantized checkpoint among the report's inputs."


def _samples(steps: list[dict], by_name: dict) -> tuple[dict, str | None]:
    """Generations pretrain recorded (a greedy and a sampled continuation) and the chat answers sft/dpo recorded."""
    generations, chat = [], []
    for s in steps:
        samples = by_name[s["name"]][1].get("samples")
        if isinstance(samples, dict):
            generations += [{"step": s["name"], "decoding": k, "text": v} for k, v in samples.items()]
        elif isinstance(samples, list):
            chat += [{"step": s["name"], **x} for x in samples]
    empty = None if generations or chat else "No step among the report's inputs recorded generations or chat answers."
    return {"generations": generations, "chat": chat}, empty


def _resources(steps: list[dict], by_name: dict) -> tuple[dict, str | None]:
    rows = [{"step": s["name"], "stage": s["stage"], "wall_seconds": s["wall_seconds"], "task_seconds": s["task_seconds"],
             "peak_rss_bytes": s["peak_rss_bytes"]} for s in steps if s["wall_seconds"] is not None]
    return {"rows": rows}, None if rows else "No step recorded its wall time."
