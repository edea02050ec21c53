"""`llmpipe report PIPELINE.toml`: the report stage over every step of a pipeline file, once they have run."""

from __future__ import annotations

from pathlib import Path

from llmpipe.errors import InputError


def report_pipeline(path: str | Path, output: str | Path | None = None, force: bool = False, **params) -> dict:
    """Run the report stage on every step's artifact (default output <workdir>/report); returns its manifest.

    Report steps of the pipeline are left out (a report does not report on reports). Every other step
    must have a complete artifact; a stale one is reported as it is, with a warning naming it.
    """
    from llmpipe.api import run_stage
    from llmpipe.log import log
    from llmpipe.pipeline import build_steps, load_pipeline
    from llmpipe.step import state

    pipe = load_pipeline(path)
    built = build_steps(pipe)
    steps = {name: st for name, st in built.items() if st.stage.name != "report"}
    missing = [name for name, st in steps.items() if not (st.out / "_manifest.json").is_file()]
    if missing:
        raise InputError(f"report: {path}: {len(missing)} of {len(steps)} steps have no complete artifact yet ({', '.join(missing)}); "
                         f"run them first: llmpipe run {path}")
    out = Path(output) if output is not None else pipe.workdir / "report"
    taken = next((name for name, st in steps.items() if st.out == out.resolve()), None)
    if taken:
        raise InputError(f"report --output: {out} is the output of step \"{taken}\" of {path}; give another --output DIR")
    stale = [f"{name} ({why})" for name, st in steps.items() for s, why in [state(st)] if s != "fresh"]
    if stale:
        log(f"warning: report: {', '.join(stale)} not fresh; the report shows what the last run made")
    params.setdefault("title", f"{pipe.name}: report")
    return run_stage("report", [str(st.out) for st in steps.values()], out, force=force, **params)
