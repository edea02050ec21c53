"""Fuzz every reader and loader: mutated inputs seeded from the real files in ../shared/data each give a counted skip
or a one-line error, never a traceback, a hang or a memory blow-up (tests/fuzz/worker.py says how each is caught).

The default run tries a small budget per reader; `python -m pytest -m long tests/test_fuzz.py` tries 10,000 mutated
inputs per reader (CI runs it). LLMPIPE_FUZZ_RUNS=N sets another count. The counts are printed at the end of the run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED_DATA
from tests.fuzz.results import RESULTS
from tests.fuzz.targets import load_all

pytest.importorskip("atheris")

TARGETS = load_all()
DEFAULT_RUNS, FULL_RUNS = 300, 10_000
SECONDS_PER_INPUT = 20  # libFuzzer's -timeout: a hang, not a slow page (the slowest real page extracts in ~1 s)


def fuzz(name: str, runs: int, tmp_path: Path, seconds_per_input: int = SECONDS_PER_INPUT) -> None:
    target = load_all(broken=True)[name]
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (the fuzz seeds come from it)")
    seeds = target.seeds(SHARED_DATA, tmp_path)
    if not seeds:
        pytest.skip(f"no seed files for {name} in {SHARED_DATA}")
    corpus, scratch = tmp_path / "corpus", tmp_path / "scratch"
    corpus.mkdir()
    scratch.mkdir()
    for i, seed in enumerate(seeds):
        (corpus / f"seed-{i:03d}").write_bytes(seed)
    cmd = [sys.executable, "-m", "tests.fuzz.worker", name, str(scratch), str(corpus), f"-runs={runs}", "-seed=1",
           f"-timeout={seconds_per_input}", "-rss_limit_mb=3072", f"-artifact_prefix={scratch}/", "-print_final_stats=0"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=max(600, runs * 0.5))
    crash = scratch / "crash.txt"
    if res.returncode != 0:
        saved = [p.name for p in scratch.glob("*-*") if p.name.startswith(("crash-", "timeout-", "oom-", "leak-"))]
        detail = crash.read_text() if crash.exists() else res.stderr[-3000:]
        pytest.fail(f"fuzzing {name}: libFuzzer stopped (exit {res.returncode}); input saved as {saved}:\n{detail}")
    done = re.search(r"Done (\d+) runs in (\d+) second", res.stderr)
    assert done, res.stderr[-2000:]
    outcomes = json.loads((scratch / "outcomes.json").read_text())
    tried = int(done.group(1))
    assert tried >= runs
    RESULTS.append({"reader": name, "inputs": tried, "seconds": int(done.group(2)), "returned": outcomes["returned"],
                    "refused": outcomes["refused"], "refusals": outcomes["refusals"]})


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_reader_small_budget(name, tmp_path):
    fuzz(name, int(os.environ.get("LLMPIPE_FUZZ_RUNS", DEFAULT_RUNS)), tmp_path)


@pytest.mark.long
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_reader_full_count(name, tmp_path):
    fuzz(name, int(os.environ.get("LLMPIPE_FUZZ_RUNS", FULL_RUNS)), tmp_path)


@pytest.mark.parametrize("name, failure", [
    ("broken_raises_key_error", "KeyError: 'text'"),
    ("broken_refuses_in_two_lines", "InputError with a message that is not one clean line"),
    ("broken_hangs", "ERROR: libFuzzer: timeout after"),
])
def test_the_harness_fails_on_a_broken_reader(name, failure, tmp_path):
    """The harness itself: a reader that raises, refuses in two lines or hangs on a mutated input fails fuzz()."""
    with pytest.raises(pytest.fail.Exception, match=re.escape(failure)) as e:
        fuzz(name, 100, tmp_path, seconds_per_input=1)
    assert re.search(r"input saved as \['(crash|timeout)-[0-9a-f]{40}'\]", str(e.value)), str(e.value)


def test_containment_fails_a_write_and_refuses_listing_outside(tmp_path):
    """The pipeline-file target's guard: `llmpipe status` must write nothing, and may list only the test's folder."""
    import glob

    from tests.fuzz.containment import Listed, Wrote, contained

    with contained(read_only_below=tmp_path):
        with pytest.raises(Wrote):
            open(tmp_path / "x", "w")
        with pytest.raises(Wrote):
            os.mkdir(tmp_path / "d")
        with pytest.raises(Listed, match=r"^fuzz containment: os.scandir of /, outside the test's folder "):
            list(os.walk("/"))
        with pytest.raises(Listed):
            glob.glob("/*/*.toml")
        assert os.listdir(tmp_path) == [] and (REPO / "pyproject.toml").read_text()  # reading stays allowed
    open(tmp_path / "x", "w").close()  # outside contained(): nothing is checked
