"""Train a tokenizer (sentencepiece BPE or unigram, or WordPiece as BERT) on documents, with the special tokens llmpipe uses.

Two phases: `sample` (one task per input part: a seeded 64-bit key per document) and `train`
(one task). Documents are taken in key order: the first `holdout_documents` (at most a tenth of
the corpus, so that a small corpus still trains) are held out to measure bytes per token, the
following ones form the training sample until `max_chars` or `max_sentences` is reached. Sentences are the lines of those documents. The sample depends only
on the seed and the document ids, so the model is the same however the input is split into
parts. sentencepiece's result also depends on its thread count, hence `threads` is a fixed
param rather than the machine's core count.

Text is kept as it is by default (normalization "identity", whitespace runs kept, unknown
characters as UTF-8 bytes), so decoding gives back exactly the text that was encoded. The
artifact holds tokenizer.model, special_tokens.json (bos/eos/pad and the chat roles for SFT/DPO)
and the Hugging Face files (see llmpipe/text/tokenizer.py).

model_type = "wordpiece" trains with Hugging Face `tokenizers`' WordPieceTrainer in BERT's setup
(llmpipe/text/wordpiece.py): the artifact is tokenizer.json, special_tokens.json and
tokenizer_config.json. byte_fallback, character_coverage, normalization and threads are
sentencepiece's and do not apply; lowercase applies to WordPiece only. The same held-out
documents give bytes_per_token (UTF-8 bytes of the original text per token) for every type.

    llmpipe train-tokenizer --input runs/pretrain/dedup --output runs/tokenizer --vocab-size 4096
    [steps.tokenizer]
    stage = "train-tokenizer"
    inputs = ["dedup"]
    vocab_size = 32000
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal

import numpy as np

from llmpipe.artifacts.layout import save_array
from llmpipe.registry import Plan, Stage
from llmpipe.text.tokenizer import HF_FILES, MODEL_FILE, SPECIAL_FILE, SPECIAL_TOKENS

FILES = [MODEL_FILE, SPECIAL_FILE, *HF_FILES]
HOLDOUT_SHARE = 0.1  # held-out documents are at most this share of the corpus


@dataclass(frozen=True)
class Params:
    model_type: Literal["bpe", "unigram", "wordpiece"] = field(default="bpe", metadata={"help": "bpe (sentencepiece, as Llama), unigram (sentencepiece) or wordpiece (Hugging Face tokenizers, as BERT)."})
    vocab_size: int = field(default=32000, metadata={"help": "Pieces in the vocabulary, special and byte tokens included."})
    byte_fallback: bool = field(default=True, metadata={"help": "Encode characters outside the vocabulary as UTF-8 byte tokens instead of <unk>."})
    character_coverage: float = field(default=0.9995, metadata={"help": "Share of characters the vocabulary covers (sentencepiece: 0.9995 for CJK-rich text, 1.0 for small alphabets)."})
    normalization: Literal["identity", "nfkc", "nmt_nfkc"] = field(default="identity", metadata={"help": "Unicode normalization before encoding; identity keeps text exactly."})
    split_digits: bool = field(default=True, metadata={"help": "One token per digit (as Llama), which helps arithmetic."})
    lowercase: bool = field(default=True, metadata={"help": "WordPiece only: lowercase and strip accents (BERT uncased); --no-lowercase keeps case (BERT cased)."})
    max_chars: int = field(default=1_000_000_000, metadata={"help": "Cap on characters of the training sample; 0 for no cap."})
    max_sentences: int = field(default=5_000_000, metadata={"help": "Cap on lines of the training sample; 0 for no cap."})
    max_sentence_bytes: int = field(default=4192, metadata={"help": "Longer lines are cut at a space below this size (sentencepiece skips longer ones)."})
    holdout_documents: int = field(default=1000, metadata={"help": "Documents kept out of training to measure bytes per token (at most a tenth of the corpus)."})
    seed: int = field(default=0, metadata={"help": "Seed of the document sample."})
    mask_token: bool = field(default=False, metadata={"help": "Add a <mask> control token (id 8, after the chat roles) for masked-LM pre-training (pretrain objective mlm)."})
    threads: int = field(default=4, metadata={"help": "sentencepiece training threads; the model depends on it, so it is fixed, not the core count."})

    def __post_init__(self):
        from llmpipe.text import wordpiece

        if self.model_type == "wordpiece":  # no byte tokens
            floor = len(wordpiece.SPECIAL_TOKENS) + 1
        else:
            floor = len(SPECIAL_TOKENS) + (256 if self.byte_fallback else 0) + 1
        if self.vocab_size < floor:
            raise ValueError(f"vocab_size: {self.vocab_size} leaves no room for learned pieces; use at least {floor}")
        if not 0 < self.character_coverage <= 1:
            raise ValueError(f"character_coverage: expected a number in (0, 1], got {self.character_coverage}")
        for name in ("max_chars", "max_sentences", "holdout_documents"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected 0 or more, got {getattr(self, name)}")
        if self.max_sentence_bytes < 16 or self.threads < 1:
            raise ValueError("max_sentence_bytes: expected at least 16" if self.max_sentence_bytes < 16 else f"threads: expected at least 1, got {self.threads}")


def plan(params: Params, inputs) -> Plan:
    parts = [f for inp in inputs for f in inp.files]
    files = [f for f in FILES if f != MODEL_FILE] if params.model_type == "wordpiece" else FILES  # tokenizer.json is the model
    return Plan(phases=[("sample", [{"part": p} for p in parts]), ("train", [{}])], files=files)


def doc_key(seed: int, doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{doc_id}".encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def sample_task(ctx, task: dict) -> dict:
    """Per document: its key, characters and lines, so the train task can pick the sample without reading text."""
    from llmpipe.artifacts.documents import iter_batches

    rows = []
    for batch in iter_batches(task["part"], ["id", "text"]):
        for doc_id, text in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
            rows.append((doc_key(ctx.params.seed, doc_id), len(text), text.count("\n") + 1))
    save_array(ctx.work_dir() / f"{ctx.task_index:05d}.npy", np.array(rows, dtype=np.uint64).reshape(-1, 3))
    return {"counts": {"documents": len(rows)}}


def _choose(ctx) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """Per part, masks of held-out and training documents, taken in key order up to the caps."""
    from llmpipe.errors import InputError
    from llmpipe.log import log

    p: Params = ctx.params
    n_parts = len(ctx.run["phases"][0]["tasks"])
    arrays = [np.load(ctx.work_dir("sample") / f"{i:05d}.npy") for i in range(n_parts)]
    table = np.concatenate(arrays) if arrays else np.zeros((0, 3), np.uint64)
    if not len(table):
        raise InputError(f"{ctx.run['step']}: the inputs hold no documents, so there is nothing to train a tokenizer on; "
                         "check the steps before (did filter or dedup remove everything?)")
    order = np.argsort(table[:, 0], kind="stable")
    n_holdout = min(p.holdout_documents, int(len(table) * HOLDOUT_SHARE))
    if n_holdout < p.holdout_documents:
        log(f"holding out {n_holdout} of {len(table)} documents (a tenth) rather than holdout_documents = {p.holdout_documents}")
    holdout, rest = order[:n_holdout], order[n_holdout:]
    chars, lines = np.cumsum(table[rest, 1]), np.cumsum(table[rest, 2])
    within = np.ones(len(rest), dtype=bool)
    if p.max_chars:
        within &= chars <= p.max_chars
    if p.max_sentences:
        within &= lines <= p.max_sentences
    n_train = max(1, int(within.sum()))  # always at least one document (the cap on held-out ones leaves some)
    masks = {"holdout": np.zeros(len(table), bool), "train": np.zeros(len(table), bool)}
    masks["holdout"][holdout] = True
    masks["train"][rest[:n_train]] = True
    bounds = np.cumsum([0] + [len(a) for a in arrays])
    split = lambda m: [m[bounds[i]:bounds[i + 1]] for i in range(n_parts)]  # noqa: E731
    sample = {"sample_documents": n_train, "sample_chars": int(table[rest[:n_train], 1].sum()), "holdout_documents": len(holdout)}
    return split(masks["holdout"]), split(masks["train"]), sample


def _sentences(text: str, max_bytes: int) -> Iterator[str]:
    """Non-empty lines, long ones cut at the last space before max_bytes (or hard, when there is none)."""
    for line in text.split("\n"):
        while len(line) * 4 > max_bytes and len(line.encode("utf-8", "surrogatepass")) > max_bytes:  # 4 bytes per char at most
            head = line.encode("utf-8", "surrogatepass")[:max_bytes].decode("utf-8", "ignore")
            cut = head.rfind(" ")
            cut = cut if cut > 0 else len(head)
            if line[:cut].strip():
                yield line[:cut]
            line = line[cut:]
        if line.strip():
            yield line


def train_task(ctx, task: dict) -> dict:
    import sentencepiece as spm

    from llmpipe.artifacts.documents import iter_batches
    from llmpipe.artifacts.layout import atomic_path, write_json_atomic
    from llmpipe.text.tokenizer import CHAT_ROLES, MASK_TOKEN, load_tokenizer, write_hf_files

    p: Params = ctx.params
    holdout_masks, train_masks, sample = _choose(ctx)
    parts = [t["part"] for t in ctx.run["phases"][0]["tasks"]]
    holdout_texts: list[str] = []
    counts = {"sample_sentences": 0}

    def sentences() -> Iterator[str]:  # each pass over the sample counts afresh (WordPiece reads it twice)
        holdout_texts.clear()
        counts["sample_sentences"] = 0
        for part, hold, train in zip(parts, holdout_masks, train_masks):
            offset = 0
            for batch in iter_batches(part, ["text"]):
                for k, text in enumerate(batch.column(0).to_pylist()):
                    if hold[offset + k]:
                        holdout_texts.append(text)
                    elif train[offset + k]:
                        for s in _sentences(text, p.max_sentence_bytes):
                            counts["sample_sentences"] += 1
                            yield s
                offset += batch.num_rows

    if p.model_type == "wordpiece":
        return _train_wordpiece(ctx, sentences, holdout_texts, sample, counts)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(), model_writer=model, model_type=p.model_type, vocab_size=p.vocab_size,
            byte_fallback=p.byte_fallback, character_coverage=p.character_coverage, normalization_rule_name=p.normalization,
            remove_extra_whitespaces=False, split_digits=p.split_digits, allow_whitespace_only_pieces=True,
            max_sentence_length=p.max_sentence_bytes, input_sentence_size=0, num_threads=p.threads, minloglevel=2,
            unk_id=0, bos_id=1, eos_id=2, pad_id=3, control_symbols=[SPECIAL_TOKENS[r] for r in CHAT_ROLES] + [MASK_TOKEN] * p.mask_token,
        )
    except RuntimeError as e:
        error = _user_error(str(e), p, ctx.run["step"], counts["sample_sentences"], sample["sample_documents"])
        if error is None:
            raise
        raise error from None
    with atomic_path(ctx.out / MODEL_FILE) as tmp:
        tmp.write_bytes(model.getvalue())
    special = SPECIAL_TOKENS | ({"mask": MASK_TOKEN} if p.mask_token else {})
    write_json_atomic(ctx.out / SPECIAL_FILE, {name: {"id": i, "token": tok} for i, (name, tok) in enumerate(special.items())})
    write_hf_files(ctx.out, ctx.out / MODEL_FILE, p.model_type)
    tok = load_tokenizer(ctx.out)
    if [tok.sp.id_to_piece(i) for i in range(len(special))] != list(special.values()):
        raise RuntimeError("sentencepiece placed the special tokens at other ids than llmpipe.text.tokenizer defines")
    return {"counts": {**sample, **counts}, "metrics": evaluate(tok, holdout_texts)}


def _train_wordpiece(ctx, sentences: Callable[[], Iterator[str]], holdout_texts: list[str], sample: dict, counts: dict) -> dict:
    """WordPieceTrainer on the same sample; bytes per token on the same held-out documents."""
    from llmpipe.errors import InputError
    from llmpipe.text import wordpiece
    from llmpipe.text.tokenizer import load_tokenizer

    p: Params = ctx.params
    hf = wordpiece.train(sentences, p.vocab_size, p.lowercase, p.split_digits)
    if counts["sample_sentences"] == 0:
        raise InputError(f"{ctx.run['step']}: the training sample is empty: its {sample['sample_documents']} documents hold no text but whitespace")
    if hf.get_vocab_size() < p.vocab_size:  # the trainer stops when no pair is left to merge
        raise InputError(f"{ctx.run['step']} vocab_size: {p.vocab_size} is more than this sample can fill (WordPiece made "
                         f"{hf.get_vocab_size()}); lower vocab_size or give more text")
    wordpiece.write_files(ctx.out, hf)
    return {"counts": {**sample, **counts}, "metrics": evaluate(load_tokenizer(ctx.out), holdout_texts)}


def _user_error(message: str, p: Params, step: str, sentences: int, documents: int):
    """sentencepiece's error as one line with what would work, when it is about the params or the text; else None."""
    from llmpipe.errors import InputError

    if "Vocabulary size too high" in message:
        most = message.rsplit("<=", 1)[-1].strip(" .")
        return InputError(f"{step} vocab_size: {p.vocab_size} is more than this sample can fill (sentencepiece makes at most {most}); lower vocab_size or give more text")
    if "smaller than required_chars" in message:  # "... 300 vs 351.": special and byte tokens plus the characters to cover
        need = int(re.search(r"(\d+) vs (\d+)", message).group(2))
        return InputError(f"{step} vocab_size: {p.vocab_size} is too small for this text; sentencepiece needs at least {need} "
                          f"(special and byte tokens, and the characters that make up character_coverage = {p.character_coverage}); "
                          "raise vocab_size or lower character_coverage")
    if sentences == 0:
        return InputError(f"{step}: the training sample is empty: its {documents} documents hold no text but whitespace")
    return None


def evaluate(tok, texts: list[str]) -> dict:
    """Bytes per token on held-out documents, exact round trips, and agreement of the Hugging Face tokenizer."""
    from tokenizers import Tokenizer as HFTokenizer

    if not texts:
        return {}
    encoded = tok.encode_batch(texts)
    n_tokens = sum(len(e) for e in encoded)
    n_bytes = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
    hf = HFTokenizer.from_file(str(tok.path.parent / HF_FILES[0]))
    hf.encode_special_tokens = True  # not saved in tokenizer.json; transformers sets it from split_special_tokens
    hf_ids = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    return {
        "bytes_per_token": round(n_bytes / max(1, n_tokens), 4),
        "chars_per_token": round(sum(len(t) for t in texts) / max(1, n_tokens), 4),
        "tokens": n_tokens,
        "round_trip_mismatches": sum(tok.decode(e) != tok.normalize(t) for e, t in zip(encoded, texts)),
        "hf_mismatches": sum(list(e) != h for e, h in zip(encoded, hf_ids)),
    }


def finalize(ctx, stats: dict, records: dict) -> dict:
    from llmpipe.text.tokenizer import load_tokenizer

    train = records["train"][0]["stats"]
    documents = sum(r["stats"]["counts"]["documents"] for r in records["sample"])
    tok = load_tokenizer(ctx.out)
    return {
        "counts": {"documents": documents, **train["counts"]},
        "model_type": ctx.params.model_type,
        "vocab_size": tok.vocab_size,
        "special_tokens": tok.special,
        "metrics": train["metrics"],
        "stats": {"counts": {"documents": documents, **train["counts"]}},
    }


STAGE = Stage(
    name="train_tokenizer", version=2, params=Params, doc=__doc__, plan=plan,
    run_task={"sample": sample_task, "train": train_task}, finalize=finalize, output_kind="tokenizer",
)
