"""Real text that every Python install carries, so the quickstart needs no download.

    embedded:python-docs        the pydoc topics (the language reference and library guide text)
    embedded:stdlib-docstrings  module, class and function docstrings of the standard library
    embedded:package-docs       long descriptions (READMEs) of the installed packages
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import sysconfig
from typing import Iterator

SOURCES = ("python-docs", "stdlib-docstrings", "package-docs")


def iter_embedded(name: str) -> Iterator[dict]:
    """Yield {"id", "text", "url", "source"} records of one embedded source, in a stable order."""
    if name == "python-docs":
        yield from _python_docs()
    elif name == "stdlib-docstrings":
        yield from _stdlib_docstrings()
    elif name == "package-docs":
        yield from _package_docs()
    else:
        raise ValueError(f'unknown embedded source "{name}"; choose one of {", ".join(SOURCES)}')


def _python_docs() -> Iterator[dict]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions split pydoc_data out
        return
    for key in sorted(topics):
        yield {"id": f"python-docs/{key}", "text": topics[key], "url": f"pydoc:{key}", "source": "python-docs", "metadata": None}


def _stdlib_docstrings() -> Iterator[dict]:
    root = sysconfig.get_paths()["stdlib"]
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith("."))
        for fname in sorted(filenames):
            if not fname.endswith(".py"):
                continue
            path = os.path.join(dirpath, fname)
            text = _docstrings_of(path)
            if text:
                rel = os.path.relpath(path, root)
                yield {"id": f"stdlib/{rel}", "text": text, "url": f"file:{rel}", "source": "stdlib-docstrings", "metadata": None}


def _docstrings_of(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return ""
    parts = []
    for node in [tree, *ast.walk(tree)]:
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 40 and doc not in parts:
                parts.append(doc)
    return "\n\n".join(parts)


def _package_docs() -> Iterator[dict]:
    seen = set()
    dists = sorted(importlib.metadata.distributions(), key=lambda d: (d.metadata.get("Name") or "").lower())
    for dist in dists:
        name = dist.metadata.get("Name")
        if not name or name.lower() in seen:
            continue
        seen.add(name.lower())
        text = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if len(text.strip()) > 200:
            yield {"id": f"package-docs/{name}", "text": text, "url": f"pypi:{name}", "source": "package-docs", "metadata": None}
