"""Documents -> token shards (safetensors, uint16/uint32) for pretraining: mixtures, train/validation split.

Each document becomes bos + tokens + eos. The split and the mixture are decided per document by
a seeded hash of its id, never by its position, so they do not depend on how the input is cut
into parts. A source's weight w repeats its training documents: floor(w) full epochs, plus the
documents whose hash falls below the fractional part (0.5 keeps half, 2.5 gives two epochs and
a half). Validation documents appear once each (weights shape only the training split); a
source of weight 0 is left out entirely.

Phases: `keys` (only for `val_documents`: each part's smallest split keys, to find the global
cut), `tokenize` (one task per input part, streaming: writes its token streams to _work/) and
`pack` (one task per part: cuts the concatenated streams into shards of exactly `shard_tokens`,
the last one shorter; task i writes the shards that start inside part i's tokens). The same
documents in the same order therefore give the same shard bytes in one part or in forty.

    llmpipe tokenize --input runs/pretrain/dedup --tokenizer runs/pretrain/tokenizer --output runs/tokens --val-fraction 0.05
    [steps.tokens]
    stage = "tokenize"
    inputs = ["dedup", "wiki"]
    tokenizer = "runs/tokenizer"
    weights = [1.0, 3.0]
    val_documents = 1000
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field

import numpy as np

from llmpipe.artifacts.layout import save_array
from llmpipe.registry import Plan, Stage

SPLITS = ("train", "val")


@dataclass(frozen=True)
class Params:
    tokenizer: str = field(default="", metadata={"help": "Tokenizer artifact from train-tokenizer (or a sentencepiece .model file)."})
    weights: tuple[float, ...] = field(default=(), metadata={"help": "Mixture weight per input, in input order (2.0 = two epochs, 0.5 = half); empty = 1 each."})
    val_fraction: float = field(default=0.0, metadata={"help": "Share of documents held out for validation, chosen by hash of id and seed."})
    val_documents: int = field(default=0, metadata={"help": "Exact number of documents held out for validation (instead of val_fraction)."})
    seed: int = field(default=0, metadata={"help": "Seed of the split and of fractional mixture sampling."})
    shard_tokens: int = field(default=100_000_000, metadata={"help": "Tokens per shard file (the last shard of a split is shorter)."})
    add_bos: bool = field(default=True, metadata={"help": "Put the bos token before every document."})
    add_eos: bool = field(default=True, metadata={"help": "Put the eos token after every document."})
    batch_size: int = field(default=512, metadata={"help": "Documents per encode call."})

    def __post_init__(self):
        if not self.tokenizer:
            raise ValueError("tokenizer: required; give the train-tokenizer artifact (--tokenizer PATH)")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction: expected a number in [0, 1), got {self.val_fraction}")
        if self.val_documents < 0 or (self.val_documents and self.val_fraction):
            raise ValueError("val_documents: give either val_fraction or val_documents, and a count of 0 or more")
        if any(w < 0 or not math.isfinite(w) for w in self.weights):
            raise ValueError(f"weights: expected numbers of 0 or more, got {list(self.weights)}")
        if self.weights and not any(self.weights):
            raise ValueError("weights: every weight is 0, which leaves nothing to tokenize; give at least one input a weight above 0")
        if self.shard_tokens < 1 or self.batch_size < 1:
            raise ValueError("shard_tokens: expected at least 1" if self.shard_tokens < 1 else "batch_size: expected at least 1")


def _has_val(p: Params) -> bool:
    return bool(p.val_fraction or p.val_documents)


def plan(params: Params, inputs) -> Plan:
    from llmpipe.text.tokenizer import check_tokenizer

    if params.weights and len(params.weights) != len(inputs):
        raise ValueError(f"weights: {len(params.weights)} weights for {len(inputs)} inputs; give one weight per input, in order")
    check_tokenizer(params.tokenizer)
    tasks = [{"part": f, "source": k} for k, inp in enumerate(inputs) for f in inp.files]
    phases = [("keys", tasks)] if params.val_documents else []
    phases += [("tokenize", tasks), ("pack", [{} for _ in tasks])]
    # shard counts are known only after tokenizing, so the artifact lists its split directories;
    # the manifest's "splits" names every shard with its token count
    return Plan(phases=phases, files=[s for s in SPLITS if s == "train" or _has_val(params)])


def _keys(seed: int, salt: str, ids: list) -> np.ndarray:
    """A uniform 64-bit key per document id: the same document gets the same key in any part."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{salt}:{i}".encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
                     for i in ids], dtype=np.uint64)


def keys_task(ctx, task: dict) -> dict:
    """This part's `val_documents` smallest split keys: the global cut is among their union."""
    from llmpipe.artifacts.documents import iter_batches

    if ctx.params.weights and ctx.params.weights[task["source"]] == 0:  # left out, so it must not take validation places
        save_array(ctx.work_dir() / f"{ctx.task_index:05d}.npy", np.zeros(0, np.uint64))
        return {"counts": {"documents": 0}}
    keys = [_keys(ctx.params.seed, "split", b.column(0).to_pylist()) for b in iter_batches(task["part"], ["id"])]
    smallest = np.sort(np.concatenate(keys) if keys else np.zeros(0, np.uint64))[:ctx.params.val_documents]
    save_array(ctx.work_dir() / f"{ctx.task_index:05d}.npy", smallest)
    return {"counts": {"documents": sum(len(k) for k in keys)}}


def _val_last_key(ctx) -> int:
    """Documents whose split key is at most this go to validation; -1 when there is no validation split."""
    p: Params = ctx.params
    if p.val_documents:
        arrays = [np.load(ctx.work_dir("keys") / f"{i:05d}.npy") for i in range(ctx.n_tasks)]
        union = np.sort(np.concatenate(arrays))
        return int(union[min(p.val_documents, len(union)) - 1]) if len(union) else -1
    return int(p.val_fraction * 2.0**64) - 1


def tokenize_task(ctx, task: dict) -> dict:
    from llmpipe.artifacts.documents import iter_batches
    from llmpipe.artifacts.layout import atomic_path
    from llmpipe.artifacts.tokens import token_dtype
    from llmpipe.errors import InputError
    from llmpipe.text.tokenizer import load_tokenizer

    p: Params = ctx.params
    tok = load_tokenizer(p.tokenizer)
    for name, wanted, have in (("bos", p.add_bos, tok.bos_id), ("eos", p.add_eos, tok.eos_id)):
        if wanted and have < 0:
            raise InputError(f"tokenize tokenizer: {p.tokenizer} has no {name} token; use a train-tokenizer artifact or --no-add-{name}")
    dtype = token_dtype(tok.vocab_size)
    weight = p.weights[task["source"]] if p.weights else 1.0
    last = _val_last_key(ctx)
    full_epochs, fraction = int(weight), weight - int(weight)
    counts = {"documents": 0, "text_bytes": 0, "encoded_tokens": 0, "train_documents": 0, "train_tokens": 0, "val_documents": 0, "val_tokens": 0}
    work = ctx.work_dir()
    with atomic_path(work / f"{ctx.task_index:05d}.train.bin") as train_tmp, atomic_path(work / f"{ctx.task_index:05d}.val.bin") as val_tmp:
        with open(train_tmp, "wb") as train, open(val_tmp, "wb") as val:
            starts, lengths, extra = [], [], []  # first-epoch training documents, to repeat them without re-encoding
            for batch in iter_batches(task["part"], ["id", "text"], batch_size=p.batch_size):
                ids, texts = batch.column(0).to_pylist(), batch.column(1).to_pylist()
                counts["documents"] += len(ids)
                if weight == 0:
                    continue
                is_val = _keys(p.seed, "split", ids) <= np.uint64(last) if last >= 0 else np.zeros(len(ids), bool)
                u = _keys(p.seed, "sample", ids) / 2.0**64
                first = ~is_val & ((full_epochs >= 1) | (u < fraction))
                keep = is_val | first
                encoded = tok.encode_batch([t for t, k in zip(texts, keep) if k])
                flat, sizes = _join(encoded, tok, p, dtype)
                counts["text_bytes"] += sum(len(t.encode("utf-8", "surrogatepass")) for t, k in zip(texts, keep) if k)
                counts["encoded_tokens"] += int(sum(len(e) for e in encoded))
                doc_val = is_val[keep]
                on_val = np.repeat(doc_val, sizes)
                val.write(flat[on_val].tobytes())
                train.write(flat[~on_val].tobytes())
                train_sizes = sizes[~doc_val]
                starts.append(counts["train_tokens"] + np.cumsum(train_sizes) - train_sizes)
                lengths.append(train_sizes)
                extra.append(u[keep][~doc_val] < fraction)
                counts["val_documents"] += int(doc_val.sum())
                counts["val_tokens"] += int(sizes[doc_val].sum())
                counts["train_documents"] += len(train_sizes)
                counts["train_tokens"] += int(train_sizes.sum())
            train.flush()
            cat = lambda arrays, t: np.concatenate(arrays) if arrays else np.zeros(0, t)  # noqa: E731
            _repeat_epochs(train, train_tmp, dtype, cat(starts, np.int64), cat(lengths, np.int64), cat(extra, bool), full_epochs, counts)
    source = {k: v for k, v in counts.items() if k not in ("text_bytes", "encoded_tokens")}
    return {"counts": counts, "sources": {str(task["source"]): source}}


def _join(encoded: list[np.ndarray], tok, p: Params, dtype) -> tuple[np.ndarray, np.ndarray]:
    """All documents of a batch as one array with bos/eos around each, and each document's size."""
    pre, post = int(p.add_bos), int(p.add_eos)
    sizes = np.array([len(e) + pre + post for e in encoded], dtype=np.int64)
    flat = np.empty(int(sizes.sum()), dtype=dtype)
    ends = np.cumsum(sizes)
    if pre:
        flat[ends - sizes] = tok.bos_id
    if post:
        flat[ends - 1] = tok.eos_id
    body = np.ones(len(flat), dtype=bool)
    body[ends - sizes] = not pre
    body[ends - 1] &= not post
    if encoded:
        flat[body] = np.concatenate(encoded)
    return flat, sizes


def _repeat_epochs(train, path, dtype, starts: np.ndarray, lengths: np.ndarray, extra: np.ndarray, full_epochs: int, counts: dict) -> None:
    """Epochs after the first copy the first epoch's tokens: all documents for full epochs, the sampled ones for the last."""
    if full_epochs < 1 or not counts["train_tokens"] or (full_epochs == 1 and not extra.any()):
        return  # one epoch (or a fractional one, already written as the first)
    first = np.memmap(path, dtype=dtype, mode="r", shape=(counts["train_tokens"],))
    for mask in [np.ones(len(starts), bool)] * (full_epochs - 1) + [extra]:
        for s, n in zip(starts[mask], lengths[mask]):  # documents in order; runs of them could be merged, but copies are cheap
            train.write(first[s:s + n].tobytes())
        counts["train_documents"] += int(mask.sum())
        counts["train_tokens"] += int(lengths[mask].sum())
    del first


def pack_task(ctx, task: dict) -> dict:
    """Write the fixed-size shards that start inside this part's tokens."""
    from llmpipe.artifacts.tokens import token_dtype, write_token_shard
    from llmpipe.text.tokenizer import vocab_size_of

    p: Params = ctx.params
    vocab = vocab_size_of(p.tokenizer)
    dtype = np.dtype(token_dtype(vocab))
    written = {}
    for split in (s for s in SPLITS if s == "train" or _has_val(p)):
        (ctx.out / split).mkdir(exist_ok=True)
        paths = [ctx.work_dir("tokenize") / f"{i:05d}.{split}.bin" for i in range(ctx.n_tasks)]
        sizes = [os.path.getsize(f) // dtype.itemsize for f in paths]
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        lo, hi = bounds[ctx.task_index], bounds[ctx.task_index + 1]
        first_shard = -(-lo // p.shard_tokens)
        shards = range(first_shard, -(-hi // p.shard_tokens)) if hi > lo else range(0)
        for s in shards:
            start, stop = s * p.shard_tokens, min((s + 1) * p.shard_tokens, int(bounds[-1]))
            write_token_shard(ctx.out / split / shard_name(s), _read_range(paths, bounds, start, stop, dtype), vocab)
        written[split] = len(shards)
    return {"counts": {f"{k}_shards": v for k, v in written.items()}}


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def _read_range(paths, bounds: np.ndarray, start: int, stop: int, dtype) -> np.ndarray:
    """Tokens [start, stop) of the concatenated per-part streams."""
    pieces = []
    for i, path in enumerate(paths):
        lo, hi = max(start, bounds[i]), min(stop, bounds[i + 1])
        if lo < hi:
            pieces.append(np.fromfile(path, dtype=dtype, count=int(hi - lo), offset=int(lo - bounds[i]) * dtype.itemsize))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype)


def finalize(ctx, stats: dict, records: dict) -> dict:
    from llmpipe.artifacts.tokens import token_dtype
    from llmpipe.stats import merge
    from llmpipe.text.tokenizer import load_tokenizer, model_sha256

    p: Params = ctx.params
    tok = load_tokenizer(p.tokenizer)
    merged = merge([r["stats"] for r in records["tokenize"]])
    counts = merged["counts"]
    splits = {}
    for split in (s for s in SPLITS if s == "train" or _has_val(p)):
        total = counts[f"{split}_tokens"]
        n = -(-total // p.shard_tokens)
        shards = [{"file": f"{split}/{shard_name(s)}", "tokens": min(p.shard_tokens, total - s * p.shard_tokens)} for s in range(n)]
        missing = [s["file"] for s in shards if not (ctx.out / s["file"]).exists()]
        if missing:
            raise RuntimeError(f"{ctx.out}: pack tasks did not write {missing[:3]}")
        splits[split] = {"tokens": total, "documents": counts[f"{split}_documents"], "shards": shards}
    sources = []
    for k, inp in enumerate(ctx.inputs):
        got = merged.get("sources", {}).get(str(k), {})
        sources.append({"input": inp.path, "weight": p.weights[k] if p.weights else 1.0,
                        **{key: got.get(key, 0) for key in ("documents", "train_documents", "train_tokens", "val_documents", "val_tokens")}})
    return {
        "counts": {"documents": counts["documents"], "train_tokens": counts["train_tokens"], "val_tokens": counts["val_tokens"],
                   "train_documents": counts["train_documents"], "val_documents": counts["val_documents"]},
        "vocab_size": tok.vocab_size,
        "tokenizer_sha256": model_sha256(p.tokenizer),  # pretrain refuses another tokenizer with it
        "dtype": np.dtype(token_dtype(tok.vocab_size)).name,
        "special_tokens": {k: tok.special[k] for k in ("bos", "eos", "pad", "mask") if k in tok.special},  # mask: pretrain objective mlm
        "splits": splits,
        "sources": sources,
        "bytes_per_token": round(counts["text_bytes"] / max(1, counts["encoded_tokens"]), 4),  # bos/eos and repeats left out
        "stats": merged,
    }


STAGE = Stage(
    name="tokenize", version=2, params=Params, doc=__doc__, plan=plan,
    run_task={"keys": keys_task, "tokenize": tokenize_task, "pack": pack_task}, finalize=finalize,
    output_kind="tokens", path_params=("tokenizer",),
)
