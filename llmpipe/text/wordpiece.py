"""WordPiece as BERT trains it, through Hugging Face `tokenizers` (imported only here, lazily).

The artifact is tokenizer.json (the model itself, which transformers' AutoTokenizer loads as it
is), special_tokens.json and tokenizer_config.json; there is no tokenizer.model. The setup is
BERT's: BertNormalizer (clean text, spaces around CJK characters, lowercase and strip accents
when `lowercase`), BertPreTokenizer (split on whitespace and punctuation; digits one by one
with split_digits), "##" before a word's continuing pieces, and its special tokens. They take
llmpipe's names and ids (see SPECIAL_TOKENS): [UNK] is unk, [CLS] is bos, [SEP] is eos, [PAD]
is pad, then the chat roles, then [MASK] (for a masked-LM objective).

WordPiece is lossy: lowercasing, accents and whitespace do not come back. decode(encode(text))
is `normalize(text)`: the normalized text's words, joined as the WordPiece decoder joins them,
except that a word holding a character outside the vocabulary comes back as "[UNK]". Bytes are
therefore always counted on the original text, never on pieces (see llmpipe/evaluation/perplexity.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

HF_FILE = "tokenizer.json"

# llmpipe's name -> WordPiece token; the order gives the ids, the same as sentencepiece's for the first eight
SPECIAL_TOKENS = {
    "unk": "[UNK]", "bos": "[CLS]", "eos": "[SEP]", "pad": "[PAD]",
    "system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>", "end": "<|end|>",
    "mask": "[MASK]",
}
CHAT_ROLES = ("system", "user", "assistant", "end")


def train(sentences: Callable[[], Iterable[str]], vocab_size: int, lowercase: bool, split_digits: bool):
    """A trained `tokenizers.Tokenizer` on the sentences `sentences()` yields (read twice); the chat roles are added
    tokens transformers matches in text (as for BPE).

    The same text always gives the same pieces, which WordPieceTrainer alone does not promise (tokenizers#1794): it
    numbers each "##c" piece when it first meets it in a hash map of words, whose order changes from run to run, and
    breaks ties between equally frequent pairs by those numbers. A first pass that stops before any merge finds the
    "##c" pieces; the second pass is given them, sorted, ahead of the alphabet, so their numbers are fixed.
    """
    from tokenizers import AddedToken, processors

    specials = list(SPECIAL_TOKENS.values())
    probe = _untrained(lowercase, split_digits)
    probe.train_from_iterator(sentences(), _trainer(len(specials), specials))
    continuing = sorted(p for p in probe.get_vocab(with_added_tokens=False) if p.startswith("##") and len(p) == 3)
    trained = _untrained(lowercase, split_digits)
    trained.train_from_iterator(sentences(), _trainer(vocab_size, specials + continuing))
    vocab = trained.get_vocab(with_added_tokens=False)
    if [vocab.get(t) for t in specials] != list(range(len(specials))):
        raise RuntimeError("WordPieceTrainer placed the special tokens at other ids than llmpipe.text.wordpiece defines")
    # number the pieces in a fixed order (WordPiece segments by the set of pieces alone): special tokens, then by length
    # and text; a fresh tokenizer, so the "##c" pieces are ordinary pieces, not the added tokens the trainer made them
    rest = sorted((p for p, i in vocab.items() if i >= len(specials)), key=lambda p: (len(p.removeprefix("##")), p.startswith("##"), p))
    tok = _untrained(lowercase, split_digits, {p: i for i, p in enumerate(specials + rest)})
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    roles = [SPECIAL_TOKENS[r] for r in CHAT_ROLES]
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in roles])  # matched in text: HF chat templates render them
    cls, sep = SPECIAL_TOKENS["bos"], SPECIAL_TOKENS["eos"]
    tok.post_processor = processors.TemplateProcessing(  # BERT's: [CLS] A [SEP] (B [SEP])
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    return tok


def _untrained(lowercase: bool, split_digits: bool, vocab: dict[str, int] | None = None):
    """BERT's WordPiece tokenizer around `vocab` (none yet, for training)."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, normalizers, pre_tokenizers

    tok = HFTokenizer(models.WordPiece(vocab, unk_token=SPECIAL_TOKENS["unk"], continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
    bert = pre_tokenizers.BertPreTokenizer()
    tok.pre_tokenizer = pre_tokenizers.Sequence([bert, pre_tokenizers.Digits(individual_digits=True)]) if split_digits else bert
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _trainer(vocab_size: int, special_tokens: list[str]):
    from tokenizers import trainers

    return trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special_tokens, continuing_subword_prefix="##", show_progress=False)


def write_files(out_dir: Path, tok) -> None:
    """tokenizer.json, special_tokens.json and tokenizer_config.json, each written atomically."""
    from llmpipe.artifacts.layout import atomic_path, write_json_atomic

    out_dir = Path(out_dir)
    with atomic_path(out_dir / HF_FILE) as tmp:
        tok.save(str(tmp))
    write_json_atomic(out_dir / "special_tokens.json", {name: {"id": tok.token_to_id(t), "token": t} for name, t in SPECIAL_TOKENS.items()})
    write_json_atomic(out_dir / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",  # loads tokenizer.json as it is
        **{f"{name}_token": SPECIAL_TOKENS[name] for name in ("unk", "bos", "eos", "pad", "mask")},
        "cls_token": SPECIAL_TOKENS["bos"], "sep_token": SPECIAL_TOKENS["eos"],
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": True,  # "[CLS]" in a text stays text, as llmpipe encodes it
        "model_max_length": 1 << 30,
    })


def is_wordpiece(path: Path) -> bool:
    """Whether `path` (a tokenizer.json) holds a WordPiece model."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")).get("model", {}).get("type") == "WordPiece"
    except (OSError, ValueError, AttributeError):
        return False


class WordPieceTokenizer:
    """llmpipe's tokenizer interface (as llmpipe.text.tokenizer.Tokenizer) over a WordPiece tokenizer.json."""

    model_type = "wordpiece"

    def __init__(self, hf_file: str | Path, special: dict[str, int]):
        from tokenizers import AddedToken, Tokenizer as HFTokenizer

        self.path = Path(hf_file)
        try:
            self.hf = HFTokenizer.from_file(str(hf_file))
        except Exception:  # noqa: BLE001 -- tokenizers raises a bare Exception with serde's message
            from llmpipe.errors import InputError

            raise InputError(f"{hf_file}: not a Hugging Face tokenizer.json; re-run train-tokenizer") from None
        # found by fuzzing, each a traceback later: a vocabulary with a hole where special_tokens.json points, and one
        # without the model's unk token (encoding a word it cannot spell raised "Missing [UNK] token")
        unknown = [f"{name}={i}" for name, i in special.items() if self.hf.id_to_token(i) is None]
        unk = getattr(self.hf.model, "unk_token", None)
        if unknown or self.hf.model.token_to_id(str(unk)) is None:  # the model's own vocabulary, not the added tokens
            from llmpipe.errors import InputError

            what = f"{', '.join(unknown[:3])[:120]} of special_tokens.json" if unknown else f"its unknown-word token {str(unk)[:40]!r}"
            raise InputError(f"{hf_file}: holds no token for {what}; re-run train-tokenizer")
        # as with sentencepiece's control symbols, text never gives a special or chat role token
        self.hf.add_special_tokens([AddedToken(self.hf.id_to_token(i), special=True, normalized=False) for i in special.values()])
        self.hf.encode_special_tokens = True
        self.vocab_size = self.hf.get_vocab_size()
        self.special = special
        self.bos_id, self.eos_id, self.pad_id = (special.get(k, -1) for k in ("bos", "eos", "pad"))
        self._hidden = {i for name, i in special.items() if name != "unk"}  # decoded as nothing; [UNK] stays visible

    def encode_batch(self, texts: Sequence[str], threads: int = 1) -> list[np.ndarray]:
        return [np.array(e.ids, dtype=np.int32) for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        """Words joined by spaces, "##" pieces glued to the word before; control tokens decode to nothing."""
        return self.hf.decode([int(i) for i in ids if int(i) not in self._hidden], skip_special_tokens=False)

    def normalize(self, text: str) -> str:
        """What decode(encode(text)) gives when every word is in the vocabulary: BertNormalizer's text, pre-tokenized
        into words, joined as the WordPiece decoder joins pieces."""
        words = [w for w, _ in self.hf.pre_tokenizer.pre_tokenize_str(self.hf.normalizer.normalize_str(text))]
        return self.hf.decoder.decode(words)

    def piece(self, i: int) -> str:
        return self.hf.id_to_token(int(i))

    def is_control(self, i: int) -> bool:
        return int(i) in self._hidden
