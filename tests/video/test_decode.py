"""Tests for video files: written with PyAV, probed without decoding, frames sampled and decoded on demand."""

import numpy as np
import pytest
import torch
from PIL import Image

from picovlm.config import VideoConfig
from picovlm.video.decode import VideoError, load_video, sample_indices, write_video
from picovlm.video.temporal import TemporalPool, VideoProcessor
from picovlm.vision.image import ImageProcessor


def frames(n: int = 16, size: int = 16) -> list[Image.Image]:
    """Frame k is a flat grey of level 15k: a frame's index can be read back from its pixels."""
    return [Image.new("RGB", (size, size), (15 * k,) * 3) for k in range(n)]


def level(im: Image.Image) -> int:
    return round(float(np.asarray(im, dtype=np.float32).mean()) / 15)


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_written_clips_probe_and_decode_the_frames_asked_for(tmp_path, suffix):
    path = write_video(frames(), tmp_path / f"clip{suffix}", fps=8)
    video = load_video(path)
    assert len(video.times) == 16 and (video.width, video.height) == (16, 16)
    assert video.duration == pytest.approx(2.0)
    assert [level(f) for f in video.frames([3, 0, 3, 15])] == [3, 0, 3, 15]  # any order, repeats
    same = load_video(path.read_bytes())  # the bytes of a file, as the server receives them
    assert [level(f) for f in same.frames([7])] == [7]


def test_sampling_uniform_and_at_a_fixed_rate(tmp_path):
    video = load_video(write_video(frames(), tmp_path / "clip.mp4", fps=8))
    assert sample_indices(video, 4) == [2, 6, 10, 14]  # the middle of 4 equal stretches of 2 s
    assert sample_indices(video, 1) == [8]  # the middle frame
    assert sample_indices(video, 4, "fps", fps=2) == [0, 4, 8, 12]
    assert sample_indices(video, 6, "fps", fps=4) == [0, 2, 4, 6, 8, 10]
    assert sample_indices(video, 4, "fps", fps=1) == [0, 8, 15, 15]  # past the end: the last frame again
    with pytest.raises(ValueError, match="unknown frame sampling 'every'"):
        sample_indices(video, 4, "every")


def test_bad_videos_are_refused_with_their_name(tmp_path):
    with pytest.raises(VideoError, match="nope.mp4: video file not found"):
        load_video(tmp_path / "nope.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(VideoError, match="junk.mp4: not a readable video"):
        load_video(tmp_path / "junk.mp4")
    clip = write_video(frames(), tmp_path / "clip.mp4", fps=8)
    with pytest.raises(VideoError, match="longer than the limit of 1 s"):
        load_video(clip, max_seconds=1.0)
    with pytest.raises(VideoError, match="frames are 16x16, more than the limit of 100 pixels"):
        load_video(clip, max_pixels=100)
    with pytest.raises(VideoError, match="more than 5 frames"):
        load_video(clip, max_frames=5)
    with pytest.raises(ValueError, match="write a .mp4 or .webm"):
        write_video(frames(), tmp_path / "clip.avi")


def test_processor_samples_frames_and_prepares_them_like_images(tmp_path):
    video = load_video(write_video(frames(), tmp_path / "clip.mp4", fps=8))
    x = VideoProcessor(VideoConfig(frames=4), ImageProcessor(8))([video, video])
    assert x.shape == (2, 4, 3, 8, 8)
    levels = ((x[0].mean(dim=(1, 2, 3)) * 0.5 + 0.5) * 255 / 15).round().tolist()  # undo the normalization
    assert levels == [2, 6, 10, 14]


def test_temporal_pool_mean_forgets_order_frames_keep_it():
    x = torch.randn(2, 4, 5, 8)
    mean = TemporalPool(VideoConfig(frames=4, pool="mean"), 8)
    assert mean(x).shape == (2, 1, 5, 8) and list(mean.parameters()) == []
    torch.testing.assert_close(mean(x), mean(x.flip(1)))
    kept = TemporalPool(VideoConfig(frames=4, pool="frames"), 8)
    assert kept(x).shape == (2, 4, 5, 8)
    assert not torch.allclose(kept(x), kept(x.flip(1)).flip(1))  # each frame slot has its own embedding
    merged = TemporalPool(VideoConfig(frames=4, pool="frames", merge=2), 8)
    assert merged(x).shape == (2, 2, 5, 8)
    torch.testing.assert_close(merged(x) - merged.pos, x.view(2, 2, 2, 5, 8).mean(2))
    with pytest.raises(ValueError, match="4 frames do not split into runs of merge=3"):
        TemporalPool(VideoConfig(frames=4, merge=3), 8)
    with pytest.raises(ValueError, match="unknown video pool 'max'"):
        TemporalPool(VideoConfig(frames=4, pool="max"), 8)
