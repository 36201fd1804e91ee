"""The training loop: freezing, optimizer groups, schedule, exact resume, checkpoints."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from picovlm.checkpoint import load_weights, read_config
from picovlm.config import StageConfig
from picovlm.models.vlm import VLM_PARTS
from picovlm.presets import RECIPES
from picovlm.text.tokenizer import Tokenizer
from picovlm.train.optim import lr_at, make_optimizer
from picovlm.train.stage_tasks import build_stage_task
from picovlm.train.stages import read_samples, run_recipe, run_stage, train_tokenizer


@pytest.fixture(scope="module")
def recipe(tiny_data):
    return RECIPES["tiny"](str(tiny_data))


@pytest.fixture(scope="module")
def tokenizer(recipe, tmp_path_factory) -> tuple[Tokenizer, object]:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return train_tokenizer(recipe, path), path


def solo_stage(recipe, **kw) -> StageConfig:
    """The instruct stage without init from earlier stages, so it runs alone."""
    stage = next(s for s in recipe.stages if s.name == "instruct")
    return dataclasses.replace(stage, init={}, **kw)


def test_lr_schedule_warmup_then_cosine():
    cfg = StageConfig(steps=100, warmup=0.1, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    mids = [lr_at(s, cfg) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(mids, mids[1:], strict=False))


def test_weight_decay_only_on_matrices_and_lr_scale_per_part(recipe, tokenizer):
    task = build_stage_task(recipe, solo_stage(recipe), tokenizer[0])
    for p in task.model.tower.parameters():
        p.requires_grad = False
    opt = make_optimizer(task.model, StageConfig(weight_decay=0.1, lr_scale={"lm": 0.5}), task.parts)
    names = {id(p): n for n, p in task.model.named_parameters()}
    seen = set()
    for group in opt.param_groups:
        matrices = {p.ndim >= 2 for p in group["params"]}
        assert len(matrices) == 1 and group["weight_decay"] == (0.1 if matrices.pop() else 0.0)
        part = {names[id(p)].split(".")[0] for p in group["params"]}
        assert len(part) == 1
        assert group["lr_scale"] == (0.5 if part == {"lm"} else 1.0)
        seen |= part
    assert seen == {"projector", "lm"}  # frozen parts are not in the optimizer


def test_frozen_parts_do_not_change(recipe, tokenizer, tmp_path):
    tok, tok_path = tokenizer
    shutil.copy(tok_path, tmp_path / "tokenizer.json")
    stage = solo_stage(recipe, trainable=("projector",), steps=2)
    torch.manual_seed(stage.seed)
    task = build_stage_task(recipe, stage, tok)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    ckpt, _ = run_stage(recipe, stage, tmp_path, tok, progress=False)
    model = build_stage_task(recipe, stage, tok).model
    load_weights(model, ckpt)
    after = model.state_dict()
    for key in before:
        changed = not torch.equal(before[key], after[key])
        assert changed == key.startswith("projector."), key


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_gives_the_same_losses(recipe, tokenizer, tmp_path, optimizer):
    tok, tok_path = tokenizer
    stage = solo_stage(recipe, steps=6, warmup=2 / 6, optimizer=optimizer)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    for d in (whole, parts):
        d.mkdir()
        shutil.copy(tok_path, d / "tokenizer.json")
    _, uninterrupted = run_stage(recipe, stage, whole, tok, progress=False)
    run_stage(recipe, stage, parts, tok, progress=False, stop_at=3)  # "crash" after step 3
    assert read_config(parts / "instruct" / "model")["step"] == 3
    _, resumed = run_stage(recipe, stage, parts, tok, resume=True, progress=False)
    assert [s for s, _ in resumed.train] == [1, 2, 3, 4, 5, 6]
    for (s1, a), (s2, b) in zip(uninterrupted.train, resumed.train, strict=True):
        assert s1 == s2 and a == pytest.approx(b, abs=1e-6), (s1, a, b)


def test_recipe_writes_checkpoints_without_copying_frozen_parts(recipe, tmp_path):
    done = run_recipe(recipe, tmp_path, progress=False)
    assert list(done) == ["lm", "clip", "align", "instruct"]
    cfg = read_config(done["instruct"])
    assert cfg["parts"]["tower"] == "../../clip/model/tower.safetensors"
    assert not (done["instruct"] / "tower.safetensors").exists()
    assert (done["instruct"] / "projector.safetensors").exists()
    assert (tmp_path / "instruct" / "loss.png").stat().st_size > 1000
    logged = [json.loads(line) for line in (tmp_path / "instruct" / "log.jsonl").read_text().splitlines()]
    assert any(r.get("val") for r in logged) and any(r.get("train") for r in logged)
    assert set(cfg["part_prefixes"]) == set(VLM_PARTS)


def test_unknown_trainable_part_is_a_clear_error(recipe, tokenizer, tmp_path):
    tok, tok_path = tokenizer
    shutil.copy(tok_path, tmp_path / "tokenizer.json")
    with pytest.raises(ValueError, match="unknown trainable parts"):
        run_stage(recipe, solo_stage(recipe, trainable=("vision",)), tmp_path, tok, progress=False)


def test_isolated_turns_train_and_are_refused_for_an_hf_lm(recipe, tokenizer, tmp_path):
    tok, tok_path = tokenizer
    shutil.copy(tok_path, tmp_path / "tokenizer.json")
    stage = solo_stage(recipe, isolate_turns=1.0, steps=2)
    task = build_stage_task(recipe, stage, tok)
    samples = read_samples(stage.data, Path(recipe.data_dir))[:4]
    batch = task.make_batch(samples)
    with torch.no_grad():
        isolated = float(task.loss(batch))
        whole = float(task.loss({k: v for k, v in batch.items() if k not in ("position_ids", "segment_ids")}))
    assert batch["segment_ids"].max() > 1 and isolated != whole  # several turns, and they no longer see each other
    run_stage(recipe, stage, tmp_path, tok, progress=False)

    hf = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, lm_kind="hf", lm_hf_path="nowhere"))
    with pytest.raises(ValueError, match="isolate_turns needs picovlm's GPT"):
        build_stage_task(hf, stage, tok)
    with pytest.raises(ValueError, match=r"isolate_turns is a share in \[0, 1\]"):
        build_stage_task(recipe, dataclasses.replace(stage, isolate_turns=2.0), tok)
