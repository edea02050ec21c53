"""`llmpipe run` and `llmpipe status`: decide what is stale and run it with the chosen executor."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from llmpipe import api, step as step_mod
from llmpipe.artifacts.layout import MANIFEST, read_json
from llmpipe.lock import hold_run
from llmpipe.log import log, stdout
from llmpipe.pipeline import Pipeline, build_steps, check_upstream_ready, refresh_inputs, select_steps, step_refs

MAY_RERUN = "may re-run"  # upstream will run; whether this step must follow depends on what it makes


@dataclass
class StepReport:
    name: str
    state: str  # fresh | stale | incomplete | missing | may re-run
    why: str
    action: str  # ran | skipped | would run | submitted
    out: Path | None = None
    seconds: float | None = None


def plan_status(pipe: Pipeline, selected: list[str] | None = None) -> list[StepReport]:
    built = build_steps(pipe)
    reports: dict[str, StepReport] = {}
    for name, st in built.items():
        if selected is not None and name not in selected:
            continue
        state, why = step_mod.state(st)
        ups = [u for u in step_refs(pipe, pipe.steps[name]) if u in reports and reports[u].action != "skipped"]
        if ups and state != "fresh" and step_mod.fresh_if_upstream_unchanged(st):
            # Early cutoff: only the upstream's output can tell; do not call the step stale before that.
            state, why = MAY_RERUN, _upstream_will_run(ups, reports) + "; skipped if its inputs come out unchanged"
        elif ups and why == "inputs changed":
            why = _upstream_will_run(ups, reports)
        reports[name] = StepReport(name, state, why, "skipped" if state == "fresh" else "would run", st.out)
    return list(reports.values())


def _upstream_will_run(ups: list[str], reports: dict[str, StepReport]) -> str:
    certain = [u for u in ups if reports[u].state != MAY_RERUN]
    return f"upstream {' and '.join(certain)} will run" if certain else f"upstream {' and '.join(ups)} may re-run"


def print_status(reports: list[StepReport]) -> None:
    colors = {"fresh": "green", "stale": "yellow", "incomplete": "yellow", MAY_RERUN: "yellow", "missing": "red"}
    for r in reports:
        why = f" ({r.why})" if r.why else ""
        stdout.print(f"  [{colors[r.state]}]{r.state:<10}[/] {r.name}{why}", highlight=False)


def run_pipeline(
    pipe: Pipeline,
    executor: str | None = None,
    workers: int | None = None,
    only: list[str] = (),
    start: str | None = None,
    until: str | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> list[StepReport]:
    """Run the selected steps in order; fresh ones are skipped unless forced. Returns what happened."""
    selected = select_steps(pipe, only, start, until)
    built = build_steps(pipe)
    check_upstream_ready(pipe, built, selected)
    executor = executor or pipe.executor
    workers = workers or pipe.workers
    if dry_run:
        reports = plan_status(pipe, selected)
        print_status(reports)
        return reports
    if executor == "slurm":  # before the lock: nothing is written for a run that cannot be submitted
        from llmpipe.executors.slurm import check_script_values

        check_script_values(dict(pipe.slurm), [built[name].out for name in selected])
    with hold_run(pipe.workdir, [built[name].out for name in selected]):
        return _run_steps(pipe, built, selected, executor, workers, force)


def _run_steps(pipe: Pipeline, built: dict, selected: list[str], executor: str, workers: int, force: bool) -> list[StepReport]:
    """The selected steps, under the run's locks (held by this driver, never by its workers or Slurm jobs)."""
    if executor == "slurm":
        from llmpipe.executors.slurm import submit_pipeline

        reports = submit_pipeline(pipe, built, selected, force=force)
        print_summary(pipe, reports)
        return reports
    reports = []
    ran: set[str] = set()
    for name in selected:
        waited = built[name].waits_on_upstream
        st = refresh_inputs(pipe, built, name)  # upstream steps that ran now have real manifests
        state, why = step_mod.state(st)
        if state == "fresh" and not force:
            ups = [u for u in step_refs(pipe, pipe.steps[name]) if u in ran]
            note = f" ({', '.join(ups)} came out unchanged)" if waited and ups else ""
            log(f"[bold]{name}[/]: fresh, skipped{note}")
            reports.append(StepReport(name, state, why, "skipped", st.out))
            continue
        log(f"[bold]{name}[/]: {state}{f' ({why})' if why else ''}, running {st.stage.name}")
        t0 = time.time()
        api.execute(st, workers=workers, force=force)
        ran.add(name)
        reports.append(StepReport(name, state, why, "ran", st.out, time.time() - t0))
    print_summary(pipe, reports)
    return reports


# --- the closing summary ------------------------------------------------------------------------


def headline(manifest: dict) -> str:
    """The one figure a user looks for first in an artifact: documents kept, tokens, val bits per byte, held-out loss or accuracy."""
    counts, metrics = manifest.get("counts", {}), manifest.get("metrics", {})
    if "val_bpb" in metrics:
        return f"val bits per byte {metrics['val_bpb']:.3f}"
    if "eval_rewards/accuracies" in metrics:  # dpo: what the held-out pairs say
        return f"held-out reward accuracy {metrics.get('eval_rewards/accuracies_before', 0):.2f} -> {metrics['eval_rewards/accuracies']:.2f}"
    if "eval_sampled_accuracy" in metrics:  # grpo: held-out answers right, greedy and as the policy samples them
        return (f"held-out accuracy {metrics.get('eval_accuracy_before', 0):.2f} -> {metrics['eval_accuracy']:.2f} greedy, "
                f"{metrics.get('eval_sampled_accuracy_before', 0):.2f} -> {metrics['eval_sampled_accuracy']:.2f} sampled")
    if "eval_accuracy" in metrics:  # reward-model: held-out pairs ranked right; grpo (eval_generations 0): held-out answers right
        return f"held-out accuracy {metrics.get('eval_accuracy_before', 0):.2f} -> {metrics['eval_accuracy']:.2f}"
    if "val_mlm_acc" in metrics:  # a masked-LM encoder beside what a model without context scores
        return f"masked-token accuracy {metrics['val_mlm_acc']:.3f} (unigram {metrics.get('val_unigram_acc', 0):.3f})"
    if "val_loss_before" in metrics:  # sft: held-out loss on the assistant's tokens
        return f"held-out answer loss {metrics['val_loss_before']:.2f} -> {metrics['val_loss']:.2f}"
    if manifest.get("output_kind") == "evaluation":  # the first figure of each task: bits per byte, acc or exact match
        firsts = [(key, metrics[key]) for key in metrics for name in ("bits_per_byte", "acc", "exact_match") if key.endswith("/" + name)]
        return ", ".join(f"{key} {value:.3f}" for key, value in firsts[:3])
    if "compression_of_quantized_layers" in metrics:  # quantize
        return f"linear layers {metrics['compression_of_quantized_layers']:.1f}x smaller"
    if manifest.get("output_kind") == "tokens" and "train_tokens" in counts:
        return f"tokens {counts['train_tokens']:,} train, {counts.get('val_tokens', 0):,} val"
    if manifest.get("output_kind") == "tokenizer" and "vocab_size" in manifest.get("params", {}):
        return f"vocabulary {manifest['params']['vocab_size']:,}"
    if "documents" in counts:
        if "removed" in counts:
            return f"documents {counts['documents'] + counts['removed']:,} -> {counts['documents']:,}"
        return f"documents {counts['documents']:,}"
    return ""


def _shown_path(path: Path) -> str:
    """Relative to the working directory when inside it: what the user would type."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def print_summary(pipe: Pipeline, reports: list[StepReport]) -> None:
    """What ran, what was fresh, the headline figures and where the outputs are; on stdout, after the logs."""
    if not reports:
        return
    rows = []
    for r in reports:
        m = read_json(r.out / MANIFEST) if r.out is not None and (r.out / MANIFEST).exists() else {}
        seconds = r.seconds if r.seconds is not None else (m.get("timings", {}).get("wall_seconds") if r.action == "submitted" else None)
        what = "fresh" if r.action == "skipped" else r.action
        rows.append((r.name, what, f"{seconds:.1f}s" if seconds is not None else "", headline(m), _shown_path(r.out) if r.out else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    stdout.print(f"summary of {pipe.path}:", highlight=False)
    for name, what, secs, head, where in rows:
        stdout.print(f"  {name:<{widths[0]}}  {what:<{widths[1]}}  {secs:>{widths[2]}}  {head:<{widths[3]}}  {where}".rstrip(), highlight=False)
    n_ran = sum(r.action != "skipped" for r in reports)
    verb = "submitted" if any(r.action == "submitted" for r in reports) else "ran"
    stdout.print(f"{n_ran} {verb}, {len(reports) - n_ran} fresh; outputs in {_shown_path(pipe.workdir.resolve())}", highlight=False)
