"""A procedural sound dataset: tones, chords, beeps and spoken digits as real .flac files, with captions
and questions whose answers are known.

Why: like the scenes, every answer can be re-derived from how the clip was made, so an audio model
is scored exactly, per question type:

    pitch     "Is the tone low, medium or high?"        (tones, beeps)
    loudness  "Is the sound loud or quiet?"
    duration  "Is the tone short or long?"               (tones)
    notes     "How many notes are played at once?"       1 for a tone, 2 or 3 for a chord
    count     "How many beeps are there?"                1 to 4
    speech    "What number is spoken?"                   zero to nine, spoken by espeak-ng
    kind      "What do you hear?"                        tone / chord / beeps / speech

Spoken digits are made with Debian's espeak-ng (several voices, speeds and pitches) when the data is
built, and only where it is installed: elsewhere the dataset has no speech (the config written beside
it says which), and nothing else needs espeak-ng.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from picovlm.audio.wave import Audio, load_audio, write_audio
from picovlm.data.scenes import QA, split_seed

PITCHES = {"low": (180.0, 300.0), "medium": (450.0, 700.0), "high": (1100.0, 1700.0)}
LOUDNESS = {"quiet": 0.06, "loud": 0.5}
DURATIONS = {"short": 0.25, "long": 0.7}  # seconds
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
VOICES = ("en", "en-us", "en+f3", "en+m3", "en-gb-scotland", "en+f2")  # espeak-ng voice and variant names
BEEP, GAP = 0.08, 0.12  # seconds


@dataclass
class SoundConfig:
    sample_rate: int = 16000
    seconds: float = 1.0
    speech: bool = True  # spoken digits, where espeak-ng is installed
    noise: float = 0.003  # white noise amplitude under every clip
    questions_per_clip: int = 3


@dataclass
class Sound:
    """How a clip was made: everything its questions ask about."""

    kind: str  # "tone" | "chord" | "beeps" | "speech"
    loudness: str
    pitch: str | None = None  # tone, beeps
    duration: str | None = None  # tone
    notes: int = 1  # chord: 2 or 3
    beeps: int = 0
    word: str | None = None  # speech


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speech_bank(sample_rate: int) -> dict[str, list[np.ndarray]]:
    """Every digit spoken by espeak-ng in each voice at two speeds and pitches, trimmed, at `sample_rate`."""
    bank: dict[str, list[np.ndarray]] = {d: [] for d in DIGITS}
    with tempfile.TemporaryDirectory() as tmp:
        for digit in DIGITS:
            for k, voice in enumerate(VOICES):
                for speed, pitch in ((150 + 10 * k, 40), (190 - 5 * k, 65)):
                    path = Path(tmp) / f"{digit}_{k}_{speed}.wav"
                    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), digit]
                    subprocess.run(cmd, check=True, capture_output=True, timeout=30)
                    samples = load_audio(path).at(sample_rate).samples
                    loud = np.flatnonzero(np.abs(samples) > 0.02)
                    bank[digit].append(samples[loud[0] : loud[-1] + 1] / np.abs(samples).max())
    return bank


def _tone(freq: float, seconds: float, rate: int) -> np.ndarray:
    """A sine with 10 ms fades, so it starts and stops without clicks."""
    t = np.arange(int(seconds * rate)) / rate
    fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.01)
    return np.sin(2 * np.pi * freq * t) * fade


def _place(signal: np.ndarray, n: int, rng: random.Random) -> np.ndarray:
    """`signal` at a random offset in `n` samples of silence."""
    out = np.zeros(n)
    signal = signal[:n]
    at = rng.randint(0, n - len(signal))
    out[at : at + len(signal)] = signal
    return out


def sample_sound(rng: random.Random, cfg: SoundConfig, speech: bool) -> Sound:
    kind = rng.choice(("tone", "chord", "beeps", "speech") if speech else ("tone", "chord", "beeps"))
    loudness = rng.choice(list(LOUDNESS))
    if kind == "tone":
        return Sound(kind, loudness, pitch=rng.choice(list(PITCHES)), duration=rng.choice(list(DURATIONS)))
    if kind == "chord":
        return Sound(kind, loudness, notes=rng.randint(2, 3))
    if kind == "beeps":
        return Sound(kind, loudness, pitch=rng.choice(list(PITCHES)), beeps=rng.randint(1, 4))
    return Sound(kind, loudness, word=rng.choice(DIGITS))


def synthesize(sound: Sound, rng: random.Random, cfg: SoundConfig, bank: dict[str, list[np.ndarray]]) -> Audio:
    rate, n = cfg.sample_rate, int(cfg.seconds * cfg.sample_rate)
    if sound.kind == "tone":
        signal = _tone(rng.uniform(*PITCHES[sound.pitch]), DURATIONS[sound.duration], rate)
    elif sound.kind == "chord":  # notes from different pitch bands, so that they never blur into one
        bands = rng.sample(list(PITCHES), sound.notes)
        seconds = rng.uniform(0.4, 0.8)
        signal = sum(_tone(rng.uniform(*PITCHES[b]), seconds, rate) for b in bands) / sound.notes
    elif sound.kind == "beeps":
        freq, gap = rng.uniform(*PITCHES[sound.pitch]), rng.uniform(GAP, GAP + 0.05)
        beep, silence = _tone(freq, BEEP, rate), np.zeros(int(gap * rate))
        signal = np.concatenate([np.concatenate([beep, silence]) for _ in range(sound.beeps)])[: -len(silence)]
    else:
        signal = rng.choice(bank[sound.word])
    samples = _place(signal * LOUDNESS[sound.loudness] * rng.uniform(0.8, 1.2), n, rng)
    samples += np.random.default_rng(rng.getrandbits(32)).normal(0, cfg.noise, n)
    return Audio(np.clip(samples, -1, 1).astype(np.float32), rate)


def sound_caption(s: Sound) -> str:
    if s.kind == "tone":
        return f"A {s.loudness}, {s.duration}, {s.pitch} tone."
    if s.kind == "chord":
        return f"A {s.loudness} chord of {NUMBERS[s.notes]} notes."
    if s.kind == "beeps":
        return f"{NUMBERS[s.beeps].capitalize()} {s.loudness} {s.pitch} beep{'s' if s.beeps > 1 else ''}."
    return f"A {s.loudness} voice saying {s.word}."


def sound_questions(s: Sound, rng: random.Random, cfg: SoundConfig) -> list[QA]:
    """Up to `cfg.questions_per_clip` questions of different types about the clip."""
    pools = {
        "kind": QA("What do you hear?", s.kind, "kind"),
        "loudness": QA("Is the sound loud or quiet?", s.loudness, "loudness"),
        "notes": QA("How many notes are played at once?", str(s.notes), "notes")
        if s.kind in ("tone", "chord")
        else None,
        "pitch": QA(f"Is the {'tone' if s.kind == 'tone' else 'beep'} low, medium or high?", s.pitch, "pitch")
        if s.pitch
        else None,
        "duration": QA("Is the tone short or long?", s.duration, "duration") if s.duration else None,
        "count": QA("How many beeps are there?", str(s.beeps), "count") if s.beeps else None,
        "speech": QA("What number is spoken?", s.word, "speech") if s.word else None,
    }
    asked = [qa for qa in pools.values() if qa is not None]
    return rng.sample(asked, min(cfg.questions_per_clip, len(asked)))


def build_sounds(out_dir: str | Path, cfg: SoundConfig, n_train: int, n_val: int, n_test: int, seed: int = 0) -> dict:
    """Write sounds/*.flac and, per split, {split}_audio.json (questions) and {split}_audio_captions.jsonl.
    Returns the paths; `sound_config.json` says whether speech was made (espeak-ng found)."""
    out = Path(out_dir)
    (out / "sounds").mkdir(parents=True, exist_ok=True)
    speech = cfg.speech and espeak_available()
    bank = speech_bank(cfg.sample_rate) if speech else {}
    paths: dict[str, Path] = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        rng = random.Random(split_seed(seed, f"sounds/{split}"))
        records, captions = [], []
        for i in range(n):
            sample_id = f"{split}_{i:06d}"
            audio = f"sounds/{sample_id}.flac"
            sound = sample_sound(rng, cfg, speech)
            write_audio(synthesize(sound, rng, cfg, bank), out / audio)
            qas = sound_questions(sound, rng, cfg)
            conversations = []
            for k, qa in enumerate(qas):
                question = ("<audio>\n" if k == 0 else "") + qa.question
                conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": qa.answer}]
            qtypes = [q.qtype for q in qas]
            records.append({"id": sample_id, "audio": audio, "conversations": conversations, "question_types": qtypes})
            captions.append({"audio": audio, "text": sound_caption(sound)})
        paths[f"{split}_audio"] = out / f"{split}_audio.json"
        paths[f"{split}_audio"].write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
        paths[f"{split}_audio_captions"] = out / f"{split}_audio_captions.jsonl"
        paths[f"{split}_audio_captions"].write_text("".join(json.dumps(c) + "\n" for c in captions))
    paths["sound_config"] = out / "sound_config.json"
    counts = {"train": n_train, "val": n_val, "test": n_test}
    meta = {"seed": seed, "counts": counts, "config": asdict(cfg), "speech": speech}
    paths["sound_config"].write_text(json.dumps(meta, indent=2))
    return paths
