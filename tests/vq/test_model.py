"""The VQ-VAE: grid shapes by config, gradients through the codebook, config errors."""

import pytest
import torch

from picovlm.config import VQConfig
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
