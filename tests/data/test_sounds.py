"""Tests for the built-in sounds: real .flac files whose answers can be checked in their samples."""

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from picovlm.audio.wave import load_audio
from picovlm.data.formats import load_samples
from picovlm.data.sounds import (
    DIGITS,
    PITCHES,
    Sound,
    SoundConfig,
    build_sounds,
    sample_sound,
    sound_questions,
    synthesize,
)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(samples))) * rate / len(samples))


def test_synthesized_clips_have_what_their_answers_say():
    cfg = SoundConfig(noise=0.0)
    rng = random.Random(0)
    for pitch, (lo, hi) in PITCHES.items():
        audio = synthesize(Sound("tone", "loud", pitch=pitch, duration="long"), rng, cfg, {})
        assert lo - 5 <= dominant_hz(audio.samples, cfg.sample_rate) <= hi + 5
    quiet = synthesize(Sound("tone", "quiet", pitch="low", duration="long"), rng, cfg, {})
    loud = synthesize(Sound("tone", "loud", pitch="low", duration="long"), rng, cfg, {})
    assert np.abs(quiet.samples).max() * 4 < np.abs(loud.samples).max()
    for n in range(1, 5):
        beeps = synthesize(Sound("beeps", "loud", pitch="medium", beeps=n), rng, cfg, {})
        on = np.abs(beeps.samples) > 0.05
        runs = np.convolve(on, np.ones(80), "same") > 0  # bridge the sine's zero crossings
        assert int((np.diff(runs.astype(int)) == 1).sum()) == n
    short = synthesize(Sound("tone", "loud", pitch="high", duration="short"), rng, cfg, {})
    assert (np.abs(short.samples) > 0.05).sum() < (np.abs(loud.samples) > 0.05).sum() / 2
    chord = synthesize(Sound("chord", "loud", notes=3), rng, cfg, {})
    spectrum = np.abs(np.fft.rfft(chord.samples))
    assert (spectrum > spectrum.max() / 3).sum() >= 3


def test_questions_fit_the_kind_of_sound():
    cfg = SoundConfig(questions_per_clip=7)
    rng = random.Random(2)
    for _ in range(100):
        s = sample_sound(rng, cfg, speech=False)
        types = {q.qtype for q in sound_questions(s, rng, cfg)}
        assert "speech" not in types and {"kind", "loudness"} <= types
        assert ("count" in types) == (s.kind == "beeps") and ("duration" in types) == (s.kind == "tone")


def test_build_writes_flac_files_records_and_captions(tmp_path):
    paths = build_sounds(tmp_path, SoundConfig(speech=False), n_train=5, n_val=1, n_test=1, seed=0)
    samples = load_samples(paths["train_audio"], on_error="raise")
    assert len(samples) == 5 and all(s.modalities == "audio" for s in samples)
    audio = load_audio(samples[0].inputs("audio")[0])
    assert audio.sample_rate == 16000 and audio.seconds == pytest.approx(1.0)
    captions = load_samples(paths["train_audio_captions"], on_error="raise")
    assert captions[0].meta["kind"] == "caption" and captions[0].inputs("audio") == samples[0].inputs("audio")


def test_spoken_digits_come_from_espeak_ng(tmp_path, monkeypatch):
    """A stand-in espeak-ng on PATH (it writes a tone whose pitch encodes the word), so the test needs no
    espeak-ng: the bank asks for every digit in every voice, and the clips of speech use its output."""
    import sys

    fake = tmp_path / "bin" / "espeak-ng"
    fake.parent.mkdir()
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys, numpy as np, soundfile\n"
        "from picovlm.data.sounds import DIGITS\n"
        "args = sys.argv[1:]\n"
        "freq = 300 + 100 * DIGITS.index(args[-1])\n"
        "t = np.arange(8000) / 22050\n"
        "soundfile.write(args[args.index('-w') + 1], 0.5 * np.sin(2 * np.pi * freq * t), 22050)\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    paths = build_sounds(tmp_path / "data", SoundConfig(noise=0.0), n_train=16, n_val=1, n_test=1, seed=0)
    samples = load_samples(paths["train_audio"], on_error="raise")
    spoken = [s for s in samples if "speech" in s.meta["question_types"]]
    assert spoken and json.loads(paths["sound_config"].read_text())["speech"] is True
    for s in spoken:
        word = next(
            a["content"] for q, a in zip(s.messages[::2], s.messages[1::2], strict=True) if "number" in q["content"]
        )
        hz = dominant_hz(load_audio(s.inputs("audio")[0]).samples, 16000)
        assert abs(hz - (300 + 100 * DIGITS.index(word))) < 10
