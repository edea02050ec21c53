"""`llmpipe inspect`: an artifact's manifest, counts, stats and a few rows, readable in a terminal."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from llmpipe.artifacts.manifest import read_manifest
from llmpipe.log import console


def inspect_artifact(path: Path, rows: int = 3) -> None:
    m = read_manifest(path)
    console.print(f"[bold]{path}[/]  stage={m['stage']} v{m['version']}  fingerprint={m['fingerprint']}  kind={m.get('output_kind')}")
    console.print(f"params: {json.dumps(m.get('params', {}), sort_keys=True)}")
    for inp in m.get("inputs", []):
        console.print(f"input:  {inp['kind']:<8} {inp['path']}")
    if m.get("counts"):
        console.print("counts: " + "  ".join(f"{k}={v}" for k, v in m["counts"].items()))
    stats = m.get("stats", {})
    if stats.get("skipped"):
        console.print("skipped: " + "  ".join(f"{k}={v}" for k, v in sorted(stats["skipped"].items())))
    console.print(f"files:  {len(m.get('files', []))}  wall={m.get('timings', {}).get('wall_seconds')}s")
    if m.get("output_kind") == "documents" and m.get("files") and rows > 0:
        _show_documents(Path(path), m["files"], rows)


def _show_documents(path: Path, files: list[str], rows: int) -> None:
    import pyarrow.parquet as pq

    table = Table(show_lines=False)
    shown = 0
    for f in files:
        t = pq.read_table(path / f).slice(0, rows - shown)
        if not table.columns:
            for name in t.column_names:
                table.add_column(name, overflow="fold", no_wrap=True, max_width=70 if name == "text" else 28)
        for row in t.to_pylist():
            table.add_row(*[repr(v)[:200] if not isinstance(v, str) else v[:100].replace("\n", " ") for v in row.values()])
            shown += 1
        if shown >= rows:
            break
    console.print(table)
