"""ingest packs many small files into a few tasks and parts, and splits a big WARC between tasks at
record boundaries; either way the documents are those of one task per file (or of one task)."""

from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path

import llmpipe
from llmpipe import step as step_mod
from llmpipe.api import build_step
from llmpipe.executors.local import run_phases
from llmpipe.file_groups import ALONE, SKIP, pack
from llmpipe.inputs import resolve_input
from stages.ingest import STAGE, Params
from tests.conftest import make_big_warc, run_cli
from tests.test_resume import rows

FILE_BYTES = 100
WRAPPERS = {"jsonl": ('{"text": "', '"}\n'), "txt": ("", "\n"), "html": ("<html><body><p>", "</p></body></html>\n")}


def _tiny_tree(root: Path, n: int) -> dict[str, str]:
    """n files of exactly 100 bytes in nested folders with dots in their names, JSONL, text and HTML
    in turn; returns each file's text by path."""
    texts = {}
    for i in range(n):
        folder = root / f"crawl.2024-{i % 3}" / f"v1.{i % 7}" / f"batch.{i % 11}.d"
        folder.mkdir(parents=True, exist_ok=True)
        kind = ("jsonl", "txt", "html")[i % 3]
        before, after = WRAPPERS[kind]
        head = f"Tiny document {i:05d}, one short paragraph"
        text = head + "." * (FILE_BYTES - len(before) - len(head) - len(after))
        path = folder / f"doc.{i:05d}.v2.{kind}"
        path.write_text(before + text + after)
        texts[str(path)] = text
    return texts


def test_pack_groups_by_bytes_keeps_big_and_embedded_files_alone_and_cuts_where_told():
    sizes = [40, 50, SKIP, 20, 0, 300, 10, ALONE, SKIP, 60, 70, SKIP]
    tasks = pack(sizes, 100, lambda k, size: [120, 250] if k == 5 else [])
    assert tasks == [
        {"files": [0, 3]},  # 40 + 50 (the next 20 would pass 100 bytes), and the stray file of another type between
        {"files": [3, 5]},  # 20, and the empty file counting one byte
        {"files": [5, 6], "offsets": [0, 120]}, {"files": [5, 6], "offsets": [120, 250]}, {"files": [5, 6], "offsets": [250, None]},
        {"files": [6, 7]},
        {"files": [7, 8]},  # an embedded source: always its own task
        {"files": [9, 10]}, {"files": [10, 11]},  # a stray file opens no task, nor does the trailing one
    ]


def test_2000_tiny_files_in_nested_folders_make_20_tasks_and_parts(tmp_path):
    texts = _tiny_tree(tmp_path / "crawl", 2000)
    m = llmpipe.run_stage("ingest", [str(tmp_path / "crawl")], tmp_path / "out", task_bytes=100 * FILE_BYTES, extractor="resiliparse")
    run = json.loads((tmp_path / "out/_run.json").read_text())
    assert run["phases"][0]["tasks"] == [{"files": [100 * i, 100 * (i + 1)]} for i in range(20)]  # two numbers a task
    assert len(list((tmp_path / "out").glob("part-*.parquet"))) == 20 == len(m["files"])
    docs = rows(tmp_path / "out")
    assert m["counts"]["documents"] == len(docs) == 2000
    order = run["inputs"][0]["files"]  # sorted, as the directory is walked
    assert [d["path"] for d in docs] == order, "parts hold their files' documents in the inputs' order"
    assert all(d["text"].strip() == texts[d["path"]] for d in docs)  # each document names its own file
    assert sorted(order) == sorted(texts)


def test_grouped_documents_equal_one_task_per_file_with_empty_and_stray_files(tmp_path):
    _tiny_tree(tmp_path / "crawl", 120)
    nested = tmp_path / "crawl/crawl.2024-0/v1.0"
    for name in ("empty.jsonl", "empty.txt", "empty.html", "empty.warc.gz", "notes.v1.pdf"):
        (nested / name).write_bytes(b"")
    (nested / "more.jsonl.gz").write_bytes(gzip.compress(b'{"text": "compressed record", "id": "own-1"}\n'))
    per_file = llmpipe.run_stage("ingest", [str(tmp_path / "crawl")], tmp_path / "per-file", task_bytes=1, extractor="resiliparse")
    grouped = llmpipe.run_stage("ingest", [str(tmp_path / "crawl")], tmp_path / "grouped", task_bytes=20 * FILE_BYTES, extractor="resiliparse")
    assert len(per_file["files"]) == 125, "task_bytes=1: one task per file read (empty ones too, not the .pdf), as before"
    assert len(grouped["files"]) == 7  # 121 files of ~100 bytes at 2,000 bytes a task; empty files add no bytes
    assert rows(tmp_path / "grouped") == rows(tmp_path / "per-file")
    assert grouped["counts"] == per_file["counts"] and grouped["stats"] == per_file["stats"]
    assert grouped["stats"]["counts"]["skipped_unknown_type"] == 1 and grouped["stats"]["dropped"] == {"too_short": 1, "no_main_text": 1}
    only_empty = tmp_path / "empty"
    only_empty.mkdir()
    for name in ("a.jsonl", "b.txt", "c.warc.gz"):
        (only_empty / name).write_bytes(b"")
    assert len(llmpipe.run_stage("ingest", [str(only_empty)], tmp_path / "e")["files"]) == 1


def test_big_warcs_split_at_record_boundaries_give_the_documents_of_one_task(tmp_path, shared_data):
    crawl = tmp_path / "crawl"
    big = make_big_warc(shared_data, crawl / "big.warc.gz", 8 << 20)
    make_big_warc(shared_data, tmp_path / "plain.warc.gz", 1 << 20)
    (crawl / "plain.warc").write_bytes(gzip.decompress((tmp_path / "plain.warc.gz").read_bytes()))
    (crawl / "text.warc.wet.gz").write_bytes((shared_data / "warc/commoncrawl/whirlwind.warc.wet.gz").read_bytes() * 1000)
    task_bytes = 1_500_000
    split = llmpipe.run_stage("ingest", [str(crawl)], tmp_path / "split", task_bytes=task_bytes, extractor="resiliparse", workers=2)
    whole = llmpipe.run_stage("ingest", [str(crawl)], tmp_path / "whole", task_bytes=1 << 40, extractor="resiliparse")
    sizes = {f.name: f.stat().st_size for f in crawl.iterdir()}
    assert len(whole["files"]) == 1
    assert len(split["files"]) == sum(math.ceil(s / task_bytes) for s in sizes.values()) == 6 + 4 + 3
    docs = rows(tmp_path / "split")
    assert docs == rows(tmp_path / "whole")  # ids, texts, offsets, order
    assert len(docs) == (14 + 2) * 58 + 1000 and split["stats"] == whole["stats"]  # 58 pages a copy of the samples, 1 a WET copy
    # each piece holds the records that start in its byte range
    tasks = json.loads((tmp_path / "split/_run.json").read_text())["phases"][0]["tasks"]
    files = json.loads((tmp_path / "split/_run.json").read_text())["inputs"][0]["files"]
    for k, task in enumerate(tasks):
        start, end = task["offsets"]
        part = rows_of(tmp_path / f"split/part-{k:05d}.parquet")
        assert part and all(start <= d["offset"] < (end or math.inf) and d["path"].endswith(os.path.basename(files[task["files"][0]])) for d in part)
    # a whole-file gzip (one member) cannot be cut: it stays one task
    (tmp_path / "one-member.warc.gz").write_bytes(gzip.compress(gzip.decompress(big.read_bytes())))
    plan = STAGE.plan(Params(task_bytes=task_bytes), [resolve_input(str(tmp_path / "one-member.warc.gz"), "test")])
    assert plan.phases[0][1] == [{"files": [0, 1]}]


def rows_of(part: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(part).to_pylist()


def test_a_file_removed_between_plan_and_run_is_counted_and_named(tmp_path):
    _tiny_tree(tmp_path / "crawl", 30)
    step = build_step("ingest", "ingest", [resolve_input(str(tmp_path / "crawl"), "test")], tmp_path / "out",
                      {"task_bytes": 10 * FILE_BYTES, "extractor": "resiliparse"}, "test")
    run = step_mod.prepare(step)
    gone = run["inputs"][0]["files"][12]
    os.remove(gone)
    run_phases(step.out, run, 1, "ingest")
    m = step_mod.finalize(step.out)
    assert m["counts"]["documents"] == 29 and m["stats"]["skipped"] == {"missing_file": 1}
    assert m["stats"]["samples"]["missing_file"] == [f"{gone}: removed after the step was planned"]
    assert gone not in {d["path"] for d in rows(tmp_path / "out")}


def test_task_bytes_below_one_is_a_one_line_error(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    res = run_cli("ingest", "--input", "a.jsonl", "--output", "out", "--task-bytes", "0", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == ["error: ingest --task-bytes: expected a positive number of bytes, got 0"]
    assert not (tmp_path / "out").exists()
