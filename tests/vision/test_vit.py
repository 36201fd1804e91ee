"""Tests for our ViT: shapes, positions, feature_layer selection, bad configs, HF CLIP parity."""

import pytest
import torch

from picovlm.config import ViTConfig
from picovlm.interop.mapping import vit_hf_config, vit_to_hf
from picovlm.vision.vit import ViT, sincos_2d


def tiny_cfg(**kw) -> ViTConfig:
    base = dict(image_size=16, patch_size=4, n_embd=32, n_layer=3, n_head=4, mlp_ratio=2.0)
    return ViTConfig(**{**base, **kw})


def tiny_vit(seed: int = 0, **kw) -> ViT:
    torch.manual_seed(seed)
    return ViT(tiny_cfg(**kw)).eval()


def pixels(n: int = 2, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("use_cls", [True, False])
@pytest.mark.parametrize("pos_embed", ["learned", "sincos2d"])
def test_shapes(use_cls, pos_embed):
    vit = tiny_vit(use_cls=use_cls, pos_embed=pos_embed)
    x = pixels()
    assert vit.num_patches == 16 and vit.grid == 4 and vit.hidden_size == 32
    assert vit(x).shape == (2, 16, 32)  # CLS never among the patch features
    assert vit.hidden_states(x).shape == (2, 16 + int(use_cls), 32)
    assert vit.pooled(x).shape == (2, 32)
    learned = [n for n, _ in vit.named_parameters() if n == "pos_embed"]
    assert learned == (["pos_embed"] if pos_embed == "learned" else [])


def test_sincos2d_table():
    table = sincos_2d(4, 16)
    assert table.shape == (16, 16)
    assert len({tuple(row.tolist()) for row in table}) == 16  # every patch gets its own code
    # first half of the channels depends only on the row, second half only on the column
    torch.testing.assert_close(table[1, :8], table[2, :8])  # patches (0, 1) and (0, 2)
    torch.testing.assert_close(table[4, 8:], table[0, 8:])  # patches (1, 0) and (0, 0)
    vit = tiny_vit(use_cls=True, pos_embed="sincos2d")
    torch.testing.assert_close(vit.pos_embed[0], torch.zeros(32))
    torch.testing.assert_close(vit.pos_embed[1:], sincos_2d(4, 32))


@pytest.mark.parametrize("use_cls", [True, False])
@pytest.mark.parametrize("feature_layer,upto", [(-1, 3), (-2, 2), (0, 0), (1, 1), (3, 3)])
def test_feature_layer_selects_hidden_state(use_cls, feature_layer, upto):
    vit = tiny_vit(use_cls=use_cls, feature_layer=feature_layer)
    x = pixels()
    expected = vit.hidden_states(x, upto)
    torch.testing.assert_close(vit(x), expected[:, 1:] if use_cls else expected)
    if upto < 3:
        assert not torch.allclose(vit(x), vit.hidden_states(x)[:, int(use_cls) :])


def test_layers_above_feature_layer_are_not_used():
    vit = tiny_vit(feature_layer=-2)
    x = pixels()
    before = vit(x)
    pooled_before = vit.pooled(x)
    with torch.no_grad():
        for p in vit.blocks[-1].parameters():
            p.normal_()
    torch.testing.assert_close(vit(x), before)
    assert not torch.allclose(vit.pooled(x), pooled_before)  # ... but the last block does affect pooled


def test_conv_stem_sees_across_patch_borders():
    vit = tiny_vit(stem="conv", use_cls=False)
    x = pixels()
    assert vit(x).shape == (2, 16, 32)
    # A pixel change at the right edge of patch (0, 0) moves patch (0, 1)'s features through the
    # 3x3 receptive fields; with the linear patch embedding the features of patch (0, 1) stay put.
    for stem, moves in (("conv", True), ("patch", False)):
        embed = tiny_vit(stem=stem, use_cls=False).patch_embed
        y = x.clone()
        y[:, :, 0, 3] += 1.0
        changed = not torch.allclose(embed(x)[..., 0, 1], embed(y)[..., 0, 1])
        assert changed == moves, stem


def test_hybrid_stem_starts_as_the_patch_embedding_and_adds_luminance_shape():
    stem = tiny_vit(stem="hybrid", use_cls=False).patch_embed
    x = pixels()
    assert stem(x).shape == (2, 32, 4, 4)
    # the CNN's last conv starts at zero: training starts from the plain linear patch embedding
    torch.testing.assert_close(stem(x), stem.patch(x))
    with torch.no_grad():
        stem.convs[-1].weight.normal_()
    y = x.clone()
    y[:, :, 0, 3] += 1.0  # the right edge of patch (0, 0), seen by patch (0, 1) only through the CNN
    assert not torch.allclose(stem(x)[..., 0, 1], stem(y)[..., 0, 1])
    # the CNN reads luminance only: a change that keeps the channel mean moves nothing but the linear part
    z = x.clone()
    z[:, 0] += 0.5
    z[:, 1] -= 0.5
    torch.testing.assert_close(stem(z) - stem.patch(z), stem(x) - stem.patch(x))


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        ViT(tiny_cfg(image_size=18, patch_size=4))
    with pytest.raises(ValueError, match="unknown pos_embed 'rope'"):
        ViT(tiny_cfg(pos_embed="rope"))
    with pytest.raises(ValueError, match="unknown stem 'unet'"):
        ViT(tiny_cfg(stem="unet"))
    for stem in ("conv", "hybrid"):
        with pytest.raises(ValueError, match=f"stem '{stem}' needs a power-of-two patch_size"):
            ViT(tiny_cfg(image_size=18, patch_size=6, stem=stem))


# --- HF CLIP parity (the map lives in picovlm/interop/mapping.py) -----------------------------------


@pytest.mark.parametrize("feature_layer", [-2, -1, 1])
def test_matches_hf_clip(feature_layer):
    from transformers import CLIPVisionModel

    vit = tiny_vit(use_cls=True, pos_embed="learned", pre_norm=True, act="quick_gelu", feature_layer=feature_layer)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if "norm" in name:  # non-trivial LayerNorms, so a misplaced one shows up
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.normal_(0, 0.1)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    hf = CLIPVisionModel(vit_hf_config(vit.cfg)).eval()
    hf_sd = vit_to_hf(vit.state_dict())  # keys without the vision_model. wrapper (transformers >= 5 drops it)
    if any(k.startswith("vision_model.") for k in hf.state_dict()):
        hf_sd = {"vision_model." + k: v for k, v in hf_sd.items()}
    missing, unexpected = hf.load_state_dict(hf_sd, strict=False)
    assert unexpected == []
    assert [k for k in missing if "position_ids" not in k] == []  # a non-weight buffer in some versions
    x = pixels()
    with torch.no_grad():
        out = hf(pixel_values=x, output_hidden_states=True)
        torch.testing.assert_close(vit(x), out.hidden_states[feature_layer][:, 1:], atol=1e-5, rtol=0)
        torch.testing.assert_close(vit.pooled(x), out.pooler_output, atol=1e-5, rtol=0)
