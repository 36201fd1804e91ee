import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from picovlm.config import CLIPConfig, GPTConfig, VisionConfig, ViTConfig
from picovlm.data.scenes import SceneConfig, render_scene, sample_scene, scene_captions, split_scenes
from picovlm.eval.benchmarks import scene_config_of
from picovlm.eval.drawing import as_intent, dataset_test_split, frechet_distance, judge_drawings, parse_prompt
from picovlm.eval.drawing_judge import DrawingJudge, train_judge
from picovlm.eval.embedder import ClipEmbedder
from picovlm.models.clip import CLIPModel

CFG = SceneConfig(image_size=32, max_objects=2, shapes=("circle", "square", "triangle"), colors=("red", "blue"))


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    path = tmp_path_factory.mktemp("judge")
    train_judge(CFG, steps=150, batch_size=32, width=16).save(path)
    return DrawingJudge.load(path)  # through the saved files, as `picovlm eval` reads it


@pytest.fixture(scope="module")
def test_split():
    scenes = [s for s, _, _ in split_scenes(CFG, 60, 0, "test")]
    return [render_scene(s, CFG) for s in scenes], scenes


def test_judge_reads_real_images_right_and_mismatched_ones_wrong(judge, test_split):
    images, scenes = test_split
    real = judge_drawings(images, scenes, judge)
    assert real["n"] == real["n_shape"] == real["n_position"] == 60
    for key in ("shape", "color", "count", "position"):
        assert real[key] >= 0.9, (key, real)
    shuffled = judge_drawings(images[1:] + images[:1], scenes, judge)  # each image judged against another's scene
    assert shuffled["position"] < 0.4 and shuffled["color"] < 0.7 and shuffled["shape"] < 0.7, shuffled


def test_prompt_parser_round_trips_generator_captions():
    rng = random.Random(1)
    for _ in range(40):
        scene = sample_scene(rng, CFG)
        want = as_intent(scene)
        for caption in scene_captions(scene, rng, n=4):
            got = parse_prompt(caption)
            key = lambda o: (o["shape"], o["color"], o["place"])  # noqa: E731
            assert sorted(map(key, got["objects"])) == sorted(map(key, want["objects"])), caption
            assert got["count"] == len(scene.objects)
    got = parse_prompt("a red circle above a blue square")
    assert got["objects"] == [
        {"shape": "circle", "color": "red", "place": None},
        {"shape": "square", "color": "blue", "place": None},
    ]
    assert got["relations"] == [[0, "above", 1]]
    with pytest.raises(ValueError, match="names no shape"):
        parse_prompt("something nice")


class FixedJudge:
    """Reads every image as the same given objects: checks the verdict logic apart from the CNN."""

    def __init__(self, reads):
        self.reads = reads

    def read(self, images):
        return self.reads


def test_relation_prompts_are_judged_by_position():
    circle, square = {"shape": "circle", "color": "red"}, {"shape": "square", "color": "blue"}
    above = [{**circle, "row": 0, "col": 1}, {**square, "row": 2, "col": 1}]
    beside = [{**circle, "row": 1, "col": 0}, {**square, "row": 1, "col": 1}]
    prompts = ["a red circle above a blue square", "a red circle to the left of a blue square"]
    judge = FixedJudge([above, beside])
    out = judge_drawings([None, None], prompts, judge)
    assert out["position"] == 1.0 and out["shape"] == 1.0 and out["count"] == 1.0
    swapped = judge_drawings([None, None], prompts[::-1], judge)
    assert swapped["n_position"] == 2 and swapped["position"] == 0.0 and swapped["shape"] == 1.0
    recoloured = FixedJudge([[{**circle, "row": 0, "col": 1, "color": "blue"}, {**square, "row": 2, "col": 1}]])
    out = judge_drawings([None], prompts[:1], recoloured)
    assert out["color"] == 0.0 and out["shape"] == 1.0 and out["position"] == 0.0


def test_frechet_distance_zero_for_same_set_and_grows_with_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 4))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    near, far = frechet_distance(a, a + 0.1), frechet_distance(a, a + 1.0)
    assert 0 < near < far and far == pytest.approx(4.0, rel=1e-3)  # a shift of the mean by 1 in 4 dims


def _tiny_clip(tok, images, captions):
    """A tiny CLIP overfit on 6 pairs, so its matching pairs score above mismatched ones."""
    torch.manual_seed(0)
    vit = ViTConfig(image_size=32, patch_size=8, n_embd=32, n_layer=1, n_head=4, mlp_ratio=2.0)
    text = GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=4, n_kv_head=4, n_embd=32, mlp_hidden=64)
    model = CLIPModel(VisionConfig(vit=vit), CLIPConfig(text=text, embed_dim=16, text_layout="gpt"))
    embedder = ClipEmbedder(model, model.captions(tok))
    pixels, (ids, lengths) = model.tower.processor(images), embedder.captions(captions)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = model(pixels, ids, lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ClipEmbedder(model, model.captions(tok))


def test_clip_score_and_fid_clip(tok, test_split, judge):
    images, scenes = test_split[0][:6], test_split[1][:6]
    prompts = [as_intent(s)["prompt"] for s in scenes]
    clip = _tiny_clip(tok, images, prompts)
    matched = judge_drawings(images, scenes, judge, clip=clip, reference_images=images)
    mismatched = judge_drawings(images[::-1], scenes, judge, clip=clip, reference_images=images)
    assert matched["clip_score"] > mismatched["clip_score"] + 10
    assert matched["fid_clip"] == pytest.approx(0, abs=1e-4) and mismatched["fid_clip"] == pytest.approx(0, abs=1e-4)
    blank = [Image.new("RGB", (32, 32), (k * 20, k * 20, k * 20)) for k in range(6)]
    assert judge_drawings(blank, scenes, judge, clip=clip, reference_images=images)["fid_clip"] > 0.01


def test_dataset_test_split_replays_the_scenes_the_files_were_drawn_from(tiny_data):
    images, scenes = dataset_test_split(tiny_data)
    assert len(images) == len(scenes) == 16
    first_captions = {}
    for line in (tiny_data / "test_captions.jsonl").read_text().splitlines():
        record = json.loads(line)
        first_captions.setdefault(record["image"], record["text"])
    key = lambda o: (o["shape"], o["color"], o["place"])  # noqa: E731
    for k, scene in enumerate(scenes):
        caption = first_captions[f"images/test_{k:06d}.png"]
        want = sorted(map(key, as_intent(scene)["objects"]))
        assert sorted(map(key, parse_prompt(caption)["objects"])) == want, caption
    assert np.array_equal(np.asarray(images[3]), np.asarray(render_scene(scenes[3], scene_config_of(tiny_data))))
