"""One reader under libFuzzer (atheris): `python -m tests.fuzz.worker NAME SCRATCH CORPUS [libFuzzer flags]`.

Each input is written to SCRATCH/input<suffix> and read as a run reads it. A return or a one-line refusal is fine; any
other exception is a crash: its traceback goes to SCRATCH/crash.txt and libFuzzer stops with the input saved
(-artifact_prefix). libFuzzer's -timeout and -rss_limit_mb catch hangs and memory blow-ups, C code included (its
watchdog is a thread). Counts of what happened go to SCRATCH/outcomes.json after every input, because libFuzzer ends
the process without running Python's exit handlers.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import atheris


def main() -> None:
    name, scratch, corpus = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    with atheris.instrument_imports(include=["llmpipe", "stages"]):
        from tests.fuzz.outcome import ONE_LINE_ERRORS, check_refusal
        from tests.fuzz.targets import load_all

        target = load_all(broken=True)[name]
        path = scratch / f"input{target.suffix}"
        first = sorted(Path(corpus).iterdir())[0].read_bytes()
        _write(path, first, target.wrap)
        try:  # once inside the context, so the modules the reader imports lazily are instrumented too
            target.read(path)
        except ONE_LINE_ERRORS:
            pass
    outcomes = {"returned": 0, "refused": 0, "refusals": {}}
    outcomes_path = scratch / "outcomes.json"
    sys.stderr = open(os.devnull, "w")  # the readers' warnings would bury libFuzzer's report; fd 2 stays libFuzzer's

    def one_input(data: bytes) -> None:
        _write(path, data, target.wrap)
        try:
            target.read(path)
            outcomes["returned"] += 1
        except ONE_LINE_ERRORS as e:
            try:
                message = check_refusal(e)
            except AssertionError:
                _crash(scratch)
                raise
            outcomes["refused"] += 1
            if len(outcomes["refusals"]) < 20:
                outcomes["refusals"][message[:200]] = outcomes["refusals"].get(message[:200], 0) + 1
        except BaseException:
            _crash(scratch)
            raise
        outcomes_path.write_text(json.dumps(outcomes))

    atheris.Setup([sys.argv[0], *sys.argv[4:], corpus], one_input)
    atheris.Fuzz()


def _write(path: Path, data: bytes, wrap) -> None:
    path.write_bytes(wrap(data) if wrap else data)


def _crash(scratch: Path) -> None:
    (scratch / "crash.txt").write_text(traceback.format_exc())


if __name__ == "__main__":
    main()
