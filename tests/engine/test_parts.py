"""AnswerParts: a native model's image spans become images where they close; text stays text."""

from PIL import Image

from picovlm.engine.batch import Step
from picovlm.engine.parts import AnswerParts
from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
from tests.native.helpers import drawing_pipeline


def test_a_span_is_one_image_where_it_ends(tiny_native_run):
    model = Pipeline.load(tiny_native_run["model"]).model
    v, parts = model.vocab, AnswerParts(model)
    codes = [v.text_vocab + i % v.codebook_size for i in range(v.tokens_per_image)]
    steps = [Step(0, 50, "a ", None), Step(0, v.image_start, "", None)] + [Step(0, c, "", None) for c in codes]
    out = [p for s in [*steps, Step(0, v.image_end, "", None), Step(0, 51, "b", "stop")] for p in parts.push(s)]
    assert out[0] == "a " and out[2] == "b" and isinstance(out[1], Image.Image) and len(out) == 3
    assert out[1].tobytes() == model.image_tokenizer.decode(model.vocab.codes_of(codes))[0].tobytes()


def test_an_adapter_model_has_text_parts_only(tiny_run):
    pipe = Pipeline.load(tiny_run["model"])
    messages = [{"role": "user", "content": "<|image|>\nwhat colour?"}]
    image = Image.open(tiny_run["data"] / "images" / "test_000000.png")
    params = SamplingParams(max_tokens=5)
    assert list(pipe.stream_parts(messages, [image], params)) == list(pipe.stream(messages, [image], params))


def test_stream_parts_of_a_drawing_answer(tiny_native_run):
    pipe = drawing_pipeline(tiny_native_run["model"])
    n = pipe.model.vocab.tokens_per_image
    parts = list(pipe.stream_parts([{"role": "user", "content": "draw a red circle"}], [], SamplingParams(n + 6)))
    assert isinstance(parts[0], Image.Image) and parts[0].size == (32, 32)
    assert all(isinstance(p, str) for p in parts[1:])
