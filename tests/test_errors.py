"""User mistakes: each gets one specific line on stderr, exit code 2, and nothing is written.

Covers `llmpipe run FILE` (invalid TOML, unknown stage, unknown param, wrong type, missing input,
undefined step, cycle, output inside its input, --set) and the single-stage commands.
Messages are compared in full; the temporary directory is replaced by "<tmp>".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli, write

DOCS = "".join(f'{{"text": "document number {i} with some words"}}\n' for i in range(4)) + '{"text": "document number 0 with some words"}\n'

HEAD = '[pipeline]\nworkdir = "runs/p"\n\n'


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _one_line_error(tmp_path: Path, *args: str) -> str:
    """Run llmpipe ARGS; check exit 2, one stderr line, no traceback, nothing written. Returns the line."""
    before = _snapshot(tmp_path)
    res = run_cli(*args, cwd=tmp_path, timeout=60)
    assert res.returncode == 2, f"exit {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{res.stderr}"
    assert not (tmp_path / "runs").exists(), "the workdir was created"
    assert _snapshot(tmp_path) == before, f"files were written: {sorted(_snapshot(tmp_path) - before)}"
    line = lines[0]
    for p in {str(tmp_path.resolve()), str(tmp_path)}:
        line = line.replace(p, "<tmp>")
    return line


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    return write(tmp_path / "docs.jsonl", DOCS)


@pytest.fixture
def artifact(tmp_path: Path, docs: Path) -> Path:
    """A real ingest artifact at <tmp>/art."""
    import llmpipe

    llmpipe.run_stage("ingest", [str(docs)], tmp_path / "art")
    assert (tmp_path / "art" / "_manifest.json").exists()
    return tmp_path / "art"


def _run_pipeline(tmp_path: Path, toml: str, *extra: str) -> str:
    write(tmp_path / "pipe.toml", toml)
    return _one_line_error(tmp_path, "run", "pipe.toml", *extra)


GOOD_TWO_STEPS = HEAD + '[steps.ingest]\ninputs = ["docs.jsonl"]\n\n[steps.dedup]\ninputs = ["ingest"]\n'


# ---------------------------------------------------------------- pipeline files


def test_invalid_toml_names_file_and_line(tmp_path, docs):
    toml = HEAD + '[steps.ingest]\ninputs = ["docs.jsonl"]\nmin_chars = \n'
    assert _run_pipeline(tmp_path, toml) == "error: pipe.toml: invalid TOML: Invalid value (at line 6, column 13)"


def test_invalid_toml_missing_equals(tmp_path, docs):
    toml = HEAD + '[steps.ingest]\ninputs = ["docs.jsonl"]\nmin_chars 3\n'
    assert _run_pipeline(tmp_path, toml) == (
        "error: pipe.toml: invalid TOML: Expected '=' after a key in a key/value pair (at line 6, column 11)"
    )


def test_missing_pipeline_file(tmp_path):
    assert _one_line_error(tmp_path, "run", "nope.toml") == "error: nope.toml: no such pipeline file"


def test_unknown_stage_explicit(tmp_path, docs):
    toml = HEAD + '[steps.ingest]\nstage = "ingset"\ninputs = ["docs.jsonl"]\n'
    assert _run_pipeline(tmp_path, toml) == 'error: pipe.toml [steps.ingest] stage: unknown stage "ingset"; did you mean "ingest"?'


def test_unknown_stage_from_step_name(tmp_path, docs):
    # No `stage =` key: the stage defaults to the step name.
    toml = HEAD + '[steps.ingst]\ninputs = ["docs.jsonl"]\n'
    assert _run_pipeline(tmp_path, toml) == 'error: pipe.toml [steps.ingst]: no stage = "..." is set and "ingst" is not a stage; did you mean "ingest"?'


def test_unknown_param_with_suggestion(tmp_path, docs):
    toml = HEAD + '[steps.ingest]\ninputs = ["docs.jsonl"]\nmin_char = 3\n'
    assert _run_pipeline(tmp_path, toml) == (
        'error: pipe.toml [steps.ingest] min_char: unknown parameter for stage "ingest"; did you mean "min_chars"?'
    )


def test_unknown_param_in_second_step(tmp_path, docs):
    toml = GOOD_TWO_STEPS + "keep_rejectd = true\n"
    assert _run_pipeline(tmp_path, toml) == (
        'error: pipe.toml [steps.dedup] keep_rejectd: unknown parameter for stage "dedup"; did you mean "keep_rejected"?'
    )


def test_wrong_param_type_int(tmp_path, docs):
    toml = HEAD + '[steps.ingest]\ninputs = ["docs.jsonl"]\nmin_chars = "3"\n'
    assert _run_pipeline(tmp_path, toml) == 'error: pipe.toml [steps.ingest] min_chars: expected an integer, got "3" (string)'


def test_wrong_param_type_bool(tmp_path, docs):
    toml = GOOD_TWO_STEPS + 'normalize = "no"\n'
    assert _run_pipeline(tmp_path, toml) == 'error: pipe.toml [steps.dedup] normalize: expected true or false, got "no" (string)'


def test_param_cross_check(tmp_path, docs):
    toml = HEAD + '[steps.ingest]\ninputs = ["docs.jsonl"]\nmin_chars = 10\nmax_chars = 5\n'
    assert _run_pipeline(tmp_path, toml) == "error: pipe.toml [steps.ingest] min_chars: 10 is above max_chars=5"


def test_missing_input_path(tmp_path, docs):
    toml = HEAD + '[steps.ingest]\ninputs = ["missing.jsonl"]\n'
    assert _run_pipeline(tmp_path, toml) == "error: pipe.toml [steps.ingest] inputs: input path missing.jsonl does not exist"


def test_glob_matching_nothing(tmp_path, docs):
    toml = HEAD + '[steps.ingest]\ninputs = ["data/*.jsonl"]\n'
    assert _run_pipeline(tmp_path, toml) == 'error: pipe.toml [steps.ingest] inputs: no file matches "data/*.jsonl"'


def test_reference_to_undefined_step(tmp_path, docs):
    toml = HEAD + '[steps.ingest]\ninputs = ["docs.jsonl"]\n\n[steps.dedup]\ninputs = ["ingets"]\n'
    assert _run_pipeline(tmp_path, toml) == (
        'error: pipe.toml [steps.dedup] inputs: "ingets" is neither a step of this pipeline nor an existing path; did you mean "ingest"?'
    )


def test_dependency_cycle(tmp_path, docs):
    toml = HEAD + '[steps.a]\nstage = "dedup"\ninputs = ["b"]\n\n[steps.b]\nstage = "dedup"\ninputs = ["a"]\n'
    assert _run_pipeline(tmp_path, toml) == "error: pipe.toml [steps.a] inputs: steps form a cycle: a -> b -> a"


def test_step_reading_itself_is_a_cycle(tmp_path, docs):
    toml = HEAD + '[steps.dedup]\ninputs = ["dedup"]\n'
    assert _run_pipeline(tmp_path, toml) == "error: pipe.toml [steps.dedup] inputs: steps form a cycle: dedup -> dedup"


def test_output_inside_its_artifact_input(tmp_path, artifact):
    toml = '[pipeline]\nworkdir = "art/p"\n\n[steps.dedup]\ninputs = ["art"]\n'
    assert _run_pipeline(tmp_path, toml) == (
        "error: pipe.toml [pipeline] workdir: <tmp>/art/p/dedup overlaps its own input <tmp>/art; choose an output outside the inputs"
    )
    assert not (tmp_path / "art" / "p").exists()


def test_output_inside_its_raw_directory_input(tmp_path, docs):
    write(tmp_path / "data" / "docs.jsonl", DOCS)
    toml = '[pipeline]\nworkdir = "data/out"\n\n[steps.ingest]\ninputs = ["data"]\n'
    line = _run_pipeline(tmp_path, toml)
    assert "overlaps its own input <tmp>/data" in line


def test_unknown_param_via_set(tmp_path, docs):
    write(tmp_path / "pipe.toml", GOOD_TWO_STEPS)
    line = _one_line_error(tmp_path, "run", "pipe.toml", "--set", "dedup.normalise=false")
    assert line == 'error: --set dedup.normalise=false: unknown parameter for stage "dedup"; did you mean "normalize"?'


@pytest.mark.parametrize("override", ["dedup.normalise=false", "dedup.normalize=nope"])
def test_set_errors_name_the_flag(tmp_path, docs, override):
    write(tmp_path / "pipe.toml", GOOD_TWO_STEPS)
    line = _one_line_error(tmp_path, "run", "pipe.toml", "--set", override)
    assert line.startswith(f"error: --set {override}: "), line


def test_set_unknown_step(tmp_path, docs):
    write(tmp_path / "pipe.toml", GOOD_TWO_STEPS)
    line = _one_line_error(tmp_path, "run", "pipe.toml", "--set", "dedpu.normalize=false")
    assert line == 'error: --set dedpu.normalize=false: no step "dedpu" in pipe.toml; its steps are: ingest, dedup; did you mean "dedup"?'


def test_set_malformed(tmp_path, docs):
    write(tmp_path / "pipe.toml", GOOD_TWO_STEPS)
    line = _one_line_error(tmp_path, "run", "pipe.toml", "--set", "dedup")
    assert line.startswith("error: --set dedup: expected STEP.KEY=VALUE, for example "), line


# ---------------------------------------------------------------- single-stage commands


def test_stage_output_inside_its_input(tmp_path, artifact):
    line = _one_line_error(tmp_path, "dedup", "--input", "art", "--output", "art/sub")
    assert line == "error: dedup --output: <tmp>/art/sub overlaps its own input <tmp>/art; choose an output outside the inputs"


def test_stage_output_equal_to_its_input(tmp_path, artifact):
    line = _one_line_error(tmp_path, "dedup", "--input", "art", "--output", "art")
    assert line == "error: dedup --output: <tmp>/art overlaps its own input <tmp>/art; choose an output outside the inputs"


def test_stage_output_inside_its_raw_directory_input(tmp_path):
    write(tmp_path / "data" / "docs.jsonl", DOCS)
    line = _one_line_error(tmp_path, "ingest", "--input", "data", "--output", "data/sub")
    assert "overlaps its own input" in line


def test_stage_missing_input(tmp_path):
    line = _one_line_error(tmp_path, "ingest", "--input", "missing.jsonl", "--output", "out")
    assert line == "error: ingest --input: input path missing.jsonl does not exist"


def test_stage_raw_file_where_artifact_expected(tmp_path, docs):
    _one_line_error(tmp_path, "dedup", "--input", "docs.jsonl", "--output", "out")


def test_stage_bad_value_names_the_flag(tmp_path, docs):
    line = _one_line_error(tmp_path, "ingest", "--input", "docs.jsonl", "--output", "out", "--max-bad-fraction", "2")
    assert "--max-bad-fraction" in line, line


def test_stage_bad_value_range(tmp_path, docs):
    line = _one_line_error(tmp_path, "ingest", "--input", "docs.jsonl", "--output", "out", "--max-bad-fraction", "2")
    assert line == "error: ingest --max-bad-fraction: expected a number in [0, 1], got 2.0"


def test_stage_bad_value_type(tmp_path, docs):
    line = _one_line_error(tmp_path, "ingest", "--input", "docs.jsonl", "--output", "out", "--min-chars", "abc")
    assert line == "error: Invalid value for '--min-chars': 'abc' is not a valid integer. (see llmpipe ingest --help)"


def test_stage_unknown_option_suggests(tmp_path, artifact):
    line = _one_line_error(tmp_path, "dedup", "--input", "art", "--output", "d", "--normalise")
    assert line == "error: No such option '--normalise'. (Did you mean one of: '--no-normalize', '--normalize'?) (see llmpipe dedup --help)"


def test_typo_subcommand_suggests(tmp_path):
    line = _one_line_error(tmp_path, "dedpu", "--input", "x", "--output", "y")
    assert line == 'error: unknown command "dedpu"; did you mean "dedup"? (see llmpipe --help)'
