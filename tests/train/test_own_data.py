"""A user's own VQA set, of a kind that is not the built-in scenes, trained with the CLI alone.

The set is what users arrive with: LLaVA-format records of one question each (the same image in many
records), no caption files, the images in a folder of their own. `--preset vqa` must derive what it
needs (captions from the conversations, grouping by image) and beat the majority answer by far.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from picovlm.cli import main

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
PATTERNS = ("horizontal stripes", "vertical stripes", "checks", "plain")


def texture(colour: str, pattern: str, rng: random.Random, size: int = 32) -> Image.Image:
    """A background colour with a black pattern over it, at a random phase."""
    a = np.zeros((size, size, 3), np.uint8) + np.array(COLOURS[colour], np.uint8)
    period, phase = rng.choice((4, 6)), rng.randrange(4)
    y, x = np.mgrid[:size, :size] + phase
    mask = {
        "horizontal stripes": (y // (period // 2)) % 2 == 0,
        "vertical stripes": (x // (period // 2)) % 2 == 0,
        "checks": ((y // (period // 2)) + (x // (period // 2))) % 2 == 0,
        "plain": np.zeros((size, size), bool),
    }[pattern]
    a[mask] = 0
    return Image.fromarray(a)


def write_split(name: str, n: int, images: Path, annotations: Path, rng: random.Random) -> None:
    """`n` images, three one-question records each (as VQAv2-style sets keep them)."""
    records = []
    for i in range(n):
        colour, pattern = rng.choice(sorted(COLOURS)), rng.choice(PATTERNS)
        file = f"{name}_{i:04d}.png"
        texture(colour, pattern, rng).save(images / file)
        for k, (q, a) in enumerate(
            [
                ("What colour is the background?", colour),
                ("What pattern is it?", pattern),
                ("Is it plain?", "yes" if pattern == "plain" else "no"),
            ]
        ):
            records.append(
                {
                    "id": f"{name}_{i}_{k}",
                    "image": file,
                    "conversations": [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}],
                }
            )
    (annotations / f"{name}.json").write_text(json.dumps(records))


def majority_baseline(test_file: Path) -> float:
    """Accuracy of always giving each question's most common answer (in the test set itself)."""
    by_question: dict[str, Counter] = {}
    for r in json.loads(test_file.read_text()):
        q, a = r["conversations"][0]["value"], r["conversations"][1]["value"]
        by_question.setdefault(q, Counter())[a] += 1
    return sum(c.most_common(1)[0][1] for c in by_question.values()) / sum(
        sum(c.values()) for c in by_question.values()
    )


def small(recipe: dict) -> dict:
    """The vqa preset's recipe at test size: its stages, data and options as they are, smaller and shorter."""
    recipe["model"]["vision"]["vit"].update(
        image_size=32, patch_size=8, n_embd=48, n_layer=2, n_head=2, feature_layer=1
    )
    recipe["model"]["lm"].update(n_layer=2, n_head=2, n_kv_head=2, n_embd=48, mlp_hidden=128, max_seq_len=96)
    recipe["clip"]["text"].update(n_layer=1, n_head=2, n_kv_head=2, n_embd=48, mlp_hidden=128, max_seq_len=48)
    recipe["clip"]["embed_dim"] = 48
    recipe["tokenizer_vocab"] = 300
    steps = {"lm": 30, "clip": 40, "align": 30, "instruct": 160}
    for stage in recipe["stages"]:
        stage.update(steps=steps[stage["name"]], batch_size=16, log_every=50)
    return recipe


def test_own_vqa_set_trains_with_the_cli_and_beats_the_majority_answer(tmp_path, capsys):
    rng = random.Random(0)
    images, annotations = tmp_path / "images", tmp_path / "annotations"
    images.mkdir()
    annotations.mkdir()
    write_split("train", 240, images, annotations, rng)
    write_split("test", 60, images, annotations, rng)

    assert main(["train", "--preset", "vqa", "--data", str(annotations), "--dump-config"]) == 0
    recipe = small(json.loads(capsys.readouterr().out))
    config = tmp_path / "recipe.json"
    config.write_text(json.dumps(recipe))
    args = ["train", "--config", str(config), "--data", str(annotations), "--images", str(images)]
    assert main([*args, "--out", str(tmp_path / "run"), "--threads", "1"]) == 0
    printed = capsys.readouterr()
    assert "grouped by image into 240 conversations" in printed.out + printed.err

    out = tmp_path / "eval" / "vqa.json"
    model = str(tmp_path / "run" / "instruct" / "model")
    assert main(["eval", "--model", model, "--data", str(annotations / "test.json"), "--images", str(images)] + [
        "--out", str(out)
    ]) == 0  # fmt: skip
    accuracy = json.loads(out.read_text())["metrics"]["accuracy"]
    baseline = majority_baseline(annotations / "test.json")
    print(f"own VQA set: accuracy {accuracy:.3f}, majority answer {baseline:.3f}")
    assert accuracy >= baseline + 0.3, (accuracy, baseline)


def test_the_demo_layout_without_captions_says_which_stage_and_what_to_do(tmp_path, capsys):
    (tmp_path / "train.json").write_text("[]")
    assert main(["train", "--preset", "demo", "--data", str(tmp_path), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "stage 'lm'" in err and "train_captions.jsonl not found" in err and "--preset vqa" in err
    assert len(err.strip().splitlines()) == 1


def test_a_stage_started_from_one_that_never_ran_is_refused_before_training(tmp_path, capsys):
    rng = random.Random(1)
    write_split("train", 4, tmp_path, tmp_path, rng)
    assert main(["train", "--preset", "vqa", "--data", str(tmp_path), "--out", str(tmp_path / "run")] + [
        "--stages", "instruct"
    ]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "stage 'instruct' starts its 'tower' from stage 'clip', which has no checkpoint" in err
    assert not (tmp_path / "run").exists()  # nothing written before the check


def test_data_given_as_a_file_names_the_folder_to_give(tmp_path, capsys):
    (tmp_path / "train.json").write_text("[]")
    assert main(["train", "--preset", "vqa", "--data", str(tmp_path / "train.json"), "--out", str(tmp_path)]) == 1
    assert f"not a file (here: {tmp_path})" in capsys.readouterr().err


def test_a_relative_data_dir_in_a_recipe_file_is_relative_to_the_file(tmp_path, capsys):
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    assert main(["train", "--preset", "vqa", "--dump-config"]) == 0
    recipe = json.loads(capsys.readouterr().out)
    recipe["data_dir"] = "data"
    (folder / "recipe.json").write_text(json.dumps(recipe))
    assert main(["train", "--config", str(folder / "recipe.json"), "--dump-config"]) == 0
    assert json.loads(capsys.readouterr().out)["data_dir"] == str(folder / "data")
