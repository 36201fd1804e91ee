"""Export to an HF InternVL folder and back: transformers' own model and processor give our ids, pixels,
logits and greedy tokens, for tiny models and for the demo's architecture."""

import dataclasses
import importlib.util
import json

import pytest
import torch

from picovlm.config import GPTConfig, VisionConfig, ViTConfig, VLMConfig
from picovlm.engine.pipeline import Pipeline
from picovlm.interop.internvl import export_internvl, import_internvl, internvl_unmappable
from picovlm.models.vlm import load_vlm
from picovlm.presets import demo_recipe
from picovlm.text.tokens import IMAGE
from tests.interop.helpers import assert_runs_like_ours, image, random_checkpoint


def tiny(tok, projector="pixel_shuffle2", vit=None, lm=None) -> VLMConfig:
    """A tiny exportable VLM; `vit` and `lm` change fields of its ViTConfig and GPTConfig."""
    vit_cfg = ViTConfig(
        image_size=16, patch_size=4, n_embd=32, n_layer=2, n_head=4, mlp_ratio=2.0, act="quick_gelu", pre_norm=False,
        image_mean=(0.4, 0.5, 0.6), image_std=(0.2, 0.3, 0.25),
    )  # fmt: skip
    lm_cfg = GPTConfig(
        vocab_size=tok.vocab_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, mlp_hidden=48, max_seq_len=96,
        rope_theta=500.0,
    )  # fmt: skip
    return VLMConfig(
        vision=VisionConfig(kind="vit", vit=dataclasses.replace(vit_cfg, **(vit or {}))),
        projector=projector,
        lm=dataclasses.replace(lm_cfg, **(lm or {})),
        image_markers=True,
    )


def demo_architecture(tok) -> VLMConfig:
    """The demo recipe's model in the layout it moves to for export (patch stem, no pre-LayerNorm, plain
    pixel shuffle, image markers), with this test's vocabulary; random weights stand in for training."""
    model = demo_recipe().model
    vit = dataclasses.replace(model.vision.vit, stem="patch", pre_norm=False)
    return dataclasses.replace(
        model,
        vision=dataclasses.replace(model.vision, vit=vit),
        projector="pixel_shuffle2",
        image_markers=True,
        lm=dataclasses.replace(model.lm, vocab_size=tok.vocab_size),
    )


ARCHITECTURES = {
    "tiny": lambda tok: tiny(tok),
    # Qwen3 (qk_norm), tied head, sincos positions written as a table, features of the last layer (which
    # InternVL would layernorm if it were written as -1)
    "tiny-qwen3-sincos-last": lambda tok: tiny(
        tok,
        vit={"pos_embed": "sincos2d", "feature_layer": -1, "act": "gelu"},
        lm={"qk_norm": True, "tie_embeddings": True},
    ),
    "tiny-shuffle4": lambda tok: tiny(tok, "pixel_shuffle4", vit={"patch_size": 2}),  # 8x8 patches -> 4 tokens
    "demo": demo_architecture,
}

# two images over two turns, in our format and in HF's list-of-parts format
MESSAGES = [
    {"role": "user", "content": f"{IMAGE}\nwhat is in the picture"},
    {"role": "assistant", "content": "a red cat"},
    {"role": "user", "content": f"{IMAGE}\nand in this one"},
]
HF_MESSAGES = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is in the picture"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "a red cat"}]},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and in this one"}]},
]
IMAGES = [image(1), image(2, size=(70, 50))]


@pytest.fixture
def auto_processor(monkeypatch):
    """`AutoProcessor.from_pretrained`, as a user calls it. transformers builds an InternVLProcessor only
    together with its video processor, which needs torchvision even when no video is given (transformers
    issue 48558); where torchvision is missing (here, and in CI) a bare video processor stands in for that
    one part, and everything else (processor class, tokenizer, image processor, chat template) is read
    from the folder as is."""
    import transformers.processing_utils as pu
    from transformers import AutoProcessor
    from transformers.video_processing_utils import BaseVideoProcessor, VideoProcessorMixin

    if importlib.util.find_spec("torchvision") is None:
        monkeypatch.setattr(pu.transformers_module, "VideoProcessorMixin", VideoProcessorMixin, raising=False)
        auto_video = pu.MODALITY_TO_AUTOPROCESSOR_MAPPING["video_processor"]
        monkeypatch.setattr(auto_video, "from_pretrained", lambda *args, **kwargs: BaseVideoProcessor())
    return AutoProcessor.from_pretrained


def hf_inputs(processor, messages=HF_MESSAGES, images=IMAGES):
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(images=images, text=prompt, return_tensors="pt")


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_export_runs_in_transformers_with_our_ids_pixels_logits_and_tokens(tmp_path, tok, auto_processor, arch):
    from transformers import InternVLForConditionalGeneration

    ckpt = random_checkpoint(tmp_path / "ours", tok, ARCHITECTURES[arch](tok))
    out = export_internvl(ckpt, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["InternVLForConditionalGeneration"]

    pipe = Pipeline.load(ckpt)
    hf = InternVLForConditionalGeneration.from_pretrained(out).eval()
    processor = auto_processor(out)
    assert type(processor).__name__ == "InternVLProcessor"

    inputs = hf_inputs(processor)
    start, end = tok.image_marker_ids
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(start) == ids.count(end) == 2  # <img> ... </img> around each image
    assert_runs_like_ours(hf, pipe, inputs, MESSAGES, IMAGES)


def test_import_round_trip_gives_identical_weights(tmp_path, tok):
    ckpt = random_checkpoint(tmp_path / "ours", tok, demo_architecture(tok))
    back = import_internvl(export_internvl(ckpt, tmp_path / "hf"), tmp_path / "back")
    (a, _), (b, tok_b) = load_vlm(ckpt), load_vlm(back)
    assert b.cfg == a.cfg and tok_b.image_marker_ids == tok.image_marker_ids
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []


def test_import_folds_what_training_in_transformers_changed(tmp_path, tok, auto_processor):
    """Layer scales and the patch bias are written as ones and zeros; after training in transformers
    they are not, and the import folds them into our weights."""
    from transformers import InternVLForConditionalGeneration

    out = export_internvl(random_checkpoint(tmp_path / "ours", tok, tiny(tok)), tmp_path / "hf")
    hf = InternVLForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "lambda_" in name or name.endswith("patch_embeddings.projection.bias"):
                p.uniform_(0.5, 1.5)
    hf.save_pretrained(out)
    pipe = Pipeline.load(import_internvl(out, tmp_path / "back"))
    inputs = hf_inputs(auto_processor(out))
    with torch.no_grad():
        theirs = hf(**inputs).logits
        mine = pipe.model(inputs["input_ids"], inputs["pixel_values"])
    torch.testing.assert_close(theirs, mine, atol=1e-4, rtol=0)


def _changed(cfg: VLMConfig, vit=None, vision=None, **fields) -> VLMConfig:
    vit_cfg = dataclasses.replace(cfg.vision.vit, **(vit or {}))
    return dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, vit=vit_cfg, **(vision or {})), **fields)


@pytest.mark.parametrize(
    "change,why",
    [
        ({"projector": "pixel_shuffle2+pos"}, "projector 'pixel_shuffle2+pos' has no InternVL counterpart"),
        ({"projector": "mlp2x_gelu"}, "projector 'mlp2x_gelu' has no InternVL counterpart"),
        ({"projector": "c_abstractor2"}, "projector 'c_abstractor2' has no InternVL counterpart"),
        ({"projector": "pixel_shuffle3"}, "powers of two only"),
        ({"vit": {"stem": "hybrid"}}, "stem 'hybrid'"),
        ({"vit": {"stem": "conv"}}, "stem 'conv'"),
        ({"vit": {"pre_norm": True}}, "pre_norm=True: InternVL's vision model has no LayerNorm before"),
        ({"vit": {"use_cls": False}}, "use_cls=False"),
        ({"image_markers": False}, "image_markers=False: InternVL's processor puts <img> ... </img>"),
        ({"lm_kind": "hf", "lm_hf_path": "some/folder"}, "only our GPT"),
        ({"vision": {"kind": "efficientnet"}}, "only our ViT"),
    ],
)
def test_what_does_not_map_is_said_in_one_line(tok, change, why):
    cfg = demo_architecture(tok)
    assert internvl_unmappable(cfg) is None
    reason = internvl_unmappable(_changed(cfg, **change))
    assert why in reason and "\n" not in reason


def test_export_refusals_write_nothing(tmp_path, tok, old_tok):
    ckpt = random_checkpoint(tmp_path / "pos", tok, tiny(tok, "pixel_shuffle2+pos"))
    with pytest.raises(ValueError, match="pos: cannot export as hf-internvl: projector 'pixel_shuffle2.pos'"):
        export_internvl(ckpt, tmp_path / "hf")
    old = random_checkpoint(tmp_path / "old", old_tok, tiny(old_tok))  # image_markers, but not in the tokenizer
    with pytest.raises(ValueError, match="the tokenizer has no <\\|image_start\\|> / <\\|image_end\\|>"):
        export_internvl(old, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_import_rejects_what_it_cannot_hold(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="no config.json; expected an HF internvl folder"):
        import_internvl(tmp_path, tmp_path / "x")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="a 'llama' model, not internvl"):
        import_internvl(tmp_path, tmp_path / "x")
    out = export_internvl(random_checkpoint(tmp_path / "ours", tok, tiny(tok)), tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "vision_feature_layer": -1}))
    with pytest.raises(ValueError, match="vision_feature_layer -1 .one layer, and not -1: the last state, layernormed"):
        import_internvl(out, tmp_path / "back")
    assert not (tmp_path / "back").exists()


def test_cli_export_and_import(tmp_path, tok, capsys):
    from picovlm.cli import main

    ckpt = random_checkpoint(tmp_path / "ours", tok, tiny(tok))
    assert main(["export", "--model", str(ckpt), "--format", "hf-internvl", str(tmp_path / "hf")]) == 0
    assert "InternVLForConditionalGeneration" in capsys.readouterr().out
    assert main(["import", "--format", "hf-internvl", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    assert Pipeline.load(tmp_path / "back").model.cfg.projector == "pixel_shuffle2"
    bad = random_checkpoint(tmp_path / "pos", tok, tiny(tok, "pixel_shuffle2+pos"))
    assert main(["export", "--model", str(bad), "--format", "hf-internvl", str(tmp_path / "hf2")]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (transformers 5 also logs progress bars)
    assert last.startswith("picovlm: error: ") and "'pixel_shuffle2+pos' has no InternVL counterpart" in last
