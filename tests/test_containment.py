"""No pipeline file, param or input name makes a step write outside <workdir>/<step> (plus the locks beside it).

Hostile names: paths (../x, absolute, a/b, ..), NUL, newlines, shell ($(touch x), backticks,
; rm -rf), quotes. A step name that would be a path is refused in one line; everything else is a
literal name: the run completes, writes only inside its artifact directories, and executes nothing
(no file `x` appears anywhere).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli, write

SHELL = ["$(touch x)", "`touch x`", "a; rm -rf x; touch x", 'q"uote', "q'uote", "new\nline", "back\\slash"]
PATHS = ["../x", "/tmp/x", "a/b", "..", ".", "a\0b", "-rf", ""]
DOCS = "".join(json.dumps({"text": f"document {i} of {{}} with enough words to keep"}) + "\n" for i in range(3))


def _toml(value: str) -> str:
    """A TOML basic string holding exactly `value` (JSON's escapes are TOML's for these characters)."""
    return json.dumps(value)


def _tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def _no_x_anywhere(root: Path) -> None:
    """`touch x` never ran: no x in the run's directory, in the repository, or beside the test's directory."""
    hits = [p for p in root.rglob("x")] + [p for p in (REPO / "x", root.parent / "x") if p.exists()]
    assert hits == [], f"something was executed: {hits}"


def _outside(created: set[Path], workdir: Path, steps: list[str]) -> list[str]:
    """Paths created other than the workdir (and its parents), its steps' trees, and the lock files in it."""
    allowed = {workdir, *workdir.parents}
    bad = []
    for p in created:
        inside_step = any(p == workdir / s or workdir / s in p.parents for s in steps)
        is_lock = p.parent == workdir and p.name.startswith(".") and p.name.endswith(".lock")
        if not (p in allowed or inside_step or is_lock):
            bad.append(str(p))
    return sorted(bad)


@pytest.mark.parametrize("name", PATHS + SHELL)
def test_a_step_name_that_is_not_a_name_is_refused_in_one_line(tmp_path, name):
    write(tmp_path / "in.jsonl", DOCS)
    write(tmp_path / "p.toml", f'[pipeline]\nworkdir = "runs/p"\n\n[steps.{_toml(name)}]\nstage = "ingest"\ninputs = ["in.jsonl"]\n')
    before = _tree(tmp_path)
    res = run_cli("run", "p.toml", cwd=tmp_path, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    quoted = json.dumps(name, ensure_ascii=False)
    assert res.stderr.startswith(f"error: p.toml [steps.{quoted}]: a step name is a name, not a path; use letters, digits, - and _"), res.stderr
    assert _tree(tmp_path) == before, "nothing is written"
    _no_x_anywhere(tmp_path)


@pytest.mark.parametrize("flag", ["--only", "--from", "--until", "--set"])
@pytest.mark.parametrize("name", ["../x", "$(touch x)", "a\nb"])
def test_hostile_step_names_on_the_command_line_name_no_step(tmp_path, flag, name):
    write(tmp_path / "in.jsonl", DOCS)
    write(tmp_path / "p.toml", '[pipeline]\nworkdir = "runs/p"\n\n[steps.ingest]\ninputs = ["in.jsonl"]\n')
    before = _tree(tmp_path)
    value = f"{name}.min_words=1" if flag == "--set" else name
    res = run_cli("run", "p.toml", flag, value, cwd=tmp_path, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    step = value.partition(".")[0] if flag == "--set" else name  # --set STEP.KEY=VALUE: the step is what comes before the first dot
    assert f'no step "{step}" in p.toml; its steps are: ingest' in res.stderr
    assert _tree(tmp_path) == before
    _no_x_anywhere(tmp_path)


@pytest.mark.parametrize("stage", ["../x", "/tmp/x", "$(touch x)", "a; rm -rf x"])
def test_a_hostile_stage_reference_is_refused_in_one_line(tmp_path, stage):
    write(tmp_path / "in.jsonl", DOCS)
    write(tmp_path / "p.toml", f'[pipeline]\nworkdir = "runs/p"\n\n[steps.ingest]\nstage = {_toml(stage)}\ninputs = ["in.jsonl"]\n')
    before = _tree(tmp_path)
    res = run_cli("run", "p.toml", cwd=tmp_path, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith("error: p.toml [steps.ingest] stage: "), res.stderr
    assert _tree(tmp_path) == before
    _no_x_anywhere(tmp_path)


@pytest.mark.parametrize("toml, message", [
    ('[pipeline]\nworkdir = "runs\\u0000p"\n', 'error: p.toml [pipeline] workdir: "runs\\u0000p" holds a NUL character, which no path can hold'),
    ('[pipeline]\nname = "../../x"\n', 'error: p.toml [pipeline] name: "../../x" would make the default workdir runs/../../x leave runs/; '
                                       'use a name without "/", or set [pipeline] workdir'),
    ('[pipeline]\nname = ".."\n', 'error: p.toml [pipeline] name: ".." would make the default workdir runs/.. leave runs/; '
                                  'use a name without "/", or set [pipeline] workdir'),
])
def test_a_workdir_no_path_can_be_is_refused_in_one_line(tmp_path, toml, message):
    write(tmp_path / "in.jsonl", DOCS)
    write(tmp_path / "p.toml", toml + '\n[steps.ingest]\ninputs = ["in.jsonl"]\n')
    before = _tree(tmp_path)
    res = run_cli("run", "p.toml", cwd=tmp_path, timeout=60)
    assert res.returncode == 2 and res.stderr.strip() == message, res.stderr
    assert _tree(tmp_path) == before


def test_hostile_workdir_params_and_input_names_stay_literal_and_inside(tmp_path):
    """A workdir, input file names and param values made of shell, quotes and newlines: the run completes,
    every file it makes is in <workdir>/<step> (or a lock file in the workdir), and nothing runs."""
    inputs = tmp_path / "in"
    for k, name in enumerate(SHELL):
        write(inputs / f"{name}.jsonl", DOCS.replace("{}", f"file {k}"))
    workdir_name = "runs/" + " ".join(SHELL)  # one directory, every hostile character in its name
    write(tmp_path / "p.toml", f"""
[pipeline]
workdir = {_toml(workdir_name)}

[steps.ingest]
inputs = ["in/*.jsonl"]
id_key = {_toml(SHELL[0])}
url_key = {_toml(SHELL[2])}

[steps.report]
inputs = ["ingest"]
title = {_toml(" ".join(SHELL))}
""")
    before = _tree(tmp_path)
    hostile_set = "report.title=" + SHELL[1] + SHELL[3]
    res = run_cli("run", "p.toml", "--set", hostile_set, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr

    workdir = tmp_path / workdir_name
    created = _tree(tmp_path) - before
    assert _outside(created, workdir, ["ingest", "report"]) == []
    assert {p.name for p in created if p.parent == workdir} == {"ingest", "report", ".llmpipe-run.lock", ".ingest.writer.lock",
                                                                 ".report.writer.lock", ".ingest.lock", ".report.lock"}
    _no_x_anywhere(tmp_path)
    # the names round-trip: every input file read under its own name, the title as set
    ingest = json.loads((workdir / "ingest/_manifest.json").read_text())
    assert ingest["counts"]["documents"] == 3 * len(SHELL)
    assert json.loads((workdir / "report/report.json").read_text())["title"] == SHELL[1] + SHELL[3]


def test_a_stage_command_writes_only_its_output_and_the_lock_beside_it(tmp_path):
    write(tmp_path / f"{SHELL[0]}.jsonl", DOCS)
    out = "out/" + SHELL[2] + SHELL[5]
    before = _tree(tmp_path)
    run_cli("ingest", "--input", f"{SHELL[0]}.jsonl", "--output", out, cwd=tmp_path, check=True)
    created = _tree(tmp_path) - before
    target = tmp_path / out
    assert sorted(str(p.relative_to(tmp_path)) for p in created if target not in p.parents) == sorted(
        ["out", out, f"out/.{Path(out).name}.lock", f"out/.{Path(out).name}.writer.lock"])
    _no_x_anywhere(tmp_path)
