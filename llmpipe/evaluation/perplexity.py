"""Next-token loss, perplexity and bits per byte: the one definition pretrain's validation and evaluate share.

Bits per byte divides the nats of every predicted token by the UTF-8 bytes that token stands for
(`token_bytes`: 0 for control tokens such as bos/eos, 1 for byte-fallback pieces, the piece's text
with "▁" read as a space otherwise), so it compares across tokenizers.

A WordPiece token does not say which bytes it stood for (whitespace is dropped, text may be
lowercased and its accents stripped), so its pieces are never measured: bytes are the original
text's UTF-8 bytes, exactly per document where the text is at hand (evaluate on documents), else
each non-special token counts the corpus's measured bytes per token (tokenize's manifest figure,
from the original bytes), which sums to the exact byte count over the whole corpus.
"""

from __future__ import annotations

import math


def token_bytes(tokenizer_path, vocab_size: int, bytes_per_token: float | None = None):
    """UTF-8 bytes each token id stands for (0 for control tokens), to turn nats per token into bits per byte.

    WordPiece: `bytes_per_token` (measured on the original text) for every non-special token, or None without it."""
    import torch

    from llmpipe.text.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_path)
    if not hasattr(tok, "sp"):  # WordPiece
        if not bytes_per_token:
            return None
        sizes = torch.full((vocab_size,), float(bytes_per_token), dtype=torch.float64)
        sizes[[i for i in tok.special.values() if i < vocab_size]] = 0
        return sizes
    sp = tok.sp
    sizes = torch.zeros(vocab_size, dtype=torch.float64)
    for i in range(min(vocab_size, sp.get_piece_size())):
        if sp.is_control(i) or sp.is_unknown(i):
            continue
        if sp.is_byte(i):
            sizes[i] = 1
        else:
            sizes[i] = len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
    return sizes


def loss_rows(model, x, y, sizes=None):
    """float64 [B, 3]: each row's summed nats, predicted tokens and bytes (x, y [B, T]; y == -1 is not scored).

    sizes: `token_bytes` on the batch's device, or None (bytes stay 0).
    """
    import torch
    import torch.nn.functional as F

    logits, _ = model(x)
    nats = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1, reduction="none").view(y.shape)
    scored = y != -1
    out = torch.zeros(y.size(0), 3, dtype=torch.float64, device=x.device)
    out[:, 0] = nats.double().sum(1)
    out[:, 1] = scored.sum(1)
    if sizes is not None:
        out[:, 2] = (sizes[y.clamp(min=0)] * scored).sum(1)
    return out


def summary(sums) -> dict:
    """loss (nats per token), perplexity and, when bytes were counted, bits per byte, from `loss_rows` totals."""
    nats, tokens, n_bytes = (float(v) for v in sums)
    out = {"loss": nats / tokens, "perplexity": math.exp(nats / tokens)}
    if n_bytes > 0:
        out["bits_per_byte"] = nats / n_bytes / math.log(2)
    return out


def document_windows(ids: list[int], bos: int, max_len: int) -> list[tuple[list[int], list[int]]]:
    """(x, y) windows that predict every token of one document once, the first given bos.

    Disjoint windows of at most max_len predictions, each fed the token before it (lm-eval's
    loglikelihood_rolling with context_len 1): a long document costs no more than its length.
    """
    stream = [bos] + list(ids)
    return [(stream[s:s + max_len], stream[s + 1:s + max_len + 1]) for s in range(0, len(ids), max_len)]
