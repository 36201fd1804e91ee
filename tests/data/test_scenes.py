import json
import random
import re
from collections import Counter

import numpy as np
import pytest

from picovlm.data.formats import load_samples
from picovlm.data.scenes import (
    COLORS,
    SHAPES,
    Scene,
    SceneConfig,
    build_dataset,
    cell_name,
    render_scene,
    sample_scene,
    scene_captions,
    scene_questions,
    split_seed,
)

# Everything switched on, so every shape, colour, size and question type gets exercised.
RICH = SceneConfig(shapes=SHAPES, colors=tuple(COLORS), sizes=("small", "medium", "large"), max_objects=5)


def _scenes(cfg: SceneConfig, n: int, seed: int = 0) -> list[tuple[Scene, random.Random]]:
    rng = random.Random(seed)
    return [(sample_scene(rng, cfg), rng) for _ in range(n)]


def _matching(scene: Scene, color: str | None = None, shape: str | None = None) -> list:
    return [o for o in scene.objects if color in (None, o.color) and shape in (None, o.shape)]


def _place_from_pixels(obj, image_size: int) -> str:
    """Name the position from the pixel centre, independently of the row/col bookkeeping."""
    third = image_size / 3
    v = ("top", "", "bottom")[int(obj.cy // third)]
    h = ("left", "", "right")[int(obj.cx // third)]
    return " ".join(w for w in (v, h) if w) or "center"


def _check_answer(scene: Scene, cfg: SceneConfig, qa) -> None:
    """Re-derive the answer of one question from the scene objects."""
    q, a = qa.question, qa.answer
    if m := re.fullmatch(r"What colour is the (\w+)\?", q):
        (obj,) = _matching(scene, shape=m[1])
        assert (qa.qtype, a) == ("color", obj.color)
    elif m := re.fullmatch(r"What shape is the (\w+) object\?", q):
        (obj,) = _matching(scene, color=m[1])
        assert (qa.qtype, a) == ("shape", obj.shape)
    elif m := re.fullmatch(r"Where is the (\w+) (\w+)\?", q):
        (obj,) = _matching(scene, m[1], m[2])
        assert (qa.qtype, a) == ("position", _place_from_pixels(obj, cfg.image_size))
    elif q == "How many objects are there?":
        assert (qa.qtype, a) == ("count", str(len(scene.objects)))
    elif m := re.fullmatch(r"How many (\w+) are there\?", q):
        (shape,) = [s for s in cfg.shapes if m[1] in (s + "s", s + "es")]
        assert (qa.qtype, a) == ("count", str(len(_matching(scene, shape=shape))))
    elif m := re.fullmatch(r"Is there an? (\w+) (\w+)\?", q):
        assert (m[0].startswith("Is there an ")) == (m[1][0] in "aeiou")
        assert (qa.qtype, a) == ("yesno", "yes" if _matching(scene, m[1], m[2]) else "no")
    elif m := re.fullmatch(r"Is the (\w+) (\w+) bigger than the (\w+) (\w+)\?", q):
        (x,), (y,) = _matching(scene, m[1], m[2]), _matching(scene, m[3], m[4])
        assert x.radius != y.radius
        assert (qa.qtype, a) == ("compare", "yes" if x.radius > y.radius else "no")
    elif m := re.fullmatch(r"Which is bigger, the (\w+) (\w+) or the (\w+) (\w+)\?", q):
        (x,), (y,) = _matching(scene, m[1], m[2]), _matching(scene, m[3], m[4])
        assert x.radius != y.radius
        assert (qa.qtype, a) == ("compare", x.name if x.radius > y.radius else y.name)
    else:
        raise AssertionError(f"unexpected question {q!r}")


def test_cell_names():
    names = [cell_name(r, c, 3) for r in range(3) for c in range(3)]
    assert names == ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]
    assert [cell_name(r, c, 2) for r in range(2) for c in range(2)] == [
        "top left",
        "top right",
        "bottom left",
        "bottom right",
    ]
    assert cell_name(0, 0, 1) == "center"
    assert {cell_name(r, c, 5) for r in range(5) for c in range(5)} == set(names)


def test_config_validation():
    with pytest.raises(ValueError):
        SceneConfig(shapes=("hexagon",))
    with pytest.raises(ValueError):
        SceneConfig(colors=())
    with pytest.raises(ValueError):
        SceneConfig(grid=2, max_objects=5)
    assert SceneConfig(shapes=["circle"]).shapes == ("circle",)


def test_objects_are_in_distinct_cells_and_inside_them():
    for scene, _ in _scenes(RICH, 200):
        assert RICH.min_objects <= len(scene.objects) <= RICH.max_objects
        assert len({(o.row, o.col) for o in scene.objects}) == len(scene.objects)
        cell = RICH.image_size / RICH.grid
        for o in scene.objects:
            assert o.col * cell <= o.cx - o.radius and o.cx + o.radius <= (o.col + 1) * cell
            assert o.row * cell <= o.cy - o.radius and o.cy + o.radius <= (o.row + 1) * cell


def test_render_draws_each_object_in_its_colour():
    for scene, _ in _scenes(RICH, 50):
        image = render_scene(scene, RICH)
        assert image.mode == "RGB" and image.size == (RICH.image_size, RICH.image_size)
        for o in scene.objects:
            assert image.getpixel((int(o.cx), int(o.cy))) == COLORS[o.color]
        occupied = {(o.row, o.col) for o in scene.objects}
        cell = RICH.image_size // RICH.grid
        for r in range(RICH.grid):
            for c in range(RICH.grid):
                if (r, c) not in occupied:
                    assert image.getpixel((c * cell + cell // 2, r * cell + cell // 2)) == RICH.background


def test_noise_is_deterministic_and_visible():
    cfg = SceneConfig(noise=0.3)
    (a, _), (b, _) = _scenes(cfg, 1, seed=5)[0], _scenes(cfg, 1, seed=5)[0]
    assert render_scene(a, cfg).tobytes() == render_scene(b, cfg).tobytes()
    assert len(np.unique(np.asarray(render_scene(a, cfg)))) > 50


def test_captions_mention_every_object():
    for scene, rng in _scenes(RICH, 100):
        captions = scene_captions(scene, rng, n=3)
        assert len(set(captions)) == 3
        for caption in captions:
            assert caption[0].isupper() and caption.endswith(".")
            for o in scene.objects:
                assert f"{o.size} {o.color} {o.shape}" in caption
                assert scene.place(o) in caption


def test_questions_are_correct_and_distinct():
    types = Counter()
    for cfg in (RICH, SceneConfig()):
        for scene, rng in _scenes(cfg, 300):
            qas = scene_questions(scene, rng, cfg)
            assert len(qas) == cfg.questions_per_image
            assert len({qa.question for qa in qas}) == len(qas)
            for qa in qas:
                _check_answer(scene, cfg, qa)
                assert qa.answer == qa.answer.lower() and not qa.answer.endswith(".")
                types[qa.qtype] += 1
    assert set(types) == {"color", "shape", "position", "count", "yesno", "compare"}
    assert min(types.values()) > 0.05 * sum(types.values())


def test_yes_no_answers_are_balanced():
    answers = {"yesno": Counter(), "compare": Counter()}
    for scene, rng in _scenes(RICH, 600):
        for qa in scene_questions(scene, rng, RICH):
            if qa.answer in ("yes", "no"):
                answers[qa.qtype][qa.answer] += 1
    for counts in answers.values():
        assert 0.4 < counts["yes"] / (counts["yes"] + counts["no"]) < 0.6


def test_single_object_scene_asks_no_compare():
    cfg = SceneConfig(max_objects=1, questions_per_image=20)
    for scene, rng in _scenes(cfg, 50):
        assert all(qa.qtype != "compare" for qa in scene_questions(scene, rng, cfg))


def test_split_seed_is_stable_and_distinct():
    assert split_seed(0, "train") == 4450255320995488038  # must never change between processes or versions
    assert len({split_seed(s, split) for s in (0, 1) for split in ("train", "val", "test")}) == 6


def _read_all(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_build_dataset_is_deterministic(tmp_path):
    cfg = SceneConfig()
    build_dataset(tmp_path / "a", cfg, 6, 3, 3, seed=1)
    build_dataset(tmp_path / "b", cfg, 6, 3, 3, seed=1)
    build_dataset(tmp_path / "c", cfg, 6, 3, 3, seed=2)
    a, b, c = _read_all(tmp_path / "a"), _read_all(tmp_path / "b"), _read_all(tmp_path / "c")
    assert a == b
    assert a["train.json"] != c["train.json"]
    train, val = json.loads(a["train.json"]), json.loads(a["val.json"])
    assert [r["conversations"] for r in train[:3]] != [r["conversations"] for r in val]


def test_build_dataset_layout_and_round_trip(tmp_path):
    cfg = SceneConfig(questions_per_image=4, captions_per_image=2)
    paths = build_dataset(tmp_path, cfg, 5, 2, 3, seed=0)
    assert set(paths) == {"train", "val", "test", "train_captions", "val_captions", "test_captions", "config"}
    assert len(list((tmp_path / "images").glob("*.png"))) == 10

    records = json.loads(paths["train"].read_text())
    assert [r["id"] for r in records] == [f"train_{i:06d}" for i in range(5)]
    for r in records:
        assert set(r) == {"id", "image", "conversations", "question_types"}
        assert r["image"] == f"images/{r['id']}.png"
        turns = r["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * 4
        assert turns[0]["value"].startswith("<image>\n")
        assert sum("<image>" in t["value"] for t in turns) == 1
        assert len(r["question_types"]) == 4

    samples = load_samples(paths["train"], on_error="raise")
    assert len(samples) == 5
    assert samples[0].images == [tmp_path / "images" / "train_000000.png"]
    assert samples[0].meta["question_types"] == records[0]["question_types"]
    assert samples[0].messages[0]["content"].startswith("<|image|>\n")

    captions = load_samples(paths["test_captions"], on_error="raise")
    assert len(captions) == 3 * 2 and all(s.meta["kind"] == "caption" for s in captions)

    meta = json.loads(paths["config"].read_text())
    assert SceneConfig(**meta["config"]) == cfg
    assert meta["seed"] == 0 and meta["counts"] == {"train": 5, "val": 2, "test": 3}
