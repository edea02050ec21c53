"""How the next token is chosen: greedy, sampling (temperature, top-k, top-p, min-p, repetition penalty)
and beam search, for one prompt or a batch of prompts of different lengths, with a KV cache.

The semantics are transformers' `generate()` (5.x), so a user moving between the two gets the same tokens
(tests/test_decoding.py holds greedy and beam search equal to it token for token):
- the repetition penalty (CTRL's) divides a positive score and multiplies a negative one, for every token
  already in the row (prompt or generated), before anything else; greedy is the argmax after it;
- sampling then divides by the temperature and keeps top-k (ties with the k-th kept), top-p (the smallest
  set of most likely tokens whose probability reaches p) and min-p (probability at least min_p times the
  most likely one's), in that order, and draws from what is left;
- beam search keeps 2 x num_beams candidates a step, a finished hypothesis scores its summed log-probs
  divided by (generated length) ** length_penalty, and a prompt is done when its best running beam can no
  longer beat its worst kept hypothesis (transformers' early_stopping=False).
A batch is left-padded: padded rows see only their own tokens and count positions from their first one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, Iterator, Sequence

import torch
import torch.nn.functional as F

NEG = -1.0e9  # transformers' "not this one" score in beam search (kept: it decides ties the same way)


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy (or beam search); above 0: sampling
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0  # beam search: > 0 favours longer hypotheses, < 0 shorter ones
    seed: int = 0

    @property
    def sampling(self) -> bool:
        return self.temperature > 0

    def problem(self) -> str | None:
        """What is wrong with this combination (a message naming the flags), or None."""
        if self.num_beams > 1 and self.sampling:
            return "--num-beams: beam search here is deterministic; give --temperature 0 (the default) with it"
        if not self.sampling and (self.top_k or self.top_p < 1 or self.min_p):
            return "--top-k/--top-p/--min-p: they shape sampling, which --temperature 0 turns off; give a temperature above 0"
        return None

    def generator(self) -> torch.Generator | None:
        """The generator sampling draws from (None when nothing is drawn)."""
        return torch.Generator().manual_seed(self.seed) if self.sampling else None


# --- logits processors: [B, V] float scores in, the same shape out (-inf for a token removed) ------------------


def penalize_repetition(scores: torch.Tensor, seen: torch.Tensor | None, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty on the tokens `seen` [B, V] (bool) already has: score / penalty when positive,
    score * penalty when negative (both lower the token for penalty > 1)."""
    if penalty == 1.0 or seen is None:
        return scores
    return torch.where(seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)


def keep_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k highest scores, and any tied with the k-th; the rest -inf."""
    if k <= 0 or k >= scores.size(-1):
        return scores
    kth = scores.topk(k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def keep_top_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: the smallest set of most likely tokens whose probability sums to at least p (always one)."""
    if p >= 1.0:
        return scores
    probs, order = scores.softmax(dim=-1).sort(dim=-1, descending=True)
    drop_sorted = probs.cumsum(dim=-1) - probs >= p  # the mass before a token already reaches p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return scores.masked_fill(drop, float("-inf"))


def keep_min_p(scores: torch.Tensor, min_p: float) -> torch.Tensor:
    """Tokens whose probability is at least min_p times the most likely token's (which is always kept)."""
    if min_p <= 0:
        return scores
    probs = scores.softmax(dim=-1)
    return scores.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), float("-inf"))


def next_tokens(logits: torch.Tensor, seen: torch.Tensor | None, d: Decoding, generator=None) -> torch.Tensor:
    """logits [B, V] -> the next id of each row [B]."""
    scores = penalize_repetition(logits.float(), seen, d.repetition_penalty)
    if not d.sampling:
        return scores.argmax(dim=-1)
    scores = keep_min_p(keep_top_p(keep_top_k(scores / d.temperature, d.top_k), d.top_p), d.min_p)
    return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator)[:, 0]


# --- batches ----------------------------------------------------------------------------------------------


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompts as one [B, L] tensor, shorter ones padded on the left, and the pads per row [B] (None: no pads)."""
    longest = max(len(p) for p in prompts)
    idx = torch.tensor([[pad_id] * (longest - len(p)) + list(p) for p in prompts], device=device)
    pads = torch.tensor([longest - len(p) for p in prompts], device=device)
    return idx, (pads if bool(pads.any()) else None)


def seen_tokens(prompts: Sequence[Sequence[int]], vocab_size: int, device, d: Decoding) -> torch.Tensor | None:
    """[B, V] bool: the tokens each prompt holds (pads not counted), for the repetition penalty; None without it."""
    if d.repetition_penalty == 1.0:
        return None
    seen = torch.zeros(len(prompts), vocab_size, dtype=torch.bool, device=device)
    for row, p in enumerate(prompts):
        seen[row, list(p)] = True
    return seen


def room(model, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> int:
    """New tokens the longest prompt leaves in the model's context, at most max_new_tokens."""
    return max(0, min(max_new_tokens, model.config.max_seq_len - max(len(p) for p in prompts)))


def token_steps(model, prompts: Sequence[Sequence[int]], d: Decoding, stop_ids: Collection[int] = (), generator=None,
                use_cache: bool = True) -> Iterator[torch.Tensor]:
    """The next id of every row [B] at each step (greedy or sampled, one forward per step with the KV cache);
    a row that made a stop id gets the pad id after it. Ends when every row has stopped, after max_new_tokens,
    or when the longest prompt fills the context. Stop strings are the caller's (it stops reading)."""
    device = model.model.embed_tokens.weight.device  # lm_head may be quantized (no .weight)
    pad = model.config.pad_token_id
    idx, left_pad = left_padded(prompts, pad, device)
    seen = seen_tokens(prompts, model.config.vocab_size, device, d)
    stops = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    cache = model.new_cache() if use_cache else None
    step_input = idx
    for _ in range(room(model, prompts, d.max_new_tokens)):
        # inference mode (no autograd bookkeeping at all: ~1.2x a small model's step over no_grad); not around the
        # yield: the mode is global, and the caller runs between tokens
        with torch.inference_mode():
            logits = model.decode(step_input, cache, left_pad) if use_cache else model(step_input, left_pad=left_pad)[0][:, -1]
            token = next_tokens(logits, seen, d, generator)
            token = token.masked_fill(done, pad)
        yield token
        done |= torch.isin(token, stops)
        if bool(done.all()):
            return
        if seen is not None:
            seen.scatter_(1, token[:, None], True)
        if use_cache:
            step_input = token[:, None]
        else:
            idx = torch.cat([idx, token[:, None]], dim=1)
            step_input = idx


@torch.inference_mode()
def beam_search(model, prompts: Sequence[Sequence[int]], d: Decoding, stop_ids: Collection[int] = (),
                is_stop: Callable[[list[int]], bool] | None = None) -> list[list[int]]:
    """The best hypothesis of each prompt (its new ids, a final stop id included), by transformers' beam search
    with early_stopping=False. `is_stop(new_ids)` finishes a hypothesis as a stop id does (stop strings)."""
    device = model.model.embed_tokens.weight.device  # lm_head may be quantized (no .weight)
    B, N, V = len(prompts), d.num_beams, model.config.vocab_size
    idx, left_pad = left_padded(prompts, model.config.pad_token_id, device)
    idx = idx.repeat_interleave(N, dim=0)  # [B*N, L]: row b*N + n is beam n of prompt b
    left_pad = left_pad.repeat_interleave(N) if left_pad is not None else None
    seen = seen_tokens([p for p in prompts for _ in range(N)], V, device, d)
    stops = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    steps = room(model, prompts, d.max_new_tokens)
    cache = model.new_cache()

    running = torch.zeros(B, N, 0, dtype=torch.long, device=device)  # the new ids of each running beam
    running_scores = torch.full((B, N), NEG, device=device)
    running_scores[:, 0] = 0.0  # the first step expands beam 0 only: the beams start equal
    kept: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]  # finished hypotheses, best first, at most N
    searching = [True] * B  # false once a prompt's kept hypotheses can no longer be beaten
    step_input = idx
    for t in range(steps):
        logprobs = penalize_repetition(F.log_softmax(model.decode(step_input, cache, left_pad).float(), dim=-1), seen, d.repetition_penalty)
        total = (logprobs.view(B, N, V) + running_scores[..., None]).view(B, N * V)
        scores, flat = total.topk(2 * N, dim=-1)  # [B, 2N], best first: enough to keep N running past N finishing
        source, token = flat // V, flat % V
        candidates = torch.cat([running.gather(1, source[..., None].expand(-1, -1, t)), token[..., None]], dim=2)
        finished = torch.isin(token, stops) | (t + 1 == steps)
        if is_stop is not None:
            finished |= torch.tensor([[is_stop(c) for c in row] for row in candidates.tolist()], device=device)
        for b in range(B):  # only the N best candidates may join the kept hypotheses
            if not searching[b]:
                continue
            for j in range(N):
                if finished[b, j]:
                    kept[b].append((scores[b, j].item() / (t + 1) ** d.length_penalty, candidates[b, j].tolist()))
            kept[b] = sorted(kept[b], key=lambda h: -h[0])[:N]
        if bool(finished.all()):
            break
        open_scores = scores + finished * NEG  # a finished candidate does not run on
        open_scores, pick = open_scores.topk(N, dim=-1)
        running_scores, running = open_scores, candidates.gather(1, pick[..., None].expand(-1, -1, t + 1))
        rows = (source.gather(1, pick) + torch.arange(B, device=device)[:, None] * N).view(-1)  # [B*N] into the old beams
        for layer in cache:
            layer.reorder(rows)
        step_input = running[:, :, -1].reshape(B * N, 1)
        if seen is not None:
            seen = seen.index_select(0, rows).scatter_(1, step_input, True)
        for b in range(B):  # can the best running beam, at its present length, still beat the worst kept one?
            if searching[b] and len(kept[b]) == N:
                searching[b] = running_scores[b, 0].item() / (t + 1) ** d.length_penalty > kept[b][-1][0]
        if not any(searching):
            break
    return [k[0][1] if k else [] for k in kept]
