"""The tokenizer artifact: sentencepiece `tokenizer.model`, its special tokens, and the Hugging Face files.

    <artifact>/tokenizer.model        sentencepiece model (BPE or unigram); what llmpipe encodes with
                                      (a WordPiece artifact has none: its tokenizer.json is the model,
                                      see llmpipe/text/wordpiece.py; load_tokenizer returns either kind
                                      behind one interface)
    <artifact>/special_tokens.json    {"bos": {"id": 1, "token": "<s>"}, ...}: what SFT/DPO read
    <artifact>/tokenizer.json         the same tokenizer for Hugging Face `tokenizers` / `transformers`
    <artifact>/tokenizer_config.json  so `AutoTokenizer.from_pretrained(<artifact>)` loads it as it is

The special tokens are defined here, once. Their ids are fixed by construction (unk 0, bos 1,
eos 2, pad 3, then the chat roles) and are sentencepiece control symbols: encoding text never
produces them, so a web page that contains "<s>" or "<|user|>" stays plain text.

Why we write tokenizer.json ourselves instead of letting transformers convert tokenizer.model:
its LlamaTokenizer puts the dummy-prefix space in a Metaspace pre-tokenizer, which skips it when
the text already starts with a space, so " Hello" or "  code" get other ids than sentencepiece
(measured with transformers 5.23). A `Prepend("▁")` normalizer does exactly what sentencepiece
does. BPE is then identical on every text we tried. Unigram agrees except on text holding a
reserved token's string ("<unk>", "<s>", "<0x41>", which tokenizers' lattice matches) and where two
segmentations tie in float32 (sentencepiece sums scores in float32, tokenizers in float64).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

MODEL_FILE = "tokenizer.model"
SPECIAL_FILE = "special_tokens.json"
HF_FILES = ("tokenizer.json", "tokenizer_config.json")

# name -> token; the order gives the ids (unk, bos, eos, pad are sentencepiece's own slots 0-3)
SPECIAL_TOKENS = {
    "unk": "<unk>", "bos": "<s>", "eos": "</s>", "pad": "<pad>",
    "system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>", "end": "<|end|>",
}
CHAT_ROLES = ("system", "user", "assistant", "end")
MASK_TOKEN = "<mask>"  # train-tokenizer mask_token = true adds it after the chat roles (id 8): the masked LM's mask


def special_token_ids() -> dict[str, int]:
    return {name: i for i, name in enumerate(SPECIAL_TOKENS)}


class Tokenizer:
    """A loaded tokenizer: sentencepiece for encoding and decoding, plus the special token ids."""

    model_type = "sentencepiece"  # bpe or unigram, as its model says

    def __init__(self, model_file: str | Path, special: dict[str, int] | None = None):
        import sentencepiece as spm

        self.path = Path(model_file)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
            # every piece must be text: the chat template, GGUF and Hugging Face export read them, and sentencepiece
            # loads a piece of invalid UTF-8 without a word, then raises on reading it
            [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]
        except (RuntimeError, OSError, ValueError):  # sentencepiece's RuntimeError is several lines of its C++ status
            from llmpipe.errors import InputError

            raise InputError(f"{model_file}: not a sentencepiece model; give the output of train-tokenizer (or a sentencepiece .model file)") from None
        self.vocab_size = self.sp.get_piece_size()
        if special is None:  # a bare sentencepiece model: its own ids, -1 where it has none
            own = {"unk": self.sp.unk_id(), "bos": self.sp.bos_id(), "eos": self.sp.eos_id(), "pad": self.sp.pad_id()}
            special = {k: v for k, v in own.items() if v >= 0}
        self.special = special
        self.bos_id, self.eos_id, self.pad_id = (special.get(k, -1) for k in ("bos", "eos", "pad"))

    def encode_batch(self, texts: Sequence[str], threads: int = 1) -> list[np.ndarray]:
        """Token ids per text (int32 arrays, no bos/eos); sentencepiece's numpy path is the fastest one."""
        return self.sp.encode(list(texts), return_type="numpy", num_threads=threads)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids) -> str:
        """Text of the ids; control tokens (bos, eos, chat roles) decode to nothing."""
        return self.sp.decode([int(i) for i in ids])

    def piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def is_control(self, i: int) -> bool:
        """A control token (bos, eos, pad, chat roles): decoded as nothing."""
        return self.sp.is_control(int(i))

    def normalize(self, text: str) -> str:
        """The text decode(encode(text)) gives back: sentencepiece's normalization, with "▁" read as a space."""
        if not text:
            return text
        out = self.sp.normalize(text)
        out = out[1:] if out.startswith("\u2581") else out  # the dummy prefix added before encoding
        return out.replace("\u2581", " ")


def load_tokenizer(path: str | Path):
    """A train-tokenizer artifact directory (sentencepiece or WordPiece), or a bare sentencepiece .model file (ids then
    come from the model). Either kind has encode, encode_batch, decode, normalize, piece, is_control, vocab_size, special."""
    path = Path(path)
    if is_wordpiece_dir(path):
        from llmpipe.text.wordpiece import WordPieceTokenizer

        tok = WordPieceTokenizer(path / HF_FILES[0], read_special_tokens(path / SPECIAL_FILE, 1 << 31))
        read_special_tokens(path / SPECIAL_FILE, tok.vocab_size)  # now that the vocabulary is known: every id inside it
        return tok
    if path.is_dir():
        tok = Tokenizer(path / MODEL_FILE)
        if (path / SPECIAL_FILE).exists():
            tok = Tokenizer(path / MODEL_FILE, read_special_tokens(path / SPECIAL_FILE, tok.vocab_size))
        return tok
    return Tokenizer(path)


def read_special_tokens(path: Path, vocab_size: int) -> dict[str, int]:
    """{name: id} of a special_tokens.json ({"bos": {"id": 1, "token": "<s>"}, ...}); InputError when it is not one
    or names an id outside the vocabulary (the chat template would look it up)."""
    from llmpipe.errors import InputError

    try:
        special = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError:  # UnicodeDecodeError is one
        special = None
    ok = isinstance(special, dict) and all(isinstance(v, dict) and type(v.get("id")) is int for v in special.values())
    if not ok:
        raise InputError(f"{path}: not a special tokens file ({{\"bos\": {{\"id\": 1, \"token\": \"<s>\"}}, ...}}); re-run train-tokenizer")
    ids = {k: v["id"] for k, v in special.items()}
    outside = [f"{k}={i}" for k, i in ids.items() if not 0 <= i < vocab_size]
    if outside:
        raise InputError(f"{path}: {', '.join(outside[:3])[:120]} outside the vocabulary of {vocab_size}; re-run train-tokenizer")
    return ids


def is_wordpiece_dir(path: Path) -> bool:
    """A directory whose tokenizer is WordPiece: tokenizer.json holds the model and there is no tokenizer.model."""
    from llmpipe.text.wordpiece import is_wordpiece

    path = Path(path)
    return path.is_dir() and not (path / MODEL_FILE).exists() and (path / HF_FILES[0]).is_file() and is_wordpiece(path / HF_FILES[0])


def model_file(path: str | Path) -> Path:
    """The file that defines the tokenizer of an artifact (or checkpoint) directory: tokenizer.model, or tokenizer.json
    for WordPiece; or the file itself."""
    path = Path(path)
    if not path.is_dir():
        return path
    return path / HF_FILES[0] if is_wordpiece_dir(path) else path / MODEL_FILE


def has_tokenizer(path: str | Path) -> bool:
    """Whether a directory carries an llmpipe tokenizer (sentencepiece or WordPiece)."""
    return Path(path).is_dir() and model_file(path).is_file()


def model_sha256(path: str | Path) -> str:
    """The tokenizer's fingerprint: sha256 of its tokenizer.model (WordPiece: tokenizer.json) bytes, the same wherever it is copied."""
    import hashlib

    return hashlib.sha256(model_file(path).read_bytes()).hexdigest()


def check_tokenizer(path: str | Path) -> None:
    """ValueError("tokenizer: ...") unless `path` holds a sentencepiece model; checked before a stage writes.

    A path that does not exist yet, or an artifact still being made, is an earlier pipeline step's
    output: it is checked when that step has run (a missing path given by hand is refused earlier).
    """
    from llmpipe.artifacts.layout import MANIFEST, RUN

    path = Path(path)
    if not path.exists() or ((path / RUN).exists() and not (path / MANIFEST).exists()):
        return
    hint = "give the output of train-tokenizer (or a sentencepiece .model file)"
    if is_wordpiece_dir(path):
        from llmpipe.errors import InputError

        try:
            load_tokenizer(path)
        except InputError as e:
            raise ValueError(f"tokenizer: {e}") from None
        return
    if path.is_dir() and not (path / MODEL_FILE).is_file():
        kind = json.loads((path / MANIFEST).read_text()).get("output_kind") if (path / MANIFEST).is_file() else None
        what = f"a {kind} artifact, not a tokenizer" if kind else f"a directory without {MODEL_FILE}"
        raise ValueError(f"tokenizer: {path} is {what}; {hint}")
    from llmpipe.errors import InputError

    try:
        Tokenizer(model_file(path))
    except InputError:
        raise ValueError(f"tokenizer: {model_file(path)} is not a sentencepiece model; {hint}") from None


def vocab_size_of(path: str | Path) -> int:
    """The vocabulary size, from a train-tokenizer artifact's manifest when there is one (no model load)."""
    manifest = Path(path) / "_manifest.json"
    if manifest.exists():
        return int(json.loads(manifest.read_text())["vocab_size"])
    return load_tokenizer(path).vocab_size


# --- Hugging Face files ---------------------------------------------------------------------------


def hf_tokenizer(model_file: str | Path, model_type: str):
    """A `tokenizers.Tokenizer` that gives sentencepiece's ids (see the module docstring for why it is built here)."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, normalizers, processors

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    reserved = [i for i in range(len(pieces)) if sp.is_control(i) or sp.is_unknown(i)]
    if model_type == "bpe":
        vocab = {p: i for i, p in enumerate(pieces)}
        # sentencepiece merges the adjacent pair whose union scores best: rank merges by the union's id
        merges = sorted(
            (vocab[p], vocab[p[:k]], vocab[p[k:]], p[:k], p[k:])
            for i, p in enumerate(pieces) if len(p) > 1 and not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))
            for k in range(1, len(p)) if p[:k] in vocab and p[k:] in vocab
        )
        model = models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], unk_token=pieces[sp.unk_id()], fuse_unk=True, byte_fallback=True)
    else:
        # tokenizers' unigram lattice holds every vocabulary entry, reserved ones too, so unlike
        # sentencepiece it reads a literal "<unk>" or "<s>" in text as that token
        vocab = [(p, sp.get_score(i)) for i, p in enumerate(pieces)]
        model = models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=True)
    tok = HFTokenizer(model)
    steps = []
    charsmap = _precompiled_charsmap(sp)
    if charsmap:
        steps.append(normalizers.Precompiled(charsmap))
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    # unk/bos/eos/pad are special and never matched in text (as in sentencepiece); the chat roles are
    # matched in text, because Hugging Face chat templates render them as text
    roles = {SPECIAL_TOKENS[r] for r in CHAT_ROLES}
    tok.add_special_tokens([AddedToken(pieces[i], special=True, normalized=False) for i in reserved if pieces[i] not in roles])
    tok.add_tokens([AddedToken(pieces[i], special=False, normalized=False) for i in reserved if pieces[i] in roles])
    tok.encode_special_tokens = True
    bos = SPECIAL_TOKENS["bos"]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, pieces.index(bos))])
    return tok


def _precompiled_charsmap(sp) -> bytes:
    """The normalization table of a non-identity sentencepiece model (needs protobuf to read the model)."""
    if sp.normalize("\uff21\ufb01") == "\u2581\uff21\ufb01":  # fullwidth A and the fi ligature survive: identity
        return b""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp.serialized_model_proto())
    return proto.normalizer_spec.precompiled_charsmap


def write_hf_files(out_dir: Path, model_file: Path, model_type: str) -> None:
    """tokenizer.json and tokenizer_config.json beside the model, each written atomically."""
    from llmpipe.artifacts.layout import atomic_path, write_json_atomic

    tok = hf_tokenizer(model_file, model_type)
    with atomic_path(Path(out_dir) / HF_FILES[0]) as tmp:
        tok.save(str(tmp))
    write_json_atomic(Path(out_dir) / HF_FILES[1], {
        # the generic class loads tokenizer.json as it is; LlamaTokenizer would rebuild its pre-tokenizer
        "tokenizer_class": "PreTrainedTokenizerFast",
        **{f"{name}_token": SPECIAL_TOKENS[name] for name in ("unk", "bos", "eos", "pad")},
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": True,  # "<s>" or "<unk>" in a text stay text, as in sentencepiece
        **({"mask_token": MASK_TOKEN} if tok.token_to_id(MASK_TOKEN) is not None else {}),
        "model_max_length": 1 << 30,
    })
