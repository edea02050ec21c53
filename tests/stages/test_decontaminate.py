"""decontaminate: HellaSwag passages planted in real documents are all found and removed; clean text stays."""

from __future__ import annotations

import json
import random

import pyarrow.parquet as pq
import pytest

import llmpipe
from llmpipe.errors import ConfigError
from tests.stages.test_dedup import real_documents
from tests.test_resume import rows

STAGE = "decontaminate"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Real documents, 30 of which carry a HellaSwag item (context + gold ending) with changed case,
    punctuation and spacing, placed mid-text; returns (root, planted {doc id: item key})."""
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    rng = random.Random(0)
    eval_items = [json.loads(line) for line in (SHARED_DATA / "eval/hellaswag_val.jsonl").read_text().splitlines()]
    docs = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(real_documents(SHARED_DATA, 400))]
    planted = {}
    for doc, item in zip(rng.sample(docs, 30), rng.sample(eval_items, 30)):
        passage = item["ctx"] + " " + item["endings"][item["label"]]
        passage = passage.upper() if rng.random() < 0.5 else passage.replace(".", " ;").replace(" ", "  ")
        words = doc["text"].split(" ")
        cut = len(words) // 2
        doc["text"] = " ".join(words[:cut]) + "\n" + passage + "\n" + " ".join(words[cut:])
        planted[doc["id"]] = f"hellaswag_val.jsonl:{item['idx']}"
    root = tmp_path_factory.mktemp("decontaminate")
    for k in range(2):
        (root / f"in{k}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs[k::2]))
    llmpipe.run_stage("ingest", [str(root / "in*.jsonl")], root / "docs")
    return root, planted, SHARED_DATA / "eval/hellaswag_val.jsonl"


def test_every_planted_passage_is_found_and_clean_text_stays(corpus):
    root, planted, reference = corpus
    m = llmpipe.run_stage(STAGE, [str(root / "docs")], root / "clean", reference=str(reference), workers=2, keep_rejected=True)
    removed = {r["id"] for r in pq.read_table(root / "clean/rejected").to_pylist()}
    assert removed == set(planted), "exactly the planted documents go"
    assert m["counts"] == {"documents": 400 - 30, "removed": 30}
    d = m["decontamination"]
    assert d["eval_items"] == 10042 and d["eval_items_too_short"] == 0
    for doc_id, key in planted.items():
        assert any(w.endswith(":" + doc_id) for w in d["found"][key]["where"]), key
    assert m["param_fingerprints"]["reference"], "the eval set joins the fingerprint"


def test_flag_keeps_every_document_and_names_the_items(corpus):
    root, planted, reference = corpus
    llmpipe.run_stage(STAGE, [str(root / "docs")], root / "flagged", reference=str(reference), action="flag")
    out = rows(root / "flagged")
    assert len(out) == 400
    flagged = {r["id"]: r["eval_matches"] for r in out if r["eval_matches"]}
    assert set(flagged) == set(planted) and all(planted[i] in items for i, items in flagged.items())


def test_short_items_and_a_document_artifact_as_reference(tmp_path):
    (tmp_path / "eval.jsonl").write_text(json.dumps({"id": "e1", "question": "What is the capital city of France and why", "answer": "Paris"}) + "\n"
                                         + json.dumps({"id": "e2", "question": "Too short", "answer": "yes"}) + "\n")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate([
        "Quiz: what is the capital city of France, and why? Paris! Next question follows.",
        "The capital city of France is Paris, and nobody asks why.",
        "Too short, yes."])))
    llmpipe.run_stage("ingest", [str(tmp_path / "train.jsonl")], tmp_path / "train")
    # "what is ... why paris" has 10 words, fewer than 13: indexed whole; "too short yes" has 3 < min_ngram
    m = llmpipe.run_stage(STAGE, [str(tmp_path / "train")], tmp_path / "a", reference=str(tmp_path / "eval.jsonl"))
    assert [r["id"] for r in rows(tmp_path / "a")] == ["t1", "t2"]
    assert m["decontamination"]["eval_items_too_short"] == 1 and list(m["decontamination"]["found"]) == ["eval.jsonl:e1"]
    (tmp_path / "ref.jsonl").write_text(json.dumps({"id": "r", "text": "The capital city of France is Paris and nobody asks"}) + "\n")
    llmpipe.run_stage("ingest", [str(tmp_path / "ref.jsonl")], tmp_path / "ref")
    m = llmpipe.run_stage(STAGE, [str(tmp_path / "train")], tmp_path / "b", reference=str(tmp_path / "ref"))
    assert [r["id"] for r in rows(tmp_path / "b")] == ["t0", "t2"] and list(m["decontamination"]["found"]) == ["part-00000.parquet:r"]


def test_reference_is_required_and_checked(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"id": "t", "text": "x"}) + "\n")
    llmpipe.run_stage("ingest", [str(tmp_path / "train.jsonl")], tmp_path / "train")
    with pytest.raises(ConfigError, match="reference: give the evaluation set"):
        llmpipe.run_stage(STAGE, [str(tmp_path / "train")], tmp_path / "out")
    with pytest.raises(Exception, match="reference: input path .*missing.jsonl does not exist"):
        llmpipe.run_stage(STAGE, [str(tmp_path / "train")], tmp_path / "out", reference=str(tmp_path / "missing.jsonl"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [
    (b'{"question": "a b c", "answer": "d"}\n{"question": oops}\n',
     "reference: <ref>: line 2 is not valid JSON (Expecting value); expected one JSON object per line"),
    (b"", "reference: <ref> holds no items; an item needs one of ctx, goal, question"),
    (b'{"foo": "bar"}\n{"foo": "baz"}\n', "reference: <ref> has 2 items but none with a known text field; an item needs one of ctx,"),
])
def test_unusable_reference_is_one_line_and_nothing_is_written(tmp_path, content, message):
    from tests.conftest import run_cli

    (tmp_path / "train.jsonl").write_text(json.dumps({"id": "t", "text": "x"}) + "\n")
    llmpipe.run_stage("ingest", [str(tmp_path / "train.jsonl")], tmp_path / "train")
    (tmp_path / "eval.jsonl").write_bytes(content)
    res = run_cli("decontaminate", "--input", "train", "--output", "out", "--reference", "eval.jsonl", cwd=tmp_path)
    assert res.returncode == 2 and not (tmp_path / "out").exists(), res.stderr
    line = res.stderr.strip().replace(str((tmp_path / "eval.jsonl").resolve()), "<ref>")
    assert line.startswith("error: decontaminate --" + message), line


def test_cp1252_reference_is_read(tmp_path):
    """An eval set saved in cp1252 (curly quotes, accents) is decoded, not a UnicodeDecodeError."""
    text = "The caf\u00e9 \u201cna\u00efve\u201d question about the capital city of France and its river"
    (tmp_path / "eval.jsonl").write_bytes((json.dumps({"question": text}, ensure_ascii=False) + "\n").encode("cp1252"))
    (tmp_path / "train.jsonl").write_text(json.dumps({"id": "t", "text": "Quiz. " + text + " ends here."}) + "\n"
                                          + json.dumps({"id": "u", "text": "Nothing to see"}) + "\n")
    llmpipe.run_stage("ingest", [str(tmp_path / "train.jsonl")], tmp_path / "train")
    m = llmpipe.run_stage(STAGE, [str(tmp_path / "train")], tmp_path / "out", reference=str(tmp_path / "eval.jsonl"))
    assert [r["id"] for r in rows(tmp_path / "out")] == ["u"] and m["decontamination"]["eval_items_found"] == 1


def test_reference_may_be_an_eval_set_that_ships_with_llmpipe(tmp_path):
    """builtin:blimp_mini (the quickstart's eval set): a BLiMP pair is indexed by its grammatical sentence, whole when
    it is 8 to 12 words; a document quoting the ungrammatical twin stays."""
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in [
        ("quotes", "A grammar exercise. The key to the cabinets is on the table. Now try the next one."),
        ("twin", "A grammar exercise. The key to the cabinets are on the table. Spot the mistake."),
        ("clean", "Nothing from any evaluation set is in this document about tables and cabinets.")]))
    llmpipe.run_stage("ingest", [str(tmp_path / "train.jsonl")], tmp_path / "train")
    m = llmpipe.run_stage(STAGE, [str(tmp_path / "train")], tmp_path / "out", reference="builtin:blimp_mini")
    assert [r["id"] for r in rows(tmp_path / "out")] == ["twin", "clean"]
    assert list(m["decontamination"]["found"]) == ["blimp_mini.jsonl:1"]  # its second row (keys count rows from 0)
    with pytest.raises(ConfigError, match="^decontaminate reference: builtin:nope is not an eval set that ships with llmpipe; choose from builtin:blimp_mini$"):
        llmpipe.run_stage(STAGE, [str(tmp_path / "train")], tmp_path / "out2", reference="builtin:nope")
