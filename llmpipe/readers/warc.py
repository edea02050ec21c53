"""WARC / WET / ARC records -> (record id, byte offset, url, date, content type, payload) with bad records counted.

FastWARC reads WARC (gzip, lz4, zstd, also whole-file gzip and wrong chunk sizes that warcio
rejects) about 3x faster than warcio (benchmarks/warc_readers.py); warcio reads the ARC files
FastWARC cannot. Truncated last records are detected and skipped, never half-ingested.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

from llmpipe.stats import TaskStats


@dataclass
class WebRecord:
    record_id: str
    url: str
    date: str | None
    content_type: str | None  # full header value, charset included
    payload: bytes
    kind: str  # "response" (HTML to extract) or "conversion" (WET: text already extracted)
    status: int | None = None
    offset: int | None = None  # where the record starts in the file (compressed bytes for .gz, as CDX indexes count)


def iter_web_records(path: str, stats: TaskStats, start: int = 0, end: int | None = None) -> Iterator[WebRecord]:
    """The records of a file; with start/end, only those that start in [start, end), where start is a
    record's offset (llmpipe/readers/warc_split.py), so a file's pieces read as the whole file does."""
    name = os.path.basename(path)
    if name.endswith((".arc", ".arc.gz")):
        yield from _iter_warcio(path, stats)
    else:
        yield from _iter_fastwarc(path, stats, start, end)


def _iter_fastwarc(path: str, stats: TaskStats, start: int = 0, end: int | None = None) -> Iterator[WebRecord]:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    name = os.path.basename(path)
    valid = malformed = 0
    try:
        with open(path, "rb") as stream:
            stream.seek(start)  # FastWARC's offsets stay those of the whole file
            for rec in ArchiveIterator(stream, auto_decode="all"):
                if end is not None and rec.stream_pos >= end:
                    break  # the next piece's first record
                rid = (rec.headers.get("WARC-Record-ID") or "").strip("<>")
                if not rid:  # a header block FastWARC could not split (LF line endings, garbage)
                    stats.skip("bad_warc_record", f"{name}: malformed record header")
                    malformed += 1
                    continue
                valid += 1
                kind = rec.record_type
                if kind not in (WarcRecordType.response, WarcRecordType.conversion, WarcRecordType.resource):
                    continue  # warcinfo, request, metadata, revisit: nothing to ingest
                url = (rec.headers.get("WARC-Target-URI") or "").strip("<>")  # wget writes <uri>
                date = rec.headers.get("WARC-Date")
                payload = rec.reader.read()
                h = rec.http_headers if kind == WarcRecordType.response else None
                if h is None:  # WET conversion, resource, or a response without HTTP headers
                    if len(payload) < rec.content_length:
                        stats.skip("truncated_record", f"{name}: {url}")
                        continue
                    text_kind = "conversion" if kind == WarcRecordType.conversion else "response"
                    yield WebRecord(rid, url, date, rec.headers.get("Content-Type"), payload, text_kind, offset=rec.stream_pos)
                    continue
                declared = h.get("Content-Length", "")
                if not (h.get("Transfer-Encoding") or h.get("Content-Encoding")) and declared.isdigit() and len(payload) < int(declared):
                    stats.skip("truncated_record", f"{name}: {url}")
                    continue
                yield WebRecord(rid, url, date, h.get("Content-Type"), payload, "response", h.status_code, rec.stream_pos)
    except (OSError, ValueError) as e:  # "Invalid WARC header", broken compression
        stats.skip("bad_warc", f"{name}: {e}")
        return
    if valid == 0 and malformed == 0 and start == 0 and end is None and os.path.getsize(path) > 0:
        stats.skip("bad_warc", f"{name}: no readable WARC records")


def _iter_warcio(path: str, stats: TaskStats) -> Iterator[WebRecord]:
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    name = os.path.basename(path)
    try:
        with open(path, "rb") as stream:
            records = ArchiveIterator(stream, arc2warc=True)
            for rec in records:
                if rec.rec_type != "response":
                    continue
                offset = records.get_record_offset()
                url = rec.rec_headers.get_header("WARC-Target-URI") or ""
                payload = rec.content_stream().read()
                if rec.raw_stream.limit > 0:
                    stats.skip("truncated_record", f"{name}: {url}")
                    continue
                status = rec.http_headers.get_statuscode() if rec.http_headers else None
                yield WebRecord(
                    "", url, rec.rec_headers.get_header("WARC-Date"),  # ARC has no record ids (warcio makes random ones)
                    rec.http_headers.get_header("Content-Type") if rec.http_headers else None, payload, "response",
                    int(status) if status and str(status).isdigit() else None, offset,
                )
    except (ArchiveLoadFailed, OSError, ValueError, EOFError) as e:
        stats.skip("bad_warc", f"{name}: {' '.join(str(e).split())[:200]}")  # warcio's messages span lines
