"""The report's PNG plots, drawn from the collected data with llmpipe/plots.py's helpers into plots/."""

from __future__ import annotations

from pathlib import Path

REASONS_PER_STEP = 8  # a step's largest removal reasons drawn one bar each; the rest share an "other" bar


def draw(report: dict, plots: Path) -> list[str]:
    """Draw every section's plots under `plots`; each section lists its own; returns the files written."""
    plots.mkdir(parents=True, exist_ok=True)
    sections = {s["id"]: s for s in report["sections"]}
    drawers = {"funnel": _funnel, "dedup": _dedup, "tokens": _tokens, "training": _training, "resources": _resources}
    written = []
    for section_id, drawer in drawers.items():
        section = sections[section_id]
        if section["empty"]:
            continue
        for name, alt in drawer(section, plots):
            section["plots"].append({"file": f"plots/{name}", "alt": alt})
            written.append(name)
    return written


def _funnel(section: dict, plots: Path) -> list[tuple[str, str]]:
    from llmpipe.plots import bars_png, funnel_png

    rows = section["steps"]
    linear = all(b["documents_in"] == a["documents_out"] for a, b in zip(rows, rows[1:]))
    if linear:  # one chain: documents in, each step's removals in order, documents out
        removed = []
        for r in rows:
            reasons = [(x["reason"], x["documents"]) for x in r["removed"]]
            reasons += [(f"bad record: {k}", v) for k, v in r["bad_records"].items() if v]
            top, rest = reasons[:REASONS_PER_STEP], reasons[REASONS_PER_STEP:]
            removed += [(f"{r['step']}: {reason}", n) for reason, n in top]
            if rest:
                removed.append((f"{r['step']}: {len(rest)} other reasons", sum(n for _, n in rest)))
        title = f"{rows[-1]['documents_out']:,} of {rows[0]['documents_in']:,} documents kept ({' -> '.join(r['step'] for r in rows)})"
        funnel_png(plots / "funnel.png", title, rows[0]["documents_in"], removed)
    else:  # branches: each step's documents kept and removed
        bars_png(plots / "funnel.png", "documents per step", [r["step"] for r in rows],
                 {"kept": [r["documents_out"] for r in rows], "removed": [r["documents_in"] - r["documents_out"] for r in rows]}, "documents")
    return [("funnel.png", "documents per step and removals per rule")]


def _dedup(section: dict, plots: Path) -> list[tuple[str, str]]:
    from llmpipe.plots import bars_png

    out = []
    for r in section["steps"]:
        sizes = r.get("cluster_sizes", {})
        if not sizes:
            continue
        name = f"dedup-{_file_part(r['step'])}.png"
        bars_png(plots / name, f"{r['step']}: clusters of duplicates by size", [f"{k} documents" for k in sizes],
                 {"clusters": list(sizes.values())}, "clusters", log=max(sizes.values()) > 50 * min(sizes.values()))
        out.append((name, f"{r['step']}: dedup cluster sizes"))
    return out


def _tokens(section: dict, plots: Path) -> list[tuple[str, str]]:
    from llmpipe.plots import bars_png

    labels, train, val = [], [], []
    for r in section["steps"]:
        for src in r["sources"]:
            labels.append(f"{r['step']}: {src['step'] or Path(src['input']).name}")
            train.append(src.get("train_tokens", 0))
            val.append(src.get("val_tokens", 0))
    bars_png(plots / "tokens.png", "tokens per source", labels, {"train": train, "val": val}, "tokens")
    return [("tokens.png", "tokens per source (train and val)")]


def _training(section: dict, plots: Path) -> list[tuple[str, str]]:
    from llmpipe.train.loop import loss_png

    out = []
    for r in section["steps"]:
        name = f"loss-{_file_part(r['step'])}.png"
        loss_png(plots / name, Path(r["metrics_file"]), f"{r['step']} ({r['stage']}): loss per step")
        out.append((name, f"{r['step']}: loss curve"))
    return out


def _resources(section: dict, plots: Path) -> list[tuple[str, str]]:
    from llmpipe.plots import bars_png

    rows = section["rows"]
    bars_png(plots / "wall_time.png", "wall time per step", [r["step"] for r in rows], {"seconds": [r["wall_seconds"] for r in rows]}, "seconds")
    out = [("wall_time.png", "wall time per step")]
    measured = [r for r in rows if r["peak_rss_bytes"]]
    if measured:
        bars_png(plots / "peak_memory.png", "peak resident memory per step (largest task)", [r["step"] for r in measured],
                 {"MB": [r["peak_rss_bytes"] / 1e6 for r in measured]}, "MB")
        out.append(("peak_memory.png", "peak memory per step"))
    return out


def _file_part(name: str) -> str:
    from llmpipe.report.lineage import anchor

    return anchor(name)
