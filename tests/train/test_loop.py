"""The training loop: freezing, optimizer groups, schedule, exact resume, checkpoints."""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from picovlm.checkpoint import CheckpointError, load_weights, read_config
from picovlm.config import StageConfig
from picovlm.models.vlm import VLM_PARTS, load_vlm
from picovlm.presets import RECIPES
from picovlm.text.tokenizer import Tokenizer
from picovlm.train.optim import lr_at, make_optimizer
from picovlm.train.stage_tasks import build_stage_task
from picovlm.train.stages import read_samples, resume_from, run_recipe, run_stage, train_tokenizer


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


def test_recipe_writes_self_contained_checkpoints_without_copying_frozen_parts(recipe, tmp_path):
    run = tmp_path / "run"
    done = run_recipe(recipe, run, progress=False)
    assert list(done) == ["lm", "clip", "align", "instruct"]
    cfg = read_config(done["instruct"])
    assert cfg["parts"]["tower"] == "tower.safetensors"  # a file of its own folder, not ../../clip/...
    tower, clip_tower = done["instruct"] / "tower.safetensors", done["clip"] / "tower.safetensors"
    assert os.stat(tower).st_ino == os.stat(clip_tower).st_ino  # a hard link: stored once on disk
    assert (done["instruct"] / "projector.safetensors").exists()
    assert (run / "instruct" / "loss.png").stat().st_size > 1000
    logged = [json.loads(line) for line in (run / "instruct" / "log.jsonl").read_text().splitlines()]
    assert any(r.get("val") for r in logged) and any(r.get("train") for r in logged)
    assert set(cfg["part_prefixes"]) == set(VLM_PARTS)

    expected = load_vlm(done["instruct"])[0].state_dict()
    moved = tmp_path / "copied" / "model"
    shutil.copytree(done["instruct"], moved)
    shutil.rmtree(run)  # the run folder is gone: the copied model folder still loads, the same weights
    again = load_vlm(moved)[0].state_dict()
    assert all(torch.equal(expected[k], again[k]) for k in expected)


def _two_runs(recipe, tokenizer, tmp_path, stage):
    """(the losses of an uninterrupted run, the run folder of one stopped after step 3)."""
    tok, tok_path = tokenizer
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    for d in (whole, parts):
        d.mkdir()
        shutil.copy(tok_path, d / "tokenizer.json")
    _, uninterrupted = run_stage(recipe, stage, whole, tok, progress=False)
    run_stage(recipe, stage, parts, tok, progress=False, stop_at=3)
    return uninterrupted, parts


@pytest.mark.parametrize("state", ["old", "old+tmp", "old+new"])
def test_resume_finds_the_checkpoint_a_crash_in_the_rename_window_left(recipe, tokenizer, tmp_path, state):
    """A crash after `model` was set aside as `model.old` (and before its successor took its place):
    resume must go on from step 3, not start over (and so delete the only complete copy)."""
    stage = solo_stage(recipe, steps=6, warmup=2 / 6)
    uninterrupted, parts = _two_runs(recipe, tokenizer, tmp_path, stage)
    model = parts / "instruct" / "model"
    model.rename(model.with_name("model.old"))
    if "tmp" in state:  # the successor, half-written
        (parts / "instruct" / "model.tmp").mkdir()
    if "new" in state:  # the successor, written: it is the newest complete copy
        shutil.copytree(model.with_name("model.old"), model.with_name("model.new"))
    assert resume_from(build_stage_task(recipe, stage, tokenizer[0]), stage, model)["step"] == 3
    _, resumed = run_stage(recipe, stage, parts, tokenizer[0], resume=True, progress=False)
    assert [s for s, _ in resumed.train] == [1, 2, 3, 4, 5, 6]
    assert [loss for _, loss in resumed.train] == pytest.approx([loss for _, loss in uninterrupted.train], abs=1e-6)
    assert sorted(p.name for p in (parts / "instruct").iterdir() if p.name.startswith("model")) == ["model"]


def test_a_resumed_stage_logs_each_step_once(recipe, tokenizer, tmp_path):
    stage = solo_stage(recipe, steps=6, warmup=2 / 6, log_every=1, save_every=0)
    _, parts = _two_runs(recipe, tokenizer, tmp_path, stage)
    log = parts / "instruct" / "log.jsonl"
    with open(log, "a") as f:  # steps logged after the last save, as when a run is killed
        f.write(json.dumps({"stage": "instruct", "train": True, "step": 4, "loss": 9.0}) + "\n" + '{"stage": "ins')
    run_stage(recipe, stage, parts, tokenizer[0], resume=True, progress=False)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in lines if r.get("train")] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in lines if r.get("train") and r["step"] == 4] != [9.0]
    assert sum(1 for r in lines if r.get("data")) == 1  # one data summary: the run's


def test_a_damaged_trainer_state_is_one_line_naming_the_file(recipe, tokenizer, tmp_path):
    stage = solo_stage(recipe, steps=6)
    tok, tok_path = tokenizer
    shutil.copy(tok_path, tmp_path / "tokenizer.json")
    run_stage(recipe, stage, tmp_path, tok, progress=False, stop_at=2)
    state = tmp_path / "instruct" / "model" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=rf"^{state}: damaged or incomplete file \(RuntimeError: "):
        run_stage(recipe, stage, tmp_path, tok, resume=True, progress=False)


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
    with pytest.raises(ValueError, match=r"^stage 'instruct': isolate_turns: must be a share in \[0, 1\], got 2\.0$"):
        run_stage(recipe, dataclasses.replace(stage, isolate_turns=2.0), tmp_path, tok, progress=False)


def test_length_grouped_batches_pad_less_and_keep_their_labels(recipe, tokenizer):
    from picovlm.data.report import DataReport
    from picovlm.train.stages import data_streams

    tok, _ = tokenizer
    files = tuple(f for s in recipe.stages if s.name in ("align", "instruct") for f in s.data)  # captions and chats
    stage = solo_stage(recipe, data=files, batch_size=4, group_by_length=True)
    task = build_stage_task(recipe, stage, tok)
    grouped, _ = data_streams(recipe, stage, task, DataReport(quiet=True))
    plain, _ = data_streams(recipe, dataclasses.replace(stage, group_by_length=False), task, DataReport(quiet=True))

    def padding(stream, n=12) -> float:
        batches = [next(stream)["ids"] for _ in range(n)]
        return sum(int((b == tok.pad_id).sum()) for b in batches) / sum(b.numel() for b in batches)

    assert padding(grouped) < padding(plain)
    batch = next(grouped)
    drawn = [grouped.samples[i] for i in grouped._order[grouped.cursor - 4 : grouped.cursor]]
    expected = task.make_batch(drawn)  # the batch of these samples as ever: the loss mask is untouched
    assert all(torch.equal(batch[k], expected[k]) for k in ("ids", "labels"))
    assert (batch["labels"] != -100).any()


class _Recorder:
    """An optimizer that keeps the gradients of its step instead of stepping."""

    def __init__(self, model):
        self.model, self.grads = model, {}

    def step(self):
        self.grads = {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


def test_a_batch_in_length_sorted_parts_gives_the_whole_batchs_gradient(recipe, tokenizer):
    """`micro_batch`: the same samples, cut into parts of like length, each padded to its own longest;
    weighted by labelled tokens, the parts' gradients sum to the whole batch's."""
    from picovlm.data.report import DataReport
    from picovlm.train.loop import optimizer_step
    from picovlm.train.stages import data_streams

    tok, _ = tokenizer
    files = tuple(f for s in recipe.stages if s.name in ("align", "instruct") for f in s.data)  # lengths vary
    whole_stage = solo_stage(recipe, data=files, batch_size=8, grad_clip=0.0)
    grads, pads = {}, {}
    for micro in (0, 3):
        stage = dataclasses.replace(whole_stage, micro_batch=micro)
        torch.manual_seed(0)
        task = build_stage_task(recipe, stage, tok)
        stream, _ = data_streams(recipe, stage, task, DataReport(quiet=True))
        parts = stream.next_parts()
        assert len(parts) == (1 if micro == 0 else 3) and sum(len(p["ids"]) for p in parts) == 8
        pads[micro] = sum(int((p["ids"] == tok.pad_id).sum()) for p in parts)
        stream.rewind()
        recorder = _Recorder(task.model)
        optimizer_step(task, recorder, stream, stage, torch.device("cpu"))
        grads[micro] = recorder.grads
    assert pads[3] < pads[0]
    assert grads[0].keys() == grads[3].keys() and grads[0]
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[3][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_micro_batch_needs_a_task_with_lengths(recipe, tokenizer, tmp_path):
    tok, tok_path = tokenizer
    shutil.copy(tok_path, tmp_path / "tokenizer.json")
    stage = next(s for s in recipe.stages if s.task == "clip")
    with pytest.raises(ValueError, match="micro_batch are for stages of task 'vlm'"):
        run_stage(recipe, dataclasses.replace(stage, micro_batch=2, init={}), tmp_path, tok, progress=False)
