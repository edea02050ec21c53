"""Fuzz targets for the data formats ingest reads (WARC/WET/ARC, HTML, JSONL, Parquet, plain text) and for pipeline
files (TOML), each read as a run reads it.

Seeds are cut from the real files in ../shared/data to at most SEED_BYTES, so one input takes milliseconds (main-text
extraction dominates: trafilatura needs ~8 ms for 16 KB of HTML). Compressed formats get two targets: one whose `wrap`
compresses the mutated bytes (the mutations reach the format inside), and one that mutates the compressed bytes.
The pipeline-file target runs `llmpipe status` under tests/fuzz/containment.py: any write fails it.
"""

from __future__ import annotations

import functools
import gzip
import os
import re
from pathlib import Path

from tests.fuzz.containment import contained
from tests.fuzz.targets import Target, target

SEED_BYTES = 16 << 10


# --- reading one input file as an ingest task does ------------------------------------------------------------------


def _ingest(path: Path, **params) -> None:
    """One ingest task's reading of the file (records, repairs, the rows as the Parquet part's writer takes them, in
    memory: writing the part costs ~8 ms an input), then the step's finish: a bad record is a counted skip, too many
    of them the one-line DataError the user sees. Every counted sample must be one line too, since `llmpipe inspect`
    and that error show them."""
    import pyarrow as pa

    from llmpipe.artifacts.documents import BASE_SCHEMA
    from llmpipe.stats import TaskStats
    from llmpipe.step import TaskContext
    from stages.ingest import Params, _records, _repaired, finalize

    ctx = TaskContext(out=path.parent, params=Params(**params), inputs=[], phase="read", task_index=0, n_tasks=1, run={})
    task = {"source": str(path), "input": str(path.parent), "path": str(path), "offsets": [0, None]}  # the whole file, as a task of whole files reads it
    stats = TaskStats()
    rows = [_repaired(rec, stats) for rec in _records(task, ctx.params, stats)]
    pa.RecordBatch.from_pylist(rows, schema=BASE_SCHEMA)
    stats.count("documents", len(rows))
    for reason, samples in stats.samples.items():
        for sample in samples:
            assert len(sample.splitlines()) <= 1, f"a {reason} sample of several lines: {sample!r}"
    finalize(ctx, stats.to_json(), {})


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=1).compress(data)


def _gzip_members(data: bytes, record_start: bytes) -> bytes:
    """One gzip member per record, as crawlers write .warc.gz and .arc.gz (each record seekable on its own)."""
    return b"".join(_gzip(part) for part in re.split(b"(?=" + record_start + b")", data) if part)


WARC_RECORD = rb"WARC/1\.[01]\r?\n"
ARC_RECORD = rb"(?<=\n)[a-z]+:\S* \d+\.\d+\.\d+\.\d+ \d{14} "  # a record's header line: url ip date (mime length)


# --- seeds: small pieces of the real files --------------------------------------------------------------------------


def _decompressed(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            return gzip.decompress(data)
        except (OSError, EOFError):  # a deliberately broken sample: keep its bytes as they are
            return data
    return data


def _packed(records: list[bytes], first: bytes = b"") -> list[bytes]:
    """Records grouped into seeds of at most SEED_BYTES (each starting with `first`, an ARC's file header), in order;
    a record larger than that is left out."""
    seeds, seed = [], first
    for rec in records:
        if len(first) + len(rec) > SEED_BYTES:
            continue
        if len(seed) + len(rec) > SEED_BYTES:
            seeds.append(seed)
            seed = first
        seed += rec
    if len(seed) > len(first):
        seeds.append(seed)
    return seeds


def _warc_seeds(files: list[Path], per_file: int = 3) -> list[bytes]:
    """Decompressed WARC records of each file, packed into a few seeds per file."""
    seeds = []
    for path in files:
        records = [r for r in re.split(b"(?=" + WARC_RECORD + b")", _decompressed(path)) if r]
        seeds += _packed(records)[:per_file]
    return seeds


def _warc_files(shared: Path) -> list[Path]:
    root = shared / "warc"
    if not root.is_dir():
        return []
    names = ["warcio/example.warc", "warcio/example-trunc.warc", "warcio/example-iana.org-chunked.warc",
             "warcio/example-digest.warc", "warcio/example-resource.warc.gz", "warcio/example-wget-bad-target-uri.warc.gz",
             "warcio/example-wrong-chunks.warc.gz", "warcio/post-test.warc.gz", "warcio/example-space-in-target-uri.warc.gz",
             "warcio/example-bad-non-chunked.warc.gz", "resiliparse/warcfile.warc.gz", "dolma/sample-0000.warc.gz",
             "dolma/sample-0001.warc.gz"]
    return [root / n for n in names if (root / n).is_file()]


def _wet_files(shared: Path) -> list[Path]:
    names = ["commoncrawl/whirlwind.warc.wet.gz", "cc_net/sample.warc.txt", "commoncrawl/whirlwind.warc.wat.gz"]
    return [shared / "warc" / n for n in names if (shared / "warc" / n).is_file()]


def _raw_small(paths: list[Path]) -> list[bytes]:
    """Files as they are on disk, those small enough to be seeds."""
    return [p.read_bytes() for p in paths if p.stat().st_size <= 2 * SEED_BYTES]


def _arc_records(data: bytes) -> tuple[bytes, list[bytes]]:
    """(the file header record, the other records) of an uncompressed ARC file (version 1: a header line ending in the
    record's length, that many bytes, a newline)."""
    records, pos = [], 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            break
        length = data[pos:end].rsplit(b" ", 1)[-1]
        if not length.isdigit():
            break
        stop = min(end + 1 + int(length), len(data))
        records.append(data[pos:stop])
        pos = stop
        while data[pos:pos + 1] == b"\n":  # the newline after each record
            pos += 1
    return (records[0], records[1:]) if records else (b"", [])


def _shrunk_arc_record(record: bytes, size: int) -> bytes:
    """A real ARC record with its page cut to about `size` bytes, its lengths fixed to match (the HTTP Content-Length
    line is dropped), so it reads as a whole record and not as a truncated one."""
    header, body = record.split(b"\n", 1)
    body = re.sub(rb"(?im)^content-length:[^\n]*\n", b"", body[:size])
    return header.rsplit(b" ", 1)[0] + b" " + str(len(body)).encode() + b"\n" + body + b"\n"


def _arc_seeds(shared: Path) -> list[bytes]:
    root = shared / "warc"
    seeds = [_decompressed(root / n) for n in ("warcio/example.arc", "warcio/bad.arc", "warcio/example-space-in-url.arc")
             if (root / n).is_file()]
    copycat = root / "copycat" / "cc-2009-small-sample.arc.gz"
    if copycat.is_file():
        header, records = _arc_records(_decompressed(copycat))
        header += b"\n"
        seeds += [header + _shrunk_arc_record(a, 6000) + _shrunk_arc_record(b, 6000) for a, b in zip(records[::2], records[1::2])]
    return seeds


def _html_seeds(shared: Path) -> list[bytes]:
    """Pages of the AEB and trafilatura evaluation sets (a few of each), cut to SEED_BYTES."""
    seeds = []
    for folder in ("web/aeb/html", "web/trafilatura/html"):
        files = sorted((shared / folder).glob("*.html.gz")) if (shared / folder).is_dir() else []
        seeds += [gzip.decompress(p.read_bytes())[:SEED_BYTES] for p in files[::max(1, len(files) // 8)]]
    return seeds


def _jsonl_seeds(shared: Path) -> list[bytes]:
    """Lines of C4 and Dolma (their own metadata fields, ids and sources)."""
    seeds = []
    if (shared / "text" / "c4_demo.jsonl").is_file():
        seeds.append(_lines_upto(open(shared / "text" / "c4_demo.jsonl", "rb"), 5))
    for path in sorted((shared / "text" / "dolma").glob("*.jsonl.gz")) if (shared / "text" / "dolma").is_dir() else []:
        seeds.append(_lines_upto(gzip.open(path, "rb"), 3))
    return seeds


def _lines_upto(f, n: int) -> bytes:
    with f:
        lines = [f.readline() for _ in range(n)]
    out = b""
    for line in lines:
        if len(out) + len(line) > SEED_BYTES:
            break
        out += line
    return out or lines[0][:SEED_BYTES]


def _raw_jsonl_gz_seeds(shared: Path) -> list[bytes]:
    """The head of a real Dolma .jsonl.gz as it is on disk (a cut gzip stream), and small complete ones."""
    seeds = [_gzip(s) for s in _jsonl_seeds(shared)]
    dolma = sorted((shared / "text" / "dolma").glob("*.jsonl.gz")) if (shared / "text" / "dolma").is_dir() else []
    return seeds + [p.read_bytes()[:SEED_BYTES] for p in dolma[:1]]


def _text_seeds(shared: Path) -> list[bytes]:
    """Plain text: Shakespeare, Wikipedia, Gutenberg (with their blank-line paragraphs), plus a piece saved in legacy
    code pages, so the detector's path is taken."""
    root = shared / "text"
    names = ["tinyshakespeare.txt", "wiki_demo.txt", "wikitext-2/valid.txt", "gutenberg/alice_in_wonderland.txt"]
    seeds = [(root / n).read_bytes()[:4096] for n in names if (root / n).is_file()]
    if seeds:
        text = seeds[0].decode("utf-8", "ignore")
        seeds += [text.encode("cp1252", "replace"), (text[:1000] + " Привет мир, это проверка.").encode("cp1251", "replace"),
                  "\ufeff".encode("utf-16-le") + text[:1000].encode("utf-16-le")]
    return seeds


def _parquet_seeds(shared: Path, tmp: Path) -> list[bytes]:
    """Small Parquet files written from real C4 rows: several codecs, row groups, and a file without the text column."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    c4 = shared / "text" / "c4_demo.jsonl"
    if not c4.is_file():
        return []
    with open(c4, "rb") as f:
        rows = [json.loads(f.readline()) for _ in range(6)]
    for row in rows:
        row["text"] = row["text"][:1500]
    table = pa.Table.from_pylist(rows)
    seeds = []
    for i, (kwargs, tbl) in enumerate([
        ({"compression": "none"}, table),
        ({"compression": "snappy", "row_group_size": 2}, table),
        ({"compression": "zstd", "use_dictionary": False}, table),
        ({"compression": "gzip", "write_statistics": False}, table.select(["text"])),
        ({"compression": "none"}, table.rename_columns([f"c{j}" for j in range(table.num_columns)])),
    ]):
        path = tmp / f"seed-{i}.parquet"
        pq.write_table(tbl, path, **kwargs)
        seeds.append(path.read_bytes())
    return seeds


# --- the targets ----------------------------------------------------------------------------------------------------


def _seeds_if(folder: str, make):
    """Seeds from shared/<folder>, or none when the real data is absent."""
    return lambda shared, tmp: make(shared) if (shared / folder).is_dir() else []


_resiliparse = functools.partial(_ingest, extractor="resiliparse")
_warc = lambda shared: _warc_seeds(_warc_files(shared))  # noqa: E731
_wet = lambda shared: _warc_seeds(_wet_files(shared))  # noqa: E731
_warc_members = lambda b: _gzip_members(b, WARC_RECORD)  # noqa: E731

target(Target(name="jsonl", suffix=".jsonl", read=_ingest, seeds=_seeds_if("text", _jsonl_seeds)))
target(Target(name="jsonl_gz", suffix=".jsonl.gz", read=_ingest, wrap=_gzip, seeds=_seeds_if("text", _jsonl_seeds)))
target(Target(name="jsonl_zst", suffix=".jsonl.zst", read=_ingest, wrap=_zstd, seeds=_seeds_if("text", _jsonl_seeds)))
target(Target(name="jsonl_gz_raw", suffix=".jsonl.gz", read=_ingest, seeds=_seeds_if("text", _raw_jsonl_gz_seeds)))
target(Target(name="jsonl_zst_raw", suffix=".jsonl.zst", read=_ingest,
              seeds=_seeds_if("text", lambda shared: [_zstd(s) for s in _jsonl_seeds(shared)])))
target(Target(name="parquet", suffix=".parquet", read=_ingest, seeds=_parquet_seeds))
for _split in ("file", "blank_line", "line"):
    target(Target(name=f"text_{_split}", suffix=".txt", read=functools.partial(_ingest, text_split=_split),
                  seeds=_seeds_if("text", _text_seeds)))
target(Target(name="text_gz_raw", suffix=".txt.gz", read=_ingest,
              seeds=_seeds_if("text", lambda shared: [_gzip(s) for s in _text_seeds(shared)])))

# Pages go through trafilatura (the default extractor) in the plain-format targets; the compressed variants, which
# are about the compression and the container, use resiliparse (~15x faster), so 10,000 inputs each stay quick.
target(Target(name="warc", suffix=".warc", read=_ingest, seeds=_seeds_if("warc", _warc)))
target(Target(name="warc_gz", suffix=".warc.gz", read=_resiliparse, wrap=_warc_members, seeds=_seeds_if("warc", _warc)))
target(Target(name="warc_gz_raw", suffix=".warc.gz", read=_resiliparse, seeds=_seeds_if("warc", lambda shared: _raw_small(
    [p for p in sorted((shared / "warc").rglob("*")) if p.name.endswith((".warc.gz", ".warc.gz.bad"))]))))
target(Target(name="wet", suffix=".wet", read=_ingest, seeds=_seeds_if("warc", _wet)))
target(Target(name="wet_gz", suffix=".warc.wet.gz", read=_ingest, wrap=_warc_members, seeds=_seeds_if("warc", _wet)))
target(Target(name="arc", suffix=".arc", read=_ingest, seeds=_seeds_if("warc", _arc_seeds)))
target(Target(name="arc_gz", suffix=".arc.gz", read=_resiliparse, wrap=lambda b: _gzip_members(b, ARC_RECORD),
              seeds=_seeds_if("warc", _arc_seeds)))
target(Target(name="arc_gz_raw", suffix=".arc.gz", read=_resiliparse, seeds=_seeds_if("warc", lambda shared: [
    (shared / "warc" / n).read_bytes()[:2 * SEED_BYTES]
    for n in ("warcio/example.arc.gz", "copycat/cc-2009-small-sample.arc.gz") if (shared / "warc" / n).is_file()])))
target(Target(name="html", suffix=".html", read=_ingest, seeds=_seeds_if("web", _html_seeds)))
target(Target(name="html_resiliparse", suffix=".html", read=_resiliparse, seeds=_seeds_if("web", _html_seeds)))
target(Target(name="html_gz_raw", suffix=".html.gz", read=_resiliparse,
              seeds=_seeds_if("web", lambda shared: [_gzip(s) for s in _html_seeds(shared)])))


# --- pipeline files -------------------------------------------------------------------------------------------------


def _pipeline_home(scratch: Path) -> Path:
    """Where a fuzzed pipeline file's relative paths point: a folder beside the fuzzer's scratch dir that the seeds
    fill with small real inputs (data/crawl/*.warc.gz, data/eval/hellaswag_val.jsonl, ...)."""
    return scratch.parent / "pipeline-home"


def _pipeline_seeds(shared: Path, tmp: Path) -> list[bytes]:
    """The repository's pipeline files, reading small real inputs at the relative paths they name."""
    from tests.conftest import REPO

    if not (shared / "warc").is_dir():
        return []
    home = _pipeline_home(tmp / "scratch")
    (home / "data" / "crawl").mkdir(parents=True)
    (home / "data" / "eval").mkdir(parents=True)
    (home / "data" / "crawl" / "example.warc.gz").write_bytes((shared / "warc" / "warcio" / "example.warc.gz").read_bytes())
    (home / "data" / "eval" / "hellaswag_val.jsonl").write_bytes(_lines_upto(open(shared / "eval" / "hellaswag_val.jsonl", "rb"), 3))
    files = {p.stem: p.read_text() for p in sorted((REPO / "pipelines").glob("*.toml"))}
    steps = {name: text[text.index("[steps."):] for name, text in files.items()}
    # data -> gpu -> finetune as one file (the three read each other's outputs by path), so every step plans (on a CPU)
    gpu = steps["gpu"].replace('"runs/data/tokens"', '"tokens"').replace('"runs/data/tokenizer"', '"tokenizer"')
    chained = (files["data"] + gpu.replace('device = "cuda"', 'device = "cpu"')
               + steps["finetune"].replace('"runs/pretrain/model"', '"model"').replace("[steps.evaluate]", '[steps.evaluate_chat]\nstage = "evaluate"'))
    return [text.encode() for text in files.values()] + [chained.encode()]


def _pipeline_status(path: Path) -> None:
    """`llmpipe status FILE` (what `llmpipe run --dry-run` prints too): the file checked, every step built and planned,
    its state read; a run's working directory is the pipeline home, and nothing may be written anywhere."""
    import contextlib

    from llmpipe.pipeline import load_pipeline
    from llmpipe.runner import plan_status, print_status

    os.chdir(_pipeline_home(path.parent))
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contained(read_only_below=path.parent.parent):
        print_status(plan_status(load_pipeline(path)))


target(Target(name="pipeline_toml", suffix=".toml", read=_pipeline_status, seeds=_pipeline_seeds))
