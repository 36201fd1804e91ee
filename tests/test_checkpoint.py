"""Checkpoints: atomic writes, references to inherited parts, clear errors on damage."""

import pytest
import torch
import torch.nn as nn

from picovlm.checkpoint import EVERYTHING_ELSE, load_weights, part_of, read_config, save_checkpoint


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


def test_inherited_part_is_referenced(tmp_path, tokfile):
    m = TwoParts()
    save_checkpoint(tmp_path / "first", m, {}, PARTS, {}, tokfile)
    save_checkpoint(tmp_path / "second", m, {}, PARTS, {"a": tmp_path / "first" / "a.safetensors"}, tokfile)
    assert read_config(tmp_path / "second")["parts"]["a"] == "../first/a.safetensors"
    assert not (tmp_path / "second" / "a.safetensors").exists()
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
