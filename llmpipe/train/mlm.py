"""Masked language modelling (Devlin et al. 2019): BERT's masking, the masked-token loss and accuracy, the unigram baseline.

Of the tokens that are not special (bos, eos, pad, the mask itself), each is selected with probability 0.15; a
selected token becomes the mask token with probability 0.8, a random ordinary token with 0.1, and stays itself with
0.1 (so the model cannot learn that only [MASK] positions matter). The labels are the original tokens at the
selected positions and -1 (the model's ignore index) everywhere else, so `Model.forward(inputs, labels)` returns the
mean cross-entropy over the selected positions: pretrain's next-token loss function serves unchanged.

The masks are a pure function of (seed, key): the training batches use key (step, rank), the validation batches a
fixed seed, so a resumed run sees the same masked batches and every evaluation masks the same held-out tokens.
Draws happen on the CPU (torch's generators differ between devices) and the result moves to the batch's device.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

MASK_RATE = 0.15  # share of the tokens selected for prediction
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of those: replaced by the mask token, by a random token; the rest stay
VAL_SEED = 0  # the held-out masks: the same for every run and every evaluation


def mask_token_id(special: dict, where: str) -> int:
    """The mask token's id from a tokenize/tokenizer manifest's special tokens; ValueError in one line when there is none."""
    if "mask" not in special:
        raise ValueError(f"objective mlm: the tokenizer of {where} has no mask token; train the tokenizer with mask_token = true "
                         "(llmpipe train-tokenizer --mask-token) and tokenize again")
    return int(special["mask"])


@dataclass
class Masking:
    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]  # never selected and never drawn as the random replacement (the mask id among them)
    seed: int = 0
    rate: float = MASK_RATE
    ordinary: torch.Tensor = field(init=False, repr=False)  # the ids that may be selected or drawn as a replacement

    def __post_init__(self):
        keep = torch.ones(self.vocab_size, dtype=torch.bool)
        keep[[i for i in {*self.special_ids, self.mask_id} if 0 <= i < self.vocab_size]] = False
        self.ordinary = keep.nonzero().squeeze(1)

    def generator(self, key) -> torch.Generator:
        """A CPU generator seeded by (seed, *key) through numpy's SeedSequence (no collisions between nearby keys)."""
        state = np.random.SeedSequence([self.seed, *key]).generate_state(2, np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def apply(self, tokens: torch.Tensor, key) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) [B, T] for tokens [B, T]: BERT's 80/10/10 replacement at the selected positions, labels -1 elsewhere."""
        g = self.generator(key)
        x = tokens.cpu()
        selectable = ~torch.isin(x, torch.tensor([*self.special_ids, self.mask_id]))
        selected = (torch.rand(x.shape, generator=g) < self.rate) & selectable
        how = torch.rand(x.shape, generator=g)
        randoms = self.ordinary[torch.randint(len(self.ordinary), x.shape, generator=g)]
        inputs = torch.where(selected & (how < MASK_SHARE), self.mask_id, x)
        inputs = torch.where(selected & (how >= MASK_SHARE) & (how < MASK_SHARE + RANDOM_SHARE), randoms, inputs)
        labels = torch.where(selected, x, -1)
        return inputs.to(tokens.device), labels.to(tokens.device)


def masked_sums(model, inputs, labels) -> torch.Tensor:
    """float64 [3]: summed nats, correct argmax predictions and predicted tokens over the labelled positions."""
    logits, _ = model(inputs)
    scored = labels != -1
    picked = logits[scored].float()
    nats = F.cross_entropy(picked, labels[scored], reduction="sum")
    correct = (picked.argmax(-1) == labels[scored]).sum()
    return torch.stack([nats.double(), correct.double(), scored.sum().double()])


def evaluator(val, steps: int, masking: "Masking", dist):
    """pretrain's eval_fn for the masked LM: masked-token loss (val_loss) and accuracy (val_mlm_acc) on `steps` held-out
    batches of `val` (PackedBatches), masked with VAL_SEED, summed over DDP ranks."""
    held_out = replace(masking, seed=VAL_SEED)

    def eval_fn(m):
        sums = sum(masked_sums(m, *held_out.apply(val.batch(s, dist.device)[0], (s, dist.rank))) for s in range(steps))
        if dist.ddp:
            torch.distributed.all_reduce(sums)
        return {"val_loss": float(sums[0] / sums[2]), "val_mlm_acc": float(sums[1] / sums[2])}

    return eval_fn


def unigram_baseline(train_tokens: np.ndarray, val, steps: int, masking: "Masking", rank: int = 0) -> dict:
    """The accuracy at the held-out masked positions (as `evaluator` masks them) of a model that knows no context:
    always the most frequent ordinary training token (val_unigram_acc), and a guess drawn from the training
    unigram distribution (val_unigram_sample_acc, its expectation: sum over positions of p(label))."""
    counts = np.zeros(masking.vocab_size)
    ordinary = masking.ordinary.numpy()
    counts[ordinary] = np.bincount(train_tokens, minlength=masking.vocab_size)[ordinary]
    p = counts / counts.sum()
    top = int(p.argmax())
    held_out = replace(masking, seed=VAL_SEED)
    labels = torch.cat([held_out.apply(val.batch(s)[0], (s, rank))[1].flatten() for s in range(steps)])
    labels = labels[labels != -1].numpy()
    return {"val_unigram_acc": float((labels == top).mean()), "val_unigram_sample_acc": float(p[labels].mean())}
