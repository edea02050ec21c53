"""What a stage is (the `Stage` descriptor) and how one is found by name.

`stages/__init__.py` holds the only list of built-in stages; modules are imported lazily, only
when used, so `llmpipe --help` stays fast. A pipeline may also name its own stage module as
"package.module" (any importable module that defines STAGE), the way datatrove users add steps.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from llmpipe.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class Plan:
    """The tasks of each phase, in order, and the data files the artifact will hold."""

    phases: list[tuple[str, list[dict]]]
    files: list[str]


@dataclass(frozen=True)
class Stage:
    """A stage: typed params, a plan of independent tasks per phase, and a task function per phase.

    plan(params, inputs) -> Plan            deterministic from params and inputs
    run_task(ctx, task) -> stats dict       one task of one phase; writes its outputs atomically
    finalize(ctx, stats) -> manifest extras counts/stats reduced over all tasks (optional)
    """

    name: str
    version: int
    params: type
    doc: str
    plan: Callable[..., Plan]
    run_task: dict[str, Callable[..., dict]]
    finalize: Callable[..., dict] | None = None
    output_kind: str = "documents"
    launcher: Literal["local", "torchrun"] = "local"
    input_kinds: tuple[str, ...] = ("documents",)
    # params that name a file or artifact the stage reads (a model, a tokenizer): checked to exist
    # before anything runs, and their fingerprints join the step's
    path_params: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        return self.doc.strip().splitlines()[0] if self.doc.strip() else self.name

    def param_fields(self) -> list[dataclasses.Field]:
        return list(dataclasses.fields(self.params))


def builtin_stages() -> dict[str, str]:
    from stages import STAGES

    return dict(STAGES)


def get_stage(name: str, where: str = "stage") -> Stage:
    """Look a stage up by name (built-in) or module path (custom); unknown names get a suggestion."""
    builtins = builtin_stages()
    name = name.replace("-", "_") if name.replace("-", "_") in builtins else name  # CLI spelling
    module_name = builtins.get(name)
    if module_name is None and "." not in name:
        raise ConfigError(f'{where}: unknown stage "{name}"{did_you_mean(name, builtins)}')
    if module_name is None and not all(part.isidentifier() for part in name.split(".")):  # "../x" is no module
        raise ConfigError(f'{where}: "{name}" is neither a stage nor a module path (package.module); stages: {", ".join(sorted(builtins))}')
    try:
        module = importlib.import_module(module_name or name)
    except ModuleNotFoundError as e:
        raise ConfigError(f'{where}: cannot import stage module "{module_name or name}": {e}') from None
    stage = getattr(module, "STAGE", None)
    if not isinstance(stage, Stage):
        raise ConfigError(f'{where}: module "{module.__name__}" defines no STAGE')
    return stage
