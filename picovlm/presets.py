"""Named, ready-to-run configurations: the data and recipe of `make demo`, and a tiny one for tests.

Presets are plain config objects: print one, change a field, run it. Nothing here is special-cased
anywhere else in the code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from picovlm.config import GPTConfig, RecipeConfig, StageConfig, VisionConfig, ViTConfig, VLMConfig
from picovlm.data.scenes import SceneConfig


@dataclass
class DataPreset:
    scenes: SceneConfig = field(default_factory=SceneConfig)
    n_train: int = 4000
    n_val: int = 200
    n_test: int = 500
    seed: int = 0


def _stages(steps: dict[str, int], batch: dict[str, int], lr: dict[str, float]) -> list[StageConfig]:
    captions, chat = ("train_captions.jsonl",), ("train.json",)
    return [
        StageConfig(
            name="lm",
            task="lm",
            data=(*captions, *chat),
            trainable=("lm",),
            steps=steps["lm"],
            batch_size=batch["lm"],
            lr=lr["lm"],
            warmup_steps=steps["lm"] // 10,
        ),
        StageConfig(
            name="clip",
            task="clip",
            data=captions,
            trainable=("tower", "clip"),
            steps=steps["clip"],
            batch_size=batch["clip"],
            lr=lr["clip"],
            warmup_steps=steps["clip"] // 10,
        ),
        StageConfig(
            name="align",
            task="vlm",
            data=captions,
            val_data=("val_captions.jsonl",),
            trainable=("projector",),
            init={"tower": "clip", "lm": "lm"},
            steps=steps["align"],
            batch_size=batch["align"],
            lr=lr["align"],
            warmup_steps=steps["align"] // 10,
        ),
        StageConfig(
            name="instruct",
            task="vlm",
            data=chat,
            val_data=("val.json",),
            trainable=("projector", "lm"),
            init={"tower": "clip", "projector": "align", "lm": "lm"},
            steps=steps["instruct"],
            batch_size=batch["instruct"],
            lr=lr["instruct"],
            warmup_steps=steps["instruct"] // 10,
        ),
    ]


def demo_data() -> DataPreset:
    return DataPreset(SceneConfig(image_size=64, min_objects=1, max_objects=2), n_train=4000, n_val=200, n_test=500)


def demo_recipe(data_dir: str = "data/demo") -> RecipeConfig:
    vit = ViTConfig(image_size=64, patch_size=8, n_embd=128, n_layer=4, n_head=4, feature_layer=-1)
    lm = GPTConfig(n_layer=4, n_head=4, n_kv_head=4, n_embd=128, mlp_hidden=384, max_seq_len=192)
    return RecipeConfig(
        model=VLMConfig(vision=VisionConfig(kind="vit", vit=vit), projector="pixel_shuffle2", lm=lm),
        stages=_stages(
            steps={"lm": 150, "clip": 300, "align": 100, "instruct": 400},
            batch={"lm": 32, "clip": 64, "align": 32, "instruct": 32},
            lr={"lm": 3e-3, "clip": 1e-3, "align": 3e-3, "instruct": 1e-3},
        ),
        data_dir=data_dir,
        tokenizer_vocab=512,
        clip_text=GPTConfig(n_layer=2, n_head=4, n_kv_head=4, n_embd=128, mlp_hidden=384, max_seq_len=64),
        clip_embed_dim=128,
    )


def tiny_data() -> DataPreset:
    return DataPreset(
        SceneConfig(image_size=32, min_objects=1, max_objects=2, questions_per_image=3), n_train=64, n_val=16, n_test=16
    )


def tiny_recipe(data_dir: str) -> RecipeConfig:
    """Seconds to run: for tests of the plumbing, not of learning."""
    vit = ViTConfig(image_size=32, patch_size=8, n_embd=32, n_layer=2, n_head=2)
    lm = GPTConfig(n_layer=2, n_head=2, n_kv_head=1, n_embd=32, mlp_hidden=64, max_seq_len=128)
    return RecipeConfig(
        model=VLMConfig(vision=VisionConfig(kind="vit", vit=vit), projector="pixel_shuffle2", lm=lm),
        stages=_stages(
            steps={"lm": 4, "clip": 4, "align": 4, "instruct": 6},
            batch={k: 8 for k in ("lm", "clip", "align", "instruct")},
            lr={k: 1e-3 for k in ("lm", "clip", "align", "instruct")},
        ),
        data_dir=data_dir,
        tokenizer_vocab=300,
        clip_text=GPTConfig(n_layer=1, n_head=2, n_kv_head=2, n_embd=32, mlp_hidden=64, max_seq_len=64),
        clip_embed_dim=32,
    )


DATA_PRESETS = {"demo": demo_data, "tiny": tiny_data}
RECIPES = {"demo": demo_recipe, "tiny": tiny_recipe}
