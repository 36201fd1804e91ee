"""`Pipeline.load(compile_decode=True)` (`--compile`): answers as the eager model does; refuses, in one
line, what it cannot compile or what would only be slower."""

import types

import pytest
import torch

from picovlm.engine.pipeline import Pipeline, compile_lm
from picovlm.engine.sampling import SamplingParams
from picovlm.vision.image import load_image


def test_a_compiled_pipeline_answers_as_the_eager_one(tiny_run):
    eager, compiled = Pipeline.load(tiny_run["model"]), Pipeline.load(tiny_run["model"], compile_decode=True)
    assert compiled.model.lm.compiled_step is not None and eager.model.lm.compiled_step is None
    images = [load_image(tiny_run["data"] / "images" / f"test_00000{i}.png") for i in range(3)]
    params = SamplingParams(max_tokens=12, temperature=0.0)
    questions = ["describe it", "what colour is the circle?", "how many shapes are there?"]
    ask = [[{"role": "user", "content": f"<|image|>\n{q}"}] for q in questions]
    assert compiled.generate(ask, [[im] for im in images], params) == eager.generate(
        ask, [[im] for im in images], params
    )


def test_int8_and_compile_together_are_refused(tiny_run):
    with pytest.raises(ValueError, match="int8 and compile together"):
        Pipeline.load(tiny_run["model"], quantize="int8", compile_decode=True)


def test_an_lm_from_transformers_is_refused():
    with pytest.raises(ValueError, match="only picovlm's own GPT"):
        compile_lm(types.SimpleNamespace(lm=torch.nn.Linear(2, 2)))


def test_a_compiled_native_model_draws_what_the_eager_one_draws(tiny_native_run):
    """Drawing decodes image codes under a constraint, with and without guidance: the compiled step must
    give the same codes, so the same pixels."""
    eager = Pipeline.load(tiny_native_run["model"])
    compiled = Pipeline.load(tiny_native_run["model"], compile_decode=True)
    prompts, params = ["a red circle", "a blue square above a green triangle"], SamplingParams(temperature=0.0)
    for guidance in (0.0, 2.0):
        mine = compiled.draw(prompts, params, guidance=guidance)
        theirs = eager.draw(prompts, params, guidance=guidance)
        assert [im.tobytes() for im in mine] == [im.tobytes() for im in theirs]


def test_no_cpp_compiler_is_one_clear_error(tiny_run, monkeypatch):
    monkeypatch.setattr("picovlm.engine.pipeline.shutil.which", lambda name: None)
    with pytest.raises(ValueError, match="needs a C\\+\\+ compiler"):
        Pipeline.load(tiny_run["model"], compile_decode=True)
