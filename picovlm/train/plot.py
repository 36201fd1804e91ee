"""Loss curves as a PNG, so a run can be judged at a glance without extra tools."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_losses(history: Any, path: Path, title: str = "loss") -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps, losses = zip(*history.train, strict=True)
    ax.plot(steps, losses, label="train", lw=1)
    if history.val:
        vsteps, vlosses = zip(*history.val, strict=True)
        ax.plot(vsteps, vlosses, "o-", label="val", lw=1.5)
    ax.set(xlabel="step", ylabel="loss", title=title, yscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
