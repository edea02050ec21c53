"""Error types: user mistakes (one line, exit 2) versus bad data (counted, fails past a limit)."""

from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """A mistake in a pipeline file, a flag or an input path: shown as one line, exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """Bad TOML, unknown key, wrong type, unknown stage."""


class InputError(UserError):
    """A missing or unreadable input, or an output that overlaps an input."""


class DataError(Exception):
    """Too much of the data was bad to trust the result (past `max_bad_fraction`): exit code 1."""

    exit_code = 1


class StepFailed(Exception):
    """A step that could not finish (a failed task or Slurm job, a full disk): one line naming the step and what to do, exit 1."""

    exit_code = 1


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """'; did you mean "x"?' when a close match exists, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f'; did you mean "{close[0]}"?' if close else ""
