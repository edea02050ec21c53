"""`llmpipe inspect FILE.gguf`: a GGUF file's header, metadata and tensor table, read with gguf's GGUFReader.

    model-Q4_0.gguf  GGUF v3  architecture=llama  tensors=11  file_type=MOSTLY_Q4_0  (30,496 bytes)
    metadata (25 keys):
      general.architecture = 'llama'
      tokenizer.ggml.tokens = [400 x STRING] '<unk>', '<s>', '</s>', ...
    tensors (11, 3,217 parameters):
      token_embd.weight    Q8_0   8 x 400   3,400 bytes
      ...

Shapes are GGML's (the fastest-moving dimension first), as llama.cpp and gguf-dump print them. A file the
reader cannot parse, or whose tensors do not fit inside it, is refused in one line naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmpipe.errors import InputError

SHOWN_ITEMS = 3  # array values shown per metadata key (a tokenizer's vocabulary is thousands)
SHOWN_CHARS = 80  # of a string value (a chat template is pages)


@dataclass
class GGUFSummary:
    path: Path
    version: int
    architecture: str
    file_type: str
    size: int
    metadata: list[tuple[str, str]] = field(default_factory=list)  # key, value as shown
    tensors: list[tuple[str, str, str, int, int]] = field(default_factory=list)  # name, type, shape, parameters, bytes


def read_gguf(path: str | Path) -> GGUFSummary:
    """What a GGUF file holds; InputError (one line naming the file) when it is not a GGUF file gguf can read."""
    from llmpipe.gguf_export import import_gguf

    gguf, path = import_gguf(), Path(path)
    try:
        reader = _strict_reader(gguf)(path, "r")
        metadata = [(key, _value(gguf, f)) for key, f in reader.fields.items() if not key.startswith("GGUF.")]
        tensors = [(t.name, t.tensor_type.name, " x ".join(str(int(d)) for d in t.shape), int(t.n_elements), int(t.n_bytes))
                   for t in reader.tensors]
        version = int(reader.fields["GGUF.version"].contents())
    except (OSError, MemoryError) as e:
        raise InputError(f"{path}: cannot read it ({getattr(e, 'strerror', None) or 'out of memory'})") from None
    except Exception as e:  # noqa: BLE001  gguf's reader raises ValueError, KeyError, IndexError ... on a damaged file
        raise InputError(f"{path}: not a GGUF file gguf {gguf_version()} can read ({_reason(e)})") from None
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    size = path.stat().st_size
    if end > size:
        raise InputError(f"{path}: not a complete GGUF file: its tensors end at byte {end:,} but the file has {size:,} bytes")
    arch = dict(metadata).get("general.architecture", "?").strip("'")
    file_type = reader.fields.get("general.file_type")
    return GGUFSummary(path, version, arch, _file_type(gguf, file_type) if file_type else "?", size, metadata, tensors)


def show_gguf(path: str | Path, console=None) -> None:
    """Print read_gguf's summary: header line, metadata keys and values, tensor table."""
    from llmpipe.log import stdout

    console = console or stdout
    s = read_gguf(path)
    say = lambda text: console.print(text, markup=False, highlight=False, soft_wrap=True)  # noqa: E731  file text is not markup
    say(f"{s.path}  GGUF v{s.version}  architecture={s.architecture}  tensors={len(s.tensors)}  file_type={s.file_type}  ({s.size:,} bytes)")
    say(f"metadata ({len(s.metadata)} keys):")
    for key, value in s.metadata:
        say(f"  {key} = {value}")
    say(f"tensors ({len(s.tensors)}, {sum(t[3] for t in s.tensors):,} parameters):")
    width = max((len(t[0]) for t in s.tensors), default=0)
    for name, kind, shape, _, n_bytes in s.tensors:
        say(f"  {name:<{width}}  {kind:<6} {shape:<14} {n_bytes:>12,} bytes")


def _strict_reader(gguf):
    """gguf's GGUFReader, refusing a read past the end of the file.

    GGUFReader slices its memory map, and a slice past the end is short, not an error: an array whose count runs
    past the file then reads empty elements forever (a 2**63 count hung it) and a tensor past the end reads short.
    `_get` is where every read goes in gguf 0.19 (pinned in pyproject.toml)."""

    class StrictReader(gguf.GGUFReader):
        def _get(self, offset, dtype, count=1, override_order=None):
            out = super()._get(offset, dtype, count, override_order)
            if len(out) != int(count):
                where = "where a value should start" if offset >= len(self.data) else f"inside a value that starts at byte {offset:,}"
                raise EOFError(f"it ends at byte {len(self.data):,}, {where}")
            return out

    return StrictReader


def gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


def _value(gguf, f) -> str:
    """One metadata value as a line: strings quoted and cut, arrays as [count x type] and their first items."""
    T = gguf.GGUFValueType
    if f.types and f.types[0] == T.ARRAY:
        kind = f.types[1].name if len(f.types) > 1 else "?"
        items = [_scalar(f.parts[i]) if kind != "STRING" else _text(f.parts[i]) for i in f.data[:SHOWN_ITEMS]]
        more = ", ..." if len(f.data) > SHOWN_ITEMS else ""
        return f"[{len(f.data)} x {kind}] {', '.join(items)}{more}"
    if f.types and f.types[0] == T.STRING:
        return _text(f.parts[f.data[0]])
    return _scalar(f.parts[f.data[0]])


def _text(raw) -> str:
    text = bytes(raw).decode("utf-8", errors="replace")
    return repr(text[:SHOWN_CHARS]) + ("..." if len(text) > SHOWN_CHARS else "")


def _scalar(raw) -> str:
    return repr(raw.tolist()[0]) if len(raw) else "?"


def _file_type(gguf, f) -> str:
    value = int(f.parts[f.data[0]][0])
    try:
        return gguf.LlamaFileType(value).name
    except ValueError:
        return str(value)


def _reason(e: Exception) -> str:
    """gguf's message, as one line without the exception's class name."""
    text = " ".join(str(e).split())
    if "larger dtype" in text:  # numpy cannot view the bytes at a tensor's offset as its type
        return "a tensor's data offset is not aligned to its type"
    if "empty file" in text:
        return "the file is empty"
    return text[:160] or "damaged"
