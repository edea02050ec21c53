"""MinHash signatures of word or character n-gram shingles, vectorised with numpy over a batch.

Signatures equal datasketch's `MinHash(num_perm, seed, scheme, hashfunc=MinHasher.hashfunc)` fed
`MinHasher.shingles(text)`: the permutations come from `numpy.random.RandomState(seed)` exactly as
datasketch draws them, and "affine32" (datasketch 2's default: MurmurHash3 fmix32, then
a*h+b mod 2^32) and "legacy" ((a*h+b) mod 2^61-1, low 32 bits; datasketch 1.x and datatrove)
apply them. Only the shingle hash differs from datasketch's default sha1: a polynomial hash of
each word's bytes, folded over the n words of a shingle, computable for a whole batch at once.

    mh = MinHasher(num_perm=128, seed=1, ngram=5)
    sigs = mh.signatures(pa.array(texts))              # (len(texts), 128) uint32
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa

from llmpipe.text.normalize import split_words

Shingle = Literal["word", "char"]
Scheme = Literal["affine32", "legacy"]
M64 = (1 << 64) - 1
MERSENNE = (1 << 61) - 1
BYTE_BASE = 0x9E3779B97F4A7C15  # odd constants: golden ratio and splitmix64's multipliers
LENGTH_MUL = 0xBF58476D1CE4E5B9
FOLD_MUL = 0x94D049BB133111EB
FOLD_SEED = 0x2545F4914F6CDD1D
CHUNK = 8192  # shingles per (num_perm x CHUNK) block: 4 MiB at 128 perms, fits L2+L3 (measured best of 1k-32k)


def fmix64(h):
    """MurmurHash3's 64-bit finalizer, on Python ints or uint64 arrays."""
    if isinstance(h, int):
        h ^= h >> 33
        h = (h * 0xFF51AFD7ED558CCD) & M64
        h ^= h >> 33
        h = (h * 0xC4CEB9FE1A85EC53) & M64
        return h ^ (h >> 33)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer on a uint32 array (datasketch's affine pre-mix)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


_POWERS = np.ones(1, dtype=np.uint64)


def _powers(n: int) -> np.ndarray:
    """BYTE_BASE**i mod 2^64 for i < n (cached; uint64 products wrap, which is the modulo)."""
    global _POWERS
    if len(_POWERS) < n:
        grown = np.full(max(n, 2 * len(_POWERS)), BYTE_BASE, dtype=np.uint64)
        grown[0] = 1
        _POWERS = np.cumprod(grown, dtype=np.uint64)
    return _POWERS


def string_hashes(strings: pa.Array) -> np.ndarray:
    """64-bit hash of each (non-empty) string's UTF-8 bytes: fmix64(sum b_i K^i ^ len*L), for a whole array."""
    if len(strings) == 0:
        return np.zeros(0, dtype=np.uint64)
    width = np.int64 if strings.type == pa.large_string() else np.int32
    offsets = np.frombuffer(strings.buffers()[1], width)[strings.offset:strings.offset + len(strings) + 1].astype(np.int64)
    data = np.frombuffer(strings.buffers()[2], np.uint8)
    lengths = np.diff(offsets)
    powers = _powers(int(lengths.max()))
    out = np.empty(len(lengths), dtype=np.uint64)
    # ~1 MiB of text at a time: the uint64 temporaries are 8x the bytes they cover
    bounds = np.searchsorted(offsets, np.arange(offsets[0], offsets[-1], 1 << 20), side="right") - 1
    for w0, w1 in zip(bounds, np.append(bounds[1:], len(lengths))):
        if w1 <= w0:
            continue
        starts = offsets[w0:w1] - offsets[w0]
        chunk = data[offsets[w0]:offsets[w1]]
        pos = np.arange(len(chunk), dtype=np.int64) - np.repeat(starts, lengths[w0:w1])
        out[w0:w1] = np.add.reduceat(chunk.astype(np.uint64) * powers[pos], starts)
    return fmix64(out ^ (lengths.astype(np.uint64) * np.uint64(LENGTH_MUL)))


def string_hash(data: bytes) -> int:
    """The scalar twin of string_hashes, for tests and datasketch's hashfunc."""
    h, p = 0, 1
    for byte in data:
        h = (h + byte * p) & M64
        p = (p * BYTE_BASE) & M64
    return fmix64(h ^ ((len(data) * LENGTH_MUL) & M64))


def fold(units: list[int]) -> int:
    """64-bit shingle hash of its units (word hashes or code points); MinHash takes the top 32 bits."""
    h = FOLD_SEED
    for u in units:
        h = ((h ^ u) * FOLD_MUL) & M64
    return fmix64(h)


def shingle_hashes(units: np.ndarray, offsets: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every n-gram of units inside each document, and each document's shingle offsets.

    A document with fewer than `ngram` (but some) units has one shingle of all of them; an empty one none.
    """
    n = len(units)
    counts = np.diff(offsets)
    ends = np.repeat(offsets[1:], counts)  # per unit: the end of its document
    idx = np.arange(n, dtype=np.int64)
    h = np.full(n, FOLD_SEED, dtype=np.uint64)
    for k in range(ngram):
        inside = idx + k < ends  # windows are cut at their document's end
        mixed = (h ^ units[np.minimum(idx + k, n - 1)]) * np.uint64(FOLD_MUL)
        h = np.where(inside, mixed, h)
    starts_short = np.zeros(n, dtype=bool)
    starts_short[offsets[:-1][(counts > 0) & (counts < ngram)]] = True
    keep = (idx + ngram <= ends) | starts_short
    per_doc = np.where(counts >= ngram, counts - ngram + 1, (counts > 0).astype(np.int64))
    sh_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(per_doc, out=sh_offsets[1:])
    return fmix64(h[keep]), sh_offsets


class MinHasher:
    """Permutations and shingling for one (num_perm, seed, ngram, shingle, scheme) setting."""

    def __init__(self, num_perm: int = 128, seed: int = 1, ngram: int = 5, shingle: Shingle = "word", scheme: Scheme = "affine32"):
        self.num_perm, self.seed, self.ngram, self.shingle, self.scheme = num_perm, seed, ngram, shingle, scheme
        gen = np.random.RandomState(seed)  # the draws and their order are datasketch's (minhash.py)
        if scheme == "legacy":
            ab = np.array([(gen.randint(1, MERSENNE, dtype=np.uint64), gen.randint(0, MERSENNE, dtype=np.uint64))
                           for _ in range(num_perm)], dtype=np.uint64)
            self.a, self.b = ab[:, 0].copy(), ab[:, 1].copy()
        else:
            self.a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
            self.b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)

    # --- reference path: one document, plain Python, what datasketch is given in the parity test ---

    def shingles(self, text: str) -> list[bytes]:
        """The document's shingles as bytes (words joined by one space, or n characters)."""
        if self.shingle == "char":
            units = list(text)
        else:
            words, _ = split_words(pa.array([text]))
            units = words.to_pylist()
        n = self.ngram
        grams = [units[i:i + n] for i in range(len(units) - n + 1)] if len(units) >= n else ([units] if units else [])
        return [("".join(g) if self.shingle == "char" else " ".join(g)).encode("utf-8") for g in grams]

    def hashfunc(self, shingle: bytes) -> int:
        """datasketch-compatible hashfunc: the 32-bit hash `signatures` gives this shingle."""
        if self.shingle == "char":
            return fold([ord(c) for c in shingle.decode("utf-8")]) >> 32
        return fold([string_hash(w) for w in shingle.split(b" ")]) >> 32

    # --- fast path: a batch of documents ---

    def units(self, texts: pa.Array, words: tuple[pa.Array, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Each document's units (uint64 word hashes or code points) and their offsets; `words` may
        bring split_words(texts) when the caller already has it."""
        if self.shingle == "char":
            encoded = [np.frombuffer(t.encode("utf-32-le"), np.uint32) for t in texts.to_pylist()]
            counts = np.array([len(e) for e in encoded], dtype=np.int64)
            units = np.concatenate(encoded).astype(np.uint64) if encoded else np.zeros(0, np.uint64)
            offsets = np.zeros(len(counts) + 1, dtype=np.int64)
            np.cumsum(counts, out=offsets[1:])
            return units, offsets
        words, offsets = words or split_words(texts)
        return string_hashes(words), offsets

    def signatures(self, texts: pa.Array, words: tuple[pa.Array, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(len(texts), num_perm) uint32 signatures of normalised texts, and the number of shingles of each.

        A document without shingles keeps datasketch's empty value (2^32 - 1 everywhere).
        """
        units, offsets = self.units(texts, words)
        sh, sh_offsets = shingle_hashes(units, offsets, self.ngram)
        sh = (sh >> np.uint64(32)).astype(np.uint32)  # datasketch's hashfunc values are 32-bit
        counts = np.diff(sh_offsets)
        sigs = np.full((len(counts), self.num_perm), np.uint32(0xFFFFFFFF), dtype=np.uint32)
        docs = np.flatnonzero(counts)
        if len(docs):
            sigs[docs] = self._min_over_shingles(sh, sh_offsets[docs])
        return sigs, counts

    def _min_over_shingles(self, sh: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Per-document minimum of every permutation; documents are the non-empty runs sh[starts[i]:starts[i+1]]."""
        if self.scheme == "legacy":
            hv = sh.astype(np.uint64)
        else:
            hv = fmix32(sh)
        out = np.full((len(starts), self.num_perm), np.iinfo(hv.dtype).max, dtype=hv.dtype)
        a, b = self.a[:, None], self.b[:, None]
        for c0 in range(0, len(sh), CHUNK):
            c1 = min(c0 + CHUNK, len(sh))
            # documents overlapping [c0, c1); one may start before c0 or run past c1: partial minima combine
            d0 = int(np.searchsorted(starts, c0, side="right")) - 1
            d1 = int(np.searchsorted(starts, c1, side="left"))
            seg = np.maximum(starts[d0:d1], c0) - c0
            block = a * hv[None, c0:c1]  # (num_perm, chunk): reductions run along contiguous rows
            block += b
            if self.scheme == "legacy":
                block %= np.uint64(MERSENNE)
                block &= np.uint64(0xFFFFFFFF)
            part = np.minimum.reduceat(block, seg, axis=1).T
            np.minimum(out[d0:d1], part, out=out[d0:d1])
        return out.astype(np.uint32)
