"""`llmpipe run` and `llmpipe status`: decide what is stale and run it with the chosen executor."""

from __future__ import annotations

from dataclasses import dataclass

from llmpipe import api, step as step_mod
from llmpipe.log import log, stdout
from llmpipe.pipeline import Pipeline, build_steps, check_upstream_ready, refresh_inputs, select_steps, step_refs


@dataclass
class StepReport:
    name: str
    state: str  # fresh | stale | incomplete | missing
    why: str
    action: str  # ran | skipped | would run | submitted


def plan_status(pipe: Pipeline, selected: list[str] | None = None) -> list[StepReport]:
    built = build_steps(pipe)
    reports = []
    for name, st in built.items():
        if selected is not None and name not in selected:
            continue
        state, why = step_mod.state(st)
        reports.append(StepReport(name, state, why, "skipped" if state == "fresh" else "would run"))
    return _cascade(pipe, reports)


def _cascade(pipe: Pipeline, reports: list[StepReport]) -> list[StepReport]:
    """A step downstream of one that will run is stale too (its input fingerprint changes or is unknown)."""
    by_name = {r.name: r for r in reports}
    for r in reports:
        ups = [i for i in step_refs(pipe, pipe.steps[r.name]) if i in by_name and by_name[i].action != "skipped"]
        if ups and r.action == "skipped":
            r.state, r.why, r.action = "stale", f"upstream {ups[0]} will run", "would run"
    return reports


def print_status(reports: list[StepReport]) -> None:
    colors = {"fresh": "green", "stale": "yellow", "incomplete": "yellow", "missing": "red"}
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
    if executor == "slurm":
        from llmpipe.executors.slurm import submit_pipeline

        return submit_pipeline(pipe, built, selected, force=force)
    reports = []
    for name in selected:
        st = refresh_inputs(pipe, built, name)
        state, why = step_mod.state(st)
        if state == "fresh" and not force:
            log(f"[bold]{name}[/]: fresh, skipped")
            reports.append(StepReport(name, state, why, "skipped"))
            continue
        log(f"[bold]{name}[/]: {state}{f' ({why})' if why else ''}, running {st.stage.name}")
        api.execute(st, workers=workers, force=force)
        reports.append(StepReport(name, state, why, "ran"))
    return reports
