"""dedup: exact duplicates across parts and tasks; MinHash near duplicates against exact Jaccard on a
planted corpus of real text; signatures equal to datasketch's; split runs equal single-task runs."""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import llmpipe
from tests.test_resume import rows


def _docs(tmp_path, parts: list[list[str]]):
    for k, texts in enumerate(parts):
        (tmp_path / f"in{k}.jsonl").write_text("".join(json.dumps({"id": f"{k}-{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return llmpipe.run_stage("ingest", [str(tmp_path / "in*.jsonl")], tmp_path / "docs", task_bytes=1)  # a part per file


def test_exact_duplicates_across_parts_keep_first(tmp_path):
    _docs(tmp_path, [["Hello  World", "unique a", "unique a"], ["hello world", "unique b"], ["HELLO WORLD\n", "unique c"]])
    m = llmpipe.run_stage("dedup", [str(tmp_path / "docs")], tmp_path / "dd", workers=2, keep_rejected=True)
    assert [d["id"] for d in rows(tmp_path / "dd")] == ["0-0", "0-1", "1-1", "2-1"]
    assert m["counts"] == {"documents": 4, "removed": 3}
    assert m["dedup"]["exact_duplicates"] == 3 and m["dedup"]["cluster_sizes"] == {"2": 1, "3": 1}
    rejected = pq.read_table(tmp_path / "dd/rejected").to_pylist()
    assert sorted(r["id"] for r in rejected) == ["0-2", "1-0", "2-0"]
    assert {r["reason"] for r in rejected} == {"exact_duplicate"}
    clusters = {r["id"]: r for r in pq.read_table(tmp_path / "dd/clusters").to_pylist()}
    assert clusters["0-0"] == {"id": "0-0", "cluster": 0, "cluster_size": 3, "kept": True, "reason": None}
    assert clusters["2-0"]["cluster"] == 0 and clusters["2-0"]["reason"] == "exact_duplicate"


def test_without_normalisation_case_and_space_matter(tmp_path):
    _docs(tmp_path, [["Hello World", "hello world", "Hello World"]])
    m = llmpipe.run_stage("dedup", [str(tmp_path / "docs")], tmp_path / "dd", normalize=False)
    assert [d["id"] for d in rows(tmp_path / "dd")] == ["0-0", "0-1"] and m["counts"]["removed"] == 1


def test_normalisation_options(tmp_path):
    _docs(tmp_path, [["Café, au lait!", "cafe\u0301 au lait", "ｃａｆé au lait"]])
    m = llmpipe.run_stage("dedup", [str(tmp_path / "docs")], tmp_path / "a")
    assert m["counts"]["removed"] == 1, "NFKC folds full-width letters and composes the accent; punctuation still counts"
    m = llmpipe.run_stage("dedup", [str(tmp_path / "docs")], tmp_path / "b", remove_punctuation=True)
    assert m["counts"]["removed"] == 2


def test_parts_keep_the_input_layout_and_empty_parts_exist(tmp_path):
    _docs(tmp_path, [["same"], ["same"]])
    llmpipe.run_stage("dedup", [str(tmp_path / "docs")], tmp_path / "dd")
    assert sorted(p.name for p in (tmp_path / "dd").glob("part-*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]
    assert pq.read_table(tmp_path / "dd/part-00001.parquet").num_rows == 0
    assert not (tmp_path / "dd/_work").exists(), "intermediate files are removed once the manifest is written"


def test_params_are_checked_before_anything_runs(tmp_path):
    from llmpipe.errors import ConfigError

    _docs(tmp_path, [["a b c"]])
    for params, message in [({"threshold": 1.5}, "threshold: expected a number in (0, 1], got 1.5"),
                            ({"bands": 8}, "rows: give bands and rows together"),
                            ({"bands": 20, "rows": 8}, "bands: bands x rows = 20 x 8 must be positive and at most num_perm=128"),
                            ({"keep": "quality"}, 'quality_column: keep = "quality" needs a column "quality" in the input')]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            llmpipe.run_stage("dedup", [str(tmp_path / "docs")], tmp_path / "dd", **params)
    assert not (tmp_path / "dd").exists()


def test_defaults_remove_near_duplicates(tmp_path):
    """`llmpipe dedup --input docs --output out --threshold 0.8` removes a 0.93-similar copy: near-dedup is the default."""
    from tests.conftest import run_cli

    base = " ".join(f"word{i}" for i in range(100))
    _docs(tmp_path, [[base, base.replace("word50", "other"), "something else entirely here and now"]])
    res = run_cli("dedup", "--input", "docs", "--output", "out", "--threshold", "0.8", cwd=tmp_path, check=True)
    assert res.stdout.strip() == "documents=2 removed=1"
    assert [r["id"] for r in rows(tmp_path / "out")] == ["0-0", "0-2"]


def test_near_dedup_param_while_near_dedup_is_off_is_one_line(tmp_path):
    from tests.conftest import run_cli

    _docs(tmp_path, [["a b c"]])
    res = run_cli("dedup", "--input", "docs", "--output", "out", "--no-near-dedup", "--threshold", "0.7", cwd=tmp_path)
    assert res.returncode == 2 and not (tmp_path / "out").exists()
    assert res.stderr.strip() == ("error: dedup --threshold: only used by near-duplicate removal, which near_dedup = false turns off; "
                                  "drop threshold or turn near_dedup back on")
    m = llmpipe.run_stage("dedup", [str(tmp_path / "docs")], tmp_path / "exact", near_dedup=False)
    assert "near_duplicates" not in m["dedup"] or m["dedup"]["near_duplicates"] == 0



def test_keep_highest_quality_of_a_near_duplicate_cluster(tmp_path):
    base = " ".join(f"word{i}" for i in range(60))
    texts = [base, base.replace("word30", "other"), base.replace("word31", "other"), "something else entirely here and now"]
    table = pa.table({"id": ["a", "b", "c", "d"], "text": texts, "quality": pa.array([0.2, 0.9, None, 0.1], pa.float32())})
    pq.write_table(table, tmp_path / "scored.parquet")
    m = llmpipe.run_stage("dedup", [str(tmp_path / "scored.parquet")], tmp_path / "dd", keep="quality")
    assert [r["id"] for r in rows(tmp_path / "dd")] == ["b", "d"], "the best score stays; a missing score ranks last"
    assert m["dedup"]["near_duplicates"] == 2 and m["dedup"]["cluster_sizes"] == {"3": 1}
    assert rows(tmp_path / "dd")[0]["quality"] == pytest.approx(0.9), "the schema and extra columns are kept"

# --- near duplicates on real text ------------------------------------------------------------------


def real_documents(shared: Path, n: int, min_words: int = 80) -> list[str]:
    """Real documents: C4 pages, then Gutenberg paragraphs grouped to >= min_words words, spread evenly
    over each book (its first and last, the licence, included)."""
    docs = [json.loads(line)["text"] for line in (shared / "text/c4_demo.jsonl").read_text().splitlines()][: n // 2]
    books = sorted((shared / "text/gutenberg").glob("*.txt"))
    for k, book in enumerate(books):
        chunks, current = [], []
        for para in re.split(r"\n\s*\n", book.read_text(encoding="utf-8-sig")):
            current.append(para.strip())
            if sum(len(p.split()) for p in current) >= min_words:
                chunks.append("\n".join(current))
                current = []
        share = (n - len(docs)) // (len(books) - k)
        docs.extend(chunks[int(i)] for i in np.linspace(0, len(chunks) - 1, share))
    return docs


def shingle_set(text: str) -> set[bytes]:
    from llmpipe.text.minhash import MinHasher
    from llmpipe.text.normalize import TextNorm, normalize

    return set(MinHasher(ngram=5).shingles(normalize(pa.array([text]), TextNorm()).to_pylist()[0]))


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def edited_copy(text: str, target: float, rng: random.Random, vocabulary: list[str]) -> tuple[str, float]:
    """A copy of text with words replaced until the Jaccard of the 5-gram shingle sets is closest to target."""
    words = text.split()
    positions = rng.sample(range(len(words)), len(words))
    replacements = [rng.choice(vocabulary) for _ in words]
    original = shingle_set(text)

    def copy(k: int) -> str:
        w = list(words)
        for pos, rep in zip(positions[:k], replacements):
            w[pos] = rep
        return " ".join(w)

    lo, hi = 1, len(words)  # Jaccard falls as more words change: bisect on the number of edits (at least one)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if jaccard(original, shingle_set(copy(mid))) >= target else (lo, mid)
    best = min((lo, hi), key=lambda k: abs(jaccard(original, shingle_set(copy(k))) - target))
    return copy(best), jaccard(original, shingle_set(copy(best)))


LEVELS = (1.0, 0.97, 0.93, 0.9, 0.86, 0.74, 0.65, 0.5)  # Jaccard of planted copies; >= 0.8 are duplicates


def planted_corpus(shared: Path, n_base: int = 600, n_planted: int = 240, seed: int = 0) -> list[dict]:
    """Real documents plus copies at known Jaccard similarities (exact copies differ in case and spacing)."""
    rng = random.Random(seed)
    base = real_documents(shared, n_base)
    vocabulary = sorted({w for t in base for w in t.split()})
    docs = [{"id": f"base-{i}", "text": t} for i, t in enumerate(base)]
    for k, i in enumerate(rng.sample(range(len(base)), n_planted)):
        level = LEVELS[k % len(LEVELS)]
        if level == 1.0:
            text = base[i].upper().replace(" ", "  ")
        else:
            text, _ = edited_copy(base[i], level, rng, vocabulary)
        docs.append({"id": f"copy-{i}-{level}", "text": text})
    order = list(range(len(docs)))
    rng.shuffle(order)
    return [docs[i] for i in order]


def write_parts(docs: list[dict], dest: Path, n_parts: int) -> str:
    dest.mkdir(parents=True, exist_ok=True)
    size = -(-len(docs) // n_parts)
    for k in range(n_parts):
        (dest / f"part-{k}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs[k * size:(k + 1) * size]))
    return str(dest / "*.jsonl")


def true_pairs(docs: list[dict], threshold: float) -> set[tuple[str, str]]:
    """Every pair of documents whose exact Jaccard reaches threshold (pairs sharing no shingle cannot)."""
    sets = [shingle_set(d["text"]) for d in docs]
    index = defaultdict(list)
    for i, s in enumerate(sets):
        for sh in s:
            index[sh].append(i)
    candidates = {(a, b) for ids in index.values() if len(ids) < 200 for a, b in combinations(ids, 2)}
    return {tuple(sorted((docs[a]["id"], docs[b]["id"]))) for a, b in candidates if jaccard(sets[a], sets[b]) >= threshold}


def predicted_pairs(artifact: Path) -> set[tuple[str, str]]:
    groups = defaultdict(list)
    for r in pq.read_table(artifact / "clusters").to_pylist():
        groups[r["cluster"]].append(r["id"])
    return {tuple(sorted(p)) for ids in groups.values() for p in combinations(ids, 2)}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    docs = planted_corpus(SHARED_DATA)
    root = tmp_path_factory.mktemp("planted")
    llmpipe.run_stage("ingest", [write_parts(docs, root / "one", 1)], root / "docs1")
    llmpipe.run_stage("ingest", [write_parts(docs, root / "four", 4)], root / "docs4", task_bytes=1)  # four parts
    return docs, root


def test_near_duplicates_match_exact_jaccard(planted):
    docs, root = planted
    m = llmpipe.run_stage("dedup", [str(root / "docs1")], root / "near", threshold=0.8, num_perm=128)
    truth, found = true_pairs(docs, 0.8), predicted_pairs(root / "near")
    precision, recall = len(truth & found) / len(found), len(truth & found) / len(truth)
    print(f"planted corpus: {len(docs)} docs, {len(truth)} true pairs, {len(found)} found, precision {precision:.3f} recall {recall:.3f}")
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    d = m["dedup"]
    assert (d["bands"], d["rows"]) == (16, 8) and d["documents_in"] == len(docs)
    from llmpipe.text.normalize import TextNorm, normalize

    normalized = normalize(pa.array([x["text"] for x in docs]), TextNorm()).to_pylist()
    assert d["exact_duplicates"] == len(normalized) - len(set(normalized)) >= sum(1 for x in docs if x["id"].endswith("-1.0"))
    assert d["near_duplicates"] > 0 and m["counts"]["documents"] == len(docs) - d["exact_duplicates"] - d["near_duplicates"]
    kept = {r["id"] for r in rows(root / "near")}
    assert not any(set(p) <= kept for p in truth & found), "one document of each found pair is removed"


def test_split_run_keeps_the_same_documents_as_one_task(planted):
    _, root = planted
    one = llmpipe.run_stage("dedup", [str(root / "docs1")], root / "single", workers=1)
    four = llmpipe.run_stage("dedup", [str(root / "docs4")], root / "split", workers=2)
    assert [r["id"] for r in rows(root / "split")] == [r["id"] for r in rows(root / "single")]
    assert four["dedup"] == one["dedup"] and len(list((root / "split").glob("part-*.parquet"))) == 4


def test_keep_longest_and_line_dedup(planted):
    docs, root = planted
    m = llmpipe.run_stage("dedup", [str(root / "docs4")], root / "longest", keep="longest", line_dedup_max_docs=3)
    by_id = {d["id"]: d["text"] for d in docs}
    table = pq.read_table(root / "longest/clusters").to_pylist()
    kept = {r["cluster"]: r["id"] for r in table if r["kept"]}
    for r in table:
        if r["reason"] == "near_duplicate":
            assert len(by_id[kept[r["cluster"]]]) >= len(by_id[r["id"]])
    # after line dedup no line is left in more than 3 documents (the Gutenberg licence repeats across books)
    assert m["dedup"]["lines_removed"] > 0
    from llmpipe.text.lines import BLANK, distinct_per_document, line_hashes
    from llmpipe.text.normalize import TextNorm

    _, hashes = distinct_per_document(*line_hashes(pa.array([r["text"] for r in rows(root / "longest")]), TextNorm()))
    assert np.unique(hashes[hashes != BLANK], return_counts=True)[1].max() <= 3


def test_signatures_equal_datasketch(shared_data):
    datasketch = pytest.importorskip("datasketch")
    from llmpipe.text.minhash import MinHasher
    from llmpipe.text.normalize import TextNorm, normalize

    texts = real_documents(shared_data, 400)[250:] + ["", "one", "two words", "a b c d e"]
    normalized = normalize(pa.array(texts), TextNorm(remove_punctuation=True))
    for shingle, ngram, scheme, num_perm, seed in [("word", 5, "affine32", 128, 1), ("word", 3, "legacy", 64, 42), ("char", 9, "affine32", 256, 7)]:
        hasher = MinHasher(num_perm, seed, ngram, shingle, scheme)
        sigs, counts = hasher.signatures(normalized)
        for i, text in enumerate(normalized.to_pylist()):
            reference = datasketch.MinHash(num_perm=num_perm, seed=seed, scheme=scheme, hashfunc=hasher.hashfunc)
            shingles = hasher.shingles(text)
            reference.update_batch(shingles)
            assert counts[i] == len(shingles)
            assert np.array_equal(reference.hashvalues.astype(np.uint64), sigs[i].astype(np.uint64)), (shingle, scheme, i)
