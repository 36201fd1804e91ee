"""A procedural "moving shapes" video dataset: real .mp4 clips, captions and questions with known answers.

Why: like the scenes (data/scenes.py), every answer can be re-derived from the clip, so a model can
be scored exactly, per question type. Some questions need more than one frame, some do not:

    needs time  direction  "Which way does the red circle move?"          left / right / up / down
                speed      "Does the red circle move fast or slow?"       fast / slow
                event      "Does the blue square appear or disappear?"    appears / disappears
                count      "How many objects are there at the end?"       (or at the start)
    one frame   color      "What colour is the square?"
                shape      "What shape is the red object?"

Every clip has one or two objects that stay for the whole clip, each moving in a straight line (its
whole path inside the frame), and, in a share of the clips, one more that appears or disappears
midway. Colour and shape questions are asked about the objects that stay, so any frame answers them.
Each clip's middle frame is also written as a PNG with a caption of what it shows: the `clip` stage
trains the image tower on them, and the single-frame baseline (`{split}_frame.json`: the same
questions, shown that frame as an image) tells how much of a score needs more than one frame.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from picovlm.data.scenes import QA, SceneObject, cell_name, draw_object, split_seed, with_article
from picovlm.video.decode import write_video

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPEEDS = {"slow": 0.7, "fast": 1.5}  # pixels per frame of a 32-pixel clip (scaled with its size)
TIME_TYPES = ("direction", "speed", "event", "count")  # the question types one frame cannot answer


@dataclass
class ClipConfig:
    size: int = 32  # frame side in pixels (even: H.264 needs it)
    frames: int = 16  # frames in each file
    fps: int = 8
    radius: float = 0.14  # object radius as a share of the frame side
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
    event_share: float = 0.5  # clips with an object that appears or disappears
    questions_per_clip: int = 4

    def __post_init__(self) -> None:
        self.shapes, self.colors = tuple(self.shapes), tuple(self.colors)


@dataclass
class Track:
    """One object over time: what it is, where it starts, how it moves, when it is there."""

    shape: str
    color: str
    x: float
    y: float
    direction: str
    speed: str
    start: int  # first frame it is visible
    end: int  # the frame after the last one it is visible
    event: str | None = None  # "appears", "disappears" or None (there all along)

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    def at(self, frame: int, cfg: ClipConfig) -> tuple[float, float]:
        step = SPEEDS[self.speed] * cfg.size / 32 * frame
        dx, dy = DIRECTIONS[self.direction]
        return self.x + dx * step, self.y + dy * step

    def visible(self, frame: int) -> bool:
        return self.start <= frame < self.end


def _track(rng: random.Random, cfg: ClipConfig, shape: str, color: str) -> Track:
    """A straight path that stays inside the frame from the first frame to the last."""
    direction, speed = rng.choice(list(DIRECTIONS)), rng.choice(list(SPEEDS))
    r = cfg.radius * cfg.size
    travel = SPEEDS[speed] * cfg.size / 32 * (cfg.frames - 1)
    dx, dy = DIRECTIONS[direction]
    x = rng.uniform(r + max(0, -dx) * travel, cfg.size - r - max(0, dx) * travel)
    y = rng.uniform(r + max(0, -dy) * travel, cfg.size - r - max(0, dy) * travel)
    return Track(shape, color, x, y, direction, speed, 0, cfg.frames)


def sample_clip(rng: random.Random, cfg: ClipConfig) -> list[Track]:
    """One or two objects there all along, and maybe one that appears or disappears midway; shapes
    and colours all differ, so "the square" and "the red object" each name one object."""
    steady = rng.randint(1, 2)
    n = steady + (rng.random() < cfg.event_share)
    kinds = zip(rng.sample(cfg.shapes, n), rng.sample(cfg.colors, n), strict=True)
    tracks = [_track(rng, cfg, s, c) for s, c in kinds]
    if n > steady:
        cut = rng.randint(cfg.frames // 4, 3 * cfg.frames // 4)
        event = tracks[-1]
        event.start, event.end, event.event = (
            (cut, cfg.frames, "appears") if rng.random() < 0.5 else (0, cut, "disappears")
        )
    return tracks


def render_frame(tracks: list[Track], frame: int, cfg: ClipConfig) -> Image.Image:
    image = Image.new("RGB", (cfg.size, cfg.size))
    draw = ImageDraw.Draw(image)
    for t in tracks:
        if t.visible(frame):
            x, y = t.at(frame, cfg)
            draw_object(draw, SceneObject(t.shape, t.color, "small", 0, 0, x, y, cfg.radius * cfg.size))
    return image


def _place(t: Track, frame: int, cfg: ClipConfig) -> str:
    x, y = t.at(frame, cfg)
    return cell_name(min(2, int(3 * y / cfg.size)), min(2, int(3 * x / cfg.size)), 3)


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def frame_caption(tracks: list[Track], frame: int, cfg: ClipConfig) -> str:
    """What one frame shows: every visible object and where it is."""
    shown = [t for t in tracks if t.visible(frame)]
    place = {t.name: _place(t, frame, cfg) for t in shown}
    where = {n: "in the center" if p == "center" else f"at the {p}" for n, p in place.items()}
    text = _join([f"{with_article(t.name)} {where[t.name]}" for t in shown]) if shown else "nothing"
    return text[0].upper() + text[1:] + "."


def clip_caption(tracks: list[Track]) -> str:
    """What happens in the clip: each object, how it moves, and whether it comes or goes."""
    parts = []
    for t in tracks:
        event = f" and {t.event[:-1]}s" if t.event else ""
        parts.append(f"{with_article(t.name)} moves {t.direction} {'fast' if t.speed == 'fast' else 'slowly'}{event}")
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def clip_questions(tracks: list[Track], rng: random.Random, cfg: ClipConfig) -> list[QA]:
    """Up to `cfg.questions_per_clip` questions, each of a different type, the types drawn uniformly
    among those the clip can ask."""
    steady = [t for t in tracks if t.event is None]
    counts = {when: sum(t.visible(f) for t in tracks) for when, f in (("start", 0), ("end", cfg.frames - 1))}
    pools = {
        "direction": [QA(f"Which way does the {t.name} move?", t.direction, "direction") for t in tracks],
        "speed": [QA(f"Does the {t.name} move fast or slow?", t.speed, "speed") for t in tracks],
        "event": [QA(f"Does the {t.name} appear or disappear?", t.event, "event") for t in tracks if t.event],
        "count": [QA(f"How many objects are there at the {w}?", str(n), "count") for w, n in counts.items()],
        "color": [QA(f"What colour is the {t.shape}?", t.color, "color") for t in steady],
        "shape": [QA(f"What shape is the {t.color} object?", t.shape, "shape") for t in steady],
    }
    types = rng.sample([k for k, pool in pools.items() if pool], min(cfg.questions_per_clip, len(pools)))
    return [rng.choice(pools[k]) for k in types if pools[k]]


def _record(sample_id: str, key: str, path: str, qas: list[QA]) -> dict:
    placeholder = "<video>" if key == "video" else "<image>"
    conversations = []
    for k, qa in enumerate(qas):
        question = (f"{placeholder}\n" if k == 0 else "") + qa.question
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": qa.answer}]
    return {"id": sample_id, key: path, "conversations": conversations, "question_types": [q.qtype for q in qas]}


def _write(path: Path, records: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:  # one record per line, so that load errors point at the record
        path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    return path


def build_clips(out_dir: str | Path, cfg: ClipConfig, n_train: int, n_val: int, n_test: int, seed: int = 0) -> dict:
    """Write clips (clips/*.mp4), their middle frames (frames/*.png) and, per split, the files
    {split}_video.json (questions about the clips), {split}_frame.json (the same questions about the
    middle frames), {split}_video_captions.jsonl and {split}_frame_captions.jsonl. Returns the paths."""
    out = Path(out_dir)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    (out / "frames").mkdir(exist_ok=True)
    paths: dict[str, Path] = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        rng = random.Random(split_seed(seed, f"clips/{split}"))
        files: dict[str, list[dict]] = {"video": [], "frame": [], "video_captions": [], "frame_captions": []}
        for i in range(n):
            sample_id, middle = f"{split}_{i:06d}", cfg.frames // 2
            tracks = sample_clip(rng, cfg)
            frames = [render_frame(tracks, f, cfg) for f in range(cfg.frames)]
            video, image = f"clips/{sample_id}.mp4", f"frames/{sample_id}.png"
            write_video(frames, out / video, cfg.fps)
            frames[middle].save(out / image, compress_level=1)
            qas = clip_questions(tracks, rng, cfg)
            files["video"].append(_record(sample_id, "video", video, qas))
            files["frame"].append(_record(sample_id, "image", image, qas))
            files["video_captions"].append({"video": video, "text": clip_caption(tracks)})
            files["frame_captions"].append({"image": image, "text": frame_caption(tracks, middle, cfg)})
        for name, records in files.items():
            suffix = ".jsonl" if name.endswith("captions") else ".json"
            paths[f"{split}_{name}"] = _write(out / f"{split}_{name}{suffix}", records)
    paths["clip_config"] = out / "clip_config.json"
    meta = {"seed": seed, "counts": {"train": n_train, "val": n_val, "test": n_test}, "config": asdict(cfg)}
    paths["clip_config"].write_text(json.dumps(meta, indent=2))
    return paths
