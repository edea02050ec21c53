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
from typing import Iterable, Sequence

import numpy as np

HF_FILE = "tokenizer.json"

# llmpipe's name -> WordPiece token; the order gives the ids, the same as sentencepiece's for the first eight
SPECIAL_TOKENS = {
    "unk": "[UNK]", "bos": "[CLS]", "eos": "[SEP]", "pad": "[PAD]",
    "system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>", "end": "<|end|>",
    "mask": "[MASK]",
}
CHAT_ROLES = ("system", "user", "assistant", "end")


def train(sentences: Iterable[str], vocab_size: int, lowercase: bool, split_digits: bool):
    """A trained `tokenizers.Tokenizer`; the chat roles are added tokens transformers matches in text (as for BPE)."""
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = HFTokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS["unk"], continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
    bert = pre_tokenizers.BertPreTokenizer()
    tok.pre_tokenizer = pre_tokenizers.Sequence([bert, pre_tokenizers.Digits(individual_digits=True)]) if split_digits else bert
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()), continuing_subword_prefix="##",
                                        show_progress=False)
    tok.train_from_iterator(sentences, trainer)
    # the trainer numbers pieces in the order of a Rust HashMap, which differs from run to run (the set of pieces does
    # not); WordPiece segments by the set alone, so number them in a fixed order: special tokens, then by length and text
    vocab = tok.get_vocab(with_added_tokens=False)
    n_special = len(SPECIAL_TOKENS)
    if [vocab.get(t) for t in SPECIAL_TOKENS.values()] != list(range(n_special)):
        raise RuntimeError("WordPieceTrainer placed the special tokens at other ids than llmpipe.text.wordpiece defines")
    rest = sorted((p for p, i in vocab.items() if i >= n_special), key=lambda p: (len(p.removeprefix("##")), p.startswith("##"), p))
    ordered = [*SPECIAL_TOKENS.values(), *rest]  # the trainer gave the special tokens these ids already
    tok.model = models.WordPiece({p: i for i, p in enumerate(ordered)},
                                 unk_token=SPECIAL_TOKENS["unk"], continuing_subword_prefix="##")
    roles = [SPECIAL_TOKENS[r] for r in CHAT_ROLES]
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in roles])  # matched in text: HF chat templates render them
    cls, sep = SPECIAL_TOKENS["bos"], SPECIAL_TOKENS["eos"]
    tok.post_processor = processors.TemplateProcessing(  # BERT's: [CLS] A [SEP] (B [SEP])
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    return tok


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
