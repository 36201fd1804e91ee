"""A procedural "shapes on a grid" dataset: images, captions and questions with known answers.

Why a toy world? It is generated in seconds, needs no download, and every answer can be
re-derived from the scene, so a VLM trained on it can be checked exactly (per question type).
Objects sit in distinct cells of a grid with a jitter that keeps them inside their cell, so
positions are unambiguous and nothing overlaps.
"""

import hashlib
import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "cyan": (40, 210, 220),
    "pink": (245, 130, 190),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
# Object diameter as a fraction of the cell side.
SIZE_SCALE: dict[str, float] = {"small": 0.45, "medium": 0.62, "large": 0.8}

ROW_NAMES = ("top", "middle", "bottom")
COL_NAMES = ("left", "center", "right")


@dataclass
class SceneConfig:
    """What a scene may contain and how it is drawn; names must be keys of SHAPES/COLORS/SIZE_SCALE."""

    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 3
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
    sizes: tuple[str, ...] = ("small", "large")
    grid: int = 3
    background: tuple[int, int, int] = (0, 0, 0)
    noise: float = 0.0  # 0..1: background brightness jitter and per-pixel noise; 0 = clean images
    questions_per_image: int = 6
    captions_per_image: int = 2

    def __post_init__(self) -> None:
        # Accept lists too, so a config read back from JSON compares equal to the original.
        self.shapes, self.colors, self.sizes = tuple(self.shapes), tuple(self.colors), tuple(self.sizes)
        self.background = tuple(self.background)
        for name, values, known in (
            ("shape", self.shapes, SHAPES),
            ("colour", self.colors, COLORS),
            ("size", self.sizes, SIZE_SCALE),
        ):
            unknown = [v for v in values if v not in known]
            if unknown or not values:
                raise ValueError(f"unknown or missing {name}s {unknown}; choose from {list(known)}")
        if not 1 <= self.min_objects <= self.max_objects <= self.grid**2:
            raise ValueError("need 1 <= min_objects <= max_objects <= grid * grid")


@dataclass
class SceneObject:
    shape: str
    color: str
    size: str
    row: int
    col: int
    cx: float  # pixel centre
    cy: float
    radius: float  # pixel radius of the circle the shape is inscribed in

    @property
    def name(self) -> str:
        """Short unique-enough reference, e.g. "red circle", used in questions and answers."""
        return f"{self.color} {self.shape}"


@dataclass
class Scene:
    """Everything needed to draw the image and to answer any question about it."""

    objects: list[SceneObject]
    grid: int = 3
    background: tuple[int, int, int] = (0, 0, 0)
    noise_seed: int = 0  # rendering is a pure function of (scene, cfg), so noise needs its own seed

    def place(self, obj: SceneObject) -> str:
        """The words used for the object's cell, e.g. "top left"."""
        return cell_name(obj.row, obj.col, self.grid)


@dataclass
class QA:
    question: str
    answer: str
    qtype: str


def cell_name(row: int, col: int, grid: int) -> str:
    """Name a cell like "top left" or "center".

    Grids other than 3x3 map rows and columns to thirds, so with grid > 3 two cells can share a
    name; questions only ask where a uniquely named object is, so answers stay correct.
    """
    vertical = ROW_NAMES[int((row + 0.5) * 3 / grid)]
    horizontal = COL_NAMES[int((col + 0.5) * 3 / grid)]
    if vertical == "middle":
        return horizontal
    return vertical if horizontal == "center" else f"{vertical} {horizontal}"


def sample_scene(rng: random.Random, cfg: SceneConfig) -> Scene:
    n = rng.randint(cfg.min_objects, cfg.max_objects)
    cell = cfg.image_size / cfg.grid
    objects = []
    for index in rng.sample(range(cfg.grid**2), n):
        row, col = divmod(index, cfg.grid)
        size = rng.choice(cfg.sizes)
        radius = SIZE_SCALE[size] * cell / 2
        slack = cell / 2 - radius  # how far the centre may move and keep the shape inside its cell
        cx = (col + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (row + 0.5) * cell + rng.uniform(-slack, slack)
        shape, color = rng.choice(cfg.shapes), rng.choice(cfg.colors)
        objects.append(SceneObject(shape, color, size, row, col, cx, cy, radius))
    background = cfg.background
    if cfg.noise > 0:
        shift = rng.uniform(-cfg.noise, cfg.noise) * 64
        background = tuple(int(min(255, max(0, c + shift))) for c in background)
    return Scene(objects, cfg.grid, background, rng.getrandbits(32))


def _star(cx: float, cy: float, r: float, points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    corners = []
    for k in range(2 * points):  # alternate outer and inner corners, starting at the top
        angle, radius = math.pi * k / points - math.pi / 2, r if k % 2 == 0 else r * inner
        corners.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return corners


def draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    x, y, r, fill = obj.cx, obj.cy, obj.radius, COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif obj.shape == "square":
        h = r * 0.85  # a square as wide as the circle looks much bigger than it, so shrink it a bit
        draw.rectangle([x - h, y - h, x + h, y + h], fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(x, y - r), (x + r * 0.866, y + r / 2), (x - r * 0.866, y + r / 2)], fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
    elif obj.shape == "cross":
        w = r / 3
        draw.rectangle([x - r, y - w, x + r, y + w], fill=fill)
        draw.rectangle([x - w, y - r, x + w, y + r], fill=fill)
    elif obj.shape == "star":
        draw.polygon(_star(x, y, r), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def render_scene(scene: Scene, cfg: SceneConfig) -> Image.Image:
    image = Image.new("RGB", (cfg.image_size, cfg.image_size), scene.background)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        draw_object(draw, obj)
    if cfg.noise > 0:
        pixels = np.asarray(image, dtype=np.float32)
        pixels += np.random.default_rng(scene.noise_seed).normal(0, cfg.noise * 32, pixels.shape)
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    return image


# ---------------------------------------------------------------------------- captions


def _describe(obj: SceneObject) -> str:
    return f"a {obj.size} {obj.color} {obj.shape}"  # every size starts with a consonant


def _at(place: str) -> str:
    return "in the center" if place == "center" else f"at the {place}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def scene_captions(scene: Scene, rng: random.Random, n: int = 2) -> list[str]:
    """Return up to `n` differently worded captions, each naming every object, its size and place.

    Objects are listed in a random order so the model cannot rely on reading order.
    """

    def listing() -> str:
        objs = rng.sample(scene.objects, len(scene.objects))
        return _join([f"{_describe(o)} {_at(scene.place(o))}" for o in objs])

    def by_place() -> str:
        objs = rng.sample(scene.objects, len(scene.objects))
        return "; ".join(f"{_at(scene.place(o))} there is {_describe(o)}" for o in objs)

    count = len(scene.objects)
    there_are = "There is 1 object" if count == 1 else f"There are {count} objects"
    templates = [
        lambda: f"{listing()}.",
        lambda: f"{there_are}: {listing()}.",
        lambda: f"A picture of {listing()}.",
        lambda: f"{by_place()}.",
    ]
    captions = [template() for template in rng.sample(templates, min(n, len(templates)))]
    return [c[0].upper() + c[1:] for c in captions]


# ---------------------------------------------------------------------------- questions


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _unique(objects: list[SceneObject], key: Callable[[SceneObject], object]) -> list[SceneObject]:
    """The objects whose `key` no other object shares, i.e. those a phrase like "the circle" identifies."""
    values = [key(o) for o in objects]
    return [o for o, v in zip(objects, values, strict=True) if values.count(v) == 1]


def _question_pools(scene: Scene, cfg: SceneConfig) -> dict[str, list[list[QA]]]:
    """Every question that can be asked about the scene, per type, split into sub-pools.

    Sub-pools are picked uniformly and keep answers balanced: "yes" and "no" questions are two
    pools, so a yes/no question is "yes" half of the time however many absent pairs exist.
    """
    objs = scene.objects
    named = _unique(objs, lambda o: (o.color, o.shape))  # "the {colour} {shape}" identifies these
    present = {(o.color, o.shape) for o in objs}
    absent = [(c, s) for c in cfg.colors for s in cfg.shapes if (c, s) not in present]
    # Ordered pairs, so "yes" and "no" are equally likely and the bigger object is not always first.
    pairs = [(a, b) for a in named for b in named if SIZE_SCALE[a.size] != SIZE_SCALE[b.size]]

    def bigger(a: SceneObject, b: SceneObject) -> SceneObject:
        return a if SIZE_SCALE[a.size] > SIZE_SCALE[b.size] else b

    return {
        "color": [[QA(f"What colour is the {o.shape}?", o.color, "color") for o in _unique(objs, lambda o: o.shape)]],
        "shape": [
            [QA(f"What shape is the {o.color} object?", o.shape, "shape") for o in _unique(objs, lambda o: o.color)]
        ],
        "position": [[QA(f"Where is the {o.name}?", scene.place(o), "position") for o in named]],
        "count": [
            [QA("How many objects are there?", str(len(objs)), "count")],
            [
                QA(f"How many {_plural(s)} are there?", str(sum(o.shape == s for o in objs)), "count")
                for s in cfg.shapes
            ],
        ],
        "yesno": [
            [QA(f"Is there {with_article(f'{c} {s}')}?", "yes", "yesno") for c, s in sorted(present)],
            [QA(f"Is there {with_article(f'{c} {s}')}?", "no", "yesno") for c, s in absent],
        ],
        "compare": [
            [
                QA(f"Is the {a.name} bigger than the {b.name}?", "yes" if bigger(a, b) is a else "no", "compare")
                for a, b in pairs
            ],
            [QA(f"Which is bigger, the {a.name} or the {b.name}?", bigger(a, b).name, "compare") for a, b in pairs],
        ],
    }


def scene_questions(scene: Scene, rng: random.Random, cfg: SceneConfig) -> list[QA]:
    """Pick up to `cfg.questions_per_image` distinct questions with a balanced mix of types.

    The type is drawn uniformly among the types this scene can ask, then a sub-pool, then a
    question, so rare types (compare) are not drowned by plentiful ones (yes/no).
    """
    pools = _question_pools(scene, cfg)
    chosen: list[QA] = []
    while len(chosen) < cfg.questions_per_image:
        types = [t for t, subpools in pools.items() if any(subpools)]
        if not types:
            break
        subpool = rng.choice([p for p in pools[rng.choice(types)] if p])
        chosen.append(subpool.pop(rng.randrange(len(subpool))))
    return chosen


# ---------------------------------------------------------------------------- dataset files


def split_seed(seed: int, split: str) -> int:
    """A stable per-split seed (Python's hash() is salted per process, so it cannot be used)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{split}".encode()).digest()[:8], "big")


def llava_record(sample_id: str, image: str, qas: list[QA]) -> dict:
    """One multi-turn LLaVA conversation; the <image> placeholder goes in the first question only."""
    conversations = []
    for k, qa in enumerate(qas):
        question = ("<image>\n" if k == 0 else "") + qa.question
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": qa.answer}]
    return {"id": sample_id, "image": image, "conversations": conversations, "question_types": [qa.qtype for qa in qas]}


def split_scenes(cfg: SceneConfig, n: int, seed: int, split: str) -> Iterator[tuple[Scene, list[QA], list[str]]]:
    """The scenes of a split in order, with their questions and captions, exactly as `build_dataset`
    draws them (it reads this), so a split's scene metadata can be replayed from (cfg, seed) without
    the files storing it, e.g. to label held-out images for the drawing judge."""
    rng = random.Random(split_seed(seed, split))
    for _ in range(n):
        scene = sample_scene(rng, cfg)
        qas = scene_questions(scene, rng, cfg)
        yield scene, qas, scene_captions(scene, rng, cfg.captions_per_image)


def build_dataset(
    out_dir: str | Path, cfg: SceneConfig, n_train: int, n_val: int, n_test: int, seed: int = 0
) -> dict[str, Path]:
    """Write images, LLaVA-style QA files and caption files for the train/val/test splits.

    Each split draws its scenes independently from its own seed, so splits are deterministic and
    different, though nothing stops a simple scene from appearing in two splits.
    Returns {"train": train.json, "train_captions": train_captions.jsonl, ..., "config": ...}.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        records, caption_lines = [], []
        for i, (scene, qas, captions) in enumerate(split_scenes(cfg, n, seed, split)):
            sample_id = f"{split}_{i:06d}"
            image = f"images/{sample_id}.png"
            render_scene(scene, cfg).save(out / image, compress_level=1)
            records.append(llava_record(sample_id, image, qas))
            for caption in captions:
                caption_lines.append(json.dumps({"image": image, "text": caption}) + "\n")
        paths[split] = out / f"{split}.json"
        # One record per line: readable, fast (the C encoder does not indent) and loader errors get
        # a line number that points at the record.
        paths[split].write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
        paths[f"{split}_captions"] = out / f"{split}_captions.jsonl"
        paths[f"{split}_captions"].write_text("".join(caption_lines))
    paths["config"] = out / "scene_config.json"
    meta = {"seed": seed, "counts": {"train": n_train, "val": n_val, "test": n_test}, "config": asdict(cfg)}
    paths["config"].write_text(json.dumps(meta, indent=2))
    return paths
