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
    """Memory-mapped view of a shard's tokens (no copy)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    info = header["tokens"]
    start, end = info["data_offsets"]
    dtype = _DTYPES[info["dtype"]]
    count = (end - start) // np.dtype(dtype).itemsize
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=8 + header_len + start, shape=(count,))
