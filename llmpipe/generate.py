"""Text generation from a checkpoint artifact (the model plus the tokenizer files stored beside it).

    llmpipe generate runs/pretrain/model --prompt "The" --max-new-tokens 64 --top-p 0.9
"""

from __future__ import annotations

from pathlib import Path


def load_for_generation(checkpoint: str | Path, tokenizer: str | Path | None = None, complete: bool = True):
    """(model in eval mode, tokenizer) from a pretrain artifact; the tokenizer defaults to the one it carries.

    complete=False skips the manifest check, for the stage's own finalize (the manifest comes after)."""
    from llmpipe.artifacts.checkpoint import load_checkpoint
    from llmpipe.artifacts.manifest import read_manifest
    from llmpipe.model import Model, ModelConfig
    from llmpipe.text.tokenizer import load_tokenizer

    if complete:
        read_manifest(Path(checkpoint))  # refuse an incomplete checkpoint with the usual message
    tensors, config, _, _ = load_checkpoint(checkpoint)
    model = Model(ModelConfig.from_hf(config))
    model.load_state_dict(tensors, strict=False)  # lm_head may be tied to the embedding
    return model.eval(), load_tokenizer(tokenizer or checkpoint)


def generate_text(model, tok, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> str:
    """`prompt` and its continuation (KV cache): greedy when temperature is 0, else nucleus sampling."""
    import torch

    idx = torch.tensor([[tok.special["bos"], *tok.encode(prompt)]])
    generator = torch.Generator().manual_seed(seed) if temperature > 0 else None
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_p=top_p, eos_token_id=tok.special.get("eos"), generator=generator)
    return tok.decode(out[0, 1:].tolist())
