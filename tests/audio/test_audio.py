"""Tests for sound files, the log-mel front end and the audio encoder."""

import numpy as np
import pytest
import torch

from picovlm.audio.encoder import build_audio_tower
from picovlm.audio.mel import MelProcessor, mel_filters
from picovlm.audio.wave import Audio, AudioError, load_audio, wav_bytes, write_audio
from picovlm.config import AudioConfig

RATE = 16000


def tone(freq: float, seconds: float = 0.5, amp: float = 0.3, rate: int = RATE) -> Audio:
    t = np.arange(int(seconds * rate)) / rate
    return Audio((amp * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_write_and_load_round_trip(tmp_path, suffix):
    clip = tone(440)
    back = load_audio(write_audio(clip, tmp_path / f"a{suffix}"))
    assert back.sample_rate == RATE and back.samples.dtype == np.float32
    np.testing.assert_allclose(back.samples, clip.samples, atol=1e-4)  # 16-bit PCM
    assert load_audio(wav_bytes(clip)).seconds == pytest.approx(0.5)


def test_stereo_is_averaged_and_rates_are_converted(tmp_path):
    import soundfile

    left, right = tone(440).samples, np.zeros(8000, dtype=np.float32)
    soundfile.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), RATE)
    np.testing.assert_allclose(load_audio(tmp_path / "stereo.wav").samples, left / 2, atol=1e-4)
    resampled = tone(440, rate=44100).at(RATE)
    assert resampled.sample_rate == RATE and len(resampled.samples) == 8000
    spectrum = np.abs(np.fft.rfft(resampled.samples))
    assert abs(np.argmax(spectrum) * RATE / len(resampled.samples) - 440) < 3  # the pitch survives


def test_bad_sounds_are_refused_with_their_name(tmp_path):
    with pytest.raises(AudioError, match="nope.wav: audio file not found"):
        load_audio(tmp_path / "nope.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF and then nothing useful" * 4)
    with pytest.raises(AudioError, match="junk.wav: not a readable sound file"):
        load_audio(tmp_path / "junk.wav")
    write_audio(tone(440, seconds=2.0), tmp_path / "long.wav")
    with pytest.raises(AudioError, match="2.0 s, longer than the limit of 1 s"):
        load_audio(tmp_path / "long.wav", max_seconds=1.0)


def test_mel_filters_cover_the_spectrum_with_unit_area():
    filters = mel_filters(RATE, 400, 40)
    assert filters.shape == (40, 201) and (filters >= 0).all()
    widths = np.diff(np.linspace(0, RATE / 2, 201))[0]
    np.testing.assert_allclose(filters.sum(1) * widths, 1.0, rtol=0.25)  # Slaney: each filter's area is 1
    assert np.argmax(filters[5]) < np.argmax(filters[20]) < np.argmax(filters[35])


def test_log_mel_sees_pitch_and_loudness_and_is_always_as_long():
    proc = MelProcessor(AudioConfig(seconds=0.5, n_mels=40))
    low, high, quiet, short = tone(300), tone(2000), tone(300, amp=0.02), tone(300, seconds=0.1)
    mels = proc([low, high, quiet, short, tone(300, seconds=2.0)])
    assert mels.shape == (5, 40, 50)  # 0.5 s of 10 ms hops, however long the clip
    assert mels[0].mean(1).argmax() < mels[1].mean(1).argmax()  # a higher tone, a higher mel band
    assert mels[2].max() < mels[0].max() - 0.2  # quieter
    assert mels[3][:, 20:].max() < mels[3][:, :5].max()  # padded with silence after its 0.1 s


def test_encoder_shapes_and_registry():
    cfg = AudioConfig(kind="whisper", seconds=0.5, n_mels=16, n_embd=16, n_layer=1, n_head=2, stride=4)
    enc = build_audio_tower(cfg)
    assert enc.num_patches == 13 and enc.hidden_size == 16  # 50 frames, halved twice rounding up
    assert enc(enc.processor([tone(300), tone(900)])).shape == (2, 13, 16)
    pooled = build_audio_tower(AudioConfig(**{**cfg.__dict__, "pool": 13}))
    assert pooled.num_patches == 1 and pooled(torch.randn(1, 16, 50)).shape == (1, 1, 16)
    with pytest.raises(ValueError, match="13 encoder tokens .* do not split into runs of 2"):
        build_audio_tower(AudioConfig(**{**cfg.__dict__, "pool": 2}))
    with pytest.raises(ValueError, match="unknown audio tower 'wav2vec'"):
        build_audio_tower(AudioConfig(kind="wav2vec"))
