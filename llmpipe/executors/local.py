"""Local executor: tasks inline (1 worker) or in a process pool; only tasks without a record run.

A killed run leaves finished tasks recorded and unfinished ones invisible (parts are renamed
into place only when complete), so re-running does exactly the missing work.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import subprocess
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Iterator

from llmpipe import step as step_mod
from llmpipe.artifacts.layout import remove_temporaries
from llmpipe.errors import StepFailed
from llmpipe.executors.torchrun import local_command, nproc_of
from llmpipe.log import progress


class TaskFailed(StepFailed):
    """A task raised; the message names the step, the task and what it raised."""


def _run_one(out: str, phase: int, task: int) -> None:
    step_mod.run_task(Path(out), phase, task)


def run_phases(out: Path, run: dict, workers: int, label: str) -> None:
    """Run every pending task of every phase in order."""
    remove_temporaries(out)
    for k, phase in enumerate(run["phases"]):
        todo = step_mod.pending_tasks(out, run, k)
        if not todo:
            continue
        desc = label + (f" \\[{phase['name']}]" if len(run["phases"]) > 1 else "")
        if run["launcher"] == "torchrun" and nproc_of(run) > 1:
            for t in todo:
                cmd = local_command(out, k, t, nproc_of(run))
                if subprocess.run(cmd).returncode != 0:
                    raise TaskFailed(f"{label}: torchrun task {t} failed: {' '.join(cmd)}")
            continue
        with progress(len(todo), desc) as advance:
            if workers <= 1 or len(todo) == 1:
                for t in todo:
                    step_mod.run_task(out, k, t)
                    advance(1)
            else:
                _run_pool(out, k, todo, workers, label, advance)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold Ctrl-C while the workers start: they inherit the blocked mask, so only this process sees it
    (it stops them), and a Ctrl-C in the meantime is delivered here when the block is lifted."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _run_pool(out: Path, phase: int, todo: list[int], workers: int, label: str, advance) -> None:
    ctx = multiprocessing.get_context("forkserver")
    # Workers ignore Ctrl-C (the initializer covers a forkserver started before this pool); on
    # Ctrl-C this process ends them: finished tasks have records, unfinished ones left only temporaries.
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx, initializer=_ignore_sigint) as pool:
        try:
            with _sigint_held():
                futures = {pool.submit(_run_one, str(out), phase, t): t for t in todo}
            _wait_all(futures, label, advance)
        except KeyboardInterrupt:
            workers_ = list(pool._processes.values())  # no public way to stop running tasks before Python 3.14
            pool.shutdown(wait=False, cancel_futures=True)
            for w in workers_:
                w.terminate()
            raise


def _wait_all(futures: dict, label: str, advance) -> None:
    pending = set(futures)
    while pending:
        done, pending = wait(pending, return_when=FIRST_EXCEPTION)
        for f in done:
            if f.exception() is not None:
                for p in pending:
                    p.cancel()
                err = f.exception()
                if getattr(err, "exit_code", None) is not None:
                    raise err
                raise TaskFailed(f"{label}: task {futures[f]} failed: {type(err).__name__}: {err} (re-run with --debug for the traceback)") from err
            advance(1)
