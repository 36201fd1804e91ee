"""How well drawn images show what their prompts asked: per-attribute accuracy read by the drawing
judge (eval/drawing_judge.py), a CLIP score and an FID in CLIP-feature space.

A prompt's intent is a dict: {"objects": [{"shape", "color", "place"}], "relations": [[i, rel, j]],
"count": n, "prompt": text}, any attribute None where the prompt does not say it. It is made from a
generator scene (`intent_from_scene`: every attribute known) or parsed from a prompt in the
generator's caption grammar, plus relations like "a red circle above a blue square" (`parse_prompt`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
from PIL import Image
from scipy.optimize import linear_sum_assignment

from picovlm.data.scenes import COLORS, SHAPES, Scene, SceneConfig, cell_name, split_scenes
from picovlm.eval.drawing_judge import DrawingJudge
from picovlm.eval.embedder import ClipEmbedder
from picovlm.vision.image import load_image

RELATIONS = {"above": (-1, 0), "below": (1, 0), "to the left of": (0, -1), "to the right of": (0, 1)}
_PLACES = sorted({cell_name(r, c, 3) for r in range(3) for c in range(3)}, key=len, reverse=True)
_OBJECT = re.compile(
    rf"\ban? (?:(?:small|medium|large) )?(?:({'|'.join(COLORS)}) )?({'|'.join(SHAPES)})\b"
)  # fmt: skip
_PLACE = re.compile(rf"\b(?:at the ({'|'.join(_PLACES)})|in the (center))\b")
_RELATION = re.compile(rf"\b({'|'.join(RELATIONS)})\b")
_COUNT = re.compile(r"\bthere (?:is|are) (\d+) objects?\b")


def intent_from_scene(scene: Scene | dict) -> dict[str, Any]:
    """A generator scene (or `dataclasses.asdict` of one) as an intent with every attribute given."""
    d = dataclasses.asdict(scene) if isinstance(scene, Scene) else scene
    grid = d.get("grid", 3)
    objects = [{"shape": o["shape"], "color": o["color"], "place": cell_name(o["row"], o["col"], grid)}
               for o in d["objects"]]  # fmt: skip
    intent = {"objects": objects, "relations": [], "count": len(objects)}
    return {**intent, "prompt": describe(intent)}


def describe(intent: dict[str, Any]) -> str:
    """The intent in the caption grammar, e.g. "a red circle at the top left and a blue square in the center"."""
    parts = []
    for o in intent["objects"]:
        words = " ".join(w for w in (o.get("color"), o.get("shape") or "object") if w)
        place = o.get("place")
        parts.append(
            f"a {words}" + ("" if place is None else " in the center" if place == "center" else f" at the {place}")
        )
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def parse_prompt(prompt: str) -> dict[str, Any]:
    """A prompt in the generator's caption grammar (or "X above/below/to the left of/to the right of Y")
    -> an intent. Raises ValueError on a prompt that names no shape."""
    text = prompt.lower().strip().rstrip(".")
    count = _COUNT.search(text)
    text = re.sub(r"^(?:there (?:is|are) \d+ objects?: |a picture of )", "", text)
    objects: list[dict[str, Any]] = []
    relations: list[list[Any]] = []
    for clause in re.split(r";|,| and ", text):
        found = list(_OBJECT.finditer(clause))
        place = _PLACE.search(clause)
        relation = _RELATION.search(clause)
        for m in found:
            objects.append({"shape": m.group(2), "color": m.group(1), "place": None})
        if place and found:
            objects[-len(found)]["place"] = place.group(1) or place.group(2)
        if relation and len(found) == 2:
            relations.append([len(objects) - 2, relation.group(1), len(objects) - 1])
    if not objects:
        raise ValueError(f"prompt names no shape ({', '.join(SHAPES)}): {prompt!r}")
    n = int(count.group(1)) if count else len(objects)
    return {"objects": objects, "relations": relations, "count": n, "prompt": prompt}


def as_intent(item: Scene | dict | str) -> dict[str, Any]:
    """A scene, an intent, a {"prompt": text} dict or a prompt string, as an intent."""
    if isinstance(item, str):
        return parse_prompt(item)
    if isinstance(item, Scene) or (item.get("objects") and "row" in item["objects"][0]):
        return intent_from_scene(item)
    if "objects" in item:
        return {"relations": [], "count": len(item["objects"]), "prompt": describe(item), **item}
    if "prompt" in item:
        return parse_prompt(item["prompt"])
    raise ValueError(f"a scene needs 'objects' or 'prompt'; got keys {sorted(item)}")


def _matches(want: dict, got: dict, keys: tuple[str, ...]) -> bool:
    place = cell_name(got["row"], got["col"], 3)
    return all(want.get(k) is None or want[k] == (place if k == "place" else got[k]) for k in keys)


def _all_matched(wants: list[dict], read: list[dict], keys: tuple[str, ...]) -> bool:
    """Can each wanted object be given its own read object agreeing on `keys`? (an assignment)"""
    if len(wants) > len(read):
        return False
    if not wants:
        return True
    ok = np.array([[_matches(w, g, keys) for g in read] for w in wants], dtype=float)
    rows, cols = linear_sum_assignment(-ok)
    return bool(ok[rows, cols].sum() == len(wants))


def _relation_holds(intent: dict, read: list[dict], i: int, rel: str, j: int) -> bool:
    keys = ("shape", "color")
    dr, dc = RELATIONS[rel]
    for a in (g for g in read if _matches(intent["objects"][i], g, keys)):
        for b in (g for g in read if g is not a and _matches(intent["objects"][j], g, keys)):
            if (dr == 0 or (a["row"] - b["row"]) * dr > 0) and (dc == 0 or (a["col"] - b["col"]) * dc > 0):
                return True
    return False


def judge_one(intent: dict[str, Any], read: list[dict]) -> dict[str, bool | None]:
    """Per attribute, whether the read image shows what the intent asks (None: the intent does not say).

    shape: every asked shape is there (one object each); colour: every asked colour is there on an
    object of the asked shape; position: every placed object (shape and colour as asked) is in its
    cell, and every relation holds; count: exactly `count` objects.
    """
    objs = intent["objects"]
    placed = [o for o in objs if o.get("place") is not None]
    has = {k: any(o.get(k) is not None for o in objs) for k in ("shape", "color")}
    position = None
    if placed or intent["relations"]:
        position = _all_matched(placed, read, ("shape", "color", "place")) and all(
            _relation_holds(intent, read, *r) for r in intent["relations"]
        )
    return {
        "shape": _all_matched(objs, read, ("shape",)) if has["shape"] else None,
        "color": _all_matched(objs, read, ("shape", "color")) if has["color"] else None,
        "count": None if intent.get("count") is None else len(read) == intent["count"],
        "position": position,
    }


def clip_score(clip: ClipEmbedder, images: list[Image.Image], prompts: list[str]) -> float:
    """100 x the mean cosine between each image's and its prompt's CLIP embedding (no clipping at 0,
    unlike Hessel et al.'s CLIPScore), with picovlm's own CLIP model."""
    img, txt = clip.encode_images(images), clip.encode_texts(prompts)
    return float(100 * (img * txt).sum(-1).mean())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature rows a [N, D] and b [M, D] (N, M >= 2)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("a Frechet distance needs at least 2 images on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    trace = np.trace(cov_a + cov_b - 2 * np.real(root))
    return float(max(((mu_a - mu_b) ** 2).sum() + trace, 0.0))


def fid_clip(clip: ClipEmbedder, images: list[Image.Image], reference: list[Image.Image]) -> float:
    """FID computed on picovlm's CLIP image embeddings, NOT Inception-v3 features (whose weights cannot
    be had offline): comparable between runs with the same CLIP model only, not with published FIDs."""
    feats = [clip.encode_images(x).double().cpu().numpy() for x in (images, reference)]
    return frechet_distance(*feats)


def judge_each(images: list[Image.Image], scenes: list[dict | Scene | str], judge: DrawingJudge) -> list[dict]:
    """Per image, `judge_one`'s verdicts on what the judge reads in it (for a list of drawings that
    shows each one's, as `judge_drawings` gives their shares)."""
    if len(images) != len(scenes):
        raise ValueError(f"{len(images)} images but {len(scenes)} scenes")
    return [judge_one(as_intent(s), r) for s, r in zip(scenes, judge.read(images), strict=True)]


def judge_drawings(
    images: list[Image.Image],
    scenes: list[dict | Scene | str],
    judge: DrawingJudge,
    clip: ClipEmbedder | None = None,
    reference_images: list[Image.Image] | None = None,
) -> dict[str, Any]:
    """Score drawn images against the scenes (or intents, or prompts) they were drawn from.

    Returns {"shape", "color", "count", "position"}: the share of images right on that attribute among
    those whose prompt specifies it (None if none does), "n_<attribute>" those counts, "n"; with `clip`,
    "clip_score" (see `clip_score`); with `clip` and `reference_images` (real images), "fid_clip": a
    Frechet distance in CLIP-embedding space, not Inception FID (see `fid_clip`).
    """
    verdicts = judge_each(images, scenes, judge)
    out: dict[str, Any] = {"n": len(images)}
    for key in ("shape", "color", "count", "position"):
        said = [v[key] for v in verdicts if v[key] is not None]
        out[key], out[f"n_{key}"] = (sum(said) / len(said) if said else None), len(said)
    if clip is not None:
        out["clip_score"] = clip_score(clip, images, [as_intent(s)["prompt"] for s in scenes])
        if reference_images is not None:
            out["fid_clip"] = fid_clip(clip, images, reference_images)
    return out


def dataset_test_split(data_dir: str | Path, limit: int | None = None) -> tuple[list[Image.Image], list[Scene]]:
    """A built-in dataset's real test images with their scenes, replayed from its scene_config.json
    (the files do not store the scenes; `split_scenes` draws them as `build_dataset` did)."""
    data_dir = Path(data_dir)
    path = data_dir / "scene_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (is {data_dir} a dataset made by `picovlm data`?)")
    meta = json.loads(path.read_text())
    n = meta["counts"]["test"] if limit is None else min(limit, meta["counts"]["test"])
    scenes = [s for s, _, _ in split_scenes(SceneConfig(**meta["config"]), n, meta["seed"], "test")]
    images = [load_image(data_dir / "images" / f"test_{i:06d}.png") for i in range(n)]
    return images, scenes


def load_drawings(path: str | Path) -> tuple[list[Image.Image], list[dict | str]]:
    """A JSON list of drawings, each {"image": PNG path relative to the file, and "prompt" and/or a
    scene's or intent's "objects"}: the images and what each was asked to show."""
    path = Path(path)
    images, scenes = [], []
    for k, record in enumerate(json.loads(path.read_text())):
        if not isinstance(record, dict) or "image" not in record:
            raise ValueError(f"{path}:{k}: a drawing needs an 'image' path and a 'prompt' or 'objects'")
        images.append(load_image(path.parent / record["image"]))
        scene = {key: v for key, v in record.items() if key != "image"}
        try:
            as_intent(scene)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{k}: {e}") from None
        scenes.append(scene)
    return images, scenes
