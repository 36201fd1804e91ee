"""Small evaluation sets in the benchmarks' own file formats, drawn from the built-in scene
generator, so every evaluation task runs offline and the readers are exercised on the same layouts
as the real files:

    OUT/images/000000000001.png ...       one image per scene, named by COCO-style image id
    OUT/vqav2_questions.json              VQAv2 questions          ("questions": [...])
    OUT/vqav2_annotations.json            VQAv2 annotations        (10 answers per question)
    OUT/gqa_questions.json                GQA questions            ({questionId: {...}})
    OUT/captions.json                     COCO captions            (5 references per image)
    OUT/pope_random.jsonl, pope_adversarial.jsonl   POPE           ({"question_id","image","text","label"})
    OUT/mmstar.tsv                        MMStar/MMBench TSV       (options A-D, image as base64)
    OUT/zeroshot/<class_name>/*.png       ImageFolder layout       (one object per image)

The scenes come from the scene config of a dataset folder (so a model is tested on the kind of
images it was trained on) but from their own seed, so no eval image is a training image.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import random
from pathlib import Path

from picovlm.data.scenes import (
    Scene,
    SceneConfig,
    render_scene,
    sample_scene,
    scene_captions,
    scene_questions,
    split_seed,
    with_article,
)

# GQA's two type axes for the scene generator's question types.
GQA_TYPES = {
    "color": ("query", "attr"),
    "shape": ("query", "cat"),
    "position": ("query", "rel"),
    "count": ("query", "obj"),
    "yesno": ("verify", "obj"),
    "compare": ("compare", "attr"),
}
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")


def scene_config_of(data_dir: str | Path) -> SceneConfig:
    """The SceneConfig a dataset folder was built with (its scene_config.json)."""
    path = Path(data_dir) / "scene_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (is {data_dir} a dataset made by `picovlm data`?)")
    try:
        return SceneConfig(**json.loads(path.read_text())["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a scene config ({e})") from None


def answer_type(answer: str) -> str:
    """VQAv2's three answer types."""
    return "yes/no" if answer in ("yes", "no") else "number" if answer.isdigit() else "other"


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _five_captions(scene: Scene, rng: random.Random) -> list[str]:
    """The generator's four phrasings plus one more, so each image has 5 references like COCO."""
    caps = scene_captions(scene, rng, n=4)
    names = [f"a {o.size} {o.color} {o.shape}" for o in scene.objects]
    caps.append(f"An image with {names[0] if len(names) == 1 else ', '.join(names[:-1]) + ' and ' + names[-1]}.")
    return caps


def _mc_items(scene: Scene, cfg: SceneConfig, rng: random.Random, image_id: int) -> list[dict]:
    """Multiple-choice questions with 4 options: colour, shape, count and position."""
    objs = scene.objects
    out = []

    def add(question: str, right: str, pool: list[str], category: str, l2: str) -> None:
        wrong = rng.sample([p for p in pool if p != right], 3)
        options = rng.sample([right, *wrong], 4)
        row = {"question": question, **dict(zip("ABCD", options, strict=True))}
        row |= {"answer": "ABCD"[options.index(right)], "category": category, "l2-category": l2, "image_id": image_id}
        out.append(row)

    shapes = [o.shape for o in objs]
    colors = [o.color for o in objs]
    o = rng.choice(objs)
    if shapes.count(o.shape) == 1 and len(cfg.colors) >= 4:
        add(f"What colour is the {o.shape}?", o.color, list(cfg.colors), "coarse perception", "color")
    if colors.count(o.color) == 1 and len(cfg.shapes) >= 4:
        add(f"What shape is the {o.color} object?", o.shape, list(cfg.shapes), "coarse perception", "shape")
    add(
        "How many objects are there?",
        str(len(objs)),
        [str(i) for i in range(1, 10)],
        "fine-grained perception",
        "count",
    )
    if len(objs) == len({(x.color, x.shape) for x in objs}) and cfg.grid == 3:
        add(f"Where is the {o.name}?", scene.place(o), list(POSITIONS), "fine-grained perception", "position")
    return out


def write_eval_sets(out: str | Path, cfg: SceneConfig, n_images: int = 100, seed: int = 0) -> dict[str, Path]:
    """Write every evaluation set (see the module docstring) for `n_images` new scenes."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(split_seed(seed, "eval-benchmarks"))
    questions, annotations, gqa, images, captions, mc = [], [], {}, [], [], []
    pope: dict[str, list[dict]] = {"random": [], "adversarial": []}
    all_pairs = [(c, s) for c in cfg.colors for s in cfg.shapes]
    for i in range(n_images):
        image_id = i + 1
        scene = sample_scene(rng, cfg)
        file_name = f"{image_id:012d}.png"
        render_scene(scene, cfg).save(out / "images" / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": cfg.image_size, "height": cfg.image_size})
        for k, qa in enumerate(scene_questions(scene, rng, cfg)):
            qid = image_id * 100 + k
            questions.append({"image_id": image_id, "question": qa.question, "question_id": qid})
            answers = [{"answer": qa.answer, "answer_confidence": "yes", "answer_id": j + 1} for j in range(10)]
            annotations.append(
                {
                    "question_id": qid,
                    "image_id": image_id,
                    "question_type": qa.qtype,
                    "answer_type": answer_type(qa.answer),
                    "multiple_choice_answer": qa.answer,
                    "answers": answers,
                }
            )
            structural, semantic = GQA_TYPES.get(qa.qtype, ("query", "attr"))
            gqa[str(qid)] = {
                "imageId": f"{image_id:012d}",
                "question": qa.question,
                "answer": qa.answer,
                "fullAnswer": qa.answer,
                "types": {"structural": structural, "semantic": semantic, "detailed": qa.qtype},
            }
        for caption in _five_captions(scene, rng):
            captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": caption})
        present = {(o.color, o.shape) for o in scene.objects}
        absent = [p for p in all_pairs if p not in present]
        near = [p for p in absent if any(p[0] == c or p[1] == s for c, s in present)]  # POPE's "adversarial"
        for setting, pool in (("random", absent), ("adversarial", near or absent)):
            negatives = rng.sample(pool, min(len(present), len(pool)))
            for (c, s), label in [*((p, "yes") for p in sorted(present)), *((p, "no") for p in negatives)]:
                pope[setting].append(
                    {
                        "question_id": len(pope[setting]) + 1,
                        "image": file_name,
                        "text": f"Is there {with_article(f'{c} {s}')} in the image?",
                        "label": label,
                    }
                )
        mc += _mc_items(scene, cfg, rng, image_id)
    paths = {
        "vqav2_questions": out / "vqav2_questions.json",
        "vqav2_annotations": out / "vqav2_annotations.json",
        "gqa": out / "gqa_questions.json",
        "captions": out / "captions.json",
        "pope_random": out / "pope_random.jsonl",
        "pope_adversarial": out / "pope_adversarial.jsonl",
        "mmstar": out / "mmstar.tsv",
        "zeroshot": out / "zeroshot",
    }
    info = {"description": "picovlm shapes evaluation set", "seed": seed}
    subtype = {"task_type": "Open-Ended", "data_type": "shapes", "data_subtype": "eval", "info": info}
    paths["vqav2_questions"].write_text(json.dumps({**subtype, "questions": questions}))
    paths["vqav2_annotations"].write_text(json.dumps({**subtype, "annotations": annotations}))
    paths["gqa"].write_text(json.dumps(gqa))
    paths["captions"].write_text(json.dumps({"info": info, "images": images, "annotations": captions}))
    for setting, rows in pope.items():
        paths[f"pope_{setting}"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(paths["mmstar"], "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "question", "A", "B", "C", "D", "answer", "category", "l2-category", "image"])
        for k, row in enumerate(mc):
            png = (out / "images" / f"{row['image_id']:012d}.png").read_bytes()
            cols = [row[c] for c in ("question", "A", "B", "C", "D", "answer", "category", "l2-category")]
            w.writerow([k, *cols, base64.b64encode(png).decode("ascii")])
    _write_zeroshot(paths["zeroshot"], cfg, n_images, rng)
    return paths


def _write_zeroshot(root: Path, cfg: SceneConfig, n: int, rng: random.Random) -> None:
    """One-object scenes in ImageFolder layout, one folder per "<colour> <shape>" class."""
    single = dataclasses.replace(cfg, min_objects=1, max_objects=1)
    for c in cfg.colors:
        for s in cfg.shapes:
            (root / f"{c}_{s}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        scene = sample_scene(rng, single)
        o = scene.objects[0]
        render_scene(scene, single).save(root / f"{o.color}_{o.shape}" / f"{i:06d}.png")
