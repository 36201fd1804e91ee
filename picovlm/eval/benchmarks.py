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
import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from picovlm.data.scenes import (
    QA,
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


@dataclass
class EvalSets:
    """The records of every benchmark file, gathered one scene at a time."""

    vqav2_questions: list[dict] = field(default_factory=list)
    vqav2_annotations: list[dict] = field(default_factory=list)
    gqa: dict[str, dict] = field(default_factory=dict)  # questionId -> question
    coco_images: list[dict] = field(default_factory=list)
    captions: list[dict] = field(default_factory=list)
    pope: dict[str, list[dict]] = field(default_factory=lambda: {"random": [], "adversarial": []})
    mmstar: list[dict] = field(default_factory=list)


def _add_questions(sets: EvalSets, image_id: int, qas: list[QA]) -> None:
    """A scene's questions in VQAv2's layout (10 identical answers each, like a unanimous vote) and
    in GQA's."""
    for k, qa in enumerate(qas):
        qid = image_id * 100 + k
        sets.vqav2_questions.append({"image_id": image_id, "question": qa.question, "question_id": qid})
        answers = [{"answer": qa.answer, "answer_confidence": "yes", "answer_id": j + 1} for j in range(10)]
        sets.vqav2_annotations.append(
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
        sets.gqa[str(qid)] = {
            "imageId": f"{image_id:012d}",
            "question": qa.question,
            "answer": qa.answer,
            "fullAnswer": qa.answer,
            "types": {"structural": structural, "semantic": semantic, "detailed": qa.qtype},
        }


def _add_pope(sets: EvalSets, scene: Scene, file_name: str, cfg: SceneConfig, rng: random.Random) -> None:
    """ "Is there a <colour> <shape> in the image?" for each object present ("yes") and as many
    absent ones ("no"): any absent pair (random), or one sharing a colour or a shape with an object
    present (POPE's "adversarial")."""
    present = {(o.color, o.shape) for o in scene.objects}
    absent = [(c, s) for c in cfg.colors for s in cfg.shapes if (c, s) not in present]
    near = [p for p in absent if any(p[0] == c or p[1] == s for c, s in present)]
    for setting, pool in (("random", absent), ("adversarial", near or absent)):
        negatives = rng.sample(pool, min(len(present), len(pool)))
        for (c, s), label in [*((p, "yes") for p in sorted(present)), *((p, "no") for p in negatives)]:
            sets.pope[setting].append(
                {
                    "question_id": len(sets.pope[setting]) + 1,
                    "image": file_name,
                    "text": f"Is there {with_article(f'{c} {s}')} in the image?",
                    "label": label,
                }
            )


def _write_mmstar(path: Path, rows: list[dict], images: Path) -> None:
    """MMStar's TSV: one question per line, its image inline as base64 (as MMStar ships it)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "question", "A", "B", "C", "D", "answer", "category", "l2-category", "image"])
        for k, row in enumerate(rows):
            png = (images / f"{row['image_id']:012d}.png").read_bytes()
            cols = [row[c] for c in ("question", "A", "B", "C", "D", "answer", "category", "l2-category")]
            w.writerow([k, *cols, base64.b64encode(png).decode("ascii")])


def _write_files(sets: EvalSets, out: Path, seed: int) -> dict[str, Path]:
    """Every benchmark file but the ImageFolder, named as in the module docstring."""
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
    paths["vqav2_questions"].write_text(json.dumps({**subtype, "questions": sets.vqav2_questions}))
    paths["vqav2_annotations"].write_text(json.dumps({**subtype, "annotations": sets.vqav2_annotations}))
    paths["gqa"].write_text(json.dumps(sets.gqa))
    paths["captions"].write_text(json.dumps({"info": info, "images": sets.coco_images, "annotations": sets.captions}))
    for setting, rows in sets.pope.items():
        paths[f"pope_{setting}"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    _write_mmstar(paths["mmstar"], sets.mmstar, out / "images")
    return paths


def write_eval_sets(out: str | Path, cfg: SceneConfig, n_images: int = 100, seed: int = 0) -> dict[str, Path]:
    """Write every evaluation set (see the module docstring) for `n_images` new scenes."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(split_seed(seed, "eval-benchmarks"))
    sets = EvalSets()
    for image_id in range(1, n_images + 1):
        scene = sample_scene(rng, cfg)
        file_name = f"{image_id:012d}.png"
        render_scene(scene, cfg).save(out / "images" / file_name)
        size = {"width": cfg.image_size, "height": cfg.image_size}
        sets.coco_images.append({"id": image_id, "file_name": file_name, **size})
        _add_questions(sets, image_id, scene_questions(scene, rng, cfg))
        for caption in _five_captions(scene, rng):
            sets.captions.append({"id": len(sets.captions) + 1, "image_id": image_id, "caption": caption})
        _add_pope(sets, scene, file_name, cfg, rng)
        sets.mmstar += _mc_items(scene, cfg, rng, image_id)
    paths = _write_files(sets, out, seed)
    _write_zeroshot(paths["zeroshot"], cfg, n_images, rng)
    return paths


def _write_zeroshot(root: Path, cfg: SceneConfig, n: int, rng: random.Random) -> None:
    """One-object scenes in ImageFolder layout, one folder per "<colour> <shape>" class."""
    single = replace(cfg, min_objects=1, max_objects=1)
    for c in cfg.colors:
        for s in cfg.shapes:
            (root / f"{c}_{s}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        scene = sample_scene(rng, single)
        o = scene.objects[0]
        render_scene(scene, single).save(root / f"{o.color}_{o.shape}" / f"{i:06d}.png")
