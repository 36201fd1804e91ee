"""CLIP with a locked pretrained HF text encoder (clip.text_layout "hf"), on a tiny random BertModel
written to a temp dir: the clip stage trains the tower against it, leaves it untouched, does not store
it, and the checkpoint reloads (eval embedder, a VLM's tower) to the same embeddings."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from picovlm.checkpoint import read_config
from picovlm.models.clip import CLIPModel, load_clip
from picovlm.models.hf_encoder import HFTextEncoder
from picovlm.models.vlm import load_vlm
from picovlm.presets import RECIPES
from picovlm.train import stages
from picovlm.train.stages import run_stage, train_tokenizer

CAPTIONS = ["a red circle at the top left", "two blue squares", "a small yellow star in the middle of the image"]


def stage(recipe, name):
    return next(s for s in recipe.stages if s.name == name)


@pytest.fixture(scope="module")
def run(tiny_data, hf_encoder, tmp_path_factory):
    """The tiny recipe with the HF text encoder; its clip stage run once, the task's model kept (a spy on
    build_stage_task) with a copy of its weights before training."""
    recipe = RECIPES["tiny"](str(tiny_data))
    recipe.clip = dataclasses.replace(recipe.clip, text_layout="hf", text_hf_path=str(hf_encoder))
    clip = dataclasses.replace(stage(recipe, "clip"), steps=12, batch_size=16, lr=3e-3, warmup=2 / 12)
    recipe.stages = [clip if s.name == "clip" else s for s in recipe.stages]
    out = tmp_path_factory.mktemp("hf_clip_run")
    tok = train_tokenizer(recipe, out / "tokenizer.json")
    seen = {}

    def spy(*args, **kwargs):
        task = build_stage_task(*args, **kwargs)
        seen["task"], seen["initial"] = task, {k: v.clone() for k, v in task.model.state_dict().items()}
        return task

    build_stage_task = stages.build_stage_task
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stages, "build_stage_task", spy)
        ckpt, history = run_stage(recipe, clip, out, tok, progress=False)
    return SimpleNamespace(recipe=recipe, out=out, tok=tok, ckpt=ckpt, history=history, **seen)


def test_text_encoder_stays_locked_while_the_tower_and_projections_learn(run, hf_encoder):
    model = run.task.model
    assert isinstance(model.text, HFTextEncoder)
    assert not any(p.requires_grad for p in model.text.parameters())
    pristine = HFTextEncoder(hf_encoder, 64).state_dict()
    for key, value in model.text.state_dict().items():
        torch.testing.assert_close(value, pristine[key], rtol=0, atol=0, msg=key)
    after = model.state_dict()
    for prefix in ("tower.", "image_proj.", "text_proj.", "logit_scale"):
        keys = [k for k in after if k.startswith(prefix)]
        assert keys and any(not torch.equal(after[k], run.initial[k]) for k in keys), prefix
    losses = [loss for _, loss in run.history.train]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3


def test_checkpoint_stores_no_text_encoder_and_names_its_folder(run, hf_encoder):
    cfg = read_config(run.ckpt)
    assert cfg["clip"]["text_layout"] == "hf" and cfg["clip"]["text_hf_path"] == str(hf_encoder)
    assert cfg["parts"]["text"] is None and set(cfg["parts"]) == {"tower", "text", "clip"}
    files = sorted(run.ckpt.glob("*.safetensors"))
    assert [f.name for f in files] == ["clip.safetensors", "tower.safetensors"]
    stored = 0
    for f in files:
        with safe_open(str(f), "pt") as st:
            assert not [k for k in st.keys() if k.startswith("text.") or "embeddings" in k or "encoder." in k]
            stored += sum(st.get_tensor(k).numel() for k in st.keys())
    # exactly the tower, the two projections and the temperature
    assert stored == sum(v.numel() for k, v in run.task.model.state_dict().items() if not k.startswith("text."))


def test_load_clip_and_the_eval_embedder_give_the_trained_embeddings(run, hf_encoder):
    from transformers import AutoTokenizer

    from picovlm.eval.embedder import ClipEmbedder

    trained = run.task.model.eval()
    loaded, _, layout = load_clip(run.ckpt)
    assert layout == "hf"
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    # the HF encoder's own tokenizer, as its users call it (padded batch + attention mask)
    enc = AutoTokenizer.from_pretrained(hf_encoder)(CAPTIONS, padding=True, return_tensors="pt")
    ids, lengths = enc["input_ids"], enc["attention_mask"].sum(1)
    with torch.no_grad():
        expected_text = trained.encode_text(ids, lengths)
        torch.testing.assert_close(loaded.encode_image(pixels), trained.encode_image(pixels))
        torch.testing.assert_close(loaded.encode_text(ids, lengths), expected_text)
    torch.testing.assert_close(ClipEmbedder.load(run.ckpt).encode_texts(CAPTIONS), expected_text)


def test_align_stage_takes_its_tower_from_the_hf_clip_checkpoint(run):
    run_stage(run.recipe, stage(run.recipe, "lm"), run.out, run.tok, progress=False)
    align, _ = run_stage(run.recipe, stage(run.recipe, "align"), run.out, run.tok, progress=False)
    vlm, _ = load_vlm(align)
    clip, _, _ = load_clip(run.ckpt)
    assert read_config(align)["parts"]["tower"] == "tower.safetensors"  # linked from the clip stage, not referenced
    for key, value in clip.tower.state_dict().items():
        torch.testing.assert_close(vlm.tower.state_dict()[key], value, rtol=0, atol=0)


def test_a_part_that_was_not_stored_cannot_be_inherited(run):
    bad = dataclasses.replace(stage(run.recipe, "clip"), name="clip2", init={"text": "clip"})
    with pytest.raises(ValueError, match="stage 'clip' has no stored part 'text' \\(a locked pretrained part"):
        run_stage(run.recipe, bad, run.out, run.tok, progress=False)


def test_unlocked_text_encoder_learns_and_is_stored(run, hf_encoder):
    tuned = dataclasses.replace(
        stage(run.recipe, "clip"), name="clip_tuned", steps=2, trainable=("tower", "text", "clip")
    )
    ckpt, _ = run_stage(run.recipe, tuned, run.out, run.tok, progress=False)
    assert read_config(ckpt)["parts"]["text"] == "text.safetensors"
    loaded, _, _ = load_clip(ckpt)
    pristine = HFTextEncoder(hf_encoder, 64).state_dict()
    assert any(not torch.equal(v, pristine[k]) for k, v in loaded.text.state_dict().items())


def test_hf_clip_export_is_refused_in_one_line(run, tmp_path):
    from picovlm.interop.clip import export_clip

    with pytest.raises(ValueError, match="pretrained HF sentence encoder") as e:
        export_clip(run.ckpt, tmp_path / "hf")
    assert "\n" not in str(e.value)


def test_missing_encoder_folder_is_one_clear_error(tmp_path):
    from picovlm.config import CLIPConfig, VisionConfig, ViTConfig

    vision = VisionConfig(vit=ViTConfig(image_size=16, patch_size=8, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(FileNotFoundError, match="no config.json; expected a local HF encoder folder"):
        CLIPModel(vision, CLIPConfig(embed_dim=8, text_layout="hf", text_hf_path=str(tmp_path)))
