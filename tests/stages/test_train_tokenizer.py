"""train_tokenizer: a sentencepiece model trained on real text, its special tokens, determinism, and
Hugging Face parity (transformers loads the artifact and gives the same ids, whitespace cases included)."""

from __future__ import annotations

import json

import pytest

import llmpipe
from llmpipe.errors import ConfigError, InputError
from tests.test_resume import rows

pytest.importorskip("sentencepiece")
pytest.importorskip("tokenizers")

STAGE = "train_tokenizer"

# Where a converted tokenizer tends to differ from sentencepiece: runs of spaces (at the start
# above all), newlines, tabs, bytes outside the vocabulary, and special-token strings inside text.
EDGE_TEXTS = [
    " Hello  world", "  two leading spaces", "trailing  ", "a  b   c    d", "    indented code\n        more",
    "a\n\nb", "\n\nstarts with newlines", "x\n \ny", "ends with newline\n", "\n", " ", "", "tab\there\t\tand there",
    "line\r\nwindows", "emoji 🤖 and 中文 and ÿ", "\u2581literal lower one eighth block", "<unk> <s> </s> <pad> in text",
    "Ｆｕｌｌｗｉｄｔｈ ﬁ ①", "12345.678 + 9",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data_dir):
    """C4 pages and Wikipedia articles (wikitext-2, which has literal "<unk>" strings) as documents."""
    tmp = tmp_path_factory.mktemp("tok")
    llmpipe.run_stage("ingest", [str(shared_data_dir / "text/c4_demo.jsonl"), str(shared_data_dir / "text/wikitext-2/valid.txt")],
                      tmp / "docs", text_split="blank_line")
    return tmp


@pytest.fixture(scope="module")
def shared_data_dir():
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def bpe(corpus):
    m = llmpipe.run_stage(STAGE, [str(corpus / "docs")], corpus / "bpe", vocab_size=3000, holdout_documents=150)
    return corpus / "bpe", m


def test_artifact_holds_model_special_tokens_and_metrics(bpe):
    out, m = bpe
    assert sorted(m["files"]) == ["special_tokens.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json"]
    special = json.loads((out / "special_tokens.json").read_text())
    assert {k: v["id"] for k, v in special.items()} == m["special_tokens"] == {
        "unk": 0, "bos": 1, "eos": 2, "pad": 3, "system": 4, "user": 5, "assistant": 6, "end": 7}
    assert special["user"]["token"] == "<|user|>" and special["bos"]["token"] == "<s>"
    assert m["vocab_size"] == 3000
    held = min(150, m["counts"]["documents"] // 10)  # holdout_documents, at most a tenth of the corpus
    assert held > 100 and m["counts"]["holdout_documents"] == held and m["counts"]["sample_documents"] + held == m["counts"]["documents"]
    metrics = m["metrics"]
    assert 2.5 < metrics["bytes_per_token"] < 5, metrics  # English at a 3k vocabulary
    assert metrics["round_trip_mismatches"] == 0 and metrics["hf_mismatches"] == 0


def test_special_tokens_never_come_from_text(bpe):
    from llmpipe.text.tokenizer import load_tokenizer

    tok = load_tokenizer(bpe[0])
    ids = tok.encode("<s> hello <|user|> </s>")
    assert not set(ids) & set(range(8))
    assert tok.decode([tok.bos_id, *tok.encode("hello world"), tok.eos_id, tok.special["user"]]) == "hello world"


def test_round_trip_is_exact_on_every_document(bpe, corpus):
    from llmpipe.text.tokenizer import load_tokenizer

    tok = load_tokenizer(bpe[0])
    texts = [r["text"] for r in rows(corpus / "docs")] + EDGE_TEXTS
    for text, ids in zip(texts, tok.encode_batch(texts)):
        assert tok.decode(ids) == text.replace("\u2581", " ")  # identity normalization: only "▁" reads back as a space


def test_same_seed_same_model_other_seed_other_sample(bpe, corpus):
    again = llmpipe.run_stage(STAGE, [str(corpus / "docs")], corpus / "bpe_again", vocab_size=3000, holdout_documents=150)
    assert (corpus / "bpe_again" / "tokenizer.model").read_bytes() == (bpe[0] / "tokenizer.model").read_bytes()
    assert again["metrics"] == bpe[1]["metrics"]
    other = llmpipe.run_stage(STAGE, [str(corpus / "docs")], corpus / "bpe_seed", vocab_size=3000, holdout_documents=150, seed=1)
    assert (corpus / "bpe_seed" / "tokenizer.model").read_bytes() != (bpe[0] / "tokenizer.model").read_bytes()
    assert other["counts"]["sample_documents"] == bpe[1]["counts"]["sample_documents"]


def test_caps_limit_the_sample(corpus):
    m = llmpipe.run_stage(STAGE, [str(corpus / "docs")], corpus / "capped", vocab_size=1000, holdout_documents=10, max_chars=300_000)
    assert 0 < m["counts"]["sample_chars"] <= 300_000
    m = llmpipe.run_stage(STAGE, [str(corpus / "docs")], corpus / "capped2", vocab_size=1000, holdout_documents=10, max_sentences=500)
    assert m["counts"]["sample_sentences"] <= 500 + 50  # lines of the chosen documents; long lines may be cut in two


def test_transformers_loads_the_artifact_with_identical_ids(bpe, corpus):
    transformers = pytest.importorskip("transformers")
    from llmpipe.text.tokenizer import load_tokenizer

    tok = load_tokenizer(bpe[0])
    hf = transformers.AutoTokenizer.from_pretrained(bpe[0])
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (1, 2, 3, 0)
    texts = [r["text"] for r in rows(corpus / "docs")] + EDGE_TEXTS
    differ = [t[:60] for t in texts if hf.encode(t, add_special_tokens=False) != tok.encode(t)]
    assert not differ, differ
    assert hf("Hello world")["input_ids"] == [1, *tok.encode("Hello world")]  # bos added, as Llama does
    for t in EDGE_TEXTS:
        assert hf.decode(tok.encode(t)) == tok.decode(tok.encode(t))
    # chat roles are matched in text by transformers (its chat templates render them as text)
    assert hf.encode("<|user|>hi<|end|>", add_special_tokens=False) == [5, *tok.encode("hi"), 7]


def test_unigram_trains_and_mostly_agrees_with_hugging_face(corpus):
    """tokenizers' unigram lattice matches reserved strings ("<unk>") in text, and ties between two
    segmentations break differently (float32 sums in sentencepiece, float64 in tokenizers)."""
    from tokenizers import Tokenizer

    from llmpipe.text.tokenizer import SPECIAL_TOKENS, load_tokenizer

    m = llmpipe.run_stage(STAGE, [str(corpus / "docs")], corpus / "uni", model_type="unigram", vocab_size=3000, holdout_documents=150)
    assert m["metrics"]["round_trip_mismatches"] == 0 and 2.5 < m["metrics"]["bytes_per_token"] < 5
    tok, hf = load_tokenizer(corpus / "uni"), Tokenizer.from_file(str(corpus / "uni" / "tokenizer.json"))
    hf.encode_special_tokens = True
    texts = [r["text"] for r in rows(corpus / "docs")] + EDGE_TEXTS
    plain = [t for t in texts if not any(s in t for s in SPECIAL_TOKENS.values())]
    differ = sum(hf.encode(t, add_special_tokens=False).ids != tok.encode(t) for t in plain)
    print(f"unigram: {differ} of {len(plain)} texts get other ids in tokenizers")
    assert differ <= 0.05 * len(plain)
    for t in plain:
        assert hf.decode(hf.encode(t, add_special_tokens=False).ids) == tok.decode(tok.encode(t))


def test_nfkc_normalization_matches_in_hugging_face(corpus):
    from tokenizers import Tokenizer

    from llmpipe.text.tokenizer import load_tokenizer

    m = llmpipe.run_stage(STAGE, [str(corpus / "docs")], corpus / "nfkc", normalization="nfkc", vocab_size=1000, holdout_documents=50)
    tok, hf = load_tokenizer(corpus / "nfkc"), Tokenizer.from_file(str(corpus / "nfkc" / "tokenizer.json"))
    hf.encode_special_tokens = True
    assert tok.decode(tok.encode("Ｆｕｌｌｗｉｄｔｈ ﬁ")) == tok.normalize("Ｆｕｌｌｗｉｄｔｈ ﬁ") == "Fullwidth fi"
    for t in EDGE_TEXTS:
        assert hf.encode(t, add_special_tokens=False).ids == tok.encode(t), t
    assert m["metrics"]["hf_mismatches"] == 0


def test_vocabulary_too_large_for_the_text_is_a_user_error(tmp_path):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"id": str(i), "text": "tiny text number %d" % i}) + "\n" for i in range(20)))
    llmpipe.run_stage("ingest", [str(tmp_path / "d.jsonl")], tmp_path / "docs")
    with pytest.raises(InputError, match=r"train_tokenizer vocab_size: 8000 is more than this sample can fill .*at most \d+"):
        llmpipe.run_stage(STAGE, [str(tmp_path / "docs")], tmp_path / "tok", vocab_size=8000, holdout_documents=0)
    with pytest.raises(ConfigError, match=r"vocab_size: 100 leaves no room for learned pieces; use at least 265"):
        llmpipe.run_stage(STAGE, [str(tmp_path / "docs")], tmp_path / "tok2", vocab_size=100)
