"""The report card of a run: one self-contained HTML page, a Markdown twin with PNG plots, and the same data as JSON.

Inputs: any earlier artifacts (documents, tokens, tokenizer, checkpoints, evaluations). Everything
shown is what they recorded: the data funnel (documents per step, removals per rule), dedup cluster
sizes, tokens per source, the loss curve of every training step, the eval table, the quantization
table, sample generations and chat answers, wall time and peak memory per step, and lineage: each
step's inputs and params, the documents each rule removed (from rejected/, where a step ran with
keep_rejected = true) and documents kept into the token shards, each with the input file and record
(path and line or offset) it came from. A section with nothing to show says so in one line.

Output: report.html (CSS inline, plots as data URIs, no script or network: opens offline in any
browser), report.md with plots/*.png beside it, and report.json.

`llmpipe report PIPELINE.toml [--output DIR]` makes it over every step of a pipeline file, once
they have run (default output: <workdir>/report).

    llmpipe report --input runs/pretrain/filter --input runs/pretrain/dedup --input runs/pretrain/tokens --input runs/pretrain/model --output runs/report
    [steps.report]
    inputs = ["ingest", "language", "filter", "dedup", "tokenizer", "tokens", "model", "evaluate", "sft", "dpo"]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmpipe.registry import Plan, Stage

FILES = ["report.html", "report.md", "report.json", "plots"]


@dataclass(frozen=True)
class Params:
    title: str = field(default="llmpipe report", metadata={"help": "The report's title."})
    samples_per_reason: int = field(default=3, metadata={"help": "Removed documents shown per removal reason (from rejected/)."})
    kept_samples: int = field(default=3, metadata={"help": "Documents shown per input of a tokenize step (kept into the token shards)."})

    def __post_init__(self):
        if self.samples_per_reason < 0 or self.kept_samples < 0:
            raise ValueError(f"samples_per_reason: samples_per_reason and kept_samples must be at least 0, got {self.samples_per_reason} and {self.kept_samples}")


def plan(params: Params, inputs) -> Plan:
    raw = [i for i in inputs if i.kind != "artifact"]
    if raw:
        raise ValueError(f"inputs: {raw[0].path} is not an llmpipe artifact; the report reads what earlier steps made (their output directories)")
    return Plan(phases=[("report", [{}])], files=FILES)


def report_task(ctx, task: dict) -> dict:
    from pathlib import Path

    import llmpipe
    from llmpipe.artifacts.layout import atomic_path, write_json_atomic
    from llmpipe.report import collect, figures, html, markdown

    p: Params = ctx.params
    report = {"title": p.title, "llmpipe_version": llmpipe.__version__,
              **collect.collect([Path(i.path) for i in ctx.inputs], p.samples_per_reason, p.kept_samples)}
    plots = figures.draw(report, ctx.out / "plots")
    write_json_atomic(ctx.out / "report.json", report)
    for name, text in (("report.md", markdown.render(report)), ("report.html", html.render(report, ctx.out))):
        with atomic_path(ctx.out / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
    filled = sum(not s["empty"] for s in report["sections"])
    return {"counts": {"steps": len(report["steps"]), "sections": len(report["sections"]), "sections_filled": filled, "plots": len(plots)}}


def finalize(ctx, stats: dict, records: dict) -> dict:
    from llmpipe.log import log

    counts = records["report"][0]["stats"]["counts"]
    log(f"report: {counts['steps']} steps, {counts['sections_filled']} of {counts['sections']} sections filled, "
        f"{counts['plots']} plots -> {ctx.out / 'report.html'}")
    return {"counts": counts, "stats": {"counts": counts}}


STAGE = Stage(
    name="report", version=1, params=Params, doc=__doc__, plan=plan, run_task={"report": report_task}, finalize=finalize,
    output_kind="report", input_kinds=("any",),
)
