"""Document artifacts: Parquet parts (zstd), one row per document: id, text, url, source, path, line, offset, date, content_type, metadata, ...

`metadata` is a JSON object (as a string) of whatever else the source record carried. `path`,
`line` and `offset` say which input record a document came from (see stages/ingest.py); later
stages copy every column through, so kept and rejected documents keep them.

Readers stream record batches so memory stays bounded by the batch, not the corpus. Writers
buffer a row group, write it, and rename the part into place only when it is complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from llmpipe.artifacts.layout import atomic_path

BASE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("source", pa.string()),
        pa.field("path", pa.string()),  # the input file, as the input names it
        pa.field("line", pa.int64()),  # 1-based line (JSONL, text) or row (Parquet) of the record
        pa.field("offset", pa.int64()),  # byte offset of a WARC/ARC record in its file
        pa.field("date", pa.string()),  # fetch date (WARC-Date) where the source has one
        pa.field("content_type", pa.string()),
        pa.field("metadata", pa.string()),
    ]
)
ROW_GROUP_BYTES = 64 << 20
NO_STATISTICS = ("text",)


class DocumentWriter:
    """Write one Parquet part; use as a context manager so a failure leaves no part behind."""

    def __init__(self, path: Path, schema: pa.Schema = BASE_SCHEMA):
        self.path = Path(path)
        self.schema = schema
        self.rows = 0
        self._buffer: list[pa.RecordBatch] = []
        self._buffered_bytes = 0

    def __enter__(self) -> "DocumentWriter":
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        # No min/max statistics for the text: useless for documents, and Parquet keeps copies of the
        # extremes while it writes (3.4x a giant document's size at its peak, measured on 20 MB).
        stats = [name for name in self.schema.names if name not in NO_STATISTICS]
        self._writer = pq.ParquetWriter(tmp, self.schema, compression="zstd", write_statistics=stats)
        return self

    def write_rows(self, rows: Sequence[dict]) -> None:
        if rows:
            self.write_batch(pa.RecordBatch.from_pylist(list(rows), schema=self.schema))

    def write_batch(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows == 0:
            return
        if isinstance(batch, pa.Table):
            batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else batch
        if batch.schema != self.schema:
            batch = pa.RecordBatch.from_arrays(
                [batch.column(name).cast(f.type) for name, f in zip(self.schema.names, self.schema)],
                schema=self.schema,
            )
        self._buffer.append(batch)
        self._buffered_bytes += batch.nbytes
        self.rows += batch.num_rows
        if self._buffered_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._writer.write_table(pa.Table.from_batches(self._buffer, schema=self.schema))
            self._buffer, self._buffered_bytes = [], 0
            # mimalloc keeps freed row groups' pages otherwise: 617 -> 725 MB from 100 to 200 MB of 10 MB documents
            pa.default_memory_pool().release_unused()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._flush()
        finally:
            self._writer.close()
            self._atomic.__exit__(exc_type, exc, tb)


def iter_batches(path: Path, columns: Sequence[str] | None = None, batch_size: int = 4096) -> Iterator[pa.RecordBatch]:
    """Stream a Parquet part as record batches, one row group at a time: a batch never spans row groups, so
    memory follows the writer's row-group bound (ROW_GROUP_BYTES) however large the documents, where 4,096
    rows of 50 MB pages read at once would hold them all."""
    pf = pq.ParquetFile(path)
    for group in range(pf.num_row_groups):
        yield from pf.iter_batches(batch_size=batch_size, row_groups=[group], columns=list(columns) if columns else None)
        pa.default_memory_pool().release_unused()  # else the allocator keeps the largest group's pages


def read_table(paths: Sequence[Path], columns: Sequence[str] | None = None) -> pa.Table:
    """Whole parts as one table: for tests, inspection and small artifacts only."""
    tables = [pq.read_table(p, columns=list(columns) if columns else None) for p in paths]
    return pa.concat_tables(tables) if tables else BASE_SCHEMA.empty_table()


def count_rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows
