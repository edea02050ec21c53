"""Text generation from a checkpoint artifact (the model plus the tokenizer files stored beside it).

    llmpipe generate runs/pretrain/model --prompt "The" --max-new-tokens 64 --temperature 0.8 --top-p 0.9
    llmpipe generate runs/pretrain/model --prompts prompts.txt --num-beams 4 --output completions.jsonl

The strategies are llmpipe/decoding.py's (transformers' semantics); this module is their text side:
prompts to ids, batches, stop strings, finish reasons. The model sees at most its context (max_seq_len)
tokens, bos and prompt included: a continuation that would run past it stops there, and the caller says
so (as transformers stops at max_length); in a batch the longest prompt sets that room.

new_tokens() yields each id as the model makes it and stops at any of several ids (eos, and <|end|>
for chat); decode_stream() turns those ids into text pieces as they come, for `llmpipe chat`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterable, Iterator, Sequence

from llmpipe.errors import InputError

HINT = "give the output of pretrain (the directory holding model.safetensors)"


@dataclass(frozen=True)
class Generation:
    prompt: str
    completion: str  # the continuation, cut before a stop string
    new_tokens: int  # tokens made (a stop id included)
    finish_reason: str  # "stop" (a stop id or string), "length" (max_new_tokens) or "context" (the model's context is full)
    context: int  # the model's max_seq_len

    @property
    def text(self) -> str:
        return self.prompt + self.completion

    @property
    def stopped_at_context(self) -> bool:
        return self.finish_reason == "context"


def check_checkpoint(checkpoint: str | Path, command: str = "generate", hint: str = HINT) -> None:
    """One line, naming `command`, unless `checkpoint` is a complete checkpoint artifact."""
    from llmpipe.artifacts.manifest import read_manifest

    path = Path(checkpoint)
    if not path.exists():
        raise InputError(f"{command}: checkpoint {path} does not exist; {hint}")
    if not path.is_dir():
        raise InputError(f"{command}: {path} is a file, not a checkpoint; {hint}")
    manifest = read_manifest(path)  # refuses an incomplete checkpoint with the usual message
    if not (path / "model.safetensors").is_file():
        raise InputError(f"{command}: {path} is a {manifest.get('output_kind', 'llmpipe')} artifact, not a checkpoint; {hint}")
    config = path / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("num_labels"):  # a sequence scorer: no lm_head to generate with
        raise InputError(f"{command}: {path} is a reward model (it scores text, it does not write any); {hint}")
    from llmpipe.encoder import encoder_refusal, is_encoder

    if config.is_file() and is_encoder(json.loads(config.read_text())):
        raise InputError(f"{command}: {encoder_refusal(path, 'write text')}")


def load_for_generation(checkpoint: str | Path, tokenizer: str | Path | None = None, complete: bool = True):
    """(model in eval mode, tokenizer) from a pretrain artifact; the tokenizer defaults to the one it carries.

    complete=False skips the artifact checks, for the stage's own finalize (the manifest comes after)."""
    if complete:
        check_checkpoint(checkpoint)  # before importing torch: a mistake is told at once
    from llmpipe.model import Model
    from llmpipe.text.tokenizer import load_tokenizer

    return Model.from_checkpoint(checkpoint).eval(), load_tokenizer(tokenizer or checkpoint)


def new_tokens(model, ids: Sequence[int], d, generator=None, stop_ids: Collection[int] = ()) -> Iterator[int]:
    """The ids the model adds after `ids` (a Decoding `d`: greedy or sampling, KV cache), one at a time as each is
    made. Ends after a stop id (which is yielded, so the caller sees why it ended), after max_new_tokens, or when
    the context is full."""
    from llmpipe.decoding import token_steps

    for step in token_steps(model, [ids], d, stop_ids, generator):
        yield int(step[0])


def decode_stream(tok, ids: Iterable[int]) -> Iterator[str]:
    """Text pieces of `ids` as they arrive; joined they are exactly tok.decode(all ids).

    A piece is the text a new token adds: decode a window of recent tokens with and without it and
    keep the difference (text-generation-inference's offsets). The window opens on a token already
    shown, so sentencepiece's dropping of a leading "▁" happens on both sides and a word's space
    comes out where it belongs; never on a control token, after which sentencepiece drops it too.
    Text ending in U+FFFD is a UTF-8 character whose byte tokens (byte fallback) have not all
    arrived: it waits for the next token, or for the end.
    """
    seen: list[int] = []
    start = shown = 0  # window start, and the end of what was shown
    for token in ids:
        seen.append(token)
        before = tok.decode(seen[start:shown])
        text = tok.decode(seen[start:])
        if text.endswith("\ufffd"):
            continue
        if len(text) > len(before):
            yield text[len(before):]
        # a window that opens on a control token (decoded as nothing) would drop the next word's space
        if not tok.is_control(seen[shown]):
            start = shown
        shown = len(seen)
    rest = tok.decode(seen[start:])[len(tok.decode(seen[start:shown])):]
    if rest:  # incomplete bytes at the very end: shown as U+FFFD, as the full decode shows them
        yield rest


def prompt_ids(tok, prompt: str, context: int, where: str = "--prompt") -> list[int]:
    """bos and the prompt's ids; one line when they leave the model no room for a new token."""
    ids = [tok.special["bos"], *tok.encode(prompt)]
    if len(ids) >= context:
        raise InputError(f"generate {where}: {len(ids) - 1} tokens (plus bos) leave no room in the model's context of {context} tokens; "
                         f"shorten it to at most {context - 2} tokens")
    return ids


def complete(model, tok, prompts: Sequence[str], d=None, stop: Sequence[str] = (), stop_ids: Collection[int] | None = None,
             batch_size: int = 8) -> list[Generation]:
    """Each prompt's continuation by Decoding `d` (default greedy), `batch_size` prompts at a time (left-padded).

    A row ends at a stop id (default eos), at a stop string (the completion is cut before it, as vLLM and
    llama.cpp's server cut it), after max_new_tokens, or when the context is full. Sampling draws from one
    generator seeded by `d` for all the prompts, in order."""
    from llmpipe.decoding import Decoding, beam_search, room, token_steps

    d = d or Decoding()
    context = model.config.max_seq_len
    if stop_ids is None:
        stop_ids = {tok.special["eos"]} if "eos" in tok.special else set()
    ids = [prompt_ids(tok, p, context) for p in prompts]
    generator = d.generator()
    stop = [s for s in stop if s]

    def first_stop(text: str) -> int | None:
        """Where the first stop string starts in `text`, or None."""
        found = [text.find(s) for s in stop if s in text]
        return min(found) if found else None

    out = []
    for first in range(0, len(ids), batch_size):
        batch = ids[first:first + batch_size]
        steps = room(model, batch, d.max_new_tokens)  # the longest prompt of the batch sets it (the rows share one cache)
        if d.num_beams > 1:
            made = beam_search(model, batch, d, stop_ids, (lambda new: first_stop(tok.decode(new)) is not None) if stop else None)
        else:
            made, ended = [[] for _ in batch], [False] * len(batch)
            for step in token_steps(model, batch, d, stop_ids, generator):
                for row, token in enumerate(step.tolist()):
                    if not ended[row]:
                        made[row].append(token)
                        ended[row] = token in stop_ids or (bool(stop) and first_stop(tok.decode(made[row])) is not None)
                if all(ended):
                    break
        for prompt, p_ids, new in zip(prompts[first:first + batch_size], batch, made):
            words = [t for t in new if t not in stop_ids]
            # decoded with the prompt, so the first word keeps the space sentencepiece gives it after the prompt
            shown, full = tok.decode(p_ids[1:]), tok.decode(p_ids[1:] + words)
            completion = full[len(shown):] if full.startswith(shown) else tok.decode(words)
            at = first_stop(completion) if stop else None
            if at is not None:
                completion, reason = completion[:at], "stop"
            elif new and new[-1] in stop_ids:
                reason = "stop"
            elif len(new) == steps < d.max_new_tokens:
                reason = "context"
            else:
                reason = "length"
            out.append(Generation(prompt, completion, len(new), reason, context))
    return out


def generate(model, tok, prompt: str, d=None, stop: Sequence[str] = (), stop_ids: Collection[int] | None = None) -> Generation:
    """`prompt` and its continuation by Decoding `d` (default greedy); see complete()."""
    return complete(model, tok, [prompt], d, stop, stop_ids)[0]


def read_prompts(path: Path) -> list[tuple[str, str]]:
    """(where, prompt) of each prompt in `path`: JSONL (.jsonl/.json: objects with a "prompt" string) or text, one
    prompt per non-empty line. `where` names the line in an error."""
    import json

    path = Path(path)
    if not path.is_file():
        raise InputError(f"generate --prompts: {path} {'is a directory' if path.is_dir() else 'does not exist'}; give a file of prompts, one per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"generate --prompts: {path} is not UTF-8 text (byte {e.start})") from None
    jsonl = path.suffix in (".jsonl", ".json")
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"--prompts {path} line {number}"
        if jsonl:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"generate {where}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise InputError(f'generate {where}: a JSONL prompt file holds objects with a "prompt" string')
            prompts.append((where, row["prompt"]))
        else:
            prompts.append((where, line))
    if not prompts:
        raise InputError(f"generate --prompts: {path} holds no prompts")
    return prompts


def write_completions(model, tok, prompts: list[tuple[str, str]], d, stop: Sequence[str], batch_size: int, output: Path | None) -> None:
    """One JSON line per prompt (prompt, completion, new_tokens, finish_reason) to `output` (whole or not at all)
    or stdout as each batch ends; a summary line with tokens/s on stderr."""
    import contextlib
    import json
    import sys
    import time

    from llmpipe.artifacts.layout import atomic_path
    from llmpipe.log import log, progress

    texts = [p for _, p in prompts]
    for i, text in enumerate(texts):  # every prompt checked before any work
        prompt_ids(tok, text, model.config.max_seq_len, prompts[i][0])
    made, t0 = 0, time.perf_counter()
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(output)) if output is not None else None
        sink = stack.enter_context(open(tmp, "w", encoding="utf-8")) if tmp is not None else sys.stdout
        advance = stack.enter_context(progress(len(texts), "generate"))
        for first in range(0, len(texts), batch_size):
            batch = complete(model, tok, texts[first:first + batch_size], d, stop, batch_size=batch_size)
            for g in batch:
                sink.write(json.dumps({"prompt": g.prompt, "completion": g.completion, "new_tokens": g.new_tokens,
                                       "finish_reason": g.finish_reason}, ensure_ascii=False) + "\n")
                made += g.new_tokens
            sink.flush()
            advance(len(batch))
        if tmp is not None:
            sink.close()
    seconds = time.perf_counter() - t0
    log(f"generate: {len(texts)} prompts, {made} new tokens in {seconds:.1f}s ({made / max(seconds, 1e-9):.1f} tokens/s)"
        + (f" -> {output}" if output is not None else ""))
