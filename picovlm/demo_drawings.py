"""The native demo's drawings: the test captions drawn, judged one by one, and shown in a grid.

    prompts, real = first_test_captions(Path("data/demo"), 64)  # first caption of each of 64 test images
    drawings = draw_and_judge(pipe, prompts, judge, Path("runs/native"))

writes `drawings/NNN.png`, `drawings.json` (each drawing's prompt, image file and judged attributes:
the format `picovlm judge score --drawings` reads) and `drawings.png` (the grid, prompts above).
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from picovlm.data.formats import load_samples
from picovlm.engine.pipeline import Pipeline
from picovlm.eval.drawing import judge_each
from picovlm.eval.drawing_judge import DrawingJudge

GRID_COLUMNS = 8  # drawings per row of drawings.png


@dataclass
class Drawing:
    prompt: str
    image: Image.Image
    file: str  # relative to the run folder
    judged: dict[str, bool | None]  # per attribute; None where the prompt does not say it


def first_test_captions(data: Path, n: int) -> tuple[list[str], list[Path]]:
    """The first caption of each of the first `n` test images (one prompt per scene, so the drawings
    ask for `n` different scenes), and those images: the real pictures of what is asked."""
    firsts: dict[Path, str] = {}
    for sample in load_samples(data / "test_captions.jsonl", on_error="raise"):
        firsts.setdefault(sample.images[0], sample.messages[-1]["content"])
    chosen = list(firsts.items())[:n]
    return [prompt for _, prompt in chosen], [image for image, _ in chosen]


def draw_and_judge(pipe: Pipeline, prompts: list[str], judge: DrawingJudge, out: Path) -> list[Drawing]:
    """Draw every prompt (one batch), save the PNGs, judge each drawing, write drawings.json."""
    images = pipe.draw(prompts)
    (out / "drawings").mkdir(parents=True, exist_ok=True)
    drawings = []
    for k, (prompt, image, judged) in enumerate(zip(prompts, images, judge_each(images, prompts, judge), strict=True)):
        file = f"drawings/{k:03d}.png"
        image.save(out / file)
        drawings.append(Drawing(prompt, image, file, judged))
    records = [{"prompt": d.prompt, "image": d.file, "judged": d.judged} for d in drawings]
    (out / "drawings.json").write_text(json.dumps(records, indent=1))
    return drawings


def _colour(judged: dict[str, bool | None]) -> str:
    said = [v for v in judged.values() if v is not None]
    return "tab:green" if said and all(said) else "tab:red" if said else "black"


def save_grid(drawings: list[Drawing], title: str, path: Path) -> None:
    """The drawings, enlarged with hard pixel edges, each under its prompt: green where the judge
    found every attribute the prompt asks, red where it missed one."""
    rows = -(-len(drawings) // GRID_COLUMNS)
    columns = min(GRID_COLUMNS, len(drawings))
    fig = Figure(figsize=(2.2 * columns, 2.6 * rows + 0.6), dpi=100)
    fig.suptitle(title)
    axes = np.asarray(fig.subplots(rows, columns, squeeze=False)).flatten()
    for ax in axes:
        ax.axis("off")
    for ax, d in zip(axes, drawings, strict=False):
        ax.imshow(np.asarray(d.image.resize((128, 128), Image.NEAREST)), interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(d.prompt, 34)), fontsize=6, color=_colour(d.judged))
    fig.savefig(path)
