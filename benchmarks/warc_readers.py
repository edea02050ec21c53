"""WARC readers for llmpipe's `ingest` stage: warcio versus FastWARC (resiliparse's `fastwarc`).

What it measures:

1. Throughput on the HTTP *response* records of ``<repo>/../shared/data/warc/**/*.warc.gz``
   (the broken and quirk files below excluded): per record, both readers do the same work an
   ingest task does -- target URI, HTTP Content-Type, and the whole payload with its
   transfer- and content-encodings decoded. Records/s and MB/s (decoded payload megabytes)
   per CPU-second on one core, median of ``--runs`` runs (default 5); each run reads the
   corpus enough times to last about a second. Both readers get the same open file
   objects, and their outputs are checked to be identical.
2. Behaviour on broken and legacy inputs (warcio's ``*bad*``, ``*trunc*``, ``*wrong-chunks*``,
   resiliparse's ``clipped.warc.gz``, every ``.arc``/``.arc.gz``, plus two quirk files): does
   the reader raise, skip silently, or yield partial records?

Data is read in place from ``<repo>/../shared/data/warc`` (never copied into the repo).

Run from the repository root:
    python benchmarks/warc_readers.py          # ~15 s
Install:
    pip install -c .ci/constraints.txt warcio fastwarc
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import statistics
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from _machine import pin_to_one_core  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from typing import BinaryIO, Callable, Iterator

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "warc"

# the files the brief calls broken or legacy, relative to DATA
BROKEN = [
    "warcio/*bad*", "warcio/*trunc*", "warcio/*wrong-chunks*", "resiliparse/clipped.warc.gz",
    "*/*.arc", "*/*.arc.gz",
]
# not broken, but each reader treats them differently
QUIRKS = ["warcio/example-space-in-target-uri.warc.gz", "resiliparse/warcfile.warc.lz4"]

# (target URI, Content-Type header, decoded payload)
Doc = tuple[str, "str | None", bytes]


# --------------------------------------------------------------------------------------------
# The two readers, written the way llmpipe's ingest would call them.
# --------------------------------------------------------------------------------------------


def warcio_responses(stream: BinaryIO) -> Iterator[Doc]:
    from warcio.archiveiterator import ArchiveIterator

    # arc2warc=True: ARC records get WARC-style headers (WARC-Target-URI, WARC-Date)
    for record in ArchiveIterator(stream, arc2warc=True):
        if record.rec_type != "response":
            continue
        uri = record.rec_headers.get_header("WARC-Target-URI")
        ctype = record.http_headers.get_header("Content-Type") if record.http_headers else None
        yield uri, ctype, record.content_stream().read()  # content_stream(): de-chunked, un-gzipped


def fastwarc_responses(stream: BinaryIO, quirks_mode: bool = False) -> Iterator[Doc]:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    # auto_decode defaults to "none" (raw chunked / gzip-encoded bodies); "all" matches warcio
    for record in ArchiveIterator(stream, record_types=WarcRecordType.response,
                                  auto_decode="all", quirks_mode=quirks_mode):
        # FastWARC returns the header verbatim: wget writes "<http://...>" (WARC 1.0 grammar typo)
        uri = (record.headers.get("WARC-Target-URI") or "").strip("<>")
        ctype = record.http_headers.get("Content-Type") if record.http_headers else None
        yield uri, ctype, record.reader.read()


# --------------------------------------------------------------------------------------------
# 1. Throughput
# --------------------------------------------------------------------------------------------


def read_all(reader: Callable[[BinaryIO], Iterator[Doc]], files: list[Path]) -> list[Doc]:
    docs = []
    for path in files:
        with open(path, "rb") as stream:
            docs.extend(reader(stream))
    return docs


def time_reader(reader: Callable[[BinaryIO], Iterator[Doc]], files: list[Path], repeat: int, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.process_time()
        for _ in range(repeat):
            for path in files:
                with open(path, "rb") as stream:
                    for _uri, _ctype, _payload in reader(stream):
                        pass
        times.append(time.process_time() - start)
    return times


def throughput(files: list[Path], runs: int) -> None:
    readers = {"warcio": warcio_responses, "FastWARC": fastwarc_responses}
    outputs = {name: read_all(fn, files) for name, fn in readers.items()}  # warm-up + parity
    docs = outputs["warcio"]
    same = sum(a == b for a, b in zip(outputs["warcio"], outputs["FastWARC"]))
    n_records, payload_mb = len(docs), sum(len(d[2]) for d in docs) / 1e6
    input_mb = sum(p.stat().st_size for p in files) / 1e6

    start = time.process_time()
    read_all(warcio_responses, files)
    repeat = max(1, math.ceil(1.0 / max(time.process_time() - start, 1e-6)))

    print(f"throughput corpus: {len(files)} files, {input_mb:.2f} MB compressed, {n_records} response "
          f"records, {payload_mb:.2f} MB decoded payload; read {repeat}x per run, median of {runs} runs")
    print(f"parity: {same}/{n_records} records identical (URI, Content-Type, payload) in both readers "
          f"(FastWARC counted {len(outputs['FastWARC'])})\n")
    print("| reader | version | records/s | payload MB/s | vs warcio |")
    print("|---|---|---|---|---|")
    base = None
    for name, fn in readers.items():
        seconds = statistics.median(time_reader(fn, files, repeat, runs))
        rate = n_records * repeat / seconds
        base = base or rate
        dist = "warcio" if name == "warcio" else "fastwarc"
        print(f"| {name} | {version(dist)} | {rate:,.0f} | {payload_mb * repeat / seconds:,.0f} | {rate / base:.1f}x |")


# --------------------------------------------------------------------------------------------
# 2. Broken and legacy files
# --------------------------------------------------------------------------------------------


def probe_warcio(stream: BinaryIO, out: dict) -> None:
    """Iterate every record, updating counts in ``out`` as it goes (so they survive an exception)."""
    from warcio.archiveiterator import ArchiveIterator

    iterator = ArchiveIterator(stream, arc2warc=True)
    try:
        for record in iterator:
            out["records"] += 1
            if record.rec_type == "response":
                out["responses"] += 1
                out["uri"] = out["uri"] or record.rec_headers.get_header("WARC-Target-URI")
                out["bytes"] += len(record.content_stream().read())
                # the block ended before its Content-Length: the record's limit reader has bytes left
                out["truncated"] += record.raw_stream.limit > 0
    finally:
        out["warnings"] += iterator.err_count  # "Record not followed by newline" (written to stderr)


def probe_fastwarc(stream: BinaryIO, out: dict, quirks_mode: bool = False) -> None:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    for record in ArchiveIterator(stream, auto_decode="all", quirks_mode=quirks_mode):
        out["records"] += 1
        if record.record_type == WarcRecordType.response:
            out["responses"] += 1
            out["uri"] = out["uri"] or record.headers.get("WARC-Target-URI")
            payload = record.reader.read()
            out["bytes"] += len(payload)
            # content_length is the raw body length: comparable only for an un-encoded body
            headers = record.http_headers
            encoded = headers is not None and (headers.get("Transfer-Encoding") or headers.get("Content-Encoding"))
            out["truncated"] += not encoded and len(payload) < record.content_length


def outcome(probe: Callable[[BinaryIO, dict], None], path: Path) -> dict:
    out = {"records": 0, "responses": 0, "bytes": 0, "truncated": 0, "warnings": 0, "error": "", "uri": ""}
    log = io.StringIO()  # warcio logs "Replacing spaces in invalid WARC-Target-URI" via logging
    handler = logging.StreamHandler(log)
    logging.getLogger("warcio").addHandler(handler)
    try:
        with open(path, "rb") as stream, contextlib.redirect_stderr(io.StringIO()):
            probe(stream, out)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:70]}"
    finally:
        logging.getLogger("warcio").removeHandler(handler)
    out["warnings"] += log.getvalue().count("Replacing spaces")
    return out


def verdict(r: dict) -> str:
    if r["error"] and r["records"]:
        return f"RAISES after {r['records']} record(s)"
    if r["error"]:
        return "RAISES at once"
    if r["records"] == 0:
        return "silently yields nothing"
    if r["truncated"]:
        return "partial record, no error"
    if r["responses"] and not r["bytes"]:
        return "empty response records, no error"
    return "ok" + (" (warns)" if r["warnings"] else "")


def broken_table() -> None:
    files = sorted({p for pattern in BROKEN + QUIRKS for p in DATA.glob(pattern)})
    probes = {
        "warcio": probe_warcio,
        "FastWARC": probe_fastwarc,
        "FastWARC quirks": lambda stream, out: probe_fastwarc(stream, out, quirks_mode=True),
    }
    print("\n| file | reader | outcome | records | responses | payload bytes | first response URI | error |")
    print("|---|---|---|---|---|---|---|---|")
    for path in files:
        for name, probe in probes.items():
            r = outcome(probe, path)
            print(f"| {path.relative_to(DATA)} | {name} | {verdict(r)} | {r['records']} | {r['responses']} "
                  f"| {r['bytes']:,} | {r['uri'][:32]} | {r['error']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per reader (median reported)")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"warc_readers: missing {DATA}\n  (expects the shared data folder beside the repo: ../shared/data/warc)")
    for dist in ("warcio", "fastwarc"):
        try:
            version(dist)
        except PackageNotFoundError:
            sys.exit(f"warc_readers: {dist} is not installed (pip install -c .ci/constraints.txt {dist})")

    excluded = {p for pattern in BROKEN + QUIRKS for p in DATA.glob(pattern)}
    files = [p for p in sorted(DATA.glob("**/*.warc.gz")) if p not in excluded]
    print(pin_to_one_core())
    throughput(files, args.runs)
    broken_table()
    print("\nrecords/s and MB/s: per CPU-second on one core; MB = decoded HTTP payload (HTML) megabytes.\n"
          "records: records of any type yielded before the end or the error; responses/payload bytes: "
          "HTTP response records and their decoded payload.\n"
          "partial record: a payload shorter than its record's declared length (the file ends inside it).\n"
          "first response URI: the WARC-Target-URI header as each reader returns it (before any clean-up).")


if __name__ == "__main__":
    main()
