"""Console output: rich progress bars on a terminal, plain timestamped lines elsewhere (Slurm logs, CI)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable, Iterator

from rich.console import Console

console = Console(stderr=True, highlight=False)  # logs and progress
stdout = Console(highlight=False, soft_wrap=True)  # results: status tables, inspect


def is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def log(message: str) -> None:
    """One line on stderr, from rank 0 only."""
    if not is_rank0():
        return
    if console.is_terminal:
        console.print(message)
    else:
        from rich.text import Text

        print(f"{time.strftime('%H:%M:%S')} {Text.from_markup(message).plain}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def progress(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """Yield advance(n); shows a bar on a terminal, else a line every 10% or 30 s."""
    if console.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=False,
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)
        return
    done, t0, last = 0, time.time(), [time.time(), -1]

    def advance(n: int = 1) -> None:
        nonlocal done
        done += n
        decile = done * 10 // max(total, 1)
        if done == total or decile > last[1] or time.time() - last[0] > 30:
            log(f"{description}: {done}/{total} ({time.time() - t0:.1f}s)")
            last[0], last[1] = time.time(), decile

    yield advance
