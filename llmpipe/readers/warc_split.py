"""Where a big WARC can be cut between tasks: record-start offsets, found without reading the whole file.

Each task then reads the records that start in its byte range (llmpipe/readers/warc.py), so the
tasks together read exactly the records one task would, in the same order. (Where a corrupt record
stops the reader, one task loses the rest of the file; the pieces after the corrupt one still read
theirs.)

- .warc.gz / .wet.gz: every record is its own gzip member (the WARC standard's recommendation,
  what Common Crawl and every crawler write). Near each cut, the file is searched for a gzip
  header whose member inflates to "WARC/", a few KB read per cut. A whole-file gzip has no such
  member inside it and stays one task.
- .warc / .wet: the record headers are walked (Content-Length leads to the next record), reading
  only the headers. At the first record that does not end where its Content-Length says, the walk
  stops and the rest of the file stays in the last piece: a cut is made only where it is sure.
- ARC, .lz4 and .zst WARCs are not cut (rare at a size where it matters).
"""

from __future__ import annotations

import re
import zlib

GZIP_SUFFIXES = (".warc.gz", ".wet.gz")
PLAIN_SUFFIXES = (".warc", ".wet")
_GZIP_MAGIC = b"\x1f\x8b\x08"
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*(\d+)[ \t]*\r?$")
_SCAN_BLOCK = 1 << 20


def splittable(name: str) -> bool:
    return name.endswith(GZIP_SUFFIXES + PLAIN_SUFFIXES)


def cut_points(path: str, size: int, pieces: int) -> list[int]:
    """Up to pieces-1 increasing record-start offsets, each the first one at or after size*i/pieces."""
    if pieces < 2:
        return []
    targets = [size * i // pieces for i in range(1, pieces)]
    with open(path, "rb") as f:
        if path.endswith(GZIP_SUFFIXES):
            found = [_next_member(f, t, size) for t in targets]
        else:
            found = _first_records_after(f, size, targets)
    return sorted({p for p in found if p is not None and 0 < p < size})


def _next_member(f, start: int, size: int) -> int | None:
    """The first offset at or after start where a gzip member holding a WARC record begins."""
    pos = start
    while pos < size:
        f.seek(pos)
        block = f.read(_SCAN_BLOCK + len(_GZIP_MAGIC) - 1)  # overlap: a header across two blocks is seen once
        at = block.find(_GZIP_MAGIC)
        while 0 <= at < _SCAN_BLOCK:
            if _member_holds_warc(f, pos + at):
                return pos + at
            at = block.find(_GZIP_MAGIC, at + 1)
        pos += _SCAN_BLOCK
    return None


def _member_holds_warc(f, offset: int) -> bool:
    f.seek(offset)
    try:
        head = zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(f.read(1 << 16), 16)
    except zlib.error:
        return False
    return head.startswith(b"WARC/")


def _first_records_after(f, size: int, targets: list[int]) -> list[int | None]:
    """Walk the record headers of an uncompressed WARC; for each target the first record at or after it."""
    found: list[int | None] = []
    pos = 0
    for target in targets:
        while pos is not None and pos < target:
            pos = _next_record(f, pos, size)
        found.append(pos)
    return found


def _next_record(f, pos: int, size: int) -> int | None:
    """Where the record after the one at pos starts, or None when that is not certain."""
    f.seek(pos)
    head = f.read(8192)
    while b"\r\n\r\n" not in head and len(head) < (1 << 20):  # a header longer than one read
        more = f.read(len(head))
        if not more:
            break
        head += more
    end = head.find(b"\r\n\r\n")
    length = _CONTENT_LENGTH.search(head, 0, end) if head.startswith(b"WARC/") and end > 0 else None
    if length is None:
        return None
    nxt = pos + end + 4 + int(length.group(1)) + 4  # header, blank line, block, then the record's closing \r\n\r\n
    if nxt >= size:
        return None
    f.seek(nxt - 4)
    return nxt if f.read(9) == b"\r\n\r\nWARC/" else None
