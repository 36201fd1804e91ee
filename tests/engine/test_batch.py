"""Continuous batching: a sequence decodes the same tokens whether it runs alone or joins and leaves a
busy batch at any step."""

import pytest
import torch

from picovlm.engine.batch import DecodeBatch, Sequence
from picovlm.engine.generate import generate_tokens
from picovlm.engine.sampling import SamplingParams
from picovlm.models.vlm import VLM

PAD, IMG, END = 1, 2, 5


def prompt(model: VLM, text: list[int], n_images: int) -> list[int]:
    return [0, 3] + [IMG] * (model.tokens_per_image * n_images) + text + [4]


def pixels(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def alone(model, ids, pix, params, stop_ids=()) -> list[int]:
    """The reference: this prompt decoded by itself with generate_tokens."""
    out = []
    for (token,) in generate_tokens(model, [ids], pix, params, stop_ids, PAD):
        out.append(token)
        if token in stop_ids:
            break
    return out


def test_rows_joining_and_leaving_decode_as_alone(model):
    specs = [  # (text, images, max_tokens, the step at which it joins)
        ([7, 8, 9], 1, 12, 0),
        ([10], 0, 5, 0),
        ([11, 12, 13, 14, 15, 16, 17, 18, 19, 20], 2, 9, 2),  # longer than the window: shifts the others
        ([21, 22], 1, 7, 6),  # joins after row 1 has left
    ]
    seqs = [
        Sequence(i, prompt(model, text, n), pixels(n, i) if n else None, SamplingParams(max_tokens=m))
        for i, (text, n, m, _) in enumerate(specs)
    ]
    expected = {s.key: alone(model, s.ids, s.pixels, s.params) for s in seqs}
    batch, got, step = DecodeBatch(model, stop_ids=(), pad_id=PAD), {s.key: [] for s in seqs}, 0
    while step == 0 or len(batch):
        batch.add([s for s, spec in zip(seqs, specs, strict=True) if spec[3] == step])
        widths = batch.window
        for out in batch.step():
            got[out.key].append(out.token)
        assert batch.window <= widths + 1
        step += 1
    assert got == expected
    assert batch.cache is None and batch.window == 0  # everything freed


def test_stop_ids_remove_and_seeded_sampling(model):
    params = SamplingParams(max_tokens=10, temperature=1.0, top_k=20, seed=3)
    a = Sequence("a", prompt(model, [7, 8], 1), pixels(1, 0), params)
    ref = alone(model, a.ids, a.pixels, params, stop_ids=(END,))
    batch = DecodeBatch(model, stop_ids=(END,), pad_id=PAD)
    b = Sequence("b", prompt(model, [9], 1), pixels(1, 1), SamplingParams(max_tokens=10, temperature=1.0, seed=4))
    batch.add([a, b])
    tokens = [batch.step()[0]]
    batch.remove({"b"})  # b's client went away: a goes on unchanged
    assert [s.key for s in batch.rows] == ["a"]
    while len(batch):
        tokens += batch.step()
    assert [t.token for t in tokens] == ref  # same seed, same tokens, batched or not
    assert tokens[-1].finished in ("stop", "length")


def test_stop_id_finishes_and_ignore_stop(model):
    ids = prompt(model, [7], 1)
    first = alone(model, ids, pixels(1, 0), SamplingParams(max_tokens=1))[0]
    batch = DecodeBatch(model, stop_ids=(first,), pad_id=PAD)
    batch.add([Sequence("s", ids, pixels(1, 0), SamplingParams(max_tokens=5))])
    assert [(o.token, o.finished) for o in batch.step()] == [(first, "stop")] and len(batch) == 0
    batch.add([Sequence("i", ids, pixels(1, 0), SamplingParams(max_tokens=5), ignore_stop=True)])
    outs = [batch.step() for _ in range(5)]
    assert [o[0].finished for o in outs] == [None] * 4 + ["length"] and len(batch) == 0


def test_too_long_is_refused(model):
    batch = DecodeBatch(model, stop_ids=(), pad_id=PAD)
    with pytest.raises(ValueError, match="exceed"):
        batch.add([Sequence("x", [0] * 60, None, SamplingParams(max_tokens=5))])
    assert len(batch) == 0
