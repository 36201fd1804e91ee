"""The VQ-VAE: grid shapes by config, gradients through the codebook, bf16, config errors."""

import dataclasses
import json

import pytest
import torch

from picovlm.config import RecipeConfig, VQConfig, from_dict
from picovlm.presets import VQ_RECIPES
from picovlm.vq.model import VQVAE

TINY = dict(channels=8, res_blocks=1, code_dim=4, codebook_size=16)


@pytest.mark.parametrize(("image_size", "downsample", "grid"), [(64, 4, 16), (64, 8, 8), (32, 4, 8), (48, 16, 3)])
def test_encode_decode_shapes(image_size, downsample, grid):
    model = VQVAE(VQConfig(image_size=image_size, downsample=downsample, **TINY)).eval()
    pixels = torch.rand(2, 3, image_size, image_size) * 2 - 1
    ids = model.encode(pixels)
    assert model.grid == grid and ids.shape == (2, grid, grid) and 0 <= ids.min() and ids.max() < 16
    out = model.decode(ids)
    assert out.shape == pixels.shape and out.min() >= -1 and out.max() <= 1
    again, ids_again, _ = model.reconstruct(pixels)
    assert torch.equal(ids_again, ids) and torch.allclose(again.clamp(-1, 1), out, atol=1e-6)


def test_the_loss_trains_encoder_and_decoder_through_the_codebook():
    model = VQVAE(VQConfig(image_size=16, downsample=4, **TINY)).train()
    loss = model(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert loss.ndim == 0
    loss.backward()
    for part in (model.encoder, model.decoder):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert not list(model.quantizer.parameters())  # the codebook learns by EMA, not by gradient


@torch.no_grad()
def test_l1_weight_adds_an_l1_term():
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    losses = []
    for l1 in (0.0, 1.0):
        torch.manual_seed(0)
        losses.append(float(VQVAE(VQConfig(image_size=16, downsample=4, l1_weight=l1, **TINY)).eval()(pixels)))
    torch.manual_seed(0)
    out = VQVAE(VQConfig(image_size=16, downsample=4, **TINY)).eval().reconstruct(pixels)[0]
    assert losses[1] - losses[0] == pytest.approx(float((out - pixels).abs().mean()), rel=1e-4)


def test_a_downsample_that_does_not_divide_the_image_is_an_error():
    with pytest.raises(ValueError, match="downsample 5 does not divide image_size 64"):
        VQVAE(VQConfig(downsample=5))


def test_bfloat16_autocast_keeps_the_codebook_in_float32():
    """A stage with dtype "bfloat16" runs the networks in bf16; distances and EMA statistics stay float32."""
    model = VQVAE(VQConfig(image_size=16, downsample=4, **TINY)).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(torch.rand(4, 3, 16, 16) * 2 - 1)
    loss.backward()
    assert torch.isfinite(loss) and model.quantizer.usage.sum() > 0
    assert all(b.dtype == torch.float32 for b in model.quantizer.buffers())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"codebook_size": 1}, r"vq.codebook_size: must be >= 2, got 1"),
        ({"ema_decay": 1}, r"vq.ema_decay: must be a number in \[0, 1\), got 1"),
        ({"downsample": 0}, r"vq.downsample: must be >= 1, got 0"),
        ({"dead_below": -0.1}, r"vq.dead_below: must be >= 0, got -0.1"),
    ],
)
def test_a_recipe_file_with_a_bad_vq_value_names_it(settings, message):
    with pytest.raises(ValueError, match=message):
        from_dict(RecipeConfig, {"vq": settings})


@pytest.mark.parametrize("name", sorted(VQ_RECIPES))
def test_the_vq_recipes_round_trip_through_json(name):
    recipe = VQ_RECIPES[name]("data/x")
    assert from_dict(RecipeConfig, json.loads(json.dumps(dataclasses.asdict(recipe)))) == recipe
