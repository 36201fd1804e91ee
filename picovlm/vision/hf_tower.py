"""A vision tower backed by an HF `CLIPVisionModel` or `SiglipVisionModel` in a local folder.

Nothing is downloaded: the folder must hold `config.json` and the weights (and ideally a
`preprocessor_config.json`, whose resize/normalize values we adopt so the tower sees images the
way it was trained to).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from picovlm.checkpoint import naming_damaged_weights
from picovlm.vision.image import ImageProcessor


def read_image_processor(folder: Path, default_size: int) -> ImageProcessor:
    """Resize/normalize values from the folder's preprocessor_config.json, or from the
    `image_processor` section of a processor_config.json (where transformers 5 saves a processor's
    parts), if there is one."""
    path, combined = folder / "preprocessor_config.json", folder / "processor_config.json"
    if path.exists():
        cfg = json.loads(path.read_text())
    elif combined.exists() and "image_processor" in (whole := json.loads(combined.read_text())):
        cfg = whole["image_processor"]
    else:
        return ImageProcessor(size=default_size)
    size = cfg.get("crop_size") or cfg.get("size") or default_size
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge") or default_size
    kwargs = {k: tuple(cfg[k2]) for k, k2 in (("mean", "image_mean"), ("std", "image_std")) if k2 in cfg}
    return ImageProcessor(size=int(size), **kwargs)


class HFVisionTower(nn.Module):
    """Patch features from one hidden layer of an HF vision model, CLS dropped unless asked for."""

    def __init__(self, path: str | Path, feature_layer: int = -2, use_cls: bool = False):
        super().__init__()
        from transformers import AutoConfig, CLIPVisionModel, SiglipVisionModel

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: no config.json; expected a local HF vision model folder")
        config = AutoConfig.from_pretrained(folder)
        model_type = config.model_type
        with naming_damaged_weights(folder):
            if model_type in ("clip", "clip_vision_model"):
                self.model, self.has_cls = CLIPVisionModel.from_pretrained(folder), True
            elif model_type in ("siglip", "siglip_vision_model"):
                self.model, self.has_cls = SiglipVisionModel.from_pretrained(folder), False
            else:
                raise ValueError(f"{folder}: unsupported vision model type {model_type!r} (clip or siglip)")
        vcfg = self.model.config
        self.feature_layer, self.use_cls = feature_layer, use_cls and self.has_cls
        self.grid = vcfg.image_size // vcfg.patch_size
        self.hidden_size = vcfg.hidden_size
        self.processor = read_image_processor(folder, vcfg.image_size)

    @property
    def num_patches(self) -> int:
        return self.grid**2 + int(self.use_cls)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        x = out.hidden_states[self.feature_layer]
        return x[:, 1:] if self.has_cls and not self.use_cls else x
