"""The projector registry: a config string picks how patch features become LM input embeddings.

  identity         features pass through (dims must already match)
  linear           one linear layer (LLaVA 1.0)
  mlp{N}x_gelu     N linear layers with GELU between them (LLaVA 1.5 uses mlp2x_gelu)
  pixel_shuffle{r} merge each r x r block of neighbouring patches into one token (r*r fewer image
                   tokens, r*r wider features), then mlp2x_gelu (nanoVLM, InternVL)
  c_abstractor{r}  residual 3x3 conv blocks on the patch grid, r x r average pooling, more conv
                   blocks, then mlp2x_gelu (Honeybee's C-Abstractor): r*r fewer tokens, and the
                   convolutions share one set of local detectors across all positions

Any of them with a "+pos" suffix (e.g. pixel_shuffle2+pos) also adds a learned embedding per image
token slot, as Honeybee's abstractors do: the LM's RoPE only sees relative distances, so without it
an image token's place in the picture must survive the tower inside its features.

Each projector also says how many tokens it emits for a given patch count (`num_tokens`), which is
what one `<|image|>` placeholder expands to.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLPProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, depth: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        self.net = nn.Sequential(*layers)

    def num_tokens(self, n_patches: int) -> int:
        return n_patches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class IdentityProjector(nn.Module):
    def num_tokens(self, n_patches: int) -> int:
        return n_patches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def pixel_shuffle(x: torch.Tensor, grid: int, r: int) -> torch.Tensor:
    """[B, grid*grid, D] -> [B, (grid/r)^2, r*r*D]: each output token holds an r x r patch block."""
    B, N, D = x.shape
    g = grid // r
    x = x.view(B, g, r, g, r, D).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, g * g, r * r * D)


class PixelShuffleProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, grid: int, r: int):
        super().__init__()
        if grid % r:
            raise ValueError(f"pixel_shuffle{r} needs a patch grid divisible by {r}, got {grid}x{grid}")
        self.grid, self.r = grid, r
        # InternVL normalizes the merged features first: tower outputs are un-normalized and their
        # scale is arbitrary, and the LM should not have to undo it
        self.norm = nn.LayerNorm(in_dim * r * r)
        self.mlp = MLPProjector(in_dim * r * r, out_dim, depth=2)

    def num_tokens(self, n_patches: int) -> int:
        return n_patches // (self.r * self.r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.grid**2:
            raise ValueError(f"pixel_shuffle{self.r} needs {self.grid**2} patch tokens (no CLS), got {x.shape[1]}")
        return self.mlp(self.norm(pixel_shuffle(x, self.grid, self.r)))


class ConvBlock(nn.Module):
    """Pre-norm residual block on a [B, C, H, W] grid: LayerNorm over channels, 3x3 conv, GELU, 1x1 conv."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.mix = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.mix(F.gelu(self.conv(h)))


class CAbstractor(nn.Module):
    """Convolutions before and after pooling keep what a plain merge loses: an object that straddles
    two pooled cells is still seen whole by the 3x3 convs, and the same detector works everywhere
    in the picture, so it is learned from every position at once."""

    def __init__(self, in_dim: int, out_dim: int, grid: int, r: int, depth: int = 2):
        super().__init__()
        if grid % r:
            raise ValueError(f"c_abstractor{r} needs a patch grid divisible by {r}, got {grid}x{grid}")
        self.grid, self.r = grid, r
        self.inp = nn.Conv2d(in_dim, out_dim, 1)
        self.pre = nn.Sequential(*(ConvBlock(out_dim) for _ in range(depth)))
        self.pool = nn.AvgPool2d(r)
        self.post = nn.Sequential(*(ConvBlock(out_dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(out_dim)
        self.mlp = MLPProjector(out_dim, out_dim, depth=2)

    def num_tokens(self, n_patches: int) -> int:
        return n_patches // (self.r * self.r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        if N != self.grid**2:
            raise ValueError(f"c_abstractor{self.r} needs {self.grid**2} patch tokens (no CLS), got {N}")
        h = self.inp(x.transpose(1, 2).reshape(B, D, self.grid, self.grid))
        h = self.post(self.pool(self.pre(h)))
        return self.mlp(self.norm(h.flatten(2).transpose(1, 2)))


class SlotPositions(nn.Module):
    """Wraps a projector and adds a learned vector per output token slot (its place in the grid)."""

    def __init__(self, inner: nn.Module, n_tokens: int, dim: int):
        super().__init__()
        self.inner = inner
        self.pos = nn.Parameter(torch.randn(n_tokens, dim) * 0.02)

    def num_tokens(self, n_patches: int) -> int:
        return self.inner.num_tokens(n_patches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + self.pos.to(x.dtype)


Builder = Callable[[re.Match, int, int, int], nn.Module]
PROJECTORS: dict[str, Builder] = {
    r"identity": lambda m, i, o, g: IdentityProjector(),
    r"linear": lambda m, i, o, g: MLPProjector(i, o, depth=1),
    r"mlp(\d+)x_gelu": lambda m, i, o, g: MLPProjector(i, o, depth=int(m.group(1))),
    r"pixel_shuffle(\d+)": lambda m, i, o, g: PixelShuffleProjector(i, o, g, int(m.group(1))),
    r"c_abstractor(\d+)": lambda m, i, o, g: CAbstractor(i, o, g, int(m.group(1))),
}


def build_projector(name: str, in_dim: int, out_dim: int, grid: int) -> nn.Module:
    """Projector `name` from `in_dim` tower features on a `grid` x `grid` patch grid to `out_dim`."""
    if name.endswith("+pos"):
        inner = build_projector(name.removesuffix("+pos"), in_dim, out_dim, grid)
        return SlotPositions(inner, inner.num_tokens(grid * grid), out_dim)
    for pattern, build in PROJECTORS.items():
        m = re.fullmatch(pattern, name)
        if m:
            if name == "identity" and in_dim != out_dim:
                raise ValueError(f"identity projector needs equal dims, got {in_dim} -> {out_dim}")
            return build(m, in_dim, out_dim, grid)
    raise ValueError(
        f"unknown projector {name!r}; known: identity, linear, mlpNx_gelu, pixel_shuffleR, c_abstractorR (+pos)"
    )
