"""The stage-task registry: each task's checkpoint loads again by its task, and the clip stage
pretrains whatever tower `vision.kind` names, which the VLM stages then take over."""

import dataclasses
import shutil

import pytest
import torch
from safetensors.torch import load_file

from picovlm.checkpoint import part_files, part_state, read_config
from picovlm.config import StageConfig, VisionConfig
from picovlm.models.clip import CLIPModel
from picovlm.models.gpt import GPT
from picovlm.models.vlm import VLM, load_vlm
from picovlm.presets import RECIPES
from picovlm.train.stage_tasks import STAGE_TASKS, NativeTask, build_stage_task, load_stage_model
from picovlm.train.stages import checkpoint_dir, run_recipe, run_stage, train_tokenizer
from picovlm.vision.efficientnet import EfficientNetTower


@pytest.mark.parametrize(("stage", "kind"), [("lm", GPT), ("clip", CLIPModel), ("align", VLM), ("instruct", VLM)])
def test_every_stage_checkpoint_loads_by_the_task_it_names(tiny_run, stage, kind):
    ckpt = checkpoint_dir(tiny_run["model"].parent.parent, stage)
    cfg = read_config(ckpt)
    model = load_stage_model(ckpt)
    assert isinstance(model, kind) and not model.training and cfg["task"] in STAGE_TASKS
    for part, file in part_files(ckpt).items():
        stored = load_file(file)
        ours = part_state(model, cfg["part_prefixes"], part)
        assert ours.keys() == stored.keys() and all(torch.equal(ours[k], stored[k]) for k in stored), part


def test_unknown_task_is_a_one_line_error(tiny_data, tok):
    recipe = RECIPES["tiny"](str(tiny_data))
    with pytest.raises(ValueError, match=r"^stage 'x': unknown task 'vae'; known: lm, clip, clap, vlm, vq, native$"):
        build_stage_task(recipe, StageConfig(name="x", task="vae"), tok)


def test_clip_stage_pretrains_the_tower_kind_the_vlm_uses(tiny_data, tmp_path):
    """An EfficientNet (random init, 32 px) instead of the ViT: the clip stage trains it, mean-pooled,
    and the align stage inherits exactly those weights."""
    recipe = RECIPES["tiny"](str(tiny_data))
    vision = VisionConfig(kind="efficientnet", cnn_image_size=32, cnn_pretrained=False)
    recipe.model = dataclasses.replace(recipe.model, vision=vision, projector="mlp2x_gelu")
    clip, align = (next(s for s in recipe.stages if s.name == n) for n in ("clip", "align"))
    clip = dataclasses.replace(clip, steps=2, batch_size=4)
    align = dataclasses.replace(align, steps=1, batch_size=4, init={"tower": "clip"}, val_data=())
    tok = train_tokenizer(recipe, tmp_path / "tokenizer.json")
    torch.manual_seed(clip.seed)
    initial = build_stage_task(recipe, clip, tok).model.tower.state_dict()
    clip_ckpt, _ = run_stage(recipe, clip, tmp_path, tok, progress=False)
    trained = load_stage_model(clip_ckpt)
    assert isinstance(trained.tower, EfficientNetTower) and read_config(clip_ckpt)["vision"]["kind"] == "efficientnet"
    assert any(not torch.equal(v, initial[k]) for k, v in trained.tower.state_dict().items())
    align_ckpt, _ = run_stage(recipe, align, tmp_path, tok, progress=False)
    assert read_config(align_ckpt)["parts"]["tower"] == "tower.safetensors"  # linked from the clip stage
    vlm, _ = load_vlm(align_ckpt)
    for key, value in trained.tower.state_dict().items():
        assert torch.equal(vlm.tower.state_dict()[key], value), key
    shutil.rmtree(tmp_path / "clip")  # the tower is in align's folder too (a hard link): it still loads
    vlm, _ = load_vlm(align_ckpt)
    assert all(torch.equal(vlm.tower.state_dict()[key], value) for key, value in trained.tower.state_dict().items())


def test_native_prompt_drops_follow_the_stage_seed(tiny_data, tmp_path, monkeypatch):
    """Two native stages with one seed drop the same captions (the drops come from the stage's seeded
    generator, not Python's global one, which runs on between the two)."""
    recipe = RECIPES["tiny-native"](str(tiny_data))
    recipe.native = dataclasses.replace(recipe.native, draw_share=1.0, prompt_drop=0.5)
    run_recipe(recipe, tmp_path, only=["vq"], progress=False)
    drops: list[bool] = []
    encode = NativeTask.encode
    monkeypatch.setattr(NativeTask, "encode", lambda self, s, c, drop: drops.append(drop) or encode(self, s, c, drop))
    runs = []
    for _ in range(2):
        drops.clear()
        run_recipe(recipe, tmp_path, only=["native"], progress=False)
        runs.append(list(drops))
    assert runs[0] == runs[1] and True in runs[0]
