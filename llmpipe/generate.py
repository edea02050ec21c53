"""Text generation from a checkpoint artifact (the model plus the tokenizer files stored beside it).

    llmpipe generate runs/pretrain/model --prompt "The" --max-new-tokens 64 --top-p 0.9

The model sees at most its context (max_seq_len) tokens, bos and prompt included: a continuation
that would run past it stops there, and the caller says so (as transformers stops at max_length).

new_tokens() yields each id as the model makes it and stops at any of several ids (eos, and <|end|>
for chat); decode_stream() turns those ids into text pieces as they come, for `llmpipe chat`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterable, Iterator, Sequence

from llmpipe.errors import InputError

HINT = "give the output of pretrain (the directory holding model.safetensors)"


@dataclass(frozen=True)
class Generation:
    text: str  # the prompt and its continuation
    new_tokens: int
    context: int  # the model's max_seq_len
    stopped_at_context: bool  # fewer tokens than asked for, because the context was full


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


def load_for_generation(checkpoint: str | Path, tokenizer: str | Path | None = None, complete: bool = True):
    """(model in eval mode, tokenizer) from a pretrain artifact; the tokenizer defaults to the one it carries.

    complete=False skips the artifact checks, for the stage's own finalize (the manifest comes after)."""
    if complete:
        check_checkpoint(checkpoint)  # before importing torch: a mistake is told at once
    from llmpipe.model import Model
    from llmpipe.text.tokenizer import load_tokenizer

    return Model.from_checkpoint(checkpoint).eval(), load_tokenizer(tokenizer or checkpoint)


def seeded(seed: int, temperature: float):
    """The torch.Generator sampling draws from (None when greedy: nothing is drawn)."""
    import torch

    return torch.Generator().manual_seed(seed) if temperature > 0 else None


def new_tokens(model, ids: Sequence[int], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
               generator=None, stop_ids: Collection[int] = ()) -> Iterator[int]:
    """The ids the model adds after `ids`, one at a time as each is made (KV cache; greedy at temperature 0,
    else nucleus sampling drawn from `generator`).

    Ends after a stop id (which is yielded, so the caller sees why it ended), after max_new_tokens, or
    when the context is full. The same steps as Model.generate, so the same seed draws the same tokens.
    """
    import torch

    from llmpipe.model import sample

    room = model.config.max_seq_len - len(ids)
    cache = [[] for _ in model.model.layers]
    step = torch.tensor([list(ids)], device=model.lm_head.weight.device)
    for _ in range(min(max_new_tokens, room)):
        with torch.no_grad():  # not around the yield: grad mode is global, and the caller runs between tokens
            logits, _ = model(step, cache=cache)
            step = sample(logits[:, -1, :], temperature, top_p, generator)  # [1, 1]
        token = int(step)
        yield token
        if token in stop_ids:
            return


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
        if not tok.sp.is_control(seen[shown]):
            start = shown
        shown = len(seen)
    rest = tok.decode(seen[start:])[len(tok.decode(seen[start:shown])):]
    if rest:  # incomplete bytes at the very end: shown as U+FFFD, as the full decode shows them
        yield rest


def generate(model, tok, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             stop_ids: Collection[int] | None = None) -> Generation:
    """`prompt` and its continuation (KV cache): greedy when temperature is 0, else nucleus sampling; stops at
    the first of stop_ids (default: eos) or at the context."""
    ids = [tok.special["bos"], *tok.encode(prompt)]
    context = model.config.max_seq_len
    if len(ids) >= context:
        raise InputError(f"generate --prompt: {len(ids) - 1} tokens (plus bos) leave no room in the model's context of {context} tokens; "
                         f"shorten it to at most {context - 2} tokens")
    room = context - len(ids)
    if stop_ids is None:
        stop_ids = {tok.special["eos"]} if "eos" in tok.special else set()
    out = list(new_tokens(model, ids, max_new_tokens, temperature, top_p, seeded(seed, temperature), stop_ids))
    new = len(out)
    return Generation(tok.decode(ids[1:] + out), new, context, stopped_at_context=room < max_new_tokens and new == room)


def generate_text(model, tok, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> str:
    """The text of `generate`: the prompt and at most max_new_tokens more."""
    return generate(model, tok, prompt, max_new_tokens, temperature, top_p, seed).text
