"""Sound files in and out with soundfile (libsndfile: wav, flac, ogg, ...), as mono float32 at one rate.

Loading is defensive like `load_image`: the length is read from the header before any sample is
decoded, and a clip that is too long or not a sound is refused with one line naming it. Every clip
becomes mono float32 in [-1, 1] at the rate the model wants (`Audio.at`, polyphase resampling with
scipy), because that is what the log-mel front end reads.

soundfile (and scipy, for resampling) are the `audio` extra (`pip install 'picovlm[audio]'`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np

MAX_SECONDS = 120.0


class AudioError(ValueError):
    """A sound that cannot be used; the message names it and says why."""


def _soundfile() -> Any:
    try:
        import soundfile
    except ImportError:
        raise AudioError("reading audio needs soundfile: pip install 'picovlm[audio]'") from None
    return soundfile


@dataclass(frozen=True, eq=False)
class Audio:
    """A mono clip: float32 samples in [-1, 1] and their rate."""

    samples: np.ndarray
    sample_rate: int
    name: str = "<audio>"

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate

    def at(self, rate: int) -> Audio:
        """The clip resampled to `rate` (itself when it is already at it)."""
        if rate == self.sample_rate:
            return self
        from scipy.signal import resample_poly

        g = gcd(rate, self.sample_rate)
        samples = resample_poly(self.samples, rate // g, self.sample_rate // g).astype(np.float32)
        return Audio(samples, rate, self.name)


def load_audio(source: str | Path | bytes, max_seconds: float = MAX_SECONDS, name: str | None = None) -> Audio:
    """A sound file (or its bytes) as a mono float32 `Audio`; channels are averaged."""
    label = name or (str(source) if not isinstance(source, bytes) else "<audio bytes>")
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise AudioError(f"{label}: audio file not found")
    sf = _soundfile()
    try:
        with sf.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as f:
            if f.frames > max_seconds * f.samplerate:
                seconds = f.frames / f.samplerate
                raise AudioError(f"{label}: {seconds:.1f} s, longer than the limit of {max_seconds:g} s")
            samples, rate = f.read(dtype="float32", always_2d=True), f.samplerate
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise AudioError(f"{label}: not a readable sound file ({type(e).__name__}: {e})") from None
    if len(samples) == 0:
        raise AudioError(f"{label}: the sound has no samples")
    return Audio(np.ascontiguousarray(samples.mean(axis=1)), int(rate), label)


def wav_bytes(audio: Audio) -> bytes:
    """The clip as a 16-bit PCM .wav file's bytes (what OpenAI's `input_audio` parts carry)."""
    buf = io.BytesIO()
    _soundfile().write(buf, np.clip(audio.samples, -1, 1), audio.sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def write_audio(audio: Audio, path: str | Path) -> Path:
    """Write a clip as 16-bit PCM (.wav) or FLAC (.flac), by the suffix."""
    path = Path(path)
    formats = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16")}
    if path.suffix not in formats:
        raise ValueError(f"{path}: write a .wav or .flac file")
    fmt, subtype = formats[path.suffix]
    _soundfile().write(str(path), np.clip(audio.samples, -1, 1), audio.sample_rate, format=fmt, subtype=subtype)
    return path
