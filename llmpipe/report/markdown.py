"""report.md: the Markdown twin of report.html, with the plots as PNG files beside it (plots/*.png)."""

from __future__ import annotations

import json

from llmpipe.report import format as F


def render(report: dict) -> str:
    lines = [f"# {report['title']}", "", f"{len(report['steps'])} steps · llmpipe {report['llmpipe_version']}", ""]
    for s in report["sections"]:
        lines += [f"## {s['title']}", ""]
        lines += [f"![{p['alt']}]({p['file']})" for p in s["plots"]] + ([""] if s["plots"] else [])
        lines += [f"_{s['empty']}_"] if s["empty"] else RENDERERS[s["id"]](s, report)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _table(headers: list[str], rows: list[list]) -> list[str]:
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows] + [""]


def _funnel(s: dict, report: dict) -> list[str]:
    rows = [[r["step"], r["stage"], F.number(r["documents_in"]), F.number(r["documents_out"]),
             "; ".join(f"{x['reason']} {F.number(x['documents'])}" for x in r["removed"])
             + "".join(f"; bad record {k} {F.number(v)}" for k, v in r["bad_records"].items() if v)] for r in s["steps"]]
    return _table(["step", "stage", "documents in", "documents out", "removed by rule"], rows)


def _dedup(s: dict, report: dict) -> list[str]:
    out = []
    for r in s["steps"]:
        facts = {k: v for k, v in r.items() if k not in ("step", "cluster_sizes", "clusters_table")}
        sizes = ", ".join(f"{k}: {F.number(v)}" for k, v in r["cluster_sizes"].items()) or "no clusters of two or more documents"
        out += [f"**{r['step']}**: {F.metrics(facts)}; cluster sizes (documents: clusters): {sizes}", ""]
    return out


def _tokens(s: dict, report: dict) -> list[str]:
    out = []
    for r in s["steps"]:
        out += [f"**{r['step']}**: vocabulary {F.number(r['vocab_size'])} ({r['dtype']}), {F.number(r['bytes_per_token'])} bytes per token", ""]
        out += _table(["split", "tokens", "documents", "shards"], [[k, F.number(v["tokens"]), F.number(v["documents"]), F.number(v["shards"])] for k, v in r["splits"].items()])
        out += _table(["source", "weight", "documents", "train tokens", "val tokens"],
                      [[src["step"] or src["input"], F.number(src.get("weight")), F.number(src.get("documents")), F.number(src.get("train_tokens")),
                        F.number(src.get("val_tokens"))] for src in r["sources"]])
    return out


def _training(s: dict, report: dict) -> list[str]:
    return _table(["step", "stage", "steps", "last train loss", "recorded metrics"],
                  [[r["step"], r["stage"], F.number(r["steps_trained"]), F.number(r["final_loss"]), F.metrics(r["metrics"])] for r in s["steps"]])


def _evaluation(s: dict, report: dict) -> list[str]:
    return _table(["step", "checkpoint", "task", "metrics", "per-item samples"],
                  [[r["step"], r["checkpoint"], r["task"], F.metrics(r["metrics"]), f"`{r['samples_file']}`"] for r in s["rows"]])


def _quantization(s: dict, report: dict) -> list[str]:
    rows = [[r["step"], r["checkpoint"], f"int{r['bits']} {r['method']}", F.size(r["model_bytes"]), F.size(r["input_model_bytes"]), F.number(r["compression"]),
             F.number(r["weight_relative_error_mean"]), F.number(r["bits_per_byte"]), F.number(r["input_bits_per_byte"]), F.number(r["decode_tokens_per_s"]),
             ", ".join(f"{k} {F.size(v)}" for k, v in r["gguf_bytes"].items())] for r in s["rows"]]
    return _table(["step", "from", "scheme", "size", "float size", "linear compression", "weight error", "bits per byte", "float bits per byte",
                   "decode tokens/s", "GGUF"], rows)


def _samples(s: dict, report: dict) -> list[str]:
    out = []
    if s["generations"]:
        out += ["### Generations", ""] + _table(["step", "decoding", "text"], [[g["step"], g["decoding"], F.one_line(g["text"], 400)] for g in s["generations"]])
    if s["chat"]:
        out += ["### Chat answers", ""] + _table(["step", "prompt", "answer"], [[c["step"], F.one_line(c.get("prompt", "")), F.one_line(c.get("answer", ""), 400)] for c in s["chat"]])
    return out


def _resources(s: dict, report: dict) -> list[str]:
    return _table(["step", "stage", "wall time", "peak memory (largest task)"],
                  [[r["step"], r["stage"], F.seconds(r["wall_seconds"]), F.size(r["peak_rss_bytes"]) or "not recorded"] for r in s["rows"]])


def _lineage(s: dict, report: dict) -> list[str]:
    out = ["### Steps: inputs and params", ""]
    for step in report["steps"]:
        inputs = [f"{i['step'] or i['path']} ({i['kind']} {i['fingerprint'][:16]})" for i in step["inputs"]]
        inputs += [f"{p['param']} = {p['step'] or p['path']}" for p in step["param_inputs"]]
        chosen = ", ".join(f"{k} = {json.dumps(step['params'][k], ensure_ascii=False)}" for k in step["params_changed"]) or "every param at its default"
        out += [f"- **{step['name']}** ({step['stage']}, `{step['path']}`): inputs {', '.join(inputs)}; params: {chosen}"]
    out += ["", "### Documents each rule removed, with their source records", ""]
    for e in s["removed"]:
        out += [f"**{e['step']}: {e['rule']}** removed {F.number(e['documents_removed'])} documents", ""] + _documents(e["documents"])
    if not s["removed"]:
        out += ["_No step kept the documents it removed (set keep_rejected = true on filter, classify, dedup)._", ""]
    out += ["### Documents kept into the token shards, with their source records", ""]
    for e in s["kept"]:
        out += [f"**{e['step']}**: documents of {e['input']}", ""] + _documents(e["documents"])
    if not s["kept"]:
        out += ["_No tokenize step among the report's inputs._", ""]
    return out


def _documents(docs: list[dict]) -> list[str]:
    return _table(["source record (file:line)", "id", "in the artifact", "text"],
                  [[f"`{F.source_record(d)}`", d.get("id", ""), f"`{d['artifact_file']}` row {d['row']}", F.one_line(d.get("text", ""), 160)] for d in docs])


RENDERERS = {
    "funnel": _funnel, "dedup": _dedup, "tokens": _tokens, "training": _training, "evaluation": _evaluation,
    "quantization": _quantization, "samples": _samples, "resources": _resources, "lineage": _lineage,
}
