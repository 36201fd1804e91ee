"""Export as hf-picovlm: LLaVA plus our stem and projector as remote code, run by transformers with our
logits, greedy tokens, ids and pixels; the demo's own architecture among them."""

import dataclasses
import json

import pytest

from picovlm.config import GPTConfig, VisionConfig, ViTConfig, VLMConfig
from picovlm.engine.pipeline import Pipeline
from picovlm.interop.picovlm_llava import export_picovlm_llava, picovlm_llava_unmappable
from picovlm.presets import demo_recipe
from tests.interop.helpers import assert_runs_like_ours, image, random_checkpoint
from tests.interop.test_llava import HF_MESSAGES, MESSAGES


def tiny(tok, stem: str, projector: str) -> VLMConfig:
    vit = ViTConfig(
        image_size=16, patch_size=4, stem=stem, n_embd=32, n_layer=2, n_head=4, mlp_ratio=2.0, feature_layer=1,
        image_mean=(0.4, 0.5, 0.6), image_std=(0.2, 0.3, 0.25),
    )  # fmt: skip
    lm = GPTConfig(
        vocab_size=tok.vocab_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, mlp_hidden=48, max_seq_len=64
    )
    return VLMConfig(vision=VisionConfig(kind="vit", vit=vit), projector=projector, lm=lm)


def demo(tok) -> VLMConfig:
    """The demo preset's model (the hybrid stem, pixel_shuffle2+pos, qk-norm GPT) with this vocabulary."""
    model = demo_recipe().model
    return dataclasses.replace(model, lm=dataclasses.replace(model.lm, vocab_size=tok.vocab_size))


@pytest.mark.parametrize(
    "make",
    [demo, lambda tok: tiny(tok, "hybrid", "mlp2x_gelu"), lambda tok: tiny(tok, "patch", "linear+pos")],
    ids=["demo", "hybrid-mlp2x_gelu", "patch-linear+pos"],
)
def test_transformers_runs_the_export_with_our_logits_tokens_ids_and_pixels(tmp_path, tok, make):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    ckpt = random_checkpoint(tmp_path / "ours", tok, make(tok))
    out = export_picovlm_llava(ckpt, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["PicoVLMForConditionalGeneration"] and (out / "modeling_picovlm.py").is_file()

    pipe = Pipeline.load(ckpt)
    hf = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True).eval()
    # AutoTokenizer reads config.json, which names remote code; the processor is transformers' own
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    assert type(processor).__module__.startswith("transformers.") and type(processor).__name__ == "LlavaProcessor"

    im = image(3)
    prompt = processor.apply_chat_template(HF_MESSAGES, add_generation_prompt=True)
    assert_runs_like_ours(hf, pipe, processor(images=[im], text=prompt, return_tensors="pt"), MESSAGES, [im])


def test_what_cannot_be_written_is_one_line_before_anything_is_written(tmp_path, tok):
    for cfg, why in [
        (tiny(tok, "conv", "mlp2x_gelu"), "stem 'conv': exportable stems are patch, hybrid"),
        (tiny(tok, "hybrid", "c_abstractor2"), "projector 'c_abstractor2'"),
        (dataclasses.replace(tiny(tok, "hybrid", "mlp2x_gelu"), image_markers=True), "image_markers=True"),
    ]:
        assert why in picovlm_llava_unmappable(cfg)
    ckpt = random_checkpoint(tmp_path / "ours", tok, tiny(tok, "conv", "mlp2x_gelu"))
    with pytest.raises(ValueError, match="cannot export as hf-picovlm: stem 'conv'"):
        export_picovlm_llava(ckpt, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    assert picovlm_llava_unmappable(demo(tok)) is None


def test_cli_exports_the_demo_architecture_that_hf_llava_refuses(tmp_path, tok, capsys):
    from picovlm.cli import main

    ckpt = random_checkpoint(tmp_path / "ours", tok, demo(tok))
    assert main(["export", "--model", str(ckpt), "--format", "hf-llava", str(tmp_path / "llava")]) == 1
    assert "as hf-picovlm" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main(["export", "--model", str(ckpt), "--format", "hf-picovlm", str(tmp_path / "hf")]) == 0
    assert "PicoVLMForConditionalGeneration in" in capsys.readouterr().out
