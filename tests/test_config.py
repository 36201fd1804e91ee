"""Configs: strict, type-driven from_dict (nested dataclasses, lists of them, tuples), renamed keys."""

import dataclasses
import json

import pytest

from picovlm.config import ConfigError, RecipeConfig, StageConfig, VisionConfig, VLMConfig, check_config, from_dict
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
    with pytest.raises(ValueError, match=r"^vision\.vit: ViTConfig must be a JSON object, not a list \(\[1, 2\]\)"):
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


THREE_STAGES = [{"name": "a"}, {"name": "b"}, {"name": "c"}]


def _with(path: tuple, value) -> dict:
    """A recipe dict with one value set at `path` (keys and list indices), the rest defaults."""
    recipe = {"stages": [dict(s) for s in THREE_STAGES], "model": {"lm": {}}}
    where = recipe
    for key in path[:-1]:
        where = where[key]
    where[path[-1]] = value
    return recipe


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("stages", 0, "steps"), "ten", 'stages[0].steps: expected an integer, got a string ("ten")'),
        (("model", "lm", "n_embd"), [1], "model.lm.n_embd: expected an integer, got a list ([1])"),
        (("stages", 2, "batch_size"), 0, "stages[2].batch_size: must be >= 1, got 0"),
        (("stages", 1, "lr"), -1, "stages[1].lr: must be > 0, got -1.0"),
        (("stages", 0, "warmup"), 1.5, "stages[0].warmup: must be a share in [0, 1], got 1.5"),
        (("stages", 0, "steps"), True, "stages[0].steps: expected an integer, got a boolean (true)"),
        (("stages", 0, "lr"), "0.1", 'stages[0].lr: expected a number, got a string ("0.1")'),
        (("stages", 0, "betas"), [0.9], "stages[0].betas: expected a list of 2, got a list ([0.9])"),
        (("stages", 0, "data"), "train.json", 'stages[0].data: expected a list, got a string ("train.json")'),
        (("stages", 0, "data"), ["a.json", 3], "stages[0].data[1]: expected a string, got an integer (3)"),
        (("stages", 0, "lr_scale"), {"lm": "x"}, 'stages[0].lr_scale.lm: expected a number, got a string ("x")'),
        (("stages", 0, "on_bad_file"), "ignore", 'stages[0].on_bad_file: must be one of "fail", "skip", got "ignore"'),
        (("stages",), [], "stages: must be a non-empty list of stages, got []"),
        (("model", "vision"), "vit", 'model.vision: VisionConfig must be a JSON object, not a string ("vit")'),
    ],
)
def test_wrong_types_and_ranges_name_the_field(path, value, message):
    with pytest.raises(ConfigError) as info:
        from_dict(RecipeConfig, _with(path, value))
    assert str(info.value) == message


def test_numbers_become_floats_where_the_field_is_a_float():
    recipe = from_dict(RecipeConfig, _with(("stages", 0, "lr"), 1))
    assert type(recipe.stages[0].lr) is float and recipe.stages[0].lr == 1.0


def test_a_recipe_built_in_python_is_checked_the_same_way():
    check_config(RecipeConfig())
    with pytest.raises(ConfigError, match=r"^stages\[0\]\.batch_size: must be >= 1, got 0$"):
        check_config(RecipeConfig(stages=[StageConfig(batch_size=0)]))
