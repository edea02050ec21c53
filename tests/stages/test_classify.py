"""classify and train_classifier: built-in language ID, a quality model trained on real text, filtering."""

from __future__ import annotations

import json

import pytest

import llmpipe
from llmpipe.errors import ConfigError
from tests.test_resume import rows

pytest.importorskip("fasttext")


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def test_language_id_on_real_sentences(tmp_path, shared_data):
    """lid.176 (built in, no download) on lingua's labelled sentences of languages it knows."""
    wanted = {"en", "de", "fr", "es", "it", "pt", "nl", "ru", "ja", "zh", "ar", "pl", "sv", "tr"}
    lines = [json.loads(line) for line in (shared_data / "langid/lingua_sentences_100_per_lang.jsonl").read_text().splitlines()]
    sample = [r for r in lines if r["lang"] in wanted]
    _jsonl(tmp_path / "s.jsonl", sample)
    llmpipe.run_stage("ingest", [str(tmp_path / "s.jsonl")], tmp_path / "docs")
    m = llmpipe.run_stage("classify", [str(tmp_path / "docs")], tmp_path / "lang")
    out = rows(tmp_path / "lang")
    assert len(out) == len(sample) and m["counts"]["removed"] == 0
    correct = sum(json.loads(r["metadata"])["lang"] == r["lang"] for r in out)
    accuracy = correct / len(out)
    print(f"lid.176 accuracy on {len(out)} lingua sentences in {len(wanted)} languages: {accuracy:.3f}")
    assert accuracy >= 0.93
    assert all(0 < r["lang_score"] <= 1 for r in out)


def test_language_filter_keeps_allowed_languages_and_writes_rejects(tmp_path):
    _jsonl(tmp_path / "d.jsonl", [
        {"id": "en", "text": "The quick brown fox jumps over the lazy dog while the farmer watches from the porch."},
        {"id": "de", "text": "Der schnelle braune Fuchs springt über den faulen Hund, während der Bauer zusieht."},
        {"id": "fr", "text": "Le renard brun rapide saute par-dessus le chien paresseux pendant que le fermier regarde."},
    ])
    llmpipe.run_stage("ingest", [str(tmp_path / "d.jsonl")], tmp_path / "docs")
    m = llmpipe.run_stage("classify", [str(tmp_path / "docs")], tmp_path / "en", languages=["en"], min_score=0.5, keep_rejected=True)
    assert [(r["id"], r["lang"]) for r in rows(tmp_path / "en")] == [("en", "en")]
    rejected = rows(tmp_path / "en" / "rejected")
    assert sorted((r["id"], r["reason"]) for r in rejected) == [("de", "lang_not_allowed"), ("fr", "lang_not_allowed")]
    assert m["stats"]["dropped"] == {"lang_not_allowed": 2} and m["languages"] == {"en": 1, "de": 1, "fr": 1}


def test_quality_classifier_trained_on_real_text(tmp_path, shared_data):
    """Wikipedia paragraphs (hq) against web pages from C4 and Dolma (lq), DCLM-style."""
    llmpipe.run_stage("ingest", [str(shared_data / "text/wikitext-2")], tmp_path / "wiki", text_split="blank_line", min_chars=200)
    llmpipe.run_stage("ingest", [str(shared_data / "text/c4_demo.jsonl"), str(shared_data / "text/dolma")], tmp_path / "web", min_chars=200)
    m = llmpipe.run_stage("train_classifier", [str(tmp_path / "wiki"), str(tmp_path / "web")], tmp_path / "model", labels=["hq", "lq"])
    metrics = m["metrics"]
    print("held-out:", metrics)
    assert metrics["hq"]["f1"] >= 0.95 and metrics["lq"]["f1"] >= 0.85
    assert m["counts"]["holdout_documents"] > 80 and m["preprocessing"] == {"lowercase": True}

    scored = llmpipe.run_stage("classify", [str(tmp_path / "web")], tmp_path / "scored", mode="score", model=str(tmp_path / "model"), label="hq", min_score=0.5)
    web_rows = rows(tmp_path / "scored")
    assert all(r["quality"] >= 0.5 for r in web_rows)
    assert scored["counts"]["documents"] + scored["counts"]["removed"] == 307
    assert scored["counts"]["removed"] > 250, "most web pages score as low quality"


def test_labels_must_match_inputs(tmp_path):
    _jsonl(tmp_path / "a.jsonl", [{"text": "x"}])
    with pytest.raises(ConfigError, match=r"train_classifier labels: 1 labels for 2 inputs"):
        llmpipe.run_stage("train_classifier", [str(tmp_path / "a.jsonl"), str(tmp_path / "a.jsonl")], tmp_path / "m", labels=["hq"])
    assert not (tmp_path / "m").exists()


def test_missing_model_path_is_a_user_error(tmp_path):
    _jsonl(tmp_path / "a.jsonl", [{"text": "hello"}])
    llmpipe.run_stage("ingest", [str(tmp_path / "a.jsonl")], tmp_path / "docs")
    with pytest.raises(Exception, match=r"classify model: input path nope.bin does not exist"):
        llmpipe.run_stage("classify", [str(tmp_path / "docs")], tmp_path / "out", mode="score", model="nope.bin")


def test_text_without_letters_is_undetermined_not_english(tmp_path):
    """lid.176 calls "" and "😀🎉" English with a high score; such documents are `und` with score 0."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = ["", "😀🎉🔥 👍", "12 345 678", "The quick brown fox jumps over the lazy dog near the river bank."]
    pq.write_table(pa.table({"id": ["empty", "emoji", "digits", "en"], "text": texts}), tmp_path / "docs.parquet")
    m = llmpipe.run_stage("classify", [str(tmp_path / "docs.parquet")], tmp_path / "all")
    assert [(r["id"], r["lang"], r["lang_score"]) for r in rows(tmp_path / "all")][:3] == [("empty", "und", 0.0), ("emoji", "und", 0.0), ("digits", "und", 0.0)]
    assert m["languages"]["und"] == 3 and m["counts"]["removed"] == 0, "no language filter: kept, but counted as und"
    m = llmpipe.run_stage("classify", [str(tmp_path / "docs.parquet")], tmp_path / "en", languages=["en"], keep_rejected=True)
    assert [r["id"] for r in rows(tmp_path / "en")] == ["en"]
    assert m["stats"]["dropped"] == {"no_letters": 3}
