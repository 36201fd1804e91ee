"""Named, ready-to-run configurations: the data and recipe of `make demo`, and a tiny one for tests.

Presets are plain config objects: print one (`picovlm train --preset demo --dump-config`), change a
field, run it. Nothing here is special-cased anywhere else in the code.
"""

from __future__ import annotations

import dataclasses
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


@dataclass
class Budget:
    """How long and how hard one stage trains."""

    steps: int
    batch_size: int
    lr: float
    muon_lr: float = 0.0  # > 0: Muon at this lr for the hidden matrices, AdamW at `lr` for the rest


def adapter_stages(lm: Budget, clip: Budget, align: Budget, instruct: Budget, **instruct_kw) -> list[StageConfig]:
    """The four stages of the adapter-VLM recipe on a dataset laid out like `build_dataset`'s."""
    captions, chat = ("train_captions.jsonl",), ("train.json",)

    def stage(name: str, b: Budget, **kw) -> StageConfig:
        opt = {"optimizer": "muon", "muon_lr": b.muon_lr} if b.muon_lr else {}
        return StageConfig(
            name=name, steps=b.steps, batch_size=b.batch_size, lr=b.lr, warmup_steps=b.steps // 10, **opt, **kw
        )

    return [
        stage("lm", lm, task="lm", data=(*captions, *chat), trainable=("lm",)),
        stage("clip", clip, task="clip", data=captions, trainable=("tower", "clip")),
        stage(
            "align",
            align,
            task="vlm",
            data=captions,
            val_data=("val_captions.jsonl",),
            trainable=("projector",),
            init={"tower": "clip", "lm": "lm"},
        ),
        stage(
            "instruct",
            instruct,
            task="vlm",
            data=chat,
            val_data=("val.json",),
            init={"tower": "clip", "projector": "align", "lm": "lm"},
            **{"trainable": ("projector", "lm"), **instruct_kw},
        ),
    ]


def demo_data() -> DataPreset:
    """Scenes of one or two objects (the generator allows up to grid*grid) on a 3x3 grid."""
    return DataPreset(SceneConfig(image_size=64, min_objects=1, max_objects=2), n_train=4000, n_val=200, n_test=500)


def demo_recipe(data_dir: str = "data/demo") -> RecipeConfig:
    """Sized for 2 CPU cores and about 10 minutes; see the README for what each choice bought."""
    # feature_layer=1: the projector reads the tower after its first block. The deeper, CLIP-pooled
    # layers had mixed away where each object is (position 0.19 -> 0.50 on 600 test questions).
    # stem="hybrid": a CNN on luminance beside the linear patches gives the tower shape (vision/vit.py);
    # with Muon's CLIP stage, shape 0.36 -> 0.66 on 600 test questions
    vit = ViTConfig(image_size=64, patch_size=8, stem="hybrid", n_embd=128, n_layer=4, n_head=4, feature_layer=1)
    lm = GPTConfig(n_layer=4, n_head=4, n_kv_head=4, n_embd=128, mlp_hidden=384, max_seq_len=192, qk_norm=True)
    return RecipeConfig(
        model=VLMConfig(vision=VisionConfig(kind="vit", vit=vit), projector="pixel_shuffle2+pos", lm=lm),
        stages=adapter_stages(
            # Muon for the hidden matrices in every stage (train/muon.py): on the first 600 test questions
            # 0.655 -> 0.732 (patch stem, 800 instruct steps) and a CLIP loss of 0.47 instead of 1.24 (README)
            lm=Budget(60, 32, 3e-3, muon_lr=0.01),
            clip=Budget(150, 64, 2e-3, muon_lr=0.01),
            align=Budget(60, 32, 3e-3, muon_lr=0.015),
            instruct=Budget(900, 16, 2e-3, muon_lr=0.01),
            # every question trained as if asked alone (data/batches.py): with 1100 steps 0.846 / 0.780 ->
            # 0.947 / 0.944 on all test questions (instruct seeds 0 / 1); 0.942 in a timed demo (README)
            isolate_turns=True,
        ),
        data_dir=data_dir,
        tokenizer_vocab=512,
        clip_text=GPTConfig(n_layer=2, n_head=4, n_kv_head=4, n_embd=128, mlp_hidden=384, max_seq_len=64),
        clip_embed_dim=128,
    )


def minilm_recipe(data_dir: str = "data/demo") -> RecipeConfig:
    """The demo recipe whose `clip` stage trains the tower against the locked, pretrained
    all-MiniLM-L6-v2 sentence encoder (packaged on PyPI, unzipped on first use) instead of a text
    encoder of its own: the tower, both projections and the temperature learn, MiniLM does not
    (models/hf_encoder.py). Everything else, the later stages included, is the demo's."""
    return dataclasses.replace(demo_recipe(data_dir), clip_text_layout="hf", clip_text_hf_path="all-minilm-l6-v2")


def pretrained_recipe(data_dir: str = "data/demo") -> RecipeConfig:
    """`make demo-pretrained`: the LLaVA recipe with real parts from PyPI, on the demo data.

    Frozen ImageNet EfficientNet-Lite0 (224 px: the 64 px scenes are upscaled; 49 tokens of 1280) and
    SmolLM2-135M-Instruct (from the packaged GGUF, converted once into `smollm2_folder_path()`).
    `align` trains only the projector on captions; `instruct` trains LoRA adapters on every linear
    layer of the LM (plus the rows of the tokens picovlm adds to its vocabulary) and the projector, on
    conversations. Step counts are sized for 2 CPU cores and about half an hour in all (see README).
    """
    from picovlm.interop.pretrained import smollm2_folder_path

    return RecipeConfig(
        model=VLMConfig(
            vision=VisionConfig(kind="efficientnet", cnn_image_size=224),
            projector="mlp2x_gelu",
            # only max_seq_len is read for an HF LM; SmolLM2's own template (system prompt, ChatML turns)
            # makes the longest demo conversation 157 tokens, + 48 for the image's 49 tokens
            lm=GPTConfig(max_seq_len=256),
            lm_kind="hf",
            lm_hf_path=str(smollm2_folder_path()),
        ),
        stages=[
            StageConfig(
                name="align",
                task="vlm",
                data=("train_captions.jsonl",),
                trainable=("projector",),
                steps=PRETRAINED_STEPS[0],
                batch_size=4,
                lr=3e-3,
                warmup_steps=2,
                log_every=2,
            ),
            StageConfig(
                name="instruct",
                task="vlm",
                data=("train.json",),
                trainable=("projector", "lm"),
                init={"projector": "align"},
                lora={"r": 16, "alpha": 32},
                steps=PRETRAINED_STEPS[1],
                batch_size=4,
                lr=2e-3,
                warmup_steps=3,
                log_every=2,
            ),
        ],
        data_dir=data_dir,
    )


# (align, instruct) steps of 4 samples: about 4-17 s per align step and 6-20 s per instruct step on 2
# CPU cores, depending on what else runs (SmolLM2 is 30 layers; each image is 49 tokens): see README
PRETRAINED_STEPS = (10, 40)


def tiny_data() -> DataPreset:
    return DataPreset(
        SceneConfig(image_size=32, min_objects=1, max_objects=2, questions_per_image=3), n_train=64, n_val=16, n_test=16
    )


def tiny_recipe(data_dir: str) -> RecipeConfig:
    """Seconds to run: for tests of the plumbing, not of learning."""
    vit = ViTConfig(image_size=32, patch_size=8, n_embd=32, n_layer=2, n_head=2)
    lm = GPTConfig(n_layer=2, n_head=2, n_kv_head=1, n_embd=32, mlp_hidden=64, max_seq_len=128)
    tiny = Budget(4, 8, 1e-3)
    return RecipeConfig(
        model=VLMConfig(vision=VisionConfig(kind="vit", vit=vit), projector="pixel_shuffle2", lm=lm),
        stages=adapter_stages(lm=tiny, clip=tiny, align=tiny, instruct=Budget(6, 8, 1e-3)),
        data_dir=data_dir,
        tokenizer_vocab=300,
        clip_text=GPTConfig(n_layer=1, n_head=2, n_kv_head=2, n_embd=32, mlp_hidden=64, max_seq_len=64),
        clip_embed_dim=32,
    )


DATA_PRESETS = {"demo": demo_data, "tiny": tiny_data, "pretrained": demo_data, "minilm": demo_data}
RECIPES = {"demo": demo_recipe, "tiny": tiny_recipe, "pretrained": pretrained_recipe, "minilm": minilm_recipe}
