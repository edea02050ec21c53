"""The one place user input is checked: TOML loading, typed params from mappings, --set overlays.

Every message names where the value came from (`file [steps.X] key` or `--flag`) and what was
expected, and everything here runs before anything is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from llmpipe.errors import ConfigError, did_you_mean


def load_toml(path: Path) -> dict:
    """Parse a TOML file; errors name the file and the line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such pipeline file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def field_help(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def type_name(tp: Any) -> str:
    """Human words for a type annotation, used in messages and --help."""
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        inner = typing.get_args(tp)[0]
        return f"a list of {type_name(inner).removeprefix('a ').removeprefix('an ')}s"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("none" if a is type(None) else type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}
    return f"{json.dumps(value, default=str)} ({kind.get(type(value), type(value).__name__)})"


_MISMATCH = object()


def coerce(value: Any, tp: Any) -> Any:
    """Return value as type tp, or _MISMATCH. Ints widen to floats and lists to tuples; nothing else is coerced."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            out = coerce(value, arg)
            if out is not _MISMATCH:
                return out
        return _MISMATCH
    if origin is Literal:
        return value if value in typing.get_args(tp) and type(value) is not bool else _MISMATCH
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return _MISMATCH
        inner = typing.get_args(tp)[0]
        items = [coerce(v, inner) for v in value]
        return _MISMATCH if any(i is _MISMATCH for i in items) else tuple(items)
    if tp is bool:
        return value if isinstance(value, bool) else _MISMATCH
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _MISMATCH
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else _MISMATCH
    if tp is str:
        return value if isinstance(value, str) else _MISMATCH
    return _MISMATCH


def param_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def params_from_mapping(cls: type, values: Mapping[str, Any], where: str, stage: str, origins: Mapping[str, str] | None = None, flags: bool = False) -> Any:
    """Build a Params dataclass from user values; unknown, missing and mistyped keys are ConfigErrors.

    Messages read `<where> <key>: ...`; `origins` names keys that came from elsewhere (a --set flag),
    and `flags` spells keys as the CLI options the user typed (--min-chars).
    """
    types_ = param_types(cls)

    def at(key: str) -> str:
        if origins and key in origins:
            return origins[key]
        return f"{where} {'--' + key.replace('_', '-') if flags else key}"

    kwargs = {}
    for key, value in values.items():
        if key not in types_:
            raise ConfigError(f'{at(key)}: unknown parameter for stage "{stage}"{did_you_mean(key, types_)}')
        out = coerce(value, types_[key])
        if out is _MISMATCH:
            raise ConfigError(f"{at(key)}: expected {type_name(types_[key])}, got {_describe(value)}")
        kwargs[key] = out
    for f in dataclasses.fields(cls):
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where} {f.name}: required parameter of stage \"{stage}\" is missing")
    try:
        return cls(**kwargs)
    except ValueError as e:  # cross-field checks in __post_init__ start with the key: "min_chars: ..."
        key, sep, rest = str(e).partition(": ")
        raise ConfigError(f"{at(key)}: {rest}" if sep and key in types_ else f"{where} {e}") from None


def parse_cli_value(text: str) -> Any:
    """A --set value: TOML syntax when it parses (3, 0.8, true, ["a"]), else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def params_to_dict(params: Any) -> dict:
    """Plain JSON-able dict of a Params instance (tuples become lists)."""
    return json.loads(canonical_json(dataclasses.asdict(params)))


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
