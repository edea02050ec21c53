"""`llmpipe inspect`: an artifact's manifest, counts, stats and a few rows, readable in a terminal; or a GGUF file's
header, metadata and tensors (llmpipe/gguf_inspect.py)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.markup import escape

from llmpipe.artifacts.manifest import read_manifest
from llmpipe.errors import InputError
from llmpipe.log import stdout as console


def inspect_artifact(path: Path, rows: int = 3) -> None:
    if not Path(path).exists():
        raise InputError(f"{path}: no such file or directory; inspect takes an artifact directory, such as runs/pretrain/dedup")
    if Path(path).is_file() and Path(path).suffix.lower() == ".gguf":
        from llmpipe.gguf_inspect import show_gguf

        return show_gguf(path)
    m = read_manifest(path)
    console.print(f"[bold]{path}[/]  stage={m['stage']} v{m['version']}  fingerprint={m['fingerprint']}  kind={m.get('output_kind')}")
    console.print(f"params: {json.dumps(m.get('params', {}), sort_keys=True)}")
    for inp in m.get("inputs", []):
        console.print(f"input:  {inp['kind']:<8} {inp['path']}")
    if m.get("counts"):
        console.print("counts: " + "  ".join(f"{k}={v}" for k, v in m["counts"].items()))
    stats = m.get("stats", {})
    if stats.get("dropped"):
        console.print("dropped: " + "  ".join(f"{k}={v}" for k, v in sorted(stats["dropped"].items())))
    if stats.get("skipped"):
        console.print("skipped: " + "  ".join(f"{k}={v}" for k, v in sorted(stats["skipped"].items())))
    console.print(f"files:  {len(m.get('files', []))}  wall={m.get('timings', {}).get('wall_seconds')}s")
    if m.get("output_kind") == "documents" and m.get("files") and rows > 0:
        _show_documents(Path(path), m["files"], rows)
    if m.get("output_kind") == "checkpoint":
        _show_checkpoint(m)


def _show_checkpoint(m: dict) -> None:
    """What the model learned: its validation figures (bits per byte for pretrain; held-out loss or reward
    accuracy for sft and dpo, before -> after) and the samples written at the end of training."""
    metrics = m.get("metrics", {})
    if m.get("stage") == "quantize":
        params = m.get("params", {})
        console.print(f"quantized: {params.get('scheme')} {params.get('method')}, linear layers "
                      f"{metrics.get('compression_of_quantized_layers')}x smaller, mean relative weight error {metrics.get('weight_relative_error_mean')}")
    elif m.get("stage") == "pretrain":
        if "val_bpb" in metrics:
            loss = f"  (val loss {metrics['val_loss']:.4f})" if "val_loss" in metrics else ""
            console.print(f"val bits per byte: {metrics['val_bpb']:.4f}{loss}")
        else:
            console.print("val bits per byte: not measured (the tokens have no validation split; see tokenize --val-fraction)")
    else:
        for name, value in metrics.items():
            if not name.endswith("_before"):
                before = metrics.get(f"{name}_before")
                console.print(f"{name}: {f'{before:.4f} -> ' if before is not None else ''}{value:.4f}")
    samples = m.get("samples", {})
    for name, text in samples.items() if isinstance(samples, dict) else ((s["key"], f"{s['prompt']} -> {s['answer']}") for s in samples):
        # no markup: rich's escape() loses a backslash that precedes "[" (a sampled "\\[" showed as "\[")
        console.print(f"sample ({name}): {repr(text)}", markup=False, highlight=False)


def _show_documents(path: Path, files: list[str], rows: int) -> None:
    import pyarrow.parquet as pq

    shown = 0
    for f in files:
        for row in pq.read_table(path / f).slice(0, rows - shown).to_pylist():
            text = row.pop("text", "")
            meta = "  ".join(f"{k}={v}" for k, v in row.items() if v is not None)
            console.print(f"[dim]{f}[/] {escape(meta)}\n    {escape(text[:300].replace(chr(10), ' '))}{'…' if len(text) > 300 else ''}")
            shown += 1
        if shown >= rows:
            break
