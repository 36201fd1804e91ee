"""The native model: vocabulary offsets, the image-span constraint, the native stage through the one
loop and its checkpoint, drawing with the KV cache against recomputing, and `picovlm draw`."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from picovlm.cli import main
from picovlm.engine.draw import draw_codes, draw_codes_recomputed
from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
from picovlm.native.constraint import ImageSpans
from picovlm.native.vocab import NativeVocab
from picovlm.train.stage_tasks import load_stage_model

VOCAB = NativeVocab(text_vocab=10, codebook_size=6, rows=2, columns=2, image_start=3, image_end=4)


def test_vocab_offsets_round_trip():
    codes = torch.tensor([0, 5, 2, 1])
    span = VOCAB.span(codes)
    assert span[0] == 3 and span[-1] == 4 and span[1:-1] == [10, 15, 12, 11]
    assert VOCAB.codes_of(span[1:-1]).tolist() == codes.tolist()
    with pytest.raises(ValueError, match="not image code tokens"):
        VOCAB.codes_of([9])


def test_span_index_restarts_at_each_image():
    ids = torch.tensor([[1, 3, 10, 11, 12, 13, 4, 2, 3, 14, 15]])
    assert VOCAB.span_index(ids).tolist() == [[-1, -1, 0, 1, 2, 3, -1, -1, -1, 0, 1]]


def test_constraint_yields_grid_length_codes_then_image_end():
    """Whatever the logits favour, the constrained sampler writes exactly 4 codes, then <|image_end|>."""
    spans, history, gen = ImageSpans(VOCAB), [1, 2, 3], torch.Generator().manual_seed(0)
    for _ in range(VOCAB.tokens_per_image + 1):
        logits = torch.randn(1, VOCAB.size, generator=gen)
        logits[0, 2] = 50.0  # a text token the model "wants"
        history.append(int(spans.constrain([history], logits).argmax()))
    drawn = history[3:]
    assert all(VOCAB.text_vocab <= t < VOCAB.size for t in drawn[:-1]) and drawn[-1] == VOCAB.image_end
    outside = spans.constrain([history], torch.zeros(1, VOCAB.size))
    assert torch.isinf(outside[0, VOCAB.text_vocab :]).all() and torch.isinf(outside[0, VOCAB.image_end])


def test_native_stage_checkpoint_reloads(tiny_native_run):
    model = load_stage_model(tiny_native_run["model"])
    pipe = Pipeline.load(tiny_native_run["model"])
    assert type(model) is type(pipe.model) and pipe.draws
    for a, b in zip(model.state_dict().values(), pipe.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    answer = pipe.ask(tiny_native_run["data"] / "images/test_000000.png", "What colour is it?")
    assert isinstance(answer, str)


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(temperature=1.0, seed=3)])
def test_kv_cache_drawing_equals_recompute(tiny_native_run, params):
    pipe = Pipeline.load(tiny_native_run["model"])
    prompts = ["a small red circle at the top", "two blue squares"]
    cached = draw_codes(pipe.model, pipe.tokenizer, prompts, params)
    assert cached.shape == (2, pipe.model.vocab.tokens_per_image)
    for row, prompt in enumerate(prompts):
        assert torch.equal(cached[row], draw_codes_recomputed(pipe.model, pipe.tokenizer, prompt, params))


def test_guided_drawing_is_an_image(tiny_native_run):
    [image] = Pipeline.load(tiny_native_run["model"]).draw(["a red circle"], guidance=2.0)
    assert image.size == (32, 32)


def test_draw_cli_writes_png(tiny_native_run, tmp_path, capsys):
    out = tmp_path / "out.png"
    assert (
        main(["draw", "a red circle above a blue square", "--model", str(tiny_native_run["model"]), "-o", str(out)])
        == 0
    )
    assert Image.open(out).size == (32, 32) and "wrote" in capsys.readouterr().out


def test_draw_cli_compiled_writes_the_same_png(tiny_native_run, tmp_path):
    model, outs = str(tiny_native_run["model"]), [tmp_path / "eager.png", tmp_path / "compiled.png"]
    assert main(["draw", "two green squares", "--model", model, "-o", str(outs[0])]) == 0
    assert main(["draw", "two green squares", "--model", model, "-o", str(outs[1]), "--compile"]) == 0
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_draw_refuses_an_adapter_model(tiny_native_run, tmp_path, capsys):
    vq = tiny_native_run["model"].parent.parent / "vq" / "model"
    assert main(["draw", "x", "--model", str(vq), "-o", str(tmp_path / "o.png")]) == 1
    assert "picovlm: error:" in capsys.readouterr().err


def test_constraint_masks_rows_in_different_states_and_forces_a_banned_end():
    """One step over rows outside, inside and at the end of a span; an end an earlier hook banned is
    still forced (to 0), since it is the only legal token."""
    spans, logits = ImageSpans(VOCAB), torch.zeros(3, VOCAB.size)
    logits[2, VOCAB.image_end] = float("-inf")
    out = spans.constrain([[1, 2], [1, 3, 10], [3, 10, 11, 12, 13]], logits)
    allowed = [set(torch.nonzero(row.isfinite()).flatten().tolist()) for row in out]
    assert allowed[0] == set(range(VOCAB.text_vocab)) - {VOCAB.image_end}
    assert allowed[1] == set(range(VOCAB.text_vocab, VOCAB.size))
    assert allowed[2] == {VOCAB.image_end} and out[2, VOCAB.image_end] == 0
