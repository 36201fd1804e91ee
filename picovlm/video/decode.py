"""Video files in and out with PyAV (FFmpeg): probe a clip, decode only the frames a model samples, write one.

Videos come from users (files, data URLs), so loading is defensive like `load_image`: the frame size
is read from the header and the length from the packets' timestamps before any frame is decoded, and
a clip that is too long, too large or not a video is refused with one line naming it. Only the frames
the model samples are ever decoded and kept (`Video.frames`), so a long clip costs no memory.

PyAV is the `video` extra (`pip install 'picovlm[video]'`); it is imported only when a video is read.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

MAX_SECONDS = 120.0  # longer clips are refused (a model samples a few frames: minutes add nothing)
MAX_FRAMES = 10_000  # frames in a clip, however short (a header can claim any frame rate)
MAX_FRAME_PIXELS = 4096 * 2160  # per frame, from the header, before decoding
CODECS = {".mp4": ("libx264", "yuv420p"), ".webm": ("libvpx", "yuv420p")}


class VideoError(ValueError):
    """A video that cannot be used; the message names it and says why."""


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise VideoError("reading videos needs PyAV: pip install 'picovlm[video]'") from None
    return av


@dataclass(frozen=True, eq=False)
class Video:
    """A probed clip: where it is, the presentation time (s) of each of its frames in order, and its
    frame size. Frames are decoded on demand, only those asked for."""

    source: Path | bytes
    name: str
    times: tuple[float, ...]
    width: int
    height: int

    @property
    def duration(self) -> float:
        """From the first frame to the end of the last (one frame interval after it starts)."""
        if len(self.times) < 2:
            return 0.0
        step = (self.times[-1] - self.times[0]) / (len(self.times) - 1)
        return self.times[-1] - self.times[0] + step

    def frames(self, indices: Sequence[int]) -> list[Image.Image]:
        """The RGB frames at `indices` (into `times`, any order, repeats allowed)."""
        wanted = sorted(set(indices))
        if wanted and not 0 <= wanted[0] <= wanted[-1] < len(self.times):
            raise IndexError(f"{self.name}: frame {wanted[-1]} of {len(self.times)}")
        av, found = _av(), {}
        rgb = av.video.reformatter.VideoReformatter()  # one conversion context for every frame: 3x faster
        try:
            with _open(av, self.source) as container:
                for k, frame in enumerate(container.decode(video=0)):
                    if k in wanted:
                        found[k] = rgb.reformat(frame, format="rgb24").to_image()
                    if len(found) == len(wanted):
                        break
        except (av.FFmpegError, OSError, ValueError) as e:
            raise VideoError(f"{self.name}: cannot decode ({type(e).__name__}: {e})") from None
        if len(found) < len(wanted):  # fewer frames than packets: a damaged stream
            raise VideoError(f"{self.name}: only {len(found)} of its {len(self.times)} frames decode")
        return [found[k] for k in indices]


def _open(av: Any, source: Path | bytes) -> Any:
    return av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source), "r")


def load_video(
    source: str | Path | bytes,
    max_seconds: float = MAX_SECONDS,
    max_pixels: int = MAX_FRAME_PIXELS,
    max_frames: int = MAX_FRAMES,
    name: str | None = None,
) -> Video:
    """Probe a video file (or its bytes): frame times from the packets, size from the header, nothing
    decoded. Refuses a missing file, something that is not a video, and clips over the limits."""
    label = name or (str(source) if not isinstance(source, bytes) else "<video bytes>")
    if not isinstance(source, bytes):
        source = Path(source)
        if not source.is_file():
            raise VideoError(f"{label}: video file not found")
    av = _av()
    try:
        with _open(av, source) as container:
            if not container.streams.video:
                raise VideoError(f"{label}: no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > max_pixels:
                raise VideoError(f"{label}: frames are {width}x{height}, more than the limit of {max_pixels} pixels")
            times = []
            for packet in container.demux(stream):
                if packet.pts is None:  # the flush packet at the end
                    continue
                times.append(float(packet.pts * stream.time_base))
                if len(times) > max_frames:
                    raise VideoError(f"{label}: more than {max_frames} frames")
                if times[-1] - min(times) > max_seconds:
                    raise VideoError(f"{label}: longer than the limit of {max_seconds:g} s")
    except VideoError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as e:
        raise VideoError(f"{label}: not a readable video ({type(e).__name__}: {e})") from None
    if not times:
        raise VideoError(f"{label}: the video has no frames")
    return Video(source, label, tuple(sorted(times)), width, height)


def sample_indices(video: Video, n: int, sampling: str = "uniform", fps: float = 4.0) -> list[int]:
    """`n` frame indices in time order. "uniform": the frame at the middle of each of `n` equal
    stretches of the clip (n = 1: the middle frame); "fps": one frame every 1/fps s from the start,
    the last frame repeated where the clip ends sooner. Always `n`, so a clip is always as many tokens."""
    if n < 1:
        raise ValueError(f"need at least one frame, got {n}")
    times, start = video.times, video.times[0]
    if sampling == "uniform":
        span = video.duration or 1.0
        targets = [start + (i + 0.5) * span / n for i in range(n)]
    elif sampling == "fps":
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        targets = [start + i / fps for i in range(n)]
    else:
        raise ValueError(f"unknown frame sampling {sampling!r}: 'uniform' or 'fps'")
    # the frame showing at each target time: the last one that starts at or before it
    return [max(0, sum(t <= target + 1e-9 for t in times) - 1) for target in targets]


def write_video(frames: Sequence[Image.Image], path: str | Path, fps: int = 8) -> Path:
    """Encode RGB frames as an H.264 .mp4 or VP8 .webm (by the suffix); sizes must be even."""
    path = Path(path)
    if path.suffix not in CODECS:
        raise ValueError(f"{path}: write a .mp4 or .webm video")
    codec, pix_fmt = CODECS[path.suffix]
    av = _av()
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = pix_fmt
        if codec == "libx264":  # near-lossless: the shapes' colours must survive 4:2:0 and quantization
            stream.options = {"crf": "12", "preset": "veryfast"}
        else:
            stream.options = {"crf": "4", "b:v": "1M"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_image(frame.convert("RGB"))))
        container.mux(stream.encode())
    return path
