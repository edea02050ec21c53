"""Text generation from a checkpoint artifact (the model plus the tokenizer files stored beside it).

    llmpipe generate runs/pretrain/model --prompt "The" --max-new-tokens 64 --top-p 0.9

The model sees at most its context (max_seq_len) tokens, bos and prompt included: a continuation
that would run past it stops there, and the caller says so (as transformers stops at max_length).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmpipe.errors import InputError

HINT = "give the output of pretrain (the directory holding model.safetensors)"


@dataclass(frozen=True)
class Generation:
    text: str  # the prompt and its continuation
    new_tokens: int
    context: int  # the model's max_seq_len
    stopped_at_context: bool  # fewer tokens than asked for, because the context was full


def check_checkpoint(checkpoint: str | Path) -> None:
    """One line unless `checkpoint` is a complete checkpoint artifact."""
    from llmpipe.artifacts.manifest import read_manifest

    path = Path(checkpoint)
    if not path.exists():
        raise InputError(f"generate: checkpoint {path} does not exist; {HINT}")
    if not path.is_dir():
        raise InputError(f"generate: {path} is a file, not a checkpoint; {HINT}")
    manifest = read_manifest(path)  # refuses an incomplete checkpoint with the usual message
    if not (path / "model.safetensors").is_file():
        raise InputError(f"generate: {path} is a {manifest.get('output_kind', 'llmpipe')} artifact, not a checkpoint; {HINT}")


def load_for_generation(checkpoint: str | Path, tokenizer: str | Path | None = None, complete: bool = True):
    """(model in eval mode, tokenizer) from a pretrain artifact; the tokenizer defaults to the one it carries.

    complete=False skips the artifact checks, for the stage's own finalize (the manifest comes after)."""
    if complete:
        check_checkpoint(checkpoint)  # before importing torch: a mistake is told at once
    from llmpipe.artifacts.checkpoint import load_checkpoint
    from llmpipe.model import Model, ModelConfig
    from llmpipe.text.tokenizer import load_tokenizer

    tensors, config, _, _ = load_checkpoint(checkpoint)
    model = Model(ModelConfig.from_hf(config))
    model.load_state_dict(tensors, strict=False)  # lm_head may be tied to the embedding
    return model.eval(), load_tokenizer(tokenizer or checkpoint)


def generate(model, tok, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> Generation:
    """`prompt` and its continuation (KV cache): greedy when temperature is 0, else nucleus sampling; stops at the context."""
    import torch

    ids = [tok.special["bos"], *tok.encode(prompt)]
    context = model.config.max_seq_len
    if len(ids) >= context:
        raise InputError(f"generate --prompt: {len(ids) - 1} tokens (plus bos) leave no room in the model's context of {context} tokens; "
                         f"shorten it to at most {context - 2} tokens")
    room = context - len(ids)
    generator = torch.Generator().manual_seed(seed) if temperature > 0 else None
    out = model.generate(torch.tensor([ids]), min(max_new_tokens, room), temperature=temperature, top_p=top_p,
                         eos_token_id=tok.special.get("eos"), generator=generator)
    new = out.size(1) - len(ids)
    return Generation(tok.decode(out[0, 1:].tolist()), new, context, stopped_at_context=room < max_new_tokens and new == room)


def generate_text(model, tok, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> str:
    """The text of `generate`: the prompt and at most max_new_tokens more."""
    return generate(model, tok, prompt, max_new_tokens, temperature, top_p, seed).text
