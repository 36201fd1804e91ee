"""The built-in video and audio data together: moving-shapes clips (data/clips.py) and sounds
(data/sounds.py) in one folder, for recipes that train a model on both (the `av` preset).

`build_av_dataset` writes `av_config.json` last, so a folder that has it and the same settings is a
finished build of them (`same_build`), and an interrupted one never passes for one.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from picovlm.data.clips import ClipConfig, build_clips
from picovlm.data.sounds import SoundConfig, build_sounds

AV_CONFIG = "av_config.json"


@dataclass
class AVData:
    clips: ClipConfig = field(default_factory=ClipConfig)
    sounds: SoundConfig = field(default_factory=SoundConfig)
    n_train: int = 2000  # clips, and as many sounds
    n_val: int = 100
    n_test: int = 200
    seed: int = 0

    def settings(self) -> dict:
        """What `av_config.json` records (as JSON reads it back)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def build_av_dataset(out_dir: str | Path, data: AVData) -> dict[str, Path]:
    """Clips and sounds of every split into `out_dir`; returns every file written (see their builders)."""
    out = Path(out_dir)
    (out / AV_CONFIG).unlink(missing_ok=True)  # a stale config must not vouch for a half-rebuilt folder
    counts = (data.n_train, data.n_val, data.n_test)
    paths = {**build_clips(out, data.clips, *counts, data.seed), **build_sounds(out, data.sounds, *counts, data.seed)}
    paths["av_config"] = out / AV_CONFIG
    paths["av_config"].write_text(json.dumps(data.settings(), indent=2) + "\n")
    return paths


def same_build(out_dir: str | Path, data: AVData) -> bool:
    """Whether `out_dir` holds a finished build of exactly these settings."""
    try:
        return json.loads((Path(out_dir) / AV_CONFIG).read_text()) == data.settings()
    except (OSError, ValueError):
        return False
