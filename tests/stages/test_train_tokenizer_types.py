"""train_tokenizer's model types side by side: sentencepiece BPE and unigram, and WordPiece as BERT trains it
(Hugging Face tokenizers), on the same real text with the same held-out documents; their bytes per
token, round trips, Hugging Face exports, and a WordPiece tokenizer through tokenize, pretrain and generate."""

from __future__ import annotations

import json
import os

import pytest

import llmpipe
from tests.conftest import run_cli, write
from tests.test_resume import rows

pytest.importorskip("sentencepiece")
pytest.importorskip("tokenizers")

STAGE = "train_tokenizer"
TYPES = ("bpe", "unigram", "wordpiece")
VOCAB = 3000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """C4 pages and Wikipedia articles as documents, and a tokenizer of each type trained on them (about 2 s each)."""
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    tmp = tmp_path_factory.mktemp("tok_types")
    llmpipe.run_stage("ingest", [str(SHARED_DATA / "text/c4_demo.jsonl"), str(SHARED_DATA / "text/wikitext-2/valid.txt")],
                      tmp / "docs", text_split="blank_line")
    manifests = {t: llmpipe.run_stage(STAGE, [str(tmp / "docs")], tmp / t, model_type=t, vocab_size=VOCAB, holdout_documents=150)
                 for t in TYPES}
    return tmp, manifests


def texts(corpus) -> list[str]:
    return [r["text"] for r in rows(corpus[0] / "docs")]


def test_each_type_has_its_vocabulary_and_bytes_per_token_on_the_same_held_out_text(corpus):
    from llmpipe.text.tokenizer import load_tokenizer

    tmp, manifests = corpus
    print(f"\n{'type':<10} {'vocab':>6} {'bytes/token':>12} {'held-out docs':>14} {'tokens':>7}")
    for t, m in manifests.items():
        print(f"{t:<10} {m['vocab_size']:>6} {m['metrics']['bytes_per_token']:>12.4f} {m['counts']['holdout_documents']:>14} {m['metrics']['tokens']:>7}")
    for t, m in manifests.items():
        assert m["model_type"] == t and m["params"]["model_type"] == t
        assert m["vocab_size"] == VOCAB == load_tokenizer(tmp / t).vocab_size, t
        assert 2.5 < m["metrics"]["bytes_per_token"] < 5, (t, m["metrics"])  # English at a 3k vocabulary
    assert manifests["bpe"]["metrics"]["hf_mismatches"] == manifests["wordpiece"]["metrics"]["hf_mismatches"] == 0
    # unigram: the held-out documents holding a literal "<unk>" (see test_hugging_face_loads_each_type_with_the_same_ids)
    # the same held-out documents for every type: the same count and the same original bytes
    held = {(m["counts"]["holdout_documents"], round(m["metrics"]["bytes_per_token"] * m["metrics"]["tokens"])) for m in manifests.values()}
    assert len({h[0] for h in held}) == 1 and max(h[1] for h in held) - min(h[1] for h in held) <= 3 * len(manifests), held
    bpe, uni, wp = (manifests[t]["metrics"]["bytes_per_token"] for t in TYPES)
    assert abs(bpe - uni) / bpe < 0.08, (bpe, uni)  # two sentencepiece models of one size on one sample
    assert abs(wp - bpe) / bpe < 0.15, (bpe, wp)  # WordPiece drops whitespace but lowercases: close to BPE
    assert sorted(manifests["wordpiece"]["files"]) == ["special_tokens.json", "tokenizer.json", "tokenizer_config.json"]
    assert "tokenizer.model" in manifests["unigram"]["files"]


def test_round_trips(corpus):
    """BPE and unigram give back every text exactly; WordPiece gives back its normalisation: lowercased,
    accents stripped, words (split on whitespace and punctuation, digits one by one) joined by single
    spaces, except that a word holding a character outside the vocabulary reads "[UNK]"."""
    from llmpipe.text.tokenizer import load_tokenizer

    tmp, _ = corpus
    docs = texts(corpus)
    for t in ("bpe", "unigram"):
        tok = load_tokenizer(tmp / t)
        assert all(tok.decode(ids) == text for text, ids in zip(docs, tok.encode_batch(docs))), t
    tok = load_tokenizer(tmp / "wordpiece")
    unk = tok.special["unk"]
    encoded = tok.encode_batch(docs)
    with_unk = sum(unk in ids for ids in encoded)
    print(f"\nwordpiece: {with_unk} of {len(docs)} documents hold a word outside the vocabulary ([UNK])")
    assert with_unk <= 0.01 * len(docs)
    assert all(tok.decode(ids) == tok.normalize(text) for text, ids in zip(docs, encoded) if unk not in ids)
    sample = "Héllo,  World!\n\tIt's 42 naïve CAFÉ"
    assert tok.normalize(sample) == "hello, world! it ' s 4 2 naive cafe" == tok.decode(tok.encode(sample))
    assert tok.decode(tok.encode("中文 ok")) == "[UNK] [UNK] ok"  # characters the training text never held
    # special and chat role strings in text stay text; control tokens decode to nothing, [UNK] stays visible
    ids = tok.encode("<|user|> [CLS] [MASK] [UNK]")
    assert not set(ids) & set(tok.special.values())
    assert tok.decode([tok.bos_id, *tok.encode("hi there"), tok.eos_id, tok.special["user"], unk]) == "hi there [UNK]"


def test_wordpiece_is_berts_setup(corpus):
    from llmpipe.text.tokenizer import load_tokenizer

    tmp, manifests = corpus
    spec = json.loads((tmp / "wordpiece" / "tokenizer.json").read_text())
    assert spec["model"]["type"] == "WordPiece" and spec["model"]["continuing_subword_prefix"] == "##"
    assert spec["normalizer"]["type"] == "BertNormalizer" and spec["normalizer"]["lowercase"] is True
    assert [p["type"] for p in spec["pre_tokenizer"]["pretokenizers"]] == ["BertPreTokenizer", "Digits"]
    assert spec["decoder"]["type"] == "WordPiece"
    assert sum(p.startswith("##") for p in spec["model"]["vocab"]) > VOCAB // 4
    assert manifests["wordpiece"]["special_tokens"] == {
        "unk": 0, "bos": 1, "eos": 2, "pad": 3, "system": 4, "user": 5, "assistant": 6, "end": 7, "mask": 8}
    tok = load_tokenizer(tmp / "wordpiece")
    assert [tok.piece(i) for i in range(9)] == ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "[MASK]"]
    # --no-lowercase: BERT cased
    cased = llmpipe.run_stage(STAGE, [str(tmp / "docs")], tmp / "cased", model_type="wordpiece", vocab_size=VOCAB, holdout_documents=150,
                              lowercase=False)
    tok = load_tokenizer(tmp / "cased")
    assert tok.decode(tok.encode("Paris in May")) == "Paris in May" and cased["vocab_size"] == VOCAB


def test_hugging_face_loads_each_type_with_the_same_ids(corpus):
    """AutoTokenizer on the artifact gives llmpipe's ids on every real document. Unigram is compared on
    documents without a reserved string: tokenizers' lattice reads a literal "<unk>" (wikitext holds
    hundreds) as that token, sentencepiece as text (see llmpipe/text/tokenizer.py)."""
    transformers = pytest.importorskip("transformers")
    from llmpipe.text.tokenizer import SPECIAL_TOKENS, load_tokenizer

    tmp, _ = corpus
    docs = texts(corpus)
    plain = [t for t in docs if not any(s in t for s in SPECIAL_TOKENS.values())]
    for t, compared in (("wordpiece", docs), ("unigram", plain), ("bpe", docs)):
        tok, hf = load_tokenizer(tmp / t), transformers.AutoTokenizer.from_pretrained(tmp / t)
        differ = [d[:60] for d in compared if hf.encode(d, add_special_tokens=False) != tok.encode(d)]
        print(f"{t}: {len(differ)} of {len(compared)} documents get other ids in transformers")
        # unigram: 0 of 766 in every run but one of the whole suite, where 2 documents ("...at 6.30 and I leapt out",
        # "...Drugs.com. Last updated on Oct 1, 2018") segmented otherwise: tokenizers' Unigram lattice (f64 scores read
        # from JSON) and sentencepiece's (f32) can break a near tie differently. Not yet explained: why only then.
        assert len(differ) <= (2 if t == "unigram" else 0), (t, differ[:3])
    tok, hf = load_tokenizer(tmp / "wordpiece"), transformers.AutoTokenizer.from_pretrained(tmp / "wordpiece")
    assert (hf.unk_token_id, hf.cls_token_id, hf.sep_token_id, hf.pad_token_id, hf.mask_token_id) == (0, 1, 2, 3, 8)
    assert hf("Hello world")["input_ids"] == [1, *tok.encode("Hello world"), 2]  # BERT's [CLS] A [SEP]
    assert hf.encode("<|user|>hi<|end|>", add_special_tokens=False) == [5, *tok.encode("hi"), 7]  # as for BPE: chat templates
    assert hf.decode(tok.encode(docs[0])) == tok.decode(tok.encode(docs[0]))


def test_wordpiece_through_tokenize_pretrain_generate_and_evaluate(corpus, tmp_path):
    """A tiny end to end: token shards, a few pretrain steps with val bits per byte counted on the
    original bytes, a checkpoint transformers reads, generate, evaluate, the chat template, and GGUF's refusal."""
    transformers = pytest.importorskip("transformers")
    from llmpipe.text.chat_template import render
    from llmpipe.text.tokenizer import load_tokenizer

    tmp, _ = corpus
    wp = tmp / "wordpiece"
    tokens = llmpipe.run_stage("tokenize", [str(tmp / "docs")], tmp_path / "tokens", tokenizer=str(wp), val_fraction=0.1)
    docs = texts(corpus)
    tok = load_tokenizer(wp)
    assert tokens["bytes_per_token"] == round(sum(len(d.encode()) for d in docs) / sum(len(tok.encode(d)) for d in docs), 4)
    tiny = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_kv_head": 2, "seq_len": 32, "micro_batch": 2, "batch_tokens": 64,
            "warmup_steps": 2, "eval_steps": 2}
    out = tmp_path / "model"
    m = llmpipe.run_stage("pretrain", [str(tmp_path / "tokens")], out, tokenizer=str(wp), max_steps=6, eval_every=6,
                          checkpoint_every=6, keep_last=1, lr=3e-3, device="cpu", **tiny)
    # bits per byte: every non-special token counts the corpus's bytes per token, measured on the original text
    assert m["metrics"]["val_bpb"] > 0
    assert abs(m["metrics"]["val_bpb"] - m["metrics"]["val_loss"] / tokens["bytes_per_token"] / 0.6931) < 0.25 * m["metrics"]["val_bpb"]
    assert (out / "tokenizer.json").read_bytes() == (wp / "tokenizer.json").read_bytes() and not (out / "tokenizer.model").exists()
    hf = transformers.AutoTokenizer.from_pretrained(out)
    assert hf.encode(docs[1], add_special_tokens=False) == tok.encode(docs[1])
    ids, mask = render([{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello"}], tok)
    assert ids == [5, *tok.encode("Hi there"), 7, 6, *tok.encode("Hello"), 7] and sum(mask) == len(tok.encode("Hello")) + 1

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    said = run_cli("generate", str(out), "--prompt", "The history of", "--max-new-tokens", "4", cwd=tmp_path, check=True, env=env).stdout
    assert said.startswith(("the history of", "The history of")), said
    ev = llmpipe.run_stage("evaluate", [str(out), str(tmp / "docs")], tmp_path / "eval", limit=10)
    got = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]["perplexity"]
    assert got["bytes"] == sum(len(d.encode()) for d in docs[:10]), "bytes of the original documents, not of decoded pieces"
    assert ev["counts"]

    res = run_cli("quantize", "--input", str(out), "--output", str(tmp_path / "q"), "--format", "gguf", cwd=tmp_path, env=env)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "WordPiece" in res.stderr, res.stderr
    assert not (tmp_path / "q").exists()


def test_model_type_from_cli_pipeline_and_library_is_the_same(corpus, tmp_path):
    tmp, _ = corpus
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    docs = str(tmp / "docs")
    run_cli("train-tokenizer", "--input", docs, "--output", str(tmp_path / "cli"), "--model-type", "wordpiece", "--vocab-size", str(VOCAB),
            "--holdout-documents", "150", cwd=tmp_path, check=True, env=env)
    write(tmp_path / "p.toml", f'[pipeline]\nworkdir = "runs"\n[steps.tok]\nstage = "train-tokenizer"\ninputs = ["{docs}"]\n'
                               f'model_type = "wordpiece"\nvocab_size = {VOCAB}\nholdout_documents = 150\n')
    run_cli("run", "p.toml", cwd=tmp_path, check=True, env=env)
    made = [(tmp_path / d / "tokenizer.json").read_bytes() for d in ("cli", "runs/tok")]
    assert made[0] == made[1] == (tmp / "wordpiece" / "tokenizer.json").read_bytes()


def test_wordpiece_training_gives_the_same_pieces_every_time():
    """tokenizers#1794's text: WordPieceTrainer alone, set up as llmpipe sets it up, gives two vocabularies over 50
    trainings in one process with tokenizers 0.23 (it numbers "##c" pieces in a hash map's order, which breaks ties
    between pairs; a CI run once saw it on real text); llmpipe's training gives one."""
    from llmpipe.text import wordpiece

    text = ["Wel come to the 🤗 Tok en izers libr ary."]

    def one_pass():
        tok = wordpiece._untrained(True, False)
        tok.train_from_iterator(text, wordpiece._trainer(100, list(wordpiece.SPECIAL_TOKENS.values())))
        return tok

    vocabularies = lambda train: {tuple(sorted(train().get_vocab())) for _ in range(50)}  # noqa: E731
    print(f"\nvocabularies over 50 trainings: WordPieceTrainer alone {len(vocabularies(one_pass))}, llmpipe ", end="")
    ours = vocabularies(lambda: wordpiece.train(lambda: iter(text), 100, True, False))
    print(len(ours))
    assert len(ours) == 1


def test_unknown_model_type_is_one_line_naming_the_choices(corpus, tmp_path):
    res = run_cli("train-tokenizer", "--input", str(corpus[0] / "docs"), "--output", str(tmp_path / "x"), "--model-type", "foo", cwd=tmp_path)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert all(t in lines[0] for t in ("'foo'", "bpe", "unigram", "wordpiece")), lines[0]
    assert not (tmp_path / "x").exists()
