"""What a reader may do with a hostile input: return (records kept or skipped and counted) or refuse it in one line.

Anything else is a bug the fuzzer reports: another exception (a traceback for the user), an error message of several
lines or naming an exception class, a hang (libFuzzer's -timeout) or a memory blow-up (-rss_limit_mb)."""

from __future__ import annotations

import re

from llmpipe.errors import DataError, UserError

# What the CLI prints as one line (llmpipe/cli.py main): user mistakes exit 2, too much bad data exit 1.
ONE_LINE_ERRORS = (UserError, DataError)
_CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b")


class NotOneLine(AssertionError):
    """A refusal the user would see as more than one clean line."""


def check_refusal(e: BaseException) -> str:
    """The one line a refusal shows; raises NotOneLine when it is not one clean line."""
    message = str(e)
    if not message.strip() or "\n" in message.strip() or _CLASS_NAME.search(message) or "Traceback" in message:
        raise NotOneLine(f"{type(e).__name__} with a message that is not one clean line: {message!r}")
    return message
