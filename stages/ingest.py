"""Turn raw inputs (WARC/WET/ARC, HTML, JSONL/.gz/.zst, Parquet, plain text, embedded sources) into documents.

Input files are packed into tasks of about `task_bytes` (128 MiB) in their sorted order; each task
writes one Parquet part with its files' documents in that order, so 100,000 small files make a
few parts, not 100,000. A WARC/WET (.warc.gz, .warc, .wet.gz, .wet) bigger than task_bytes is split
between several tasks at record boundaries, each reading the records that start in its byte
range: the parts hold the same documents, in the same order, as one task would. A file removed
between planning and its task is counted (`missing_file`), as bad data is.

Web pages are decoded (BOM, HTTP and <meta> charset, UTF-8, then cp1252 or detection for non-Latin
scripts, as browsers do) and reduced to their main text by trafilatura (best measured quality) or
resiliparse (~15x faster); WET records are taken as they are. Plain-text and JSONL files are read as
UTF-8 when they are, else the same way (or with the `encoding` you name); manifest stats count the
codec each document was read with (`decoded_utf-8`, `decoded_cp1252`). Bad records (corrupt or
truncated WARC records, broken JSON lines, binary payloads) are counted by reason and skipped;
non-HTML responses, error statuses, empty and giant pages are counted drops. Lone surrogates (JSON
"\\udce9" escapes) become U+FFFD (`repaired_surrogates`). Files of other types in a directory or
glob (a stray .pdf) and broken or looping symlinks are skipped and counted.

Every document says where it came from, as datatrove's `file_path` and record ids do:
  source  the input as given (`data/crawl`, `data/*.jsonl`, `python-docs`), or the record's own
          `source` field (Dolma, RedPajama)
  path    the input file, as the input names it: the directory or glob base you gave joined with
          the file's path below it (`data/crawl/2024/index.html`), or the path of a single file as given
  line    the 1-based line of a JSONL or text record (where a block starts), or the row of a Parquet file
  offset  the byte offset of a WARC/ARC record in its file (compressed, as CDX indexes count);
          `id` is its WARC-Record-ID
Records without their own id get a stable hash of input, path and line (or offset) as `id`.

    llmpipe ingest --input embedded:python-docs --output runs/docs
    llmpipe ingest --input 'data/*.jsonl.gz' --output runs/web
    llmpipe ingest --input crawl/ --output runs/crawl --task-bytes 1   # as before: one task per file
    [steps.ingest]
    inputs = ["embedded:python-docs", "data/*.jsonl"]
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Iterator, Literal

from llmpipe.artifacts.documents import DocumentWriter
from llmpipe.artifacts.layout import part_name
from llmpipe.errors import DataError
from llmpipe.file_groups import ALONE, SKIP, all_files, file_size, pack, task_files
from llmpipe.inputs import EMBEDDED_PREFIX
from llmpipe.readers.charset import codec_name
from llmpipe.readers.embedded import CHAT_SOURCES
from llmpipe.log import log
from llmpipe.registry import Plan, Stage
from llmpipe.stats import TaskStats, check_bad_fraction

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".ndjson")
WARC_SUFFIXES = (".warc", ".warc.gz", ".warc.lz4", ".warc.zst", ".wet", ".wet.gz", ".arc", ".arc.gz", ".warc.txt")
HTML_SUFFIXES = (".html", ".htm", ".html.gz", ".htm.gz")
TEXT_SUFFIXES = (".txt", ".txt.gz", ".md", ".text", ".rst")
HTML_TYPES = ("text/html", "application/xhtml+xml", "text/plain")
BATCH_ROWS, BATCH_CHARS = 2048, 32 << 20  # documents handed to the writer at once: whichever comes first


@dataclass(frozen=True)
class Params:
    text_key: str = field(default="text", metadata={"help": "JSONL/Parquet field that holds the document text."})
    id_key: str = field(default="id", metadata={"help": "Field with the source's own document id (a stable hash is used when absent)."})
    url_key: str = field(default="url", metadata={"help": "Field with the document URL, if any."})
    text_split: Literal["file", "blank_line", "line"] = field(
        default="file", metadata={"help": "How plain-text files become documents: whole file, blank-line blocks, or lines."}
    )
    encoding: str = field(
        default="auto", metadata={"help": "Encoding of plain-text and JSONL files: auto (UTF-8, else cp1252 or detected, as browsers do) or a codec name (latin-1, cp1252, shift_jis) to force."}
    )
    min_chars: int = field(default=1, metadata={"help": "Skip documents shorter than this many characters (after stripping)."})
    max_chars: int = field(default=5_000_000, metadata={"help": "Skip documents longer than this (giant pages, dumps)."})
    max_bad_fraction: float = field(default=0.1, metadata={"help": "Fail when more than this fraction of records is bad."})
    extractor: Literal["trafilatura", "resiliparse"] = field(
        default="trafilatura", metadata={"help": "HTML main-text extractor: trafilatura (F1 0.96 on AEB) or resiliparse (~15x faster, F1 0.90)."}
    )
    max_page_bytes: int = field(default=5_000_000, metadata={"help": "Skip web payloads larger than this many bytes before extraction."})
    task_bytes: int = field(
        default=128 << 20, metadata={"help": "Bytes of input files per task and Parquet part (128 MiB: minutes of WARC extraction, seconds of JSONL); small files share a task, a bigger WARC is split at record boundaries; 1 gives each file its own task."}
    )

    def __post_init__(self):
        if not 0 <= self.max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction: expected a number in [0, 1], got {self.max_bad_fraction}")
        if self.task_bytes < 1:
            raise ValueError(f"task_bytes: expected a positive number of bytes, got {self.task_bytes}")
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars: {self.min_chars} is above max_chars={self.max_chars}")
        if self.encoding != "auto":
            try:
                codec_name(self.encoding)
            except LookupError:
                raise ValueError(f'encoding: unknown codec "{self.encoding}"; give auto or a codec name such as utf-8, cp1252, latin-1') from None


def file_kind(name: str) -> str | None:
    """Which reader reads a file, by its name; None for a type ingest does not read."""
    for kind, suffixes in (("web", WARC_SUFFIXES), ("html", HTML_SUFFIXES), ("jsonl", JSONL_SUFFIXES), ("parquet", (".parquet",)), ("text", TEXT_SUFFIXES)):
        if name.endswith(suffixes):
            return kind
    return None


def plan(params: Params, inputs) -> Plan:
    from llmpipe.readers.warc_split import cut_points, splittable

    pairs = all_files(inputs)
    sizes = []
    for inp, f in pairs:
        if inp.kind == "embedded":
            if inp.path.removeprefix(EMBEDDED_PREFIX) in CHAT_SOURCES:
                raise ValueError(f"inputs: {inp.path} holds fine-tuning rows, not documents; give it to sft or dpo")
            sizes.append(ALONE)
        else:
            sizes.append(file_size(f) if file_kind(os.path.basename(f)) else SKIP)
    if all(s == SKIP for s in sizes):
        unknown = sorted(os.path.basename(f) for inp in inputs for f in inp.files)
        raise ValueError(f"inputs: no file ingest can read in {', '.join(inp.path for inp in inputs)} ({_names(unknown)}); "
                         "it reads JSONL, Parquet, plain text (.txt, .md), HTML and WARC/WET/ARC files")
    files = [f for _, f in pairs]

    def cuts(k: int, size: int) -> list[int]:  # a big WARC in pieces of about task_bytes, cut where records start
        return cut_points(files[k], size, -(-size // params.task_bytes)) if splittable(files[k]) else []

    tasks = pack(sizes, params.task_bytes, cuts)
    return Plan(phases=[("read", tasks)], files=[part_name(i) for i in range(len(tasks))])


def _names(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {plural or word + 's'}"


def _stable_id(task: dict, where: int | None) -> str:
    """An id for a record without its own: input, file and line (or offset), so it is the same on every run."""
    return hashlib.sha1(f"{task['input']}\0{task['path']}\0{where}".encode()).hexdigest()[:20]


def _task_records(inputs, task: dict, params: Params, stats: TaskStats) -> Iterator[dict]:
    """The records of a task's files in order, each file's documents naming that file."""
    for inp, f in task_files(inputs, task):
        if inp.kind == "embedded":
            yield from _records({"source": f}, params, stats)
            continue
        if not file_kind(os.path.basename(f)):
            continue  # a stray .pdf between the files of a task: counted once, in finalize
        if not os.path.exists(f):
            stats.skip("missing_file", f"{inp.display_path(f)}: removed after the step was planned")
            continue
        offsets = task.get("offsets") or [0, None]
        yield from _records({"source": f, "input": os.path.normpath(inp.path), "path": inp.display_path(f), "offsets": offsets}, params, stats)


def _records(task: dict, params: Params, stats: TaskStats) -> Iterator[dict]:
    from llmpipe.readers import text as readers

    source = task["source"]
    if source.startswith(EMBEDDED_PREFIX):
        from llmpipe.readers.embedded import iter_embedded

        yield from iter_embedded(source[len(EMBEDDED_PREFIX):])
        return
    kind = file_kind(os.path.basename(source))
    if kind == "web":
        from llmpipe.readers.warc import iter_web_records

        yield from _page_documents(iter_web_records(source, stats, *task["offsets"]), task, params, stats)
        return
    if kind == "html":
        from llmpipe.readers.warc import WebRecord

        data = readers.read_decompressed(source, stats)
        if data is not None:
            yield from _page_documents([WebRecord(_stable_id(task, 0), "", None, "text/html", data, "response")], task, params, stats)
        return
    if kind == "jsonl":
        rows = readers.iter_jsonl(source, params.text_key, stats, params.encoding)
    elif kind == "parquet":
        rows = readers.iter_parquet(source, params.text_key, stats)
    else:
        rows = ((n, {params.text_key: t}) for n, t in readers.iter_plain_text(source, params.text_split, stats, params.encoding))
    for n, obj in rows:
        own_id = obj.get(params.id_key)
        url = obj.get(params.url_key)
        own_source = obj.get("source")
        rest = {k: v for k, v in obj.items() if k not in (params.text_key, params.id_key, params.url_key, "source")}
        yield {"id": str(own_id) if own_id not in (None, "") else _stable_id(task, n), "text": obj[params.text_key],
               "url": url if isinstance(url, str) else None, "source": own_source if isinstance(own_source, str) else task["input"],
               "path": task["path"], "line": n, "metadata": json.dumps(rest, ensure_ascii=False, default=str) if rest else None}


def _page_documents(records, task: dict, params: Params, stats: TaskStats) -> Iterator[dict]:
    """Web records -> documents: status and type checks, size cap, decoding, main-text extraction."""
    from llmpipe.readers.html import decode_html, extract_main_text, looks_binary

    for rec in records:
        mime = (rec.content_type or "").split(";")[0].strip().lower()
        if rec.status is not None and rec.status != 200:
            stats.drop("http_status")
            continue
        if mime and mime not in HTML_TYPES:
            stats.drop("non_html")
            continue
        if len(rec.payload) > params.max_page_bytes:
            stats.drop("too_large")
            continue
        if looks_binary(rec.payload):
            stats.skip("binary", rec.url)
            continue
        if rec.kind == "conversion" or mime == "text/plain":  # WET: already text
            text = rec.payload.decode("utf-8", "replace")
            encoding = "utf-8"
        else:
            html, encoding = decode_html(rec.payload, rec.content_type)
            text = extract_main_text(html, params.extractor, url=rec.url or None)
            if not text.strip():
                stats.drop("no_main_text")
                continue
        stats.count(f"decoded_{encoding}")
        yield {"id": rec.record_id or _stable_id(task, rec.offset), "text": text, "url": rec.url or None,
               "source": task["input"], "path": task["path"], "offset": rec.offset, "date": rec.date,
               "content_type": rec.content_type, "metadata": json.dumps({"encoding": encoding}) if encoding != "utf-8" else None}


def _repaired(rec: dict, stats: TaskStats) -> dict:
    """Strings UTF-8 can hold: lone surrogates become U+FFFD, so one such record never sinks the task."""
    from llmpipe.readers.charset import repair_surrogates

    repaired = 0
    for key, value in rec.items():
        if isinstance(value, str):
            rec[key], n = repair_surrogates(value)
            repaired += n
    if repaired:
        stats.count("repaired_surrogates")
    return rec


def read_task(ctx, task: dict) -> dict:
    params: Params = ctx.params
    stats = TaskStats()
    with DocumentWriter(ctx.out / part_name(ctx.task_index)) as writer:
        for batch in _batches(_documents(_task_records(ctx.inputs, task, params, stats), params, stats)):
            writer.write_rows(batch)
    return stats.to_json()


def _documents(records: Iterator[dict], params: Params, stats: TaskStats) -> Iterator[dict]:
    """Records within the length limits, with their strings made UTF-8-safe."""
    for rec in records:
        if _stripped_length(rec["text"]) < params.min_chars:
            stats.drop("too_short")
            continue
        if len(rec["text"]) > params.max_chars:
            stats.drop("too_large")
            continue
        stats.count("documents")
        stats.count("chars", len(rec["text"]))
        yield _repaired(rec, stats)


def _batches(docs: Iterator[dict], max_rows: int = BATCH_ROWS, max_chars: int = BATCH_CHARS) -> Iterator[list[dict]]:
    """Documents in lists of max_rows, or fewer once they hold max_chars of text: 2,048 pages of 5 MB
    would otherwise be 10 GB in memory at once."""
    batch, chars = [], 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc["text"])
        if len(batch) >= max_rows or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _stripped_length(text: str) -> int:
    """len(text.strip()) without copying the text (a document can be 100 MB): only its ends are stripped."""
    if not text or text.isspace():  # isspace stops at the first other character
        return 0
    k = 256
    while text[:k].isspace():
        k *= 2
    lead = len(text[:k]) - len(text[:k].lstrip())
    k = 256
    while text[-k:].isspace():
        k *= 2
    trail = len(text[-k:]) - len(text[-k:].rstrip())
    return len(text) - lead - trail


def finalize(ctx, stats: dict, records: dict) -> dict:
    _count_skipped_files(ctx, stats)
    hint = _text_key_hint(stats, ctx.params)
    try:
        check_bad_fraction(stats, "documents", ctx.params.max_bad_fraction, f"ingest {ctx.out}")
    except DataError as e:
        raise DataError(f"{e}{hint}") from None
    if hint:
        log(f"warning: ingest: {stats['skipped']['no_text']} records had no text{hint}")
    return {"counts": {"documents": stats.get("counts", {}).get("documents", 0), "chars": stats.get("counts", {}).get("chars", 0)}, "stats": stats}


def _count_skipped_files(ctx, stats: dict) -> None:
    """Files of other types and unreadable entries: counted in the stats, named in one warning line."""
    unknown = [f for inp in ctx.inputs if inp.kind != "embedded" for f in inp.files if not file_kind(os.path.basename(f))]
    unreadable = [f for inp in ctx.inputs for f in inp.skipped]
    counts = stats.setdefault("counts", {})
    parts = []
    if unknown:
        counts["skipped_unknown_type"] = len(unknown)
        parts.append(f"{_plural(len(unknown), 'file')} of a type it does not read ({_names([os.path.basename(f) for f in unknown])})")
    if unreadable:
        counts["skipped_unreadable"] = len(unreadable)
        parts.append(f"{_plural(len(unreadable), 'broken, looping or unreadable entry', 'broken, looping or unreadable entries')} ({_names([os.path.basename(f) for f in unreadable])})")
    if parts:
        log(f"warning: ingest skipped {' and '.join(parts)}")


def _text_key_hint(stats: dict, params: Params) -> str:
    """When records lack the text field: what the first one holds instead, and the param to set."""
    missing = (f'no "{params.text_key}"', f'no column "{params.text_key}"')
    sample = next((s for s in stats.get("samples", {}).get("no_text", []) if any(m in s for m in missing)), None)
    return f"; {sample}; name the text field with --text-key (text_key in a pipeline file)" if sample else ""


STAGE = Stage(
    name="ingest", version=5, params=Params, doc=__doc__, plan=plan, run_task={"read": read_task},
    finalize=finalize, output_kind="documents", input_kinds=("raw", "documents"),
)
