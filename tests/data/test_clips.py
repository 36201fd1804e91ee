"""Tests for the moving-shapes clips: real video files whose answers can be checked in their frames."""

import random

import numpy as np
import pytest

from picovlm.data.clips import DIRECTIONS, ClipConfig, Track, build_clips, clip_questions, render_frame, sample_clip
from picovlm.data.formats import load_samples
from picovlm.data.scenes import COLORS
from picovlm.video.decode import load_video


def centre(frame, color: str) -> tuple[float, float] | None:
    """Where the pixels of one colour are (None when there are none)."""
    pixels = np.asarray(frame, dtype=np.int32)
    ys, xs = np.nonzero(np.abs(pixels - np.array(COLORS[color])).sum(-1) < 60)
    return (float(xs.mean()), float(ys.mean())) if len(xs) else None


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("clips")
    cfg = ClipConfig(size=32, frames=12, event_share=1.0)
    return out, cfg, build_clips(out, cfg, n_train=6, n_val=2, n_test=2, seed=3)


def test_paths_stay_inside_and_events_happen_midway():
    cfg = ClipConfig()
    rng = random.Random(0)
    for _ in range(200):
        tracks = sample_clip(rng, cfg)
        assert 1 <= len(tracks) <= 3 and len({t.shape for t in tracks}) == len({t.color for t in tracks}) == len(tracks)
        r = cfg.radius * cfg.size
        for t in tracks:
            for f in (0, cfg.frames - 1):
                x, y = t.at(f, cfg)
                assert r - 1e-6 <= x <= cfg.size - r + 1e-6 and r - 1e-6 <= y <= cfg.size - r + 1e-6
            if t.event == "appears":
                assert 0 < t.start < cfg.frames and t.end == cfg.frames
            elif t.event == "disappears":
                assert t.start == 0 and 0 < t.end < cfg.frames
        assert sum(t.event is not None for t in tracks) <= 1


def test_the_decoded_video_shows_what_the_answers_say(built):
    """Direction and events re-derived from the pixels of the written .mp4, not from the generator."""
    out, cfg, _ = built
    samples = load_samples(out / "train_video.json", on_error="raise")
    checked = 0
    for s in samples:
        video = load_video(s.inputs("video")[0])
        first, last = video.frames([0, len(video.times) - 1])
        for q, a in zip(s.messages[::2], s.messages[1::2], strict=True):
            text = q["content"]
            if text.startswith("<|video|>"):
                text = text.split("\n", 1)[1]
            if text.startswith("Which way does the"):
                color = text.split()[4]
                (x0, y0), (x1, y1) = centre(first, color) or (0, 0), centre(last, color) or (0, 0)
                if centre(first, color) and centre(last, color):
                    dx, dy = DIRECTIONS[a["content"]]
                    assert (x1 - x0) * dx + (y1 - y0) * dy > 2
                    checked += 1
            if text.startswith("Does the") and "appear" in text:
                color = text.split()[2]
                seen = (centre(first, color) is not None, centre(last, color) is not None)
                assert seen == ((False, True) if a["content"] == "appears" else (True, False))
                checked += 1
    assert checked > 0


def test_frame_files_ask_the_same_questions_about_the_middle_frame(built):
    out, cfg, paths = built
    videos = load_samples(paths["test_video"], on_error="raise")
    frames = load_samples(paths["test_frame"], on_error="raise")
    assert [v.messages for v in videos] == [
        [{**m, "content": m["content"].replace("<|image|>", "<|video|>")} for m in f.messages] for f in frames
    ]
    video = load_video(videos[0].inputs("video")[0])
    (middle,) = video.frames([cfg.frames // 2])
    still = frames[0].images[0]
    assert np.abs(np.asarray(middle, dtype=np.int32) - np.asarray(open_png(still), dtype=np.int32)).mean() < 8
    captions = load_samples(paths["train_frame_captions"], on_error="raise")
    assert all(c.meta["kind"] == "caption" and c.images for c in captions)
    assert load_samples(paths["train_video_captions"], on_error="raise")[0].modalities == "video"


def open_png(path):
    from PIL import Image

    return Image.open(path).convert("RGB")


def test_questions_of_one_frame_are_about_objects_there_all_along():
    cfg = ClipConfig(questions_per_clip=6, event_share=1.0)
    rng = random.Random(1)
    for _ in range(50):
        tracks = sample_clip(rng, cfg)
        steady = {t.name for t in tracks if t.event is None}
        for qa in clip_questions(tracks, rng, cfg):
            if qa.qtype == "color":
                assert any(t.shape in qa.question and t.color == qa.answer and t.name in steady for t in tracks)
            if qa.qtype == "shape":
                assert any(t.color in qa.question and t.shape == qa.answer and t.name in steady for t in tracks)


def test_render_draws_only_visible_objects():
    cfg = ClipConfig()
    t = Track("square", "red", 16, 16, "left", "slow", 4, 8, "appears")
    assert centre(render_frame([t], 3, cfg), "red") is None and centre(render_frame([t], 4, cfg), "red") is not None
