"""Export to an HF LLaVA folder and back: the folder runs in transformers with our logits and tokens."""

import json

import pytest
import torch

from picovlm.config import GPTConfig, VisionConfig, ViTConfig, VLMConfig
from picovlm.engine.pipeline import Pipeline
from picovlm.interop.llava import export_llava, import_llava, llava_unmappable
from picovlm.text.tokens import IMAGE
from tests.interop.helpers import assert_runs_like_ours, image, random_checkpoint


def make_checkpoint(path, tok, projector="mlp2x_gelu", qk_norm=False, tie=False, pos_embed="learned"):
    """A tiny random VLM checkpoint in the CLIP layout."""
    vit = ViTConfig(
        image_size=16, patch_size=4, n_embd=32, n_layer=2, n_head=4, mlp_ratio=2.0, act="quick_gelu",
        pos_embed=pos_embed, image_mean=(0.4, 0.5, 0.6), image_std=(0.2, 0.3, 0.25),
    )  # fmt: skip
    lm = GPTConfig(
        vocab_size=tok.vocab_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, mlp_hidden=48, max_seq_len=64,
        rope_theta=500.0, qk_norm=qk_norm, tie_embeddings=tie,
    )  # fmt: skip
    return random_checkpoint(path, tok, VLMConfig(vision=VisionConfig(kind="vit", vit=vit), projector=projector, lm=lm))


MESSAGES = [{"role": "user", "content": f"{IMAGE}\nwhat is in the picture"}]
HF_MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is in the picture"}]}]


@pytest.mark.parametrize(
    "projector,qk_norm,tie,pos_embed",
    [
        ("mlp2x_gelu", False, False, "learned"),
        ("linear", True, True, "sincos2d"),
        ("identity", False, False, "learned"),
    ],
)
def test_export_runs_in_transformers_with_our_logits(tmp_path, tok, projector, qk_norm, tie, pos_embed):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    ckpt = make_checkpoint(tmp_path / "ours", tok, projector, qk_norm, tie, pos_embed)
    out = export_llava(ckpt, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    assert {"text_config", "vision_config"} <= set(config)

    pipe = Pipeline.load(ckpt)
    hf = LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)

    im = image(1)
    prompt = processor.apply_chat_template(HF_MESSAGES, add_generation_prompt=True)
    assert_runs_like_ours(hf, pipe, processor(images=[im], text=prompt, return_tensors="pt"), MESSAGES, [im])


def test_import_round_trip(tmp_path, tok):
    ckpt = make_checkpoint(tmp_path / "ours", tok, "linear")
    back = import_llava(export_llava(ckpt, tmp_path / "hf"), tmp_path / "back")
    a, b = Pipeline.load(ckpt), Pipeline.load(back)
    assert b.model.cfg.projector == "linear" and b.model.cfg.vision.vit == a.model.cfg.vision.vit
    enc = a.processor.encode_prompt(MESSAGES, [image(2)])
    ids = torch.tensor([enc.ids])
    with torch.no_grad():
        torch.testing.assert_close(b.model(ids, enc.pixels), a.model(ids, enc.pixels), atol=1e-5, rtol=0)


@pytest.mark.parametrize("projector", ["pixel_shuffle2", "mlp3x_gelu", "mlp2x_gelu+pos"])
def test_unmappable_projector_is_one_clear_error(tmp_path, tok, projector):
    ckpt = make_checkpoint(tmp_path / "ours", tok, projector)
    with pytest.raises(ValueError, match=f"projector '{projector.replace('+', '.')}' has no LLaVA counterpart"):
        export_llava(ckpt, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_hf_lm_and_non_vit_towers_are_refused_before_anything_is_written():
    hf_lm = VLMConfig(projector="mlp2x_gelu", lm_kind="hf", lm_hf_path="some/folder")
    assert "only our GPT" in llava_unmappable(hf_lm)
    cnn = VLMConfig(vision=VisionConfig(kind="efficientnet"), projector="mlp2x_gelu")
    assert "only our ViT" in llava_unmappable(cnn)
    for stem in ("conv", "hybrid"):  # CLIP's patch embedding is one strided conv: nowhere to put a CNN
        stemmed = VLMConfig(vision=VisionConfig(vit=ViTConfig(stem=stem)), projector="mlp2x_gelu")
        assert f"stem '{stem}'" in llava_unmappable(stemmed)
    assert llava_unmappable(VLMConfig(projector="mlp2x_gelu")) is None
    marked = VLMConfig(projector="mlp2x_gelu", image_markers=True)
    assert "writes no image start/end tokens (export as hf-internvl)" in llava_unmappable(marked)


def test_import_rejects_foreign_folders(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        import_llava(tmp_path, tmp_path / "x")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not llava"):
        import_llava(tmp_path, tmp_path / "x")


def test_cli_export_and_import(tmp_path, tok, capsys):
    from picovlm.cli import main

    ckpt = make_checkpoint(tmp_path / "ours", tok)
    assert main(["export", "--model", str(ckpt), "--format", "hf-llava", str(tmp_path / "hf")]) == 0
    assert "LlavaForConditionalGeneration" in capsys.readouterr().out
    assert main(["import", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    assert Pipeline.load(tmp_path / "back").model.cfg.projector == "mlp2x_gelu"
    bad = make_checkpoint(tmp_path / "ps", tok, "pixel_shuffle2")
    assert main(["export", "--model", str(bad), str(tmp_path / "hf2")]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (transformers 5 also logs progress bars)
    assert last.startswith("picovlm: error: ") and "pixel_shuffle2' has no LLaVA counterpart" in last


def test_a_model_that_reads_videos_or_audio_is_not_exported(tiny_av_run, tmp_path):
    from picovlm.interop.internvl import export_internvl

    for export, name in ((export_llava, "LLaVA"), (export_internvl, "InternVL")):
        with pytest.raises(ValueError, match=f"also reads video, audio; an HF {name} folder holds an image path only"):
            export(tiny_av_run["model"], tmp_path / name)
        assert not (tmp_path / name).exists()
