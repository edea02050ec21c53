"""Running one evaluation task on a loaded model: per-item rows (samples/<task>.parquet) and the task's metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from llmpipe.evaluation import metrics as M
from llmpipe.evaluation.fewshot import TARGET_DELIMITER, contexts
from llmpipe.evaluation.loglikelihood import encode_pair, score
from llmpipe.evaluation.tasks import TaskSpec, load_docs


def _spec(task: dict) -> TaskSpec:
    return TaskSpec(task["name"], task["format"], task["path"])


def multiple_choice(model, tok, task: dict, num_fewshot: int, seed: int, limit: int, batch_size: int, device: str):
    docs = load_docs(_spec(task))
    n = min(limit, len(docs)) if limit else len(docs)
    ctxs = contexts(docs, n, num_fewshot, seed)
    pairs = [encode_pair(tok, ctx, TARGET_DELIMITER + choice) for doc, ctx in zip(docs, ctxs) for choice in doc.choices]
    scores = iter(score(model, pairs, batch_size, device))
    rows = []
    for doc_id, (doc, ctx) in enumerate(zip(docs, ctxs)):
        lls = [next(scores)[0] for _ in doc.choices]
        rows.append({"doc_id": doc_id, "loglikelihoods": lls, **M.multiple_choice(lls, doc.choices, doc.gold), "gold": doc.gold, "context": ctx})
    return rows, {**M.aggregate(rows, ("acc", "acc_norm")), "num_fewshot": num_fewshot}


def generation(model, tok, task: dict, num_fewshot: int, seed: int, limit: int, max_new_tokens: int, stops: Sequence[str], device: str):
    docs = load_docs(_spec(task))
    n = min(limit, len(docs)) if limit else len(docs)
    rows = []
    for doc_id, (doc, ctx) in enumerate(zip(docs, contexts(docs, n, num_fewshot, seed))):
        text = greedy_until(model, tok, ctx, max_new_tokens, stops)
        pred, gold = M.extract_answer(text), M.extract_answer(doc.gold)
        rows.append({"doc_id": doc_id, "generation": text, "pred": pred, "gold": gold, "exact_match": float(pred == gold), "context": ctx})
    return rows, {**M.aggregate(rows, ("exact_match",)), "num_fewshot": num_fewshot}


def greedy_until(model, tok, context: str, max_new_tokens: int, stops: Sequence[str]) -> str:
    """The greedy continuation of `context` up to the first stop string, eos or max_new_tokens.

    The prompt keeps its last (context - max_new_tokens) tokens, as lm-eval left-truncates it.
    """
    from llmpipe.decoding import Decoding, token_steps

    max_len = model.config.max_seq_len
    if max_new_tokens >= max_len:
        raise ValueError(f"max_new_tokens {max_new_tokens} leaves no room for the prompt in the model's context of {max_len} tokens")
    ids = ([tok.bos_id] + tok.encode(context))[-(max_len - max_new_tokens):]
    new: list[int] = []
    for step in token_steps(model, [ids], Decoding(max_new_tokens), (tok.eos_id,)):
        if int(step[0]) == tok.eos_id:
            break
        new.append(int(step[0]))
        if any(s in tok.decode(new) for s in stops):  # a short answer stops early
            break
    return M.cut_at_stop(tok.decode(new), stops)


def perplexity(model, tok, checkpoint: str, inp, kind: str, limit: int, batch_size: int, device: str):
    """Rows (per window of the val split, or per document) of nats, tokens and bytes; loss, perplexity, bits per byte."""
    import torch

    from llmpipe.evaluation.perplexity import document_windows, loss_rows, summary, token_bytes

    max_len = model.config.max_seq_len
    from llmpipe.artifacts.manifest import read_manifest

    wordpiece = tok.model_type == "wordpiece"  # bytes from the original text, never from its pieces (see perplexity.py)
    ratio = read_manifest(Path(inp.path)).get("bytes_per_token") if wordpiece and kind == "tokens" else None
    sizes = token_bytes(checkpoint, model.config.vocab_size, ratio)
    sizes = sizes.to(device) if sizes is not None else None
    if kind == "tokens":
        windows = [(x, y, i) for i, (x, y) in enumerate(_val_windows(inp.path, checkpoint, max_len, limit))]
    else:
        texts = _texts(inp)[:limit] if limit else _texts(inp)
        windows = [(x, y, i) for i, ids in enumerate(tok.encode_batch(texts)) for x, y in document_windows(ids.tolist(), tok.bos_id, max_len)]
    n_items = 1 + max((w[2] for w in windows), default=-1)
    if n_items == 0:
        raise ValueError(f"{inp.path} holds no text to score")
    per_item = torch.zeros(n_items, 3, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            chunk = windows[start:start + batch_size]
            width = max(len(x) for x, _, _ in chunk)
            x = torch.zeros(len(chunk), width, dtype=torch.long)
            y = torch.full((len(chunk), width), -1, dtype=torch.long)  # right padding, not scored
            for row, (xs, ys, _) in enumerate(chunk):
                x[row, :len(xs)], y[row, :len(ys)] = torch.tensor(xs), torch.tensor(ys)
            sums = loss_rows(model, x.to(device), y.to(device), sizes).cpu()
            for row, (_, _, item) in enumerate(chunk):
                per_item[item] += sums[row]
    if wordpiece and kind != "tokens":
        per_item[:, 2] = torch.tensor([len(t.encode("utf-8", "surrogatepass")) for t in texts[:n_items]], dtype=torch.float64)
    rows = [{"doc_id": i, "nats": float(r[0]), "tokens": int(r[1]), "bytes": int(r[2])} for i, r in enumerate(per_item)]
    total = per_item.sum(0)
    return rows, {**summary(total), "n": n_items, "tokens": int(total[1]), "bytes": int(total[2])}


def _val_windows(tokens_dir: str, checkpoint: str, max_len: int, limit: int):
    """(x, y) of the val split cut as pretrain's validation cuts it: sample i is tokens [i*L, i*L + L + 1)."""
    from llmpipe.artifacts.manifest import read_manifest
    from llmpipe.text.tokenizer import model_sha256
    from llmpipe.train.data import TokenStream, split_shards

    made_with = read_manifest(Path(tokens_dir)).get("tokenizer_sha256")
    if made_with and made_with != model_sha256(checkpoint):
        raise ValueError(f"{tokens_dir} was made with another tokenizer than the checkpoint's (sha256 {made_with[:12]} vs "
                         f"{model_sha256(checkpoint)[:12]}); its perplexity would mean nothing")
    stream = TokenStream(split_shards(tokens_dir, "val"))
    n = max(0, (len(stream) - 1) // max_len)
    for i in range(min(n, limit) if limit else n):
        row = stream.read(i * max_len, i * max_len + max_len + 1).tolist()
        yield row[:-1], row[1:]


def _texts(inp) -> list[str]:
    """The `text` of every document of a documents artifact or .jsonl/.parquet files, in order."""
    from llmpipe.readers.text import iter_jsonl, iter_parquet
    from llmpipe.stats import TaskStats

    stats, out = TaskStats(), []
    for f in inp.files:
        if inp.kind == "artifact" and not f.endswith(".parquet"):
            continue  # an artifact's other files (plots) are not documents
        rows = iter_parquet(f, "text", stats) if f.endswith(".parquet") else iter_jsonl(f, "text", stats)
        out += [row["text"] for _, row in rows]
    return out


def write_samples(path: Path, task: str, rows: list[dict]) -> None:
    """samples/<task>.parquet, written to a temporary name and renamed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmpipe.artifacts.layout import atomic_path

    table = pa.Table.from_pylist([{"task": task, **r} for r in rows])
    with atomic_path(path) as tmp:
        pq.write_table(table, str(tmp), compression="zstd")
