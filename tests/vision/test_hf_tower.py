"""Tests for the HF vision tower: tiny random CLIP/SigLIP models saved to a local folder."""

import json

import pytest
import torch

from picovlm.config import VisionConfig
from picovlm.vision.towers import build_vision_tower

SMALL = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=16,
    patch_size=4,
)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip")
    CLIPVisionModel(CLIPVisionConfig(**SMALL)).save_pretrained(folder)
    pre = {
        "image_mean": [0.1, 0.2, 0.3],
        "image_std": [0.4, 0.5, 0.6],
        "size": {"shortest_edge": 20},
        "crop_size": {"height": 16, "width": 16},
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    return folder


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("siglip")
    SiglipVisionModel(SiglipVisionConfig(**SMALL)).save_pretrained(folder)
    return folder


def pixels(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_clip_tower_drops_cls(clip_dir):
    tower = build_vision_tower(VisionConfig(kind="hf", pretrained_path=str(clip_dir)))
    assert (tower.grid, tower.num_patches, tower.hidden_size) == (4, 16, 32)
    x = pixels()
    with torch.no_grad():
        feats = tower(x)
        ref = tower.model(pixel_values=x, output_hidden_states=True).hidden_states[-2]
    assert feats.shape == (2, 16, 32)
    torch.testing.assert_close(feats, ref[:, 1:])


def test_clip_tower_keeps_cls_and_feature_layer(clip_dir):
    tower = build_vision_tower(
        VisionConfig(kind="hf", pretrained_path=str(clip_dir), pretrained_use_cls=True, pretrained_feature_layer=-1)
    )
    assert tower.num_patches == 17
    x = pixels()
    with torch.no_grad():
        feats = tower(x)
        ref = tower.model(pixel_values=x).last_hidden_state
    assert feats.shape == (2, 17, 32)
    torch.testing.assert_close(feats, ref)


def test_processor_values_read_from_folder(clip_dir):
    proc = build_vision_tower(VisionConfig(kind="hf", pretrained_path=str(clip_dir))).processor
    assert proc.size == 16  # crop_size wins over size
    assert proc.mean == (0.1, 0.2, 0.3) and proc.std == (0.4, 0.5, 0.6)


def test_siglip_tower(siglip_dir):
    for use_cls in (False, True):  # SigLIP has no CLS: asking for it changes nothing
        tower = build_vision_tower(VisionConfig(kind="hf", pretrained_path=str(siglip_dir), pretrained_use_cls=use_cls))
        assert (tower.grid, tower.num_patches, tower.hidden_size) == (4, 16, 32)
        x = pixels()
        with torch.no_grad():
            feats = tower(x)
            ref = tower.model(pixel_values=x, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(feats, ref)
    # no preprocessor_config.json: the model's image size and the default normalization
    assert (tower.processor.size, tower.processor.mean, tower.processor.std) == (16, (0.5,) * 3, (0.5,) * 3)


def test_processor_size_as_int_or_dict(tmp_path):
    from picovlm.vision.hf_tower import read_image_processor

    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": 24}))
    assert read_image_processor(tmp_path, 16).size == 24
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 12, "width": 12}}))
    assert read_image_processor(tmp_path, 16).size == 12


def test_folder_without_config_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_vision_tower(VisionConfig(kind="hf", pretrained_path=str(tmp_path)))
    with pytest.raises(ValueError, match="needs pretrained_path"):
        build_vision_tower(VisionConfig(kind="hf"))
    with pytest.raises(ValueError, match="unknown vision tower 'nope'"):
        build_vision_tower(VisionConfig(kind="nope"))


def test_unsupported_model_type_raises(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unsupported vision model type 'bert'"):
        build_vision_tower(VisionConfig(kind="hf", pretrained_path=str(tmp_path)))
