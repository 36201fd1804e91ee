"""Named, ready-to-run configurations: the data and recipe of `make demo`, and a tiny one for tests.

Presets are plain config objects: print one (`picovlm train --preset demo --dump-config`), change a
field, run it. Nothing here is special-cased anywhere else in the code: what differs between presets
(down to how many test questions the demo scores) is a field of `Preset`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from picovlm.config import (
    AudioConfig,
    CLIPConfig,
    GPTConfig,
    NativeConfig,
    RecipeConfig,
    StageConfig,
    VideoConfig,
    VisionConfig,
    ViTConfig,
    VLMConfig,
    VQConfig,
)
from picovlm.data.av import AVData
from picovlm.data.clips import ClipConfig
from picovlm.data.scenes import SceneConfig
from picovlm.data.sounds import SoundConfig


@dataclass
class DataPreset:
    scenes: SceneConfig = field(default_factory=SceneConfig)
    n_train: int = 4000
    n_val: int = 200
    n_test: int = 500
    seed: int = 0


def adapter_stages(lm: StageConfig, clip: StageConfig, align: StageConfig, instruct: StageConfig) -> list[StageConfig]:
    """The four stages of the adapter-VLM recipe on a dataset laid out like `build_dataset`'s: each
    argument holds a stage's own settings (steps, batch size, optimizer, ...), this adds its task, data,
    trainable parts and init."""
    captions, chat = ("train_captions.jsonl",), ("train.json",)
    return [
        dataclasses.replace(lm, name="lm", task="lm", data=(*captions, *chat), trainable=("lm",)),
        dataclasses.replace(clip, name="clip", task="clip", data=captions, trainable=("tower", "clip")),
        dataclasses.replace(
            align,
            name="align",
            task="vlm",
            data=captions,
            val_data=("val_captions.jsonl",),
            trainable=("projector",),
            init={"tower": "clip", "lm": "lm"},
        ),
        dataclasses.replace(
            instruct,
            name="instruct",
            task="vlm",
            data=chat,
            val_data=("val.json",),
            trainable=("projector", "lm"),
            init={"tower": "clip", "projector": "align", "lm": "lm"},
        ),
    ]


def demo_data() -> DataPreset:
    """Scenes of one or two objects (the generator allows up to grid*grid) on a 3x3 grid."""
    return DataPreset(SceneConfig(image_size=64, min_objects=1, max_objects=2), n_train=4000, n_val=200, n_test=500)


def demo_recipe(data_dir: str = "data/demo") -> RecipeConfig:
    """Sized for 2 CPU cores (452 s on an AVX2 EPYC); see docs/experiments.md for what each choice bought."""
    # feature_layer=1: the projector reads the tower after its first block. The deeper, CLIP-pooled
    # layers had mixed away where each object is (position 0.19 -> 0.50 on 600 test questions).
    # stem="hybrid": a CNN on luminance beside the linear patches gives the tower shape (vision/vit.py);
    # with Muon's CLIP stage, shape 0.36 -> 0.66 on 600 test questions
    vit = ViTConfig(image_size=64, patch_size=8, stem="hybrid", n_embd=128, n_layer=4, n_head=4, feature_layer=1)
    lm = GPTConfig(n_layer=4, n_head=4, n_kv_head=4, n_embd=128, mlp_hidden=384, max_seq_len=192, qk_norm=True)
    stages = adapter_stages(
        # Muon for the hidden matrices in every stage (train/muon.py): on the first 600 test questions 0.655 ->
        # 0.732 (patch stem, 800 instruct steps) and a CLIP loss of 0.47 instead of 1.24 (docs/experiments.md)
        lm=StageConfig(steps=60, batch_size=32, lr=3e-3, optimizer="muon", muon_lr=0.01),
        # 200 CLIP steps, not 150: whether the tower tells shapes apart decided the seed's score (seed 4, one
        # thread: CLIP loss 0.27 -> 0.11, accuracy 0.901 -> 0.950, shape 0.82 -> 0.93; docs/experiments.md)
        clip=StageConfig(steps=200, batch_size=64, lr=2e-3, optimizer="muon", muon_lr=0.01),
        align=StageConfig(steps=60, batch_size=32, lr=3e-3, optimizer="muon", muon_lr=0.015),
        # isolate_turns: most questions trained as if asked alone (data/isolation.py), 1 in 10 conversations
        # whole, so that the model keeps answering once its own answers are in the history. 1600 steps, not 900:
        # the binding of a word to its object is learned late, and at 900 steps only on lucky seeds and CPUs
        # (AVX2 EPYC, one thread, seed 0: 0.795 -> 0.948). 1600 steps (with 200 CLIP steps): seeds 0-4
        # 0.975/0.947/0.944/0.882/0.954 (1800 was no safer; docs/experiments.md). The tower's features are
        # cached, so a step is the LM's alone. micro_batch=4: each batch of 16 computed as 4 parts of like
        # length (the same samples and gradient, less padding): 1.44x the stage's speed (two threads, AMD EPYC)
        instruct=StageConfig(
            steps=1600,
            batch_size=16,
            micro_batch=4,
            lr=2e-3,
            optimizer="muon",
            muon_lr=0.01,
            isolate_turns=0.9,
            group_by_image=True,
        ),
    )
    # half the captions mixed into instruct, grouped with the conversation of their image (encoded once), so
    # that the model still describes. One thread, seed 0, all 3000 test questions and 250 chats of six turns:
    # accuracy 0.847 -> 0.848, later turns 0.594 -> 0.830 (first 0.884 -> 0.860), caption CIDEr-D 0.15 -> 6.99
    # (docs/experiments.md)
    instruct = stages[-1]
    stages[-1] = dataclasses.replace(
        instruct, data=(*instruct.data, "train_captions.jsonl"), data_shares={"train_captions.jsonl": 0.5}
    )
    return RecipeConfig(
        model=VLMConfig(vision=VisionConfig(kind="vit", vit=vit), projector="pixel_shuffle2+pos", lm=lm),
        stages=stages,
        data_dir=data_dir,
        tokenizer_vocab=512,
        clip=CLIPConfig(
            text=GPTConfig(n_layer=2, n_head=4, n_kv_head=4, n_embd=128, mlp_hidden=384, max_seq_len=64), embed_dim=128
        ),
    )


def vqa_recipe(data_dir: str = "data/vqa") -> RecipeConfig:
    """For a folder of LLaVA-format conversations alone (`train.json`: images and question-answer
    turns, no caption files): the demo's model and stages, every stage reading `train.json`. The
    `clip` stage pairs each image with the text of its conversation (`as_caption` in data/batches.py),
    the `align` stage trains the projector on the conversations themselves, and the records about one
    image (a dataset of one question per record, too) are grouped into one conversation whose turns
    train as if asked alone (`group_by_image`, `isolate_turns`). `picovlm demo --preset vqa` runs it on
    the built-in scenes, captions unused, beside the demo's own recipe."""
    recipe = demo_recipe(data_dir)
    chat = ("train.json",)
    by_name = {s.name: dataclasses.replace(s, data=chat, val_data=(), data_shares={}) for s in recipe.stages}
    for name in ("align", "instruct"):
        by_name[name] = dataclasses.replace(
            by_name[name], group_by_image=True, isolate_turns=by_name["instruct"].isolate_turns
        )
    return dataclasses.replace(recipe, stages=list(by_name.values()))


def minilm_recipe(data_dir: str = "data/demo") -> RecipeConfig:
    """The demo recipe whose `clip` stage trains the tower against the locked, pretrained
    all-MiniLM-L6-v2 sentence encoder (packaged on PyPI, unzipped on first use) instead of a text
    encoder of its own: the tower, both projections and the temperature learn, MiniLM does not
    (models/hf_encoder.py). Everything else, the later stages included, is the demo's."""
    recipe = demo_recipe(data_dir)
    return dataclasses.replace(
        recipe, clip=dataclasses.replace(recipe.clip, text_layout="hf", text_hf_path="all-minilm-l6-v2")
    )


def pretrained_recipe(data_dir: str = "data/demo") -> RecipeConfig:
    """`make demo-pretrained`: the LLaVA recipe with real parts from PyPI, on the demo data.

    Frozen ImageNet EfficientNet-Lite0 (224 px: the 64 px scenes are upscaled; 49 tokens of 1280) and
    SmolLM2-135M-Instruct (from the packaged GGUF, converted once into `smollm2_folder_path()`).
    `align` trains only the projector on captions; `instruct` trains LoRA adapters on every linear
    layer of the LM (plus the rows of the tokens picovlm adds to its vocabulary) and the projector, on
    conversations. Step counts are sized for 2 CPU cores and about half an hour in all (see docs/experiments.md).
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
                warmup=0.2,
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
                warmup=0.075,
                log_every=2,
            ),
        ],
        data_dir=data_dir,
    )


# (align, instruct) steps of 4 samples: about 4-17 s per align step and 6-20 s per instruct step on 2
# CPU cores, depending on what else runs (SmolLM2 is 30 layers; each image is 49 tokens): see docs/experiments.md
PRETRAINED_STEPS = (10, 40)


def tiny_data() -> DataPreset:
    return DataPreset(
        SceneConfig(image_size=32, min_objects=1, max_objects=2, questions_per_image=3), n_train=64, n_val=16, n_test=16
    )


def tiny_recipe(data_dir: str) -> RecipeConfig:
    """Seconds to run: for tests of the plumbing, not of learning."""
    vit = ViTConfig(image_size=32, patch_size=8, n_embd=32, n_layer=2, n_head=2)
    lm = GPTConfig(n_layer=2, n_head=2, n_kv_head=1, n_embd=32, mlp_hidden=64, max_seq_len=128)
    tiny = StageConfig(steps=4, batch_size=8, lr=1e-3)
    return RecipeConfig(
        model=VLMConfig(vision=VisionConfig(kind="vit", vit=vit), projector="pixel_shuffle2", lm=lm),
        stages=adapter_stages(lm=tiny, clip=tiny, align=tiny, instruct=dataclasses.replace(tiny, steps=6)),
        data_dir=data_dir,
        tokenizer_vocab=300,
        clip=CLIPConfig(
            text=GPTConfig(n_layer=1, n_head=2, n_kv_head=2, n_embd=32, mlp_hidden=64, max_seq_len=64), embed_dim=32
        ),
    )


def vq_stage(settings: StageConfig) -> StageConfig:
    """The `vq` stage on a dataset laid out like `build_dataset`'s (`settings`: steps, batch size,
    optimizer, ...): every training image once per epoch (train.json names each image once)."""
    return dataclasses.replace(
        settings, name="vq", task="vq", data=("train.json",), val_data=("val.json",), trainable=("vq",)
    )


def vq_recipe(data_dir: str = "data/demo") -> RecipeConfig:
    """`picovlm vq train`: the image tokenizer of native models, 64 px images to 16x16 codes of 512,
    sized for 2 CPU cores (about two minutes of CPU time; docs/vq.md has the measurements)."""
    return RecipeConfig(
        stages=[vq_stage(StageConfig(steps=600, batch_size=32, lr=3e-3, warmup=0.05, eval_every=100))],
        data_dir=data_dir,
        vq=VQConfig(image_size=64, downsample=4, channels=64, res_blocks=2, code_dim=16, codebook_size=512),
    )


def tiny_vq_recipe(data_dir: str) -> RecipeConfig:
    """Seconds to run, on the tiny preset's 32 px data: for tests of the plumbing, not of learning."""
    return RecipeConfig(
        stages=[vq_stage(StageConfig(steps=4, batch_size=8, lr=1e-3))],
        data_dir=data_dir,
        tokenizer_vocab=300,
        vq=VQConfig(image_size=32, downsample=4, channels=16, res_blocks=1, code_dim=4, codebook_size=16),
    )


VQ_RECIPES = {"demo": vq_recipe, "tiny": tiny_vq_recipe}  # `picovlm vq train --preset`


def av_stages(
    lm: StageConfig, clip: StageConfig, clap: StageConfig, align: StageConfig, frame: StageConfig, instruct: StageConfig
) -> list[StageConfig]:
    """The stages of a model that reads videos and audio, on a dataset laid out like `build_av_dataset`'s:
      lm        the LM on all the text
      clip      the image tower on the clips' middle frames and their captions
      clap      the audio tower on the sounds and their captions (contrastive, like clip)
      align     the projectors (and the temporal embeddings) on video and sound captions
      frame     the single-frame baseline: the video questions, shown only each clip's middle frame
      instruct  the model: the video and sound questions
    Each argument holds a stage's own settings (steps, batch size, optimizer, ...); this adds the rest."""
    captions, frames = ("train_video_captions.jsonl", "train_audio_captions.jsonl"), ("train_frame_captions.jsonl",)
    chat, sounds = ("train_video.json", "train_audio.json"), ("train_audio_captions.jsonl",)
    towers = {"tower": "clip", "audio_tower": "clap", "lm": "lm"}
    aligned = {**towers, "projector": "align", "temporal": "align", "audio_projector": "align"}
    adapters = ("projector", "temporal", "audio_projector")
    return [
        dataclasses.replace(lm, name="lm", task="lm", data=(*captions, *frames, *chat), trainable=("lm",)),
        dataclasses.replace(clip, name="clip", task="clip", data=frames, trainable=("tower", "clip")),
        dataclasses.replace(clap, name="clap", task="clap", data=sounds, trainable=("audio_tower", "clip")),
        dataclasses.replace(align, name="align", task="vlm", data=captions, trainable=adapters, init=towers),
        dataclasses.replace(
            frame, name="frame", task="vlm", data=("train_frame.json",), val_data=("val_frame.json",),
            trainable=("projector", "lm"), init=aligned,
        ),
        dataclasses.replace(
            instruct, name="instruct", task="vlm", data=chat, val_data=("val_video.json", "val_audio.json"),
            trainable=(*adapters, "lm"), init=aligned,
        ),
    ]  # fmt: skip


def av_data() -> AVData:
    return AVData(ClipConfig(), SoundConfig(), n_train=2000, n_val=100, n_test=200)


def av_recipe(data_dir: str = "data/av") -> RecipeConfig:
    """Videos and audio on 2 CPU cores in about 9 minutes (docs/experiments.md: video 0.73 against 0.58 for
    the single-frame baseline, audio 0.96): 32-pixel clips, 8 frames of 4 tokens each, kept in order with
    temporal embeddings (32 tokens a clip); 1 s sounds, 25 tokens."""
    vit = ViTConfig(image_size=32, patch_size=8, stem="hybrid", n_embd=96, n_layer=3, n_head=4, feature_layer=1)
    lm = GPTConfig(n_layer=4, n_head=4, n_kv_head=4, n_embd=128, mlp_hidden=384, max_seq_len=128, qk_norm=True)
    audio = AudioConfig(kind="whisper", seconds=1.0, n_mels=40, n_embd=96, n_layer=2, n_head=4, stride=4)
    model = VLMConfig(
        vision=VisionConfig(kind="vit", vit=vit),
        projector="pixel_shuffle2+pos",
        lm=lm,
        video=VideoConfig(frames=8, pool="frames"),
        audio=audio,
    )
    muon = StageConfig(optimizer="muon", muon_lr=0.01)
    return RecipeConfig(
        model=model,
        stages=av_stages(
            lm=dataclasses.replace(muon, steps=60, batch_size=32, lr=3e-3),
            clip=dataclasses.replace(muon, steps=200, batch_size=64, lr=2e-3),
            clap=dataclasses.replace(muon, steps=120, batch_size=64, lr=2e-3),
            align=dataclasses.replace(muon, steps=60, batch_size=32, lr=3e-3, muon_lr=0.015),
            frame=dataclasses.replace(muon, steps=200, batch_size=16, lr=2e-3, isolate_turns=1.0),
            instruct=dataclasses.replace(muon, steps=400, batch_size=16, lr=2e-3, isolate_turns=1.0),
        ),
        data_dir=data_dir,
        tokenizer_vocab=512,
        clip=CLIPConfig(
            text=GPTConfig(n_layer=2, n_head=4, n_kv_head=4, n_embd=128, mlp_hidden=384, max_seq_len=64), embed_dim=128
        ),
    )


def tiny_av_data() -> AVData:
    return AVData(ClipConfig(size=16, frames=8), SoundConfig(seconds=0.5, speech=False), n_train=24, n_val=8, n_test=8)


def tiny_av_recipe(data_dir: str) -> RecipeConfig:
    """Seconds to run: the av stages with tiny parts, for tests of the plumbing."""
    vit = ViTConfig(image_size=16, patch_size=4, n_embd=16, n_layer=1, n_head=2)
    lm = GPTConfig(n_layer=1, n_head=2, n_kv_head=1, n_embd=32, mlp_hidden=64, max_seq_len=128)
    audio = AudioConfig(kind="whisper", seconds=0.5, n_mels=16, n_embd=16, n_layer=1, n_head=2, pool=13)
    tiny = StageConfig(steps=2, batch_size=8, lr=1e-3)
    return RecipeConfig(
        model=VLMConfig(
            vision=VisionConfig(kind="vit", vit=vit),
            projector="pixel_shuffle2",
            lm=lm,
            video=VideoConfig(frames=4, pool="frames", merge=2),
            audio=audio,
        ),
        stages=av_stages(tiny, tiny, tiny, tiny, tiny, tiny),
        data_dir=data_dir,
        tokenizer_vocab=300,
        clip=CLIPConfig(
            text=GPTConfig(n_layer=1, n_head=2, n_kv_head=2, n_embd=32, mlp_hidden=64, max_seq_len=64), embed_dim=32
        ),
    )


def native_stages(vq: StageConfig, native: StageConfig) -> list[StageConfig]:
    """The two stages of a native model on a dataset laid out like `build_dataset`'s: the VQ tokenizer
    on the images, then the model (its tokenizer frozen) on conversations and captions, read or drawn."""
    return [
        vq_stage(vq),
        dataclasses.replace(
            native,
            name="native",
            task="native",
            data=("train.json", "train_captions.jsonl"),
            val_data=("val.json", "val_captions.jsonl"),
            trainable=("lm",),
            init={"vq": "vq"},
        ),
    ]


def native_recipe(data_dir: str = "data/demo") -> RecipeConfig:
    """`picovlm train --preset native` (`make demo-native`): the VQ tokenizer at 8x8 codes (64 tokens an
    image, docs/vq.md) and a native model on the demo data, sized for the 15-minute demo: one thread, about
    0.12 s a vq step and 0.5 s a native step of CPU time, so 600 + 800 steps and the demo's scoring take
    about 11 minutes on a quiet core (docs/native.md has the measurements)."""
    lm = GPTConfig(n_layer=4, n_head=4, n_kv_head=4, n_embd=128, mlp_hidden=384, max_seq_len=160, qk_norm=True)
    return RecipeConfig(
        stages=native_stages(
            vq=StageConfig(steps=600, batch_size=32, lr=3e-3, warmup=0.05),
            native=StageConfig(steps=800, batch_size=16, lr=2e-3, optimizer="muon", muon_lr=0.01, log_every=50),
        ),
        data_dir=data_dir,
        tokenizer_vocab=512,
        vq=VQConfig(image_size=64, downsample=8, channels=64, res_blocks=2, code_dim=16, codebook_size=512),
        native=NativeConfig(lm=lm),
    )


def tiny_native_recipe(data_dir: str) -> RecipeConfig:
    """Seconds to run, on the tiny preset's 32 px data: for tests of the plumbing, not of learning."""
    recipe = tiny_vq_recipe(data_dir)
    lm = GPTConfig(n_layer=1, n_head=2, n_kv_head=1, n_embd=32, mlp_hidden=64, max_seq_len=128)
    tiny = StageConfig(steps=3, batch_size=8, lr=1e-3)
    return dataclasses.replace(
        recipe,
        stages=native_stages(tiny, tiny),
        vq=dataclasses.replace(recipe.vq, downsample=8),
        native=NativeConfig(lm=lm),
    )


@dataclass
class Preset:
    """What a preset name means to `picovlm data`, `train` and `demo`: the dataset to build, the recipe
    to train on it, and how the demo scores the result."""

    data: Callable[[], DataPreset | AVData]  # shapes scenes, or clips and sounds
    recipe: Callable[[str], RecipeConfig]  # data_dir -> recipe
    # test questions the demo scores (None = all): the first ones cover every question type (each test
    # image is asked one of each, in order)
    eval_limit: int | None = None
    text_question: str = ""  # also asked with no image: what is left of a pretrained LM's own knowledge
    # a native model's demo (demo_native.py): test captions drawn and judged (the first caption of each of
    # the first `draw_prompts` test images), and the steps of the drawing judge it trains for them
    draw_prompts: int = 64
    judge_steps: int = 600


PRESETS = {
    "demo": Preset(demo_data, demo_recipe),
    "tiny": Preset(tiny_data, tiny_recipe),
    # a 135M-parameter LM generates slowly on a CPU: 120 questions; it should still know this after VLM training
    "pretrained": Preset(demo_data, pretrained_recipe, eval_limit=120, text_question="What is the capital of France?"),
    "minilm": Preset(demo_data, minilm_recipe),
    "vqa": Preset(demo_data, vqa_recipe),
    # videos and audio: scored per modality and question type, with the single-frame baseline (demo_av.py)
    "av": Preset(av_data, av_recipe),
    "tiny-av": Preset(tiny_av_data, tiny_av_recipe),
    # a VQ tokenizer and one GPT that reads and draws images (demo_native.py); all 3000 test questions
    "native": Preset(demo_data, native_recipe),
    "tiny-native": Preset(tiny_data, tiny_native_recipe, draw_prompts=4, judge_steps=4),
}
DATA_PRESETS = {name: p.data for name, p in PRESETS.items()}  # the datasets alone (`picovlm data --preset`)
RECIPES = {name: p.recipe for name, p in PRESETS.items()}  # the recipes alone (`picovlm train --preset`)
