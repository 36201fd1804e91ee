"""The drawing judge: a small CNN that reads a scene image back into objects (shape and colour per
grid cell), so a drawn image can be checked against what its prompt asked for.

Why per cell? The built-in scenes put every object inside one cell of a 3x3 grid, so "which shape,
which colour, or nothing, in each cell" says everything the prompts ask (shapes, colours, count,
position) with nine small classification heads and labels read straight off the scene metadata.
The image is resized to 24 pixels a cell, three stride-2 convolutions bring a cell to 3x3 features,
and an average over those gives the cell's vector.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from picovlm.data.scenes import COLORS, SHAPES, Scene, SceneConfig, render_scene, sample_scene

EMPTY = "none"  # the label of a cell with no object
CELL_PIXELS = 24


@dataclass
class JudgeConfig:
    grid: int = 3
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    colors: list[str] = field(default_factory=lambda: list(COLORS))
    width: int = 32


class JudgeNet(nn.Module):
    """image [B, 3, H, W] in 0..1 -> (shape logits [B, cells, S+1], colour logits [B, cells, C+1])."""

    def __init__(self, cfg: JudgeConfig):
        super().__init__()
        self.cfg, w = cfg, cfg.width
        layers: list[nn.Module] = []
        for c_in, c_out in ((3, w), (w, w), (w, 2 * w)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
        layers += [nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.shape_head = nn.Linear(2 * w, len(cfg.shapes) + 1)
        self.color_head = nn.Linear(2 * w, len(cfg.colors) + 1)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        side = self.cfg.grid * CELL_PIXELS
        x = F.interpolate(pixels, size=(side, side), mode="bilinear", align_corners=False)
        cells = F.adaptive_avg_pool2d(self.features(x), self.cfg.grid).flatten(2).transpose(1, 2)
        return self.shape_head(cells), self.color_head(cells)


def to_pixels(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
                        for im in images])  # fmt: skip


def scene_labels(scene: Scene, cfg: JudgeConfig) -> tuple[list[int], list[int]]:
    """Per cell (row-major): shape index or len(shapes) for empty, colour index likewise."""
    cells = cfg.grid**2
    shapes, colors = [len(cfg.shapes)] * cells, [len(cfg.colors)] * cells
    for obj in scene.objects:
        shapes[obj.row * cfg.grid + obj.col] = cfg.shapes.index(obj.shape)
        colors[obj.row * cfg.grid + obj.col] = cfg.colors.index(obj.color)
    return shapes, colors


class DrawingJudge:
    """A trained JudgeNet with its config: `read` turns images into per-cell objects."""

    def __init__(self, net: JudgeNet):
        self.net, self.cfg = net.eval(), net.cfg

    @torch.inference_mode()
    def read(self, images: list[Image.Image]) -> list[list[dict]]:
        """Per image, its objects [{"shape", "color", "row", "col"}] as the judge sees them."""
        device = next(self.net.parameters()).device
        shape_logits, color_logits = self.net(to_pixels(images).to(device))
        shapes, colors = shape_logits.argmax(-1).tolist(), color_logits.argmax(-1).tolist()
        out = []
        for s_row, c_row in zip(shapes, colors, strict=True):
            objs = []
            for cell, (s, c) in enumerate(zip(s_row, c_row, strict=True)):
                if s < len(self.cfg.shapes):  # the shape head decides whether a cell holds an object
                    colour = self.cfg.colors[c] if c < len(self.cfg.colors) else EMPTY
                    row, col = divmod(cell, self.cfg.grid)
                    objs.append({"shape": self.cfg.shapes[s], "color": colour, "row": row, "col": col})
            out.append(objs)
        return out

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, path / "model.safetensors")
        (path / "config.json").write_text(json.dumps({"task": "judge", "judge": asdict(self.cfg)}, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> DrawingJudge:
        path = Path(path)
        meta = json.loads((path / "config.json").read_text())
        if meta.get("task") != "judge":
            raise ValueError(f"{path}: a {meta.get('task')!r} checkpoint, not a drawing judge")
        net = JudgeNet(JudgeConfig(**meta["judge"]))
        net.load_state_dict(load_file(path / "model.safetensors"))
        return cls(net)


def train_judge(scene_cfg: SceneConfig, steps: int = 600, batch_size: int = 32, seed: int = 0,
                lr: float = 3e-3, width: int = 32) -> DrawingJudge:  # fmt: skip
    """Train on fresh scenes from the built-in generator (its own stream, not the dataset's splits,
    so the dataset's test images stay held out); the judge knows the shapes and colours of
    `scene_cfg` only, so a drawing of any other is judged wrong. A plain loop: the judge is a
    fixed-size classifier over generated batches, with none of the stage loop's data, checkpoints
    or parts to share."""
    torch.manual_seed(seed)
    rng = random.Random(f"judge/{seed}")
    cfg = JudgeConfig(scene_cfg.grid, list(scene_cfg.shapes), list(scene_cfg.colors), width)
    net = JudgeNet(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for _ in range(steps):
        scenes = [sample_scene(rng, scene_cfg) for _ in range(batch_size)]
        pixels = to_pixels([render_scene(s, scene_cfg) for s in scenes])
        labels = [scene_labels(s, cfg) for s in scenes]
        shape_t, color_t = (torch.tensor([lab[k] for lab in labels]) for k in (0, 1))
        shape_logits, color_logits = net(pixels)
        loss = F.cross_entropy(shape_logits.flatten(0, 1), shape_t.flatten())
        loss = loss + F.cross_entropy(color_logits.flatten(0, 1), color_t.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return DrawingJudge(net)
