"""Pipeline: generate, stream and ask are answers of the one engine, so they agree with each other,
and a conversation gets the same answer whichever conversations share its batch; checkpoints from
before the image markers load and answer as they did."""

import dataclasses
import json

import pytest
import torch
from PIL import Image

from picovlm.checkpoint import save_checkpoint
from picovlm.config import GPTConfig, VisionConfig, ViTConfig, VLMConfig
from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
from picovlm.models.vlm import VLM, VLM_PARTS, vlm_checkpoint_config
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


PROMPT = [{"role": "user", "content": f"{IMAGE}\nwhat is in the picture"}]


def checkpoint(path, tok, image_markers: bool):
    torch.manual_seed(0)
    vit = ViTConfig(image_size=16, patch_size=4, n_embd=16, n_layer=2, n_head=2, mlp_ratio=2.0)
    lm = GPTConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_kv_head=1, n_embd=32, mlp_hidden=48)
    cfg = VLMConfig(vision=VisionConfig(vit=vit), projector="pixel_shuffle2", lm=lm, image_markers=image_markers)
    model = VLM(cfg, tok.image_id)
    tok_file = path.parent / f"{path.name}.tokenizer.json"
    tok.save(tok_file)
    save_checkpoint(path, model, vlm_checkpoint_config(model), VLM_PARTS, {}, tok_file)
    return path


def test_a_checkpoint_from_before_the_markers_loads_and_answers(tmp_path, old_tok):
    """Its config.json has no image_markers key and its tokenizer no markers: it runs as it always did."""
    path = checkpoint(tmp_path / "old", old_tok, image_markers=False)
    config = json.loads((path / "config.json").read_text())
    del config["model"]["image_markers"]
    (path / "config.json").write_text(json.dumps(config))
    pipe = Pipeline.load(path)
    assert pipe.processor.markers is None and pipe.processor.tokens_per_placeholder == 4
    ids = pipe.processor.encode_prompt(PROMPT, [Image.new("RGB", (16, 16))]).ids
    assert ids[:6] == [old_tok.bos_id, old_tok.user_id, *[old_tok.image_id] * 4]
    (answer,) = pipe.generate([PROMPT], [[Image.new("RGB", (16, 16))]], SamplingParams(max_tokens=3, temperature=0))
    assert isinstance(answer, str)


def test_a_model_with_markers_prompts_with_them(tmp_path, tok, old_tok):
    pipe = Pipeline.load(checkpoint(tmp_path / "new", tok, image_markers=True))
    start, end = tok.image_marker_ids
    ids = pipe.processor.encode_prompt(PROMPT, [Image.new("RGB", (16, 16))]).ids
    assert ids[:8] == [tok.bos_id, tok.user_id, start, *[tok.image_id] * 4, end]
    mismatched = checkpoint(tmp_path / "mismatched", old_tok, image_markers=True)
    with pytest.raises(ValueError, match="has no <\\|image_start\\|> / <\\|image_end\\|>"):
        Pipeline.load(mismatched)


def test_a_failed_row_raises(pipe, asked):
    """The engine ends a failing row alone (for the server); a caller of the Pipeline gets the error."""
    conversations, images = asked
    broken = dataclasses.replace(PARAMS, temperature=1.0)
    broken.temperature = float("nan")  # SamplingParams refuses it; set after, so that sampling itself raises
    with pytest.raises(RuntimeError, match="probability tensor"):
        pipe.generate(conversations, images, broken)
