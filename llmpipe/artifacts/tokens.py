"""Token shards: safetensors files holding one 1-D `tokens` tensor, read back by memory map.

uint16 when the vocabulary fits (< 65536 ids, half the bytes), else uint32. The reader parses
the safetensors header itself so that a shard of billions of tokens maps instead of loading.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from llmpipe.artifacts.layout import atomic_path

_DTYPES = {"U16": np.uint16, "U32": np.uint32}


def token_dtype(vocab_size: int) -> type:
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def write_token_shard(path: Path, tokens: np.ndarray, vocab_size: int) -> None:
    from safetensors.numpy import save_file

    dtype = token_dtype(vocab_size)
    tokens = np.asarray(tokens)
    if tokens.size and int(tokens.max()) >= vocab_size:
        raise ValueError(f"token id {int(tokens.max())} is outside the vocabulary of {vocab_size}")
    with atomic_path(Path(path)) as tmp:
        save_file({"tokens": np.ascontiguousarray(tokens, dtype=dtype)}, str(tmp), metadata={"vocab_size": str(vocab_size)})


def read_token_shard(path: Path) -> np.ndarray:
    """Memory-mapped view of a shard's tokens (no copy); InputError naming the file when it is not a token shard."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            _refuse(path, f"{size} bytes, shorter than a safetensors header")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            _refuse(path, f"its header claims {header_len:,} bytes but the file has {size:,}")
        try:
            header = json.loads(f.read(header_len))
        except ValueError:  # UnicodeDecodeError is one
            _refuse(path, "its header is not JSON")
    info = header.get("tokens") if isinstance(header, dict) else None
    if not isinstance(info, dict) or info.get("dtype") not in _DTYPES:
        _refuse(path, "no uint16 or uint32 'tokens' tensor in its header")
    dtype = np.dtype(_DTYPES[info["dtype"]])
    offsets, shape = info.get("data_offsets"), info.get("shape")
    data_size = size - 8 - header_len
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1] <= data_size):
        _refuse(path, f"the tokens' data_offsets {str(offsets)[:40]} are not within its {data_size:,} bytes of data")
    start, end = offsets
    count = (end - start) // dtype.itemsize
    if (end - start) % dtype.itemsize or shape != [count]:
        _refuse(path, f"the tokens' shape {str(shape)[:40]} does not match their {end - start:,} bytes")
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=8 + header_len + start, shape=(count,))


def _refuse(path: Path, why: str):
    from llmpipe.errors import InputError

    raise InputError(f"{path}: not a token shard ({why}); re-run the tokenize step that wrote it")
