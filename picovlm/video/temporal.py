"""How a video becomes image-tower input and how its frames' features are pooled over time.

    Video -> sample T frames (`VideoConfig.sampling`) -> the tower's image processor -> [n, T, 3, H, W]
    tower on all n*T frames as one batch -> [n, T, N, D] -> TemporalPool -> [n, T', N, D] -> projector

The tower and the projector are the image path's own: a frame is an image, so everything a model
learned about images (colours, shapes, where things are) holds for every frame. What is new is time:
"mean" averages the frames (T' = 1: as many tokens as one image, but the order of events is gone),
"frames" keeps them in order (T' = T / merge) and adds a learned embedding per frame slot, so the
LM can tell the first frame's tokens from the last's.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from PIL import Image

from picovlm.config import VideoConfig
from picovlm.video.decode import Video, sample_indices

POOLS = ("mean", "frames")


class VideoProcessor:
    """Videos -> [n, T, 3, H, W]: `cfg.frames` frames each, prepared like images by `image_processor`."""

    def __init__(self, cfg: VideoConfig, image_processor):
        self.cfg, self.image_processor = cfg, image_processor

    def sample(self, video: Video) -> list[Image.Image]:
        """The frames a model sees of `video`, in time order."""
        return video.frames(sample_indices(video, self.cfg.frames, self.cfg.sampling, self.cfg.fps))

    def __call__(self, videos: list[Video]) -> torch.Tensor:
        frames = [f for v in videos for f in self.sample(v)]
        pixels = self.image_processor(frames)
        return pixels.view(len(videos), self.cfg.frames, *pixels.shape[1:])


class TemporalPool(nn.Module):
    """[n, T, N, D] frame features -> [n, T', N, D]: see the module docstring."""

    def __init__(self, cfg: VideoConfig, dim: int):
        super().__init__()
        if cfg.pool not in POOLS:
            raise ValueError(f"unknown video pool {cfg.pool!r}; known: {', '.join(POOLS)}")
        if cfg.frames < 1 or cfg.merge < 1 or cfg.frames % cfg.merge:
            raise ValueError(f"video: {cfg.frames} frames do not split into runs of merge={cfg.merge}")
        self.cfg = cfg
        self.slots = 1 if cfg.pool == "mean" else cfg.frames // cfg.merge
        self.pos = nn.Parameter(torch.randn(self.slots, 1, dim) * 0.02) if cfg.pool == "frames" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, T, N, D = x.shape
        if self.pos is None:
            return x.mean(dim=1, keepdim=True)
        x = x.view(n, self.slots, T // self.slots, N, D).mean(dim=2)
        return x + self.pos.to(x.dtype)
