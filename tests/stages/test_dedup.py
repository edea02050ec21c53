"""dedup (exact): the first occurrence of each normalised text survives, across parts and tasks."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

import llmpipe
from tests.test_resume import rows


def _docs(tmp_path, parts: list[list[str]]):
    for k, texts in enumerate(parts):
        (tmp_path / f"in{k}.jsonl").write_text("".join(json.dumps({"id": f"{k}-{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return llmpipe.run_stage("ingest", [str(tmp_path / "in*.jsonl")], tmp_path / "docs")


def test_exact_duplicates_across_parts_keep_first(tmp_path):
    _docs(tmp_path, [["Hello  World", "unique a", "unique a"], ["hello world", "unique b"], ["HELLO WORLD\n", "unique c"]])
    m = llmpipe.run_stage("dedup", [str(tmp_path / "docs")], tmp_path / "dd", workers=2, keep_rejected=True)
    assert [d["id"] for d in rows(tmp_path / "dd")] == ["0-0", "0-1", "1-1", "2-1"]
    assert m["counts"] == {"documents": 4, "removed": 3}
    rejected = pq.read_table(tmp_path / "dd/rejected").to_pylist()
    assert sorted(r["id"] for r in rejected) == ["0-2", "1-0", "2-0"]
    assert {r["reason"] for r in rejected} == {"exact_duplicate"}


def test_without_normalisation_case_and_space_matter(tmp_path):
    _docs(tmp_path, [["Hello World", "hello world", "Hello World"]])
    m = llmpipe.run_stage("dedup", [str(tmp_path / "docs")], tmp_path / "dd", normalize=False)
    assert [d["id"] for d in rows(tmp_path / "dd")] == ["0-0", "0-1"] and m["counts"]["removed"] == 1


def test_parts_keep_the_input_layout_and_empty_parts_exist(tmp_path):
    _docs(tmp_path, [["same"], ["same"]])
    llmpipe.run_stage("dedup", [str(tmp_path / "docs")], tmp_path / "dd")
    assert sorted(p.name for p in (tmp_path / "dd").glob("part-*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]
    assert pq.read_table(tmp_path / "dd/part-00001.parquet").num_rows == 0
    assert not (tmp_path / "dd/_work").exists(), "intermediate files are removed once the manifest is written"
