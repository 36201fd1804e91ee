"""The PNGs of bench/scaling.py: one figure a sweep, picovlm and HF on the same log-log axes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a benchmark machine
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter, ScalarFormatter  # noqa: E402

# one panel: (x label, y label, x values, {curve label: y values})
Panel = tuple[str, str, list, dict[str, list]]
PLAIN = FuncFormatter(lambda v, _: f"{v:.3g}")  # 0.4, not 4 x 10^-1


def plot(path: Path, title: str, panels: list[Panel]) -> Path:
    """Panels side by side; x ticks at the measured points (log 2), y on a log scale where it spans
    more than 3x (the cost per token falling with the batch), linear where it stays flat."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.6), squeeze=False)
    for ax, (xlabel, ylabel, xs, curves) in zip(axes[0], panels, strict=True):
        for (label, ys), style in zip(curves.items(), ("o-", "s--"), strict=True):
            ax.plot(xs, ys, style, label=label)
        ax.set_xscale("log", base=2)
        ys = [y for c in curves.values() for y in c]
        if max(ys) > 3 * min(ys):  # a narrower band reads better on a linear scale
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(PLAIN)
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.3g}" if f"{v:.1e}"[0] in "2345" else ""))
        ax.set_xticks(xs)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
