"""Log-likelihood of a continuation given a context, with lm-evaluation-harness's token boundaries and truncation.

As lm-eval's `hf` backend (lm_eval/api/model.py `_encode_pair`, models/huggingface.py
`_loglikelihood_tokens`, read at v0.4.13):
- whitespace at the end of the context moves to the start of the continuation;
- context + continuation are encoded whole (bos first, as the checkpoint's tokenizer.json adds it)
  and split at the length of the encoded context, so the tokens are those of the whole text;
- an empty context is bos alone (the continuation then encoded without bos);
- a pair longer than the model's context loses tokens from the left: the model sees the last
  max_len + 1 tokens minus the final one, and every continuation token is scored;
- the score is the sum of the continuation tokens' log-softmax (fp32), plus whether each of
  them is the argmax (lm-eval's `is_greedy`).
"""

from __future__ import annotations

from typing import Sequence


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids with bos, continuation ids) split as lm-eval splits them."""
    if not context:
        cont = tok.encode(continuation)
        return ([tok.bos_id], cont) if not cont or cont[0] != tok.bos_id else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = [tok.bos_id] + tok.encode(context + continuation)
    context_ids = [tok.bos_id] + tok.encode(context)
    return context_ids, whole[len(context_ids):]


def model_input(context_ids: Sequence[int], continuation_ids: Sequence[int], max_len: int) -> list[int]:
    """The tokens the model reads: the last max_len + 1 of the pair without the final one."""
    return (list(context_ids) + list(continuation_ids))[-(max_len + 1):][:-1]


def score(model, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 16, device: str = "cpu") -> list[tuple[float, bool]]:
    """(summed log-prob, is greedy) of each continuation; pairs run longest first in right-padded batches."""
    import torch

    max_len = model.config.max_seq_len
    for ctx, cont in pairs:
        if not cont:
            raise ValueError("a continuation encodes to no token")
        if len(cont) > max_len:
            raise ValueError(f"a continuation of {len(cont)} tokens is longer than the model's context ({max_len})")
    inputs = [model_input(ctx, cont, max_len) for ctx, cont in pairs]
    order = sorted(range(len(pairs)), key=lambda i: -len(inputs[i]))  # as lm-eval: fewer pad tokens per batch
    out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(inputs[i]) for i in chunk)
            x = torch.zeros(len(chunk), width, dtype=torch.long)  # right padding: causal attention never reads it
            for row, i in enumerate(chunk):
                x[row, :len(inputs[i])] = torch.tensor(inputs[i])
            logprobs = torch.log_softmax(model(x.to(device))[0].float(), dim=-1)  # [B, T, V]
            for row, i in enumerate(chunk):
                cont = torch.tensor(pairs[i][1], device=logprobs.device)
                end = len(inputs[i])
                picked = logprobs[row, end - len(cont):end]  # [len(cont), V]: the positions that predict the continuation
                out[i] = (float(picked.gather(1, cont[:, None]).sum()), bool((picked.argmax(-1) == cont).all()))
    return out
