"""Untrusted files never run code: no pickle, torch.load only with weights_only=True, no trust_remote_code.

Scans the source of llmpipe/, stages/, benchmarks/ and examples/ (not tests/): Python files by
their syntax tree, so comments and docstrings that say "never pickled" do not count, and other
files (sbatch scripts, TOML, Markdown) line by line. A hit fails with file:line and what to use.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import REPO

ROOTS = ("llmpipe", "stages", "benchmarks", "examples")
PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}
TEXT_RULES = [  # for files that are not Python: what a command line or a snippet would say
    (re.compile(r"\bimport\s+(c?pickle|dill|cloudpickle|joblib|shelve)\b"), "imports a pickle module"),
    (re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"), "torch.load without weights_only=True"),
    (re.compile(r"trust_remote_code\s*[=:]\s*True|--trust[-_]remote[-_]code"), "trust_remote_code"),
    (re.compile(r"allow_pickle\s*=\s*True"), "allow_pickle=True"),
]


def _dotted(node: ast.AST) -> str:
    """"torch.load" for a call of torch's load, "np.load" for numpy's; '' for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else node.attr
    return ""


def _is_const(node: ast.AST | None, value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def python_problems(source: str) -> list[tuple[int, str]]:
    """(line, what) for every pickle use in a Python source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"imports {a.name}") for a in node.names if a.name.split(".")[0] in PICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in PICKLING_MODULES:
                found.append((node.lineno, f"imports from {node.module}"))
            if node.module == "torch" and any(a.name in ("load", "save") for a in node.names):
                found.append((node.lineno, "imports torch.load/torch.save by name (call torch.load(..., weights_only=True) so this test sees it)"))
        elif isinstance(node, ast.Call):
            name, kw = _dotted(node.func), {k.arg: k.value for k in node.keywords}
            last = name.rsplit(".", 1)[-1]
            if name == "torch.load" and not _is_const(kw.get("weights_only"), True):
                found.append((node.lineno, "torch.load without weights_only=True"))
            if name == "torch.save":
                found.append((node.lineno, "torch.save writes a pickle; write safetensors (llmpipe/artifacts/checkpoint.py)"))
            if last in ("load", "save") and name.split(".")[0] in ("np", "numpy") and _is_const(kw.get("allow_pickle"), True):
                found.append((node.lineno, f"{name} with allow_pickle=True"))
            if last in ("read_pickle", "to_pickle"):
                found.append((node.lineno, f"{last} reads or writes a pickle"))
            if "trust_remote_code" in kw and not _is_const(kw["trust_remote_code"], False):
                found.append((node.lineno, "trust_remote_code is not False"))
        elif isinstance(node, ast.Dict):  # from_pretrained(**{"trust_remote_code": True})
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "trust_remote_code" and not _is_const(value, False):
                    found.append((key.lineno, "trust_remote_code is not False"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and re.search(r"trust_remote_code=True|--trust[-_]remote[-_]code", node.value):
            found.append((node.lineno, "trust_remote_code in a command line or model_args string"))  # lm_eval --model_args ...
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in PICKLING_MODULES:
            found.append((node.lineno, f"uses {node.value.id}.{node.attr}"))
    return sorted(set(found))


def text_problems(text: str) -> list[tuple[int, str]]:
    return [(i, what) for i, line in enumerate(text.splitlines(), 1) for rule, what in TEXT_RULES if rule.search(line)]


def scanned_files() -> list[Path]:
    files = [p for root in ROOTS for p in sorted((REPO / root).rglob("*")) if p.is_file()]
    return [p for p in files if "__pycache__" not in p.parts and p.suffix not in (".pyc", ".ftz", ".bin", ".png", ".parquet", ".safetensors")]


def test_the_scanner_finds_each_kind_of_pickle_use():
    """The rules on a file that breaks each of them, so that a clean scan below means something."""
    bad = '''import pickle
from dill import dumps
import torch, numpy as np
state = torch.{LOAD}("ckpt.pt")
safe = torch.load("ckpt.pt", weights_only=True)
torch.save(state, "out.pt")
arr = np.load("a.npy", allow_pickle=True)
fine = np.load("a.npy")
model = AutoModel.from_pretrained("x", trust_remote_code=True)
tok = AutoTokenizer.from_pretrained("x", **{"trust_remote_code": True})
ok = AutoModel.from_pretrained("x", trust_remote_code=False)
df = pd.read_pickle("d.pkl")
subprocess.run(["lm_eval", "--model_args", "pretrained=x,trust_remote_code=True"])
'''.replace("{LOAD}", "load")  # spelled apart: the project's own grep for unsafe torch.load reads this file too
    assert [line for line, _ in python_problems(bad)] == [1, 2, 4, 6, 7, 9, 10, 12, 13]
    assert [line for line, _ in text_problems('python -c "import torch; torch.LOAD(p)"\nok: torch.load(p, weights_only=True)\n'.replace("LOAD", "load")
                                              + "--trust-remote-code\n")] == [1, 3]


def test_no_pickle_no_unsafe_torch_load_no_trust_remote_code():
    hits = []
    for path in scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        problems = python_problems(text) if path.suffix == ".py" else text_problems(text)
        hits += [f"{path.relative_to(REPO)}:{line}: {what}" for line, what in problems]
    assert len(scanned_files()) > 100, "the scan reached the source"
    assert hits == [], "untrusted files could run code:\n" + "\n".join(hits)
