"""PNG figures for results people would rather look at than read: funnels, curves, histograms.

matplotlib is imported lazily, with the Agg backend, so figures render on headless nodes.
"""

from __future__ import annotations

import textwrap

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def funnel_png(path: Path, title: str, documents_in: int, removed: list[tuple[str, int]]) -> None:
    """Horizontal bars: documents in, then what each rule removed (in order), then documents out."""
    from llmpipe.artifacts.layout import atomic_path

    plt = _pyplot()
    left, rows = documents_in, [("documents in", documents_in, 0)]
    for label, n in removed:
        left -= n
        rows.append((f"- {label}", n, left))
    rows.append(("documents out", left, 0))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    for i, (label, n, start) in enumerate(rows):
        color = "#4c72b0" if label.startswith("documents") else "#dd8452"
        ax.barh(i, n, left=start, color=color)
        share = f"{n / documents_in:.1%}" if documents_in else "0%"
        ax.text(start + n, i, f" {n:,} ({share})", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("documents")
    ax.set_title(textwrap.fill(title, 60), fontsize=10)  # a long step chain wraps instead of running off the figure
    ax.set_xlim(0, max(documents_in, 1) * 1.25)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def bars_png(path: Path, title: str, labels: list[str], series: dict[str, list[float]], xlabel: str, log: bool = False) -> None:
    """Horizontal bars, one row per label; several series stack (train and val tokens of a source)."""
    from llmpipe.artifacts.layout import atomic_path

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(labels) + 1.4))
    left = [0.0] * len(labels)
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    for k, (name, values) in enumerate(series.items()):
        ax.barh(range(len(labels)), values, left=left, color=colors[k % len(colors)], label=name)
        left = [a + b for a, b in zip(left, values)]
    for i, total in enumerate(left):
        ax.text(total, i, f" {total:,.0f}" if total >= 100 else f" {total:.3g}", va="center", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    if log:
        ax.set_xscale("log")
    else:
        ax.set_xlim(0, max(left + [1]) * 1.2)
    ax.set_title(textwrap.fill(title, 60), fontsize=10)  # a long step chain wraps instead of running off the figure
    if len(series) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars: never over a total
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
