"""Tests for the projector registry: shapes, token counts, pixel-shuffle grouping, errors."""

import pytest
import torch

from picovlm.models.projectors import PixelShuffleProjector, build_projector, pixel_shuffle


@pytest.mark.parametrize(
    "name,n_tokens,n_linear",
    [
        ("identity", 16, 0),
        ("linear", 16, 1),
        ("mlp2x_gelu", 16, 2),
        ("mlp3x_gelu", 16, 3),
        ("pixel_shuffle2", 4, 2),
    ],
)
def test_registry_shapes(name, n_tokens, n_linear):
    in_dim, out_dim = (24, 24) if name == "identity" else (20, 12)
    proj = build_projector(name, in_dim, out_dim, grid=4)
    x = torch.randn(3, 16, in_dim)
    y = proj(x)
    assert proj.num_tokens(16) == n_tokens
    assert y.shape == (3, n_tokens, out_dim)
    assert sum(isinstance(m, torch.nn.Linear) for m in proj.modules()) == n_linear
    assert sum(isinstance(m, torch.nn.GELU) for m in proj.modules()) == max(n_linear - 1, 0)
    if name == "identity":
        assert y is x


def test_pixel_shuffle_first_layer_sees_r2_times_the_features():
    proj = build_projector("pixel_shuffle2", 8, 16, grid=4)
    assert isinstance(proj, PixelShuffleProjector)
    assert proj.mlp.net[0].in_features == 32
    assert build_projector("pixel_shuffle4", 8, 16, grid=8).num_tokens(64) == 4


@pytest.mark.parametrize("grid,r", [(4, 2), (6, 3), (6, 2), (4, 4), (3, 1)])
def test_pixel_shuffle_groups_neighbours(grid, r):
    # feature of patch (row, col) is [row, col]: every output token must hold an r x r block
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    x = torch.stack([rows.flatten(), cols.flatten()], dim=-1).float()[None].repeat(2, 1, 1)
    y = pixel_shuffle(x, grid, r)
    g = grid // r
    assert y.shape == (2, g * g, r * r * 2)
    for token in range(g * g):
        gi, gj = divmod(token, g)  # output tokens are row-major over the coarse grid
        got = y[1, token].view(r * r, 2).tolist()
        expected = [[gi * r + i, gj * r + j] for i in range(r) for j in range(r)]
        assert got == expected


def test_pixel_shuffle_accepts_a_sliced_input():
    full = torch.randn(1, 17, 4)  # e.g. features with a CLS in front, sliced off
    torch.testing.assert_close(pixel_shuffle(full[:, 1:], 4, 2), pixel_shuffle(full[:, 1:].contiguous(), 4, 2))


def test_errors():
    with pytest.raises(ValueError, match="unknown projector 'mlp2x_relu'"):
        build_projector("mlp2x_relu", 8, 8, grid=4)
    with pytest.raises(ValueError, match="unknown projector"):
        build_projector("linear2", 8, 8, grid=4)
    with pytest.raises(ValueError, match="identity projector needs equal dims, got 8 -> 16"):
        build_projector("identity", 8, 16, grid=4)
    with pytest.raises(ValueError, match="pixel_shuffle2 needs a patch grid divisible by 2, got 5x5"):
        build_projector("pixel_shuffle2", 8, 8, grid=5)
    with pytest.raises(ValueError, match="c_abstractor2 needs a patch grid divisible by 2, got 5x5"):
        build_projector("c_abstractor2", 8, 8, grid=5)


@pytest.mark.parametrize("grid,r", [(4, 2), (8, 2), (6, 3)])
def test_c_abstractor_shapes_and_receptive_field(grid, r):
    torch.manual_seed(0)
    proj = build_projector(f"c_abstractor{r}", 8, 16, grid=grid).eval()
    n = grid * grid
    assert proj.num_tokens(n) == n // (r * r)
    x = torch.randn(2, n, 8)
    assert proj(x).shape == (2, n // (r * r), 16)
    # Unlike pixel shuffle, whose token 0 sees only its own r x r block, the 3x3 convs let a patch
    # just outside the block (row 0, column r) reach token 0.
    y = x.clone()
    y[:, r] += 1.0
    assert not torch.allclose(proj(x)[:, 0], proj(y)[:, 0])
    shuffle = build_projector(f"pixel_shuffle{r}", 8, 16, grid=grid)
    torch.testing.assert_close(shuffle(x)[:, 0], shuffle(y)[:, 0])
    with pytest.raises(ValueError, match=f"c_abstractor{r} needs {n} patch tokens"):
        proj(x[:, 1:])


def test_pos_suffix_adds_a_learned_vector_per_slot():
    proj = build_projector("pixel_shuffle2+pos", 8, 16, grid=4)
    assert proj.num_tokens(16) == 4
    x = torch.randn(2, 16, 8)
    out = proj(x)
    assert out.shape == (2, 4, 16)
    torch.testing.assert_close(out - proj.inner(x), proj.pos.expand(2, -1, -1))
    # the same features in two slots now come out different: the slot is visible to the LM
    same = torch.zeros(1, 16, 8)
    y = proj(same)
    assert not torch.allclose(y[0, 0], y[0, 1])
    with pytest.raises(ValueError, match="unknown projector"):
        build_projector("linear+posx", 8, 16, grid=4)
