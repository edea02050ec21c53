"""report.html: one self-contained page (inline CSS, plots as base64 PNG data URIs, no script, no network).

Numbers link to what is behind them: a removal count to the documents that rule removed, an eval
score and every input to the card of the step that made it (its inputs and params).
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from llmpipe.report import format as F

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:18px 32px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;color:#d0d7de}nav{margin-top:10px}nav a{color:#9ecbff;margin-right:14px;text-decoration:none}
main{max-width:1100px;margin:0 auto;padding:8px 24px 40px}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;margin:18px 0;padding:4px 20px 16px}
h2{border-bottom:2px solid #4c72b0;padding-bottom:4px}h3{margin:18px 0 6px}h4{margin:14px 0 4px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef2f7}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #d0d7de;border-radius:4px;margin:8px 0;display:block}
.empty{color:#6e7781;font-style:italic}.card{border-left:4px solid #dd8452;padding:2px 12px;margin:12px 0;background:#fbfcfd}
.muted{color:#6e7781}code{background:#eef2f7;padding:1px 4px;border-radius:3px;font-size:12px}
.text{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;max-width:620px}
"""


def render(report: dict, out: Path) -> str:
    sections = "".join(_section(s, report, out) for s in report["sections"])
    nav = "".join(f'<a href="#{s["id"]}">{escape(s["title"])}</a>' for s in report["sections"])
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(report["title"])}</title>'
            f'<style>{CSS}</style></head><body><header><h1>{escape(report["title"])}</h1>'
            f'<p>{len(report["steps"])} steps · llmpipe {escape(report["llmpipe_version"])}</p><nav>{nav}</nav></header>'
            f"<main>{sections}</main></body></html>\n")


def _section(section: dict, report: dict, out: Path) -> str:
    body = f'<p class="empty">{escape(section["empty"])}</p>' if section["empty"] else RENDERERS[section["id"]](section, report)
    images = "".join(f'<img src="data:image/png;base64,{base64.b64encode((out / p["file"]).read_bytes()).decode()}" alt="{escape(p["alt"])}">'
                     for p in section["plots"])
    return f'<section id="{section["id"]}"><h2>{escape(section["title"])}</h2>{images}{body}</section>'


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _step_link(name: str | None, fallback: str = "") -> str:
    return f'<a href="#step-{_id(name)}">{escape(name)}</a>' if name else escape(fallback)


def _id(name: str) -> str:
    from llmpipe.report.lineage import anchor

    return anchor(name)


def _funnel(section: dict, report: dict) -> str:
    anchors = {e["anchor"] for e in _lineage(report)["removed"]}
    rows = []
    for r in section["steps"]:
        removed = []
        for x in r["removed"]:
            target = _anchor_removed(r["step"], x["reason"])
            label = f'{escape(x["reason"])} {F.number(x["documents"])}'
            removed.append(f'<a href="#{target}">{label}</a>' if target in anchors else label)
        removed += [f"bad record {escape(k)} {F.number(v)}" for k, v in r["bad_records"].items() if v]
        rows.append([_step_link(r["step"]), escape(r["stage"]), F.number(r["documents_in"]), F.number(r["documents_out"]),
                     F.number(r["documents_in"] - r["documents_out"]), "<br>".join(removed)])
    note = '<p class="muted">Each removal count links to the documents that rule removed, where the step kept them (keep_rejected = true).</p>'
    return _table(["step", "stage", "documents in", "documents out", "removed", "removed by rule"], rows, {2, 3, 4}) + note


def _anchor_removed(step: str, reason: str) -> str:
    from llmpipe.report.lineage import anchor

    return anchor("removed", step, reason)


def _dedup(section: dict, report: dict) -> str:
    out = []
    for r in section["steps"]:
        facts = {k: v for k, v in r.items() if k not in ("step", "cluster_sizes", "clusters_table")}
        sizes = ", ".join(f"{k}: {F.number(v)}" for k, v in r["cluster_sizes"].items()) or "no clusters of two or more documents"
        out.append(f"<h3>{_step_link(r['step'])}</h3><p>{escape(F.metrics(facts))}</p><p>cluster sizes (documents: clusters): {escape(sizes)}</p>")
    return "".join(out)


def _tokens(section: dict, report: dict) -> str:
    out = []
    for r in section["steps"]:
        splits = [[escape(k), F.number(v["tokens"]), F.number(v["documents"]), F.number(v["shards"])] for k, v in r["splits"].items()]
        sources = [[_step_link(s["step"], s["input"]), F.number(s.get("weight")), F.number(s.get("documents")), F.number(s.get("train_tokens")),
                    F.number(s.get("val_tokens"))] for s in r["sources"]]
        out.append(f"<h3>{_step_link(r['step'])}</h3><p>vocabulary {F.number(r['vocab_size'])} ({escape(str(r['dtype']))}), "
                   f"{F.number(r['bytes_per_token'])} bytes per token</p>"
                   + _table(["split", "tokens", "documents", "shards"], splits, {1, 2, 3})
                   + _table(["source", "weight", "documents", "train tokens", "val tokens"], sources, {1, 2, 3, 4}))
    return "".join(out)


def _training(section: dict, report: dict) -> str:
    rows = [[_step_link(r["step"]), escape(r["stage"]), F.number(r["steps_trained"]), F.number(r["final_loss"]), escape(F.metrics(r["metrics"]))]
            for r in section["steps"]]
    return _table(["step", "stage", "steps", "last train loss", "recorded metrics"], rows, {2, 3})


def _evaluation(section: dict, report: dict) -> str:
    rows = [[_step_link(r["step"]), _step_link(r["checkpoint"]) if r["checkpoint"] in _names(report) else escape(r["checkpoint"]),
             escape(r["task"]), escape(F.metrics(r["metrics"])), f'<code>{escape(r["samples_file"])}</code>'] for r in section["rows"]]
    return _table(["step", "checkpoint", "task", "metrics", "per-item samples"], rows)


def _names(report: dict) -> set[str]:
    return {s["name"] for s in report["steps"]}


def _quantization(section: dict, report: dict) -> str:
    rows = []
    for r in section["rows"]:
        gguf = ", ".join(f"{k} {F.size(v)}" for k, v in r["gguf_bytes"].items())
        rows.append([_step_link(r["step"]), _step_link(r["checkpoint"]), escape(f"int{r['bits']} {r['method']}" + (f" g{r['group_size']}" if r["group_size"] else "")),
                     f"{F.size(r['model_bytes'])} (from {F.size(r['input_model_bytes'])})", F.number(r["compression"]),
                     F.number(r["weight_relative_error_mean"]), _pair(r["bits_per_byte"], r["input_bits_per_byte"]),
                     _pair(r["decode_tokens_per_s"], r["input_decode_tokens_per_s"]), escape(gguf)])
    return _table(["step", "from", "scheme", "model.safetensors", "linear compression", "weight error", "bits per byte (float)",
                   "decode tokens/s (float)", "GGUF"], rows) + '<p class="muted">Empty cells: not recorded (bits per byte comes from an evaluate step on that checkpoint).</p>'


def _pair(value, reference) -> str:
    if value is None:
        return ""
    return F.number(value) + (f" ({F.number(reference)})" if reference is not None else "")


def _samples(section: dict, report: dict) -> str:
    out = ""
    if section["generations"]:
        out += "<h3>Generations</h3>" + _table(["step", "decoding", "text"], [[_step_link(g["step"]), escape(g["decoding"]), f'<div class="text">{escape(g["text"])}</div>']
                                                                           for g in section["generations"]])
    if section["chat"]:
        out += "<h3>Chat answers</h3>" + _table(["step", "prompt", "answer"], [[_step_link(c["step"]), f'<div class="text">{escape(c.get("prompt", ""))}</div>',
                                                                            f'<div class="text">{escape(c.get("answer", ""))}</div>'] for c in section["chat"]])
    return out


def _resources(section: dict, report: dict) -> str:
    rows = [[_step_link(r["step"]), escape(r["stage"]), F.seconds(r["wall_seconds"]),
             escape(", ".join(f"{k} {F.seconds(v)}" for k, v in r["task_seconds"].items())), F.size(r["peak_rss_bytes"])] for r in section["rows"]]
    note = "" if any(r["peak_rss_bytes"] for r in section["rows"]) else '<p class="empty">No step recorded its peak memory.</p>'
    return _table(["step", "stage", "wall time", "task time per phase", "peak memory (largest task)"], rows, {2, 4}) + note


def _lineage(report: dict) -> dict:
    return next(s for s in report["sections"] if s["id"] == "lineage")


def _lineage_section(section: dict, report: dict) -> str:
    cards = "".join(_card(s) for s in report["steps"])
    removed = "".join(f'<h4 id="{e["anchor"]}">{_step_link(e["step"])}: {escape(e["rule"])} removed {F.number(e["documents_removed"])} documents</h4>'
                      + _documents(e["documents"]) for e in section["removed"])
    if not removed:
        removed = '<p class="empty">No step kept the documents it removed (set keep_rejected = true on filter, classify, dedup).</p>'
    elif section["steps_without_rejected"]:
        removed += f'<p class="muted">Not kept (keep_rejected is off): {escape(", ".join(section["steps_without_rejected"]))}.</p>'
    kept = "".join(f'<h4 id="{e["anchor"]}">{_step_link(e["step"])}: documents of {_step_link(e["input"])} in the token shards</h4>'
                   + _documents(e["documents"]) for e in section["kept"]) or '<p class="empty">No tokenize step among the report\'s inputs.</p>'
    return ("<h3>Steps: inputs and params</h3>" + cards + "<h3>Documents each rule removed, with their source records</h3>" + removed
            + "<h3>Documents kept into the token shards, with their source records</h3>" + kept)


def _card(step: dict) -> str:
    inputs = "".join(f"<li>{_step_link(i['step'], i['path'])} <span class='muted'>{escape(i['kind'])} {escape(i['fingerprint'][:16])}</span>"
                     + ("" if i["step"] else f" <code>{escape(i['path'])}</code>") + "</li>" for i in step["inputs"])
    inputs += "".join(f"<li>{escape(p['param'])} = {_step_link(p['step'], str(p['path']))} <span class='muted'>{escape(p['fingerprint'][:16])}</span></li>"
                      for p in step["param_inputs"])
    chosen = [[escape(k), f"<code>{escape(_value(step['params'][k]))}</code>"] for k in step["params_changed"]]
    every = [[escape(k), f"<code>{escape(_value(v))}</code>"] for k, v in sorted(step["params"].items())]
    return (f'<div class="card" id="step-{_id(step["name"])}"><h4>{escape(step["name"])} <span class="muted">{escape(step["stage"])} · '
            f'{escape(str(step["output_kind"]))} · fingerprint {escape(str(step["fingerprint"])[:16])}</span></h4>'
            f'<p><code>{escape(step["path"])}</code> · {escape(F.metrics(step["counts"]))}</p><p>inputs:</p><ul>{inputs}</ul>'
            + (("<p>params set (not the stage's default):</p>" + _table(["param", "value"], chosen)) if chosen else "<p>every param at its default</p>")
            + f"<details><summary>all {len(every)} params</summary>{_table(['param', 'value'], every)}</details></div>")


def _value(v) -> str:
    import json

    return json.dumps(v, ensure_ascii=False)


def _documents(docs: list[dict]) -> str:
    urls = any(d.get("url") for d in docs)  # web documents: the page's url too
    rows = [[f"<code>{escape(F.source_record(d))}</code>", escape(str(d.get("id", "")))] + ([escape(d.get("url", ""))] if urls else [])
            + [f"<code>{escape(d['artifact_file'])}</code> row {d['row']}", f'<div class="text">{escape(F.one_line(d.get("text", ""), 300))}</div>']
            for d in docs]
    return _table(["source record (file:line)", "id"] + (["url"] if urls else []) + ["in the artifact", "text"], rows)


RENDERERS = {
    "funnel": _funnel, "dedup": _dedup, "tokens": _tokens, "training": _training, "evaluation": _evaluation,
    "quantization": _quantization, "samples": _samples, "resources": _resources, "lineage": _lineage_section,
}
