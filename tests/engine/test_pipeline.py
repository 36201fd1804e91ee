"""Pipeline: generate, stream and ask are answers of the one engine, so they agree with each other,
and a conversation gets the same answer whichever conversations share its batch."""

import dataclasses

import pytest

from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
from picovlm.text.tokens import IMAGE
from picovlm.vision.image import load_image

QUESTIONS = ["what colour is the circle?", "describe the picture", "how many shapes are there?"]


@pytest.fixture(scope="module")
def pipe(tiny_run) -> Pipeline:
    pipe = Pipeline.load(tiny_run["model"])
    pipe.tokenizer.stop_ids = ()  # the tiny model ends after 1-3 tokens: let it talk
    return pipe


@pytest.fixture(scope="module")
def asked(tiny_run) -> tuple[list[list[dict]], list[list]]:
    """Three conversations about three test images: (conversations, their images)."""
    paths = [tiny_run["data"] / "images" / f"test_00000{i}.png" for i in range(3)]
    return [[{"role": "user", "content": f"{IMAGE}\n{q}"}] for q in QUESTIONS], [[load_image(p)] for p in paths]


# the tiny model's greedy answers are <|end|> over and over (no text): sample, with a seed
PARAMS = SamplingParams(max_tokens=12, temperature=1.0, seed=7)


def test_generate_stream_and_ask_agree_and_batch_mates_change_nothing(pipe, asked, tiny_run):
    conversations, images = asked
    together = pipe.generate(conversations, images, PARAMS)
    assert all(together)
    pairs = list(zip(conversations, images, strict=True))
    # each row draws from its own generator (one shared by the batch would give each row other draws)
    assert together == [pipe.generate([c], [im], PARAMS)[0] for c, im in pairs]
    assert together == ["".join(pipe.stream(c, im, PARAMS)) for c, im in pairs]
    assert pipe.ask(tiny_run["data"] / "images" / "test_000000.png", QUESTIONS[0], PARAMS) == together[0]
    assert pipe.generate(conversations, images, dataclasses.replace(PARAMS, seed=8)) != together


def test_stop_strings_cut_generate_and_stream_alike(pipe, asked):
    conversations, images = asked
    params = dataclasses.replace(PARAMS, max_tokens=16)
    full = pipe.generate(conversations[:1], images[:1], params)[0]
    start = next(i for i in range(3, len(full) - 1) if full.find(full[i : i + 2]) == i)  # a first occurrence
    cut = dataclasses.replace(params, stop=("never said", full[start : start + 2]))
    assert pipe.generate(conversations[:1], images[:1], cut) == [full[:start]]
    assert "".join(pipe.stream(conversations[0], images[0], cut)) == full[:start]
    steps = list(pipe.steps(conversations[:1], images[:1], cut))
    assert steps[-1][0].finished == "stop" and len(steps) < 16  # the row ended at the stop string
