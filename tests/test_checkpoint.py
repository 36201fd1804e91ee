"""Checkpoints: atomic writes, recovery from every state a crash leaves, self-contained folders
(inherited parts hard-linked), clear errors on damage."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from picovlm.checkpoint import (
    EVERYTHING_ELSE,
    CheckpointError,
    load_trainer_state,
    load_weights,
    part_of,
    read_config,
    recover_checkpoint,
    save_checkpoint,
)


class TwoParts(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)


PARTS = {"a": "a.", "rest": EVERYTHING_ELSE}


@pytest.fixture
def tokfile(tmp_path):
    path = tmp_path / "tok.json"
    path.write_text("{}")
    return path


def test_part_of_prefix_and_rest():
    assert part_of("a.weight", PARTS) == "a"
    assert part_of("b.weight", PARTS) == "rest"
    with pytest.raises(KeyError):
        part_of("b.weight", {"a": "a."})


def test_the_longest_prefix_wins_in_any_order():
    parts = {"rest": EVERYTHING_ELSE, "text": "text.", "text_head": "text.head."}
    assert [part_of(k, parts) for k in ("text.head.w", "text.blocks.0.w", "logit_scale")] == [
        "text_head",
        "text",
        "rest",
    ]


def test_round_trip_and_overwrite(tmp_path, tokfile):
    m1, m2 = TwoParts(), TwoParts()
    save_checkpoint(tmp_path / "ck", m1, {"task": "x"}, PARTS, {}, tokfile)
    save_checkpoint(tmp_path / "ck", m1, {"task": "x", "step": 2}, PARTS, {}, tokfile)  # overwrite in place
    load_weights(m2, tmp_path / "ck")
    assert all(torch.equal(x, y) for x, y in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True))
    assert read_config(tmp_path / "ck")["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "tok.json"]  # no .tmp/.old left behind


def test_an_inherited_part_is_linked_so_the_folder_stands_alone(tmp_path, tokfile):
    m = TwoParts()
    save_checkpoint(tmp_path / "first", m, {}, PARTS, {}, tokfile)
    save_checkpoint(tmp_path / "second", m, {}, PARTS, {"a": tmp_path / "first" / "a.safetensors"}, tokfile)
    assert read_config(tmp_path / "second")["parts"]["a"] == "a.safetensors"
    first, second = (tmp_path / d / "a.safetensors" for d in ("first", "second"))
    assert os.stat(first).st_ino == os.stat(second).st_ino  # one file on disk, in both folders
    save_checkpoint(tmp_path / "first", TwoParts(), {}, PARTS, {}, tokfile)  # the earlier stage trained again
    moved = tmp_path / "elsewhere" / "model"
    shutil.move(tmp_path / "second", moved)
    shutil.rmtree(tmp_path / "first")
    m2 = TwoParts()
    load_weights(m2, moved)
    assert torch.equal(m2.a.weight, m.a.weight)  # the part it was saved with, not the retrained one


def test_an_old_checkpoint_with_a_reference_still_loads(tmp_path, tokfile):
    m = TwoParts()
    save_checkpoint(tmp_path / "first", m, {}, PARTS, {}, tokfile)
    save_checkpoint(tmp_path / "second", m, {}, {"rest": EVERYTHING_ELSE}, {}, tokfile)
    config = read_config(tmp_path / "second")
    config["parts"], config["part_prefixes"] = {"a": "../first/a.safetensors", "rest": "rest.safetensors"}, PARTS
    (tmp_path / "second" / "config.json").write_text(json.dumps(config))
    m2 = TwoParts()
    load_weights(m2, tmp_path / "second")
    assert torch.equal(m2.a.weight, m.a.weight)


def test_a_half_written_checkpoint_never_loads(tmp_path, tokfile):
    """A crash mid-write leaves only the .tmp folder, which is not the checkpoint."""
    m = TwoParts()
    save_checkpoint(tmp_path / "ck", m, {}, PARTS, {}, tokfile)

    class Boom(RuntimeError):
        pass

    def explode(*_a, **_k):
        raise Boom

    import picovlm.checkpoint as ck

    real = ck.save_file
    ck.save_file = lambda t, f: (real(t, f), explode())
    try:
        with pytest.raises(Boom):
            save_checkpoint(tmp_path / "ck", TwoParts(), {"step": 99}, PARTS, {}, tokfile)
    finally:
        ck.save_file = real
    assert "step" not in read_config(tmp_path / "ck")  # the old, complete checkpoint is intact
    load_weights(TwoParts(), tmp_path / "ck")


def test_damage_is_reported_clearly(tmp_path, tokfile):
    save_checkpoint(tmp_path / "ck", TwoParts(), {}, PARTS, {}, tokfile)
    (tmp_path / "ck" / "a.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="a.safetensors"):
        load_weights(TwoParts(), tmp_path / "ck")
    with pytest.raises(FileNotFoundError, match="not a picovlm checkpoint"):
        read_config(tmp_path / "nothing")


def test_missing_tensors_are_reported(tmp_path, tokfile):
    save_checkpoint(tmp_path / "ck", TwoParts(), {}, PARTS, {}, tokfile)

    class Bigger(TwoParts):
        def __init__(self):
            super().__init__()
            self.a2 = nn.Linear(1, 1)

    with pytest.raises(ValueError, match="missing"):
        load_weights(Bigger(), tmp_path / "ck")


def _saved(folder: Path, step: int, tokfile: Path) -> None:
    save_checkpoint(folder, TwoParts(), {"step": step}, PARTS, {}, tokfile, trainer_state={"step": step})


def _leave(tmp_path: Path, tokfile: Path, state: str) -> Path:
    """The folders a crash can leave, each a complete checkpoint except .tmp: `state` names them
    ("out" = ck, step 1; "old" = ck.old, step 1; "new" = ck.new, step 2; "tmp" = ck.tmp, half-written)."""
    _saved(tmp_path / "one", 1, tokfile)
    _saved(tmp_path / "two", 2, tokfile)
    for part in state.split("+"):
        source = tmp_path / ("two" if part == "new" else "one")
        target = tmp_path / ("ck" if part == "out" else f"ck.{part}")
        shutil.copytree(source, target)
        if part == "tmp":
            (target / "a.safetensors").write_bytes(b"half")
            (target / "config.json").unlink()
    return tmp_path / "ck"


# what a crash can leave -> the step `recover_checkpoint` puts in place (None: no complete copy)
CRASH_STATES = {
    "tmp": None,  # the first save, mid-write
    "out+tmp": 1,  # a later save, mid-write
    "new": 2,  # the first save, written, not yet renamed into place
    "out+new": 2,  # written, the old one not yet set aside
    "old+new": 2,  # the rename window: the old one set aside, the new one not yet in place
    "old": 1,  # the same, its successor lost
    "old+tmp": 1,
    "out+old": 1,  # in place, the old one not yet deleted
}


@pytest.mark.parametrize("state", sorted(CRASH_STATES))
def test_recovery_finds_the_newest_complete_checkpoint_in_every_crash_state(tmp_path, tokfile, state):
    ck = _leave(tmp_path, tokfile, state)
    recover_checkpoint(ck)
    expected = CRASH_STATES[state]
    if expected is None:
        assert not ck.exists()
    else:
        assert read_config(ck)["step"] == expected and load_trainer_state(ck)["step"] == expected
        load_weights(TwoParts(), ck)
    _saved(ck, 3, tokfile)  # a save from any such state leaves one complete checkpoint and nothing else
    assert read_config(ck)["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ck")) == ["ck"]


class Crash(Exception):
    pass


def _crashing(real, k: int, done: list):
    """`real` (a rename or a deletion), raising Crash instead when `k` operations are done."""

    def op(path, *args, **kwargs):
        if len(done) == k:
            raise Crash
        done.append((real, Path(path).name))
        return real(path, *args, **kwargs)

    return op


def test_a_crash_at_any_moment_of_a_save_leaves_a_complete_checkpoint(tmp_path, tokfile, monkeypatch):
    """Kill the second save before each of its renames and deletions in turn: recovery finds step 1,
    or step 2 once the new folder was complete (renamed from .tmp), and a third save succeeds."""
    rename, rmtree = Path.rename, shutil.rmtree
    for k in range(20):
        ck, done = tmp_path / str(k) / "ck", []
        _saved(ck, 1, tokfile)
        monkeypatch.setattr(Path, "rename", _crashing(rename, k, done))
        monkeypatch.setattr(shutil, "rmtree", _crashing(rmtree, k, done))
        try:
            _saved(ck, 2, tokfile)
        except Crash:
            pass
        monkeypatch.undo()
        if len(done) < k:  # the save ran to its end before the k-th operation
            break
        recover_checkpoint(ck)
        complete = (rename, "ck.tmp") in done
        assert read_config(ck)["step"] == load_trainer_state(ck)["step"] == (2 if complete else 1), done
        _saved(ck, 3, tokfile)
        assert read_config(ck)["step"] == 3
    assert k >= 5  # a save renames and deletes folders at least 5 times: each was a crash point


def test_corrupt_files_are_one_line_errors_naming_the_file(tmp_path, tokfile):
    _saved(tmp_path / "ck", 1, tokfile)
    weights, state = tmp_path / "ck" / "a.safetensors", tmp_path / "ck" / "trainer_state.pt"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=rf"^{weights}: damaged or incomplete file \(SafetensorError: "):
        load_weights(TwoParts(), tmp_path / "ck")
    for cut in (0, 10, 200):
        state.write_bytes(state.read_bytes()[:cut])
        with pytest.raises(CheckpointError, match=rf"^{state}: damaged or incomplete file") as info:
            load_trainer_state(tmp_path / "ck")
        assert "\n" not in str(info.value)
    (tmp_path / "ck" / "config.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(CheckpointError, match="corrupt config"):
        read_config(tmp_path / "ck")


def test_a_damaged_pretrained_folder_names_its_weights_file(write_hf_lm, tmp_path):
    """The weights transformers reads for an HF LM (a pretrained recipe's model loads them too)."""
    from picovlm.models.hf_lm import HFCausalLM

    folder, vocab = write_hf_lm(tmp_path / "lm", "llama")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=rf"^{weights}: damaged or incomplete file \(SafetensorError: "):
        HFCausalLM(folder, vocab, 64)
