"""Real text that every Python install carries, so the quickstart needs no download.

Documents (for ingest):
    embedded:python-docs          the pydoc topics (the language reference and library guide text)
    embedded:stdlib-docstrings    module, class and function docstrings of the standard library
    embedded:package-docs         long descriptions (READMEs) of the installed packages
Fine-tuning rows (for sft and dpo), from the public functions and classes of the standard library:
    embedded:python-qa            Alpaca rows: "What does json.dumps do?" -> the first paragraph of its docstring
    embedded:python-preferences   pairs: that answer (chosen) against its words scrambled (rejected)
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import sysconfig
from typing import Iterator

SOURCES = ("python-docs", "stdlib-docstrings", "package-docs")
CHAT_SOURCES = ("python-qa", "python-preferences", "arithmetic")


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


def iter_embedded_rows(name: str) -> Iterator[dict]:
    """The rows of a fine-tuning source (CHAT_SOURCES), in a stable order."""
    if name == "arithmetic":  # a verifiable task for grpo: "What is 7 + 12?" with its answer, a and b below 20, shuffled
        import random

        rows = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(20) for b in range(20)]
        random.Random(0).shuffle(rows)
        yield from rows
        return
    answers = list(_stdlib_answers()) if name in CHAT_SOURCES else []
    if name == "python-qa":
        for question, answer in answers:
            yield {"instruction": question, "input": "", "output": answer}
    elif name == "python-preferences":
        # the rejected answer is the same words scrambled (seeded per row): a contrast a small model can learn
        # and carry to held-out questions (an answer about another name needs knowledge a tiny model lacks)
        import random

        for k, (question, answer) in enumerate(answers):
            words = answer.split()
            scrambled = words[:]
            random.Random(k).shuffle(scrambled)
            if scrambled == words:  # a rotation always differs when the words do
                scrambled = words[1:] + words[:1]
            if scrambled != words:
                yield {"prompt": question, "chosen": answer, "rejected": " ".join(scrambled)}
    else:
        raise ValueError(f'unknown embedded source "{name}"; choose one of {", ".join(CHAT_SOURCES)}')


def _stdlib_answers() -> Iterator[tuple[str, str]]:
    """(question, answer) for each public top-level function and class of the public stdlib modules whose
    docstring opens with a paragraph of 40 to 300 characters (1,497 in Python 3.11)."""
    import re

    root = sysconfig.get_paths()["stdlib"]
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith((".", "_")))
        for fname in sorted(f for f in filenames if f.endswith(".py") and not f.startswith("_") or f == "__init__.py"):
            module = os.path.relpath(os.path.join(dirpath, fname), root)[: -len(".py")].replace(os.sep, ".").removesuffix(".__init__")
            if module == "__init__":
                continue
            try:
                with open(os.path.join(dirpath, fname), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
                continue
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_") and ast.get_docstring(node):
                    answer = re.sub(r"\s+", " ", ast.get_docstring(node).split("\n\n")[0]).strip()
                    if 40 <= len(answer) <= 300:
                        what = "What is" if isinstance(node, ast.ClassDef) else "What does"
                        yield f"{what} {module}.{node.name}{'' if what == 'What is' else ' do'}?", answer
