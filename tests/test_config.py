"""Configs: strict, type-driven from_dict (nested dataclasses, lists of them, tuples), renamed keys."""

import dataclasses
import json

import pytest

from picovlm.config import RecipeConfig, StageConfig, VisionConfig, VLMConfig, from_dict
from picovlm.presets import PRESETS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_recipe_round_trips_through_json(name):
    recipe = PRESETS[name].recipe("data/x")
    again = from_dict(RecipeConfig, json.loads(json.dumps(dataclasses.asdict(recipe))))
    assert again == recipe  # the same types too: stages a list of StageConfig, tuples as tuples
    assert isinstance(again.stages, list) and all(isinstance(s, StageConfig) for s in again.stages)
    assert isinstance(again.clip.text.n_layer, int) and isinstance(again.model.vision.vit.image_mean, tuple)


def test_isolate_turns_is_a_float_in_every_stage():
    for preset in PRESETS.values():
        for stage in preset.recipe("data/x").stages:
            assert type(stage.isolate_turns) is float, stage.name


def test_unknown_keys_are_errors_at_any_depth():
    with pytest.raises(ValueError, match=r"unknown StageConfig keys: \['stepz'\]"):
        from_dict(RecipeConfig, {"stages": [{"name": "a"}, {"stepz": 3}]})
    with pytest.raises(ValueError, match=r"unknown RecipeConfig keys: \['clip_embed_dim'\]"):
        from_dict(RecipeConfig, {"clip_embed_dim": 64})  # a flat field of old recipes, now clip.embed_dim
    with pytest.raises(ValueError, match="ViTConfig must be a JSON object, not list"):
        from_dict(VLMConfig, {"vision": {"vit": [1, 2]}})


def test_renamed_vision_keys_still_load():
    old = {"kind": "open_clip", "hf_path": "/towers/b32", "hf_feature_layer": -1, "hf_use_cls": True}
    cfg = from_dict(VisionConfig, old)
    assert (cfg.pretrained_path, cfg.pretrained_feature_layer, cfg.pretrained_use_cls) == ("/towers/b32", -1, True)


@pytest.mark.parametrize(
    ("steps", "warmup", "expected"), [(100, 0.1, 10), (6, 0.1, 0), (100, 0.29, 29), (40, 0.075, 3)]
)
def test_warmup_is_a_share_of_the_steps_rounded_down(steps, warmup, expected):
    assert StageConfig(steps=steps, warmup=warmup).warmup_steps == expected
