"""Charts for the benchmarks (the PNG beside each report under docs/benchmarks/).

matplotlib comes from requirements-bench.txt, which only `make bench` installs: CI and the
unit tests run without it. `pyplot()` answers None then, and a benchmark still writes its
Markdown and JSON, saying that the chart was left out.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def pyplot() -> Any | None:
    """matplotlib.pyplot with the file-only Agg backend, or None where matplotlib is absent."""
    try:
        import matplotlib  # noqa: PLC0415 - optional: only `make bench` installs it
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.clf()


def label(value: float) -> str:
    """A bar's label: three significant digits, whole numbers from 100, "n/a" for NaN (not measured)."""
    if math.isnan(value):
        return "n/a"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def bars(ax: Any, groups: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    """Grouped bars: one group per entry of `groups`, one bar per series, values labelled (NaN: n/a)."""
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        drawn = ax.bar(xs, [0.0 if math.isnan(v) else v for v in values], width, label=name)
        ax.bar_label(drawn, labels=[label(v) for v in values], fontsize=7)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
