"""The log-mel front end: a clip -> the spectrogram an audio encoder reads, in numpy.

Whisper's recipe at picovlm's sizes: a 25 ms Hann window every 10 ms (n_fft 400, hop 160 at 16 kHz),
the power spectrum through a bank of triangular mel filters (Slaney's scale and area normalization,
as librosa and Whisper build it), log10, the floor raised to 8 decades under the clip's loudest bin,
then scaled to about [-1, 1]. Absolute level survives (a quiet tone stays lower than a loud one);
only what lies far below the loudest part is flattened, so silence is one value however it was made.

Every clip is cut or zero-padded to `AudioConfig.seconds` first, so it always becomes the same number
of frames and hence, like an image, the same number of tokens.
"""

from __future__ import annotations

import numpy as np
import torch

from picovlm.audio.wave import Audio
from picovlm.config import AudioConfig


def hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    return np.where(f < 1000, 3 * f / 200, 15 + 27 * np.log(np.maximum(f, 1e-9) / 1000) / np.log(6.4))


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m < 15, 200 * m / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))


def mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular filters from 0 Hz to Nyquist, each of unit area."""
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising, falling = (bins - lower) / (centre - lower), (upper - bins) / (upper - centre)
    return (np.maximum(0, np.minimum(rising, falling)) * (2 / (upper - lower))).astype(np.float32)


def log_mel(samples: np.ndarray, cfg: AudioConfig, filters: np.ndarray) -> np.ndarray:
    """[n_mels, len(samples) // hop] log-mel spectrogram of float32 samples at `cfg.sample_rate`."""
    n_frames = len(samples) // cfg.hop
    padded = np.pad(samples, cfg.n_fft // 2, mode="reflect")  # centred windows, as torch.stft(center=True)
    windows = np.lib.stride_tricks.sliding_window_view(padded, cfg.n_fft)[:: cfg.hop][:n_frames]
    window = np.hanning(cfg.n_fft + 1)[:-1].astype(np.float32)
    power = (np.abs(np.fft.rfft(windows * window, axis=1)) ** 2).astype(np.float32)  # [frames, bins]
    # both float32, the transposed operand second: numpy's other layouts and a mixed product are ~500x slower
    spec = np.log10(np.maximum(filters @ power.T, 1e-10))
    return ((np.maximum(spec, spec.max() - 8.0) + 4.0) / 4.0).astype(np.float32)


class MelProcessor:
    """Clips -> [n, n_mels, frames]: resampled, cut or padded to `cfg.seconds`, log-mel."""

    def __init__(self, cfg: AudioConfig):
        self.cfg = cfg
        self.n_samples = int(round(cfg.seconds * cfg.sample_rate))
        self.frames = self.n_samples // cfg.hop
        self.filters = mel_filters(cfg.sample_rate, cfg.n_fft, cfg.n_mels)

    def fit(self, audio: Audio) -> np.ndarray:
        """The clip's samples at the model's rate, exactly `cfg.seconds` long."""
        samples = audio.at(self.cfg.sample_rate).samples[: self.n_samples]
        return np.pad(samples, (0, self.n_samples - len(samples)))

    def __call__(self, clips: list[Audio]) -> torch.Tensor:
        if not clips:
            return torch.empty(0, self.cfg.n_mels, self.frames)
        return torch.from_numpy(np.stack([log_mel(self.fit(a), self.cfg, self.filters) for a in clips]))
