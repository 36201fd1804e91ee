"""A stage's data under faults: a file cut short, over-long conversations, an image that cannot be
decoded; each problem one line, counted in the stage's summary (printed and logged), the records
left out written to the rejects file, and a run (and its resume) that gets past them."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from picovlm.data.batches import context_length
from picovlm.data.formats import load_samples
from picovlm.data.records import DataError
from picovlm.presets import RECIPES
from picovlm.train.stage_tasks import build_stage_task
from picovlm.train.stages import run_stage, train_tokenizer


@pytest.fixture(scope="module")
def recipe(tiny_data):
    return RECIPES["tiny"](str(tiny_data))


@pytest.fixture(scope="module")
def tokenizer(recipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return train_tokenizer(recipe, path), path


@pytest.fixture
def records(tiny_data) -> list[dict]:
    """The tiny dataset's first 8 training conversations, with absolute image paths."""
    raw = json.loads((tiny_data / "train.json").read_text())[:8]
    return [{**r, "image": str(tiny_data / r["image"])} for r in raw]


def _run(recipe, tokenizer, folder: Path, records_text: str, resume=False, stop_at=None, **stage_kw):
    """The tiny instruct stage alone, on one train.json in `folder` (written unless resuming); returns
    (its history, the rejects file, the stage's log lines)."""
    tok, tok_path = tokenizer
    if not resume:
        folder.mkdir(exist_ok=True)
        (folder / "train.json").write_text(records_text)
        shutil.copy(tok_path, folder / "tokenizer.json")
    instruct = next(s for s in recipe.stages if s.name == "instruct")
    kw = {"init": {}, "data": ("train.json",), "val_data": (), "steps": 4, "batch_size": 4, **stage_kw}
    stage = dataclasses.replace(instruct, **kw)
    rejects = folder / "rejects.jsonl"
    local = dataclasses.replace(recipe, data_dir=str(folder))
    _, history = run_stage(local, stage, folder, tok, resume, stop_at, progress=False, rejects=rejects)
    log = [json.loads(line) for line in (folder / "instruct" / "log.jsonl").read_text().splitlines()]
    return history, rejects, log


def _rejected(rejects: Path) -> list[dict]:
    return [json.loads(line) for line in rejects.read_text().splitlines()] if rejects.is_file() else []


def test_a_data_file_cut_short_stops_the_stage_unless_told_to_go_on(recipe, tokenizer, records, tmp_path, capsys):
    """The issue's case: a single-line train.json cut inside record 3 of 8 trained on 3 records, exit 0."""
    text = json.dumps(records)
    cut = text[: text.index('"train_000003"') + 30]
    path = tmp_path / "train.json"
    message = rf"^{path}#3: invalid JSON at column \d+: .*; the rest of the file was not read"
    message += r' \(on_bad_file="skip" keeps the 3 records read before it\)$'
    with pytest.raises(DataError, match=message):
        _run(recipe, tokenizer, tmp_path, cut, batch_size=2)
    assert not (tmp_path / "instruct").exists()  # nothing trained, nothing written

    history, _, log = _run(recipe, tokenizer, tmp_path, cut, batch_size=2, on_bad_file="skip")
    assert len(history.train) == 4
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary == f"instruct data: 3 records read, 3 used, 0 skipped; not read to the end: {path}#3"
    assert log[-1] == {"stage": "instruct", "data": True, "read": 3, "used": 3, "skipped": {"damaged file": 1},
                       "truncated": 0}  # fmt: skip


def _long(record: dict, turns: int = 30) -> dict:
    """The record with `turns` more question-answer turns: far longer than the tiny LM's context of 128."""
    extra = [{"from": f, "value": f"{what} {i}"} for i in range(turns) for f, what in (("human", "Q"), ("gpt", "A"))]
    return {"id": record["id"], "image": record["image"], "conversations": record["conversations"] + extra}


def test_an_over_long_conversation_is_named_and_skipped(recipe, tokenizer, records, tmp_path, capsys):
    records[2] = _long(records[2])
    history, rejects, log = _run(recipe, tokenizer, tmp_path, json.dumps(records))
    assert len(history.train) == 4
    (reject,) = _rejected(rejects)
    assert reject["source"] == f"{tmp_path / 'train.json'}#2 (id train_000002)" and reject["reason"] == "too long"
    assert reject["error"].startswith("too long: ") and "longer than the context of 128" in reject["error"]
    assert reject["record"]["id"] == "train_000002" and len(reject["record"]["messages"]) > 60
    assert reject["record"]["images"] == [records[2]["image"]]  # the path, as it was read
    out = capsys.readouterr().out
    assert "instruct data: 8 records read, 7 used, 1 skipped (1 too long)" in out
    assert log[-1]["skipped"] == {"too long": 1}


def test_an_over_long_conversation_is_truncated_after_an_answer_when_asked(recipe, tokenizer, records, tmp_path):
    records[2] = _long(records[2])
    _, rejects, log = _run(recipe, tokenizer, tmp_path, json.dumps(records), too_long="truncate")
    assert _rejected(rejects) == [] and (log[-1]["truncated"], log[-1]["used"]) == (1, 8)

    stage = dataclasses.replace(recipe.stages[-1], too_long="truncate")
    task = build_stage_task(recipe, stage, tokenizer[0])
    (whole,) = load_samples(tmp_path / "train.json", on_error="raise")[2:3]
    cut = task.prepare(whole)
    assert context_length(cut, task.processor) <= 128 < context_length(whole, task.processor)
    assert cut.messages == whole.messages[: len(cut.messages)] and cut.messages[-1]["role"] == "assistant"
    assert len(cut.messages) >= 6 and cut.images == whole.images  # as many whole turns as fit; the image kept
    assert "cut after answer" in cut.meta["truncated"]


def _corrupt_copy(records: list[dict], k: int, folder: Path) -> None:
    """Record k's image replaced by a copy cut short: its header reads, its pixels do not decode."""
    folder.mkdir()
    image = folder / "cut.png"
    data = Path(records[k]["image"]).read_bytes()
    image.write_bytes(data[: len(data) // 2])
    records[k] = {**records[k], "image": str(image)}


@pytest.mark.parametrize("tower", ["frozen", "trained"])  # features cached from the tower, or pixels
def test_an_image_that_does_not_decode_is_skipped_and_resume_gets_past_it(
    recipe, tokenizer, records, tmp_path, tower, capsys
):
    _corrupt_copy(records, 5, tmp_path / "images")
    text = json.dumps(records)
    trainable = ("tower", "projector", "lm") if tower == "trained" else ("projector", "lm")
    kw = {"steps": 6, "warmup": 2 / 6, "trainable": trainable}
    whole, rejects, log = _run(recipe, tokenizer, tmp_path / "whole", text, **kw)
    assert len(whole.train) == 6 and log[-1]["skipped"] == {"bad image": 1}
    (reject,) = _rejected(rejects)
    assert reject["source"] == f"{tmp_path / 'whole' / 'train.json'}#5 (id train_000005)"
    assert reject["reason"] == "bad image" and reject["error"].startswith(f"{tmp_path / 'images' / 'cut.png'}: ")
    assert "1 skipped (1 bad image)" in capsys.readouterr().out

    parts = tmp_path / "parts"
    _run(recipe, tokenizer, parts, text, stop_at=3, **kw)
    resumed, _, log = _run(recipe, tokenizer, parts, text, resume=True, **kw)
    assert [s for s, _ in resumed.train] == [1, 2, 3, 4, 5, 6]
    assert [loss for _, loss in resumed.train] == pytest.approx([loss for _, loss in whole.train], abs=1e-6)
    assert log[-1]["skipped"] == {"bad image": 1}  # known from the checkpoint, counted once
