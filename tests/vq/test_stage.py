"""The `vq` stage task: trained by the one loop, its checkpoint (codebook included) loads by its task,
and an interrupted run resumes exactly."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from picovlm.checkpoint import read_config
from picovlm.data.records import BadRecord, Sample
from picovlm.presets import tiny_vq_recipe, vq_recipe
from picovlm.train.stage_tasks import STAGE_TASKS, build_stage_task, load_stage_model
from picovlm.train.stages import run_stage, train_tokenizer
from picovlm.vq.model import VQVAE


@pytest.fixture()
def setup(tiny_data, tmp_path):
    """(recipe, stage of 6 steps, tokenizer, a run folder with the tokenizer in it)"""
    recipe = tiny_vq_recipe(str(tiny_data))
    stage = dataclasses.replace(recipe.stages[0], steps=6, lr=1e-2, warmup=2 / 6, save_every=2)
    tok = train_tokenizer(recipe, tmp_path / "tokenizer.json")
    return recipe, stage, tok, tmp_path


def copy_run(src, dst):
    dst.mkdir()
    shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    return dst


def test_the_checkpoint_loads_by_its_task_with_its_codebook(setup):
    recipe, stage, tok, out = setup
    ckpt, history = run_stage(recipe, stage, out, tok, progress=False)
    cfg = read_config(ckpt)
    assert cfg["task"] == "vq" and STAGE_TASKS["vq"].parts == cfg["part_prefixes"] and cfg["step"] == 6
    assert cfg["model"] == dataclasses.asdict(recipe.vq) and len(history.train) == 6 and history.val
    model = load_stage_model(ckpt)
    assert isinstance(model, VQVAE) and not model.training
    assert model.quantizer.usage.sum() > 0  # the EMA statistics were saved, not the fresh buffers
    logged = [json.loads(line) for line in (out / "vq" / "log.jsonl").read_text().splitlines()]
    assert any(r.get("val") for r in logged) and (out / "vq" / "loss.png").is_file()


def test_an_interrupted_run_resumes_exactly(setup):
    """Codebook, EMA statistics and restarts (which draw random numbers) included."""
    recipe, stage, tok, out = setup
    whole, parts = copy_run(out, out / "whole"), copy_run(out, out / "parts")
    ckpt, uninterrupted = run_stage(recipe, stage, whole, tok, progress=False)
    run_stage(recipe, stage, parts, tok, progress=False, stop_at=3)  # "crash" after step 3
    assert read_config(parts / "vq" / "model")["step"] == 3
    resumed_ckpt, resumed = run_stage(recipe, stage, parts, tok, resume=True, progress=False)
    assert [s for s, _ in resumed.train] == [1, 2, 3, 4, 5, 6]
    for (s1, a), (s2, b) in zip(uninterrupted.train, resumed.train, strict=True):
        assert s1 == s2 and a == pytest.approx(b, abs=1e-6), (s1, a, b)
    one, two = load_stage_model(ckpt).state_dict(), load_stage_model(resumed_ckpt).state_dict()
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-6), key


def test_records_without_images_are_left_out_and_counted(setup):
    recipe, stage, tok, out = setup
    task = build_stage_task(recipe, stage, tok)
    text_only = Sample([], [{"role": "assistant", "content": "hi"}], {"source": "notes.jsonl:3"})
    with pytest.raises(BadRecord, match="^a vq stage trains on images, and this record has none$"):
        task.prepare(text_only)
    data = Path(recipe.data_dir)
    captions = [json.loads(line) for line in (data / "train_captions.jsonl").read_text().splitlines()]
    text = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    records = [{**c, "image": str(data / c["image"])} for c in captions] + [text, text]
    mixed = out / "mixed.jsonl"  # the training captions, and two conversations of text alone
    mixed.write_text("".join(json.dumps(r) + "\n" for r in records))
    stage = dataclasses.replace(stage, data=(str(mixed),), val_data=(), steps=1)
    run_stage(recipe, stage, out, tok, progress=False, rejects=out / "rejects.jsonl")
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 2 and all("has none" in r["error"] for r in rejects)


def test_the_demo_recipe_makes_16x16_codes_of_64px_images():
    recipe = vq_recipe("data/demo")
    model = VQVAE(recipe.vq)
    assert (recipe.vq.image_size, model.grid, [s.task for s in recipe.stages]) == (64, 16, ["vq"])
