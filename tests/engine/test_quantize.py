"""`Pipeline.load(quantize="int8")`: the LM's and projector's Linear layers become dynamic int8 ones, the
tower and a tied head stay fp32, and the model still answers, close to its fp32 self."""

import pytest
import torch

from picovlm.engine.pipeline import Pipeline
from picovlm.engine.quantize import quantize_model
from picovlm.engine.sampling import SamplingParams
from picovlm.text.tokens import IMAGE
from picovlm.vision.image import load_image


def test_int8_replaces_the_lm_and_projector_linears_only(tiny_run):
    fp32, int8 = Pipeline.load(tiny_run["model"]), Pipeline.load(tiny_run["model"], quantize="int8")
    names = {n for n, m in int8.model.named_modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)}
    assert names and all(n.startswith(("lm.", "projector.")) for n in names)
    plain = {n for n, m in int8.model.named_modules() if type(m) is torch.nn.Linear}
    assert all(n.startswith("tower.") or n == "lm.lm_head" for n in plain)
    assert ("lm.lm_head" in plain) == int8.model.lm.cfg.tie_embeddings  # a tied head is the embedding's weight

    image = load_image(tiny_run["data"] / "images" / "test_000000.png")
    enc = fp32.processor.encode_prompt([{"role": "user", "content": f"{IMAGE}\ndescribe it"}], [image])
    ids = torch.tensor([enc.ids])
    with torch.no_grad():
        a, b = fp32.model(ids, enc.pixels), int8.model(ids, enc.pixels)
    assert not torch.equal(a, b)  # it did quantize
    assert (a.softmax(-1) - b.softmax(-1)).abs().max() < 0.05  # and stays close
    answer = int8.ask(image, "describe it", SamplingParams(max_tokens=4, temperature=1.0, seed=0))
    assert isinstance(answer, str)


def test_unknown_mode_is_one_clear_error(tiny_run):
    pipe = Pipeline.load(tiny_run["model"])
    with pytest.raises(ValueError, match="quantize 'int4': choose one of int8"):
        quantize_model(pipe.model, "int4")
