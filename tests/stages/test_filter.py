"""filter stage: rule chain over document artifacts, funnel in the manifest and PNG, rejects, blocklist."""

from __future__ import annotations

import json

import pytest

import llmpipe
from llmpipe.errors import ConfigError
from tests.conftest import run_cli
from tests.test_resume import rows

PROSE = "\n\n".join([
    "The committee met on Tuesday to discuss the new budget for the library, and members agreed that the reading room needs better lighting.",
    "After a long debate about costs, they voted to extend the opening hours during the summer months for all visitors.",
    "The children's section will open earlier, and volunteers from the school will help the staff with reading sessions.",
    "A new café near the entrance is planned for next spring, pending approval from the city council and the neighbours.",
    "The treasurer presented the accounts, which showed a small surplus thanks to donations from local businesses.",
    "Several members asked for more study desks upstairs, where students often wait for a free seat during exams.",
])


def _docs(tmp_path, docs):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return llmpipe.run_stage("ingest", [str(tmp_path / "in.jsonl")], tmp_path / "docs")


def test_funnel_reasons_rejects_and_png(tmp_path):
    _docs(tmp_path, [
        {"id": "good", "text": PROSE, "url": "https://news.example.org/a"},
        {"id": "short", "text": "Too short to be a document.", "url": "https://example.org/b"},
        {"id": "spam", "text": "buy now buy now buy now " * 60, "url": "https://example.org/c"},
        {"id": "blocked", "text": PROSE, "url": "https://ads.tracker.net/x"},
        {"id": "tiny", "text": "x", "url": None},
        {"id": "pii", "text": PROSE + "\nWrite to jane.doe@example.com or reach 8.8.8.8 today.", "url": None},
    ])
    (tmp_path / "block.txt").write_text("# ad networks\ntracker.net\n")
    m = llmpipe.run_stage("filter", [str(tmp_path / "docs")], tmp_path / "out", keep_rejected=True,
                          url_blocklist=str(tmp_path / "block.txt"), min_chars=10)
    kept = {r["id"]: r for r in rows(tmp_path / "out")}
    assert sorted(kept) == ["good", "pii"]
    assert "jane.doe@example.com" not in kept["pii"]["text"] and "8.8.8.8" not in kept["pii"]["text"]
    reasons = {r["id"]: r["reason"] for r in rows(tmp_path / "out" / "rejected")}
    # in FineWeb's order repetition runs first, and one bigram is over 20% of a five-word page
    assert reasons == {"short": "top_2_gram", "spam": reasons["spam"], "blocked": "url_blocklist", "tiny": "too_short"}
    assert reasons["spam"] in ("dup_line_frac", "top_2_gram", "duplicated_5_n_grams", "top_3_gram", "top_4_gram")
    funnel = m["funnel"]
    assert funnel["documents_in"] == 6 and funnel["documents_out"] == 2
    assert [fam for fam, _ in funnel["removed_by"]][:2] == ["url", "length"]
    assert sum(n for _, n in funnel["removed_by"]) == 4
    assert (tmp_path / "out" / "funnel.png").read_bytes()[:4] == b"\x89PNG"


def test_rules_can_be_switched_off_and_reordered(tmp_path):
    _docs(tmp_path, [{"id": "short", "text": "Too short to be a document.", "url": None}])
    m = llmpipe.run_stage("filter", [str(tmp_path / "docs")], tmp_path / "out", rules=["pii"])
    assert m["counts"] == {"documents": 1, "removed": 0}
    m = llmpipe.run_stage("filter", [str(tmp_path / "docs")], tmp_path / "out2", gopher_quality_min_doc_words=-1,
                          c4_min_num_sentences=-1, rules=["gopher_quality", "c4"])
    assert m["counts"]["documents"] == 1


def test_unknown_rule_family_is_a_user_error(tmp_path):
    _docs(tmp_path, [{"text": "x"}])
    with pytest.raises(ConfigError, match=r'filter rules: unknown rule family "gopher_qualty"; did you mean "gopher_quality"\?'):
        llmpipe.run_stage("filter", [str(tmp_path / "docs")], tmp_path / "out", rules=["gopher_qualty"])


def test_cli_takes_family_thresholds(tmp_path):
    _docs(tmp_path, [{"id": "a", "text": PROSE}])
    res = run_cli("filter", "--input", "docs", "--output", "out", "--gopher-quality-min-doc-words", "1000", cwd=tmp_path, check=True)
    assert "documents=0 removed=1" in res.stdout
    manifest = json.loads((tmp_path / "out/_manifest.json").read_text())
    assert manifest["params"]["gopher_quality_min_doc_words"] == 1000
    assert manifest["funnel"]["removed_by_reason"] == {"gopher_quality/gopher_short_doc": 1}
