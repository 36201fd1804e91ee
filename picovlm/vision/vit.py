"""Our own vision transformer, laid out like HF `CLIPVisionModel` so its weights map one to one.

pixels -> patch embedding (a strided conv) -> [CLS] + positions -> pre-LayerNorm -> pre-LN blocks.
`forward` returns the patch features of `cfg.feature_layer` (LLaVA's choice: the second to last
layer, whose features are less specialised to the contrastive objective than the last), CLS dropped.
`pooled` returns the CLIP-style image embedding used by contrastive pretraining.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from picovlm.config import ViTConfig
from picovlm.vision.image import ImageProcessor


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2D sine-cosine positions [grid*grid, dim]: half the channels encode the row, half the
    column, so neighbouring patches get similar codes without having to learn them."""
    assert dim % 4 == 0, "sincos2d positions need n_embd divisible by 4"
    coords = torch.arange(grid, dtype=torch.float32)
    omega = 1.0 / (10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4)))
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    parts = [f(axis.flatten()[:, None] * omega) for axis in (rows, cols) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1)


def stem_depth(patch_size: int, stem: str) -> int:
    """How many stride-2 convs a conv stem needs to reach the patch grid."""
    depth = patch_size.bit_length() - 1
    if patch_size != 2**depth or depth < 1:
        raise ValueError(f"stem {stem!r} needs a power-of-two patch_size >= 2, got {patch_size}")
    return depth


class ConvStem(nn.Module):
    """Patchify with log2(patch_size) 3x3 stride-2 convolutions instead of one patch-sized conv.

    Why: a linear patch embedding sees each patch alone and leaves every spatial relation to
    attention, which a small ViT trained on little data learns slowly; overlapping convolutions
    give it edges and corners for free ("Early Convolutions Help Transformers See Better",
    Xiao et al. 2021). Costs a few percent more compute; not part of the CLIP layout.
    """

    def __init__(self, patch_size: int, n_embd: int):
        super().__init__()
        depth = stem_depth(patch_size, "conv")
        widths = [3] + [max(n_embd >> (depth - i), 8) for i in range(1, depth + 1)]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths, widths[1:], strict=False):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GELU()]
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(widths[-1], n_embd, 1)
        # PyTorch's default conv init shrinks the signal about 2.5x per layer; after the stack the
        # image content would be drowned by the position embeddings and training stalls. He init
        # keeps the scale through the GELUs.
        for conv in self.convs[::2]:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(pixels))


class HybridStem(nn.Module):
    """CLIP's linear patch embedding plus a residual CNN that sees only the image's luminance.

    Why: the linear embedding carries colour straight through (a linear probe reads it perfectly)
    but sees each patch alone, so shape, which straddles patch borders, is left to attention; a CNN
    sees shape at once. A CNN on all three channels learned colour detectors of its own and stalled
    our CLIP stage (loss stuck at ln(batch) for 40 steps, colour at chance); on luminance it can only
    add shape and edges. Its last conv starts at zero, so training starts from the plain ViT.
    Layout: a stride-1 3x3 conv, then log2(patch_size) stride-2 3x3 convs, ReLU between them.
    """

    def __init__(self, patch_size: int, n_embd: int):
        super().__init__()
        depth = stem_depth(patch_size, "hybrid")
        self.patch = nn.Conv2d(3, n_embd, patch_size, stride=patch_size, bias=False)
        w = max(n_embd // 4, 8)
        widths = [1, w] + [2 * w] * (depth - 1) + [n_embd]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths, widths[1:], strict=False)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1), nn.ReLU()]
        self.convs = nn.Sequential(*layers[:-1])
        for conv in self.convs[::2]:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.convs[-1].weight)
        # kernels stored channels-last: oneDNN (CPU) and cuDNN then run the convs channels-last, the layout
        # they are fastest in; the demo's stem forward and backward at batch 64, two threads, AMD EPYC:
        # 1.5x (195 vs 295 ms), the same values to float rounding. (A checkpoint stores them contiguous.)
        self.to(memory_format=torch.channels_last)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.patch(pixels) + self.convs(pixels.mean(dim=1, keepdim=True))


STEMS = {"conv": ConvStem, "hybrid": HybridStem}


class Attention(nn.Module):
    def __init__(self, cfg: ViTConfig, causal: bool = False):
        super().__init__()
        self.n_head, self.causal = cfg.n_head, causal
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.out_proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = (p(x).view(B, N, self.n_head, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        # bidirectional: every patch sees every patch (causal only when the block serves as CLIP's text encoder)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out_proj(y.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig, causal: bool = False):
        super().__init__()
        hidden = int(cfg.n_embd * cfg.mlp_ratio)
        self.layer_norm1 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.self_attn = Attention(cfg, causal)
        self.layer_norm2 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.fc1 = nn.Linear(cfg.n_embd, hidden)
        self.fc2 = nn.Linear(hidden, cfg.n_embd)
        self.act = quick_gelu if cfg.act == "quick_gelu" else F.gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.fc2(self.act(self.fc1(self.layer_norm2(x))))


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        if cfg.stem not in ("patch", *STEMS):
            raise ValueError(f"unknown stem {cfg.stem!r}: expected 'patch', {', '.join(map(repr, STEMS))}")
        if cfg.pos_embed not in ("learned", "sincos2d"):
            raise ValueError(f"unknown pos_embed {cfg.pos_embed!r}: expected 'learned' or 'sincos2d'")
        self.cfg = cfg
        self.grid = cfg.image_size // cfg.patch_size
        n_pos = self.grid**2 + int(cfg.use_cls)
        if cfg.stem in STEMS:
            self.patch_embed: nn.Module = STEMS[cfg.stem](cfg.patch_size, cfg.n_embd)
        else:
            self.patch_embed = nn.Conv2d(3, cfg.n_embd, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.cls_token = nn.Parameter(torch.randn(cfg.n_embd) * 0.02) if cfg.use_cls else None
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.randn(n_pos, cfg.n_embd) * 0.02)
        else:
            table = sincos_2d(self.grid, cfg.n_embd)
            if cfg.use_cls:
                table = torch.cat([torch.zeros(1, cfg.n_embd), table])
            self.register_buffer("pos_embed", table, persistent=False)
        self.pre_norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps) if cfg.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.post_norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)  # only for the pooled embedding
        self.processor = ImageProcessor(cfg.image_size, cfg.image_mean, cfg.image_std)  # what it was trained on

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def hidden_size(self) -> int:
        return self.cfg.n_embd

    def hidden_states(self, pixels: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """Token states after `upto` blocks (all blocks by default): [B, (1+)N, D]."""
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.size(0), 1, -1).to(x.dtype), x], dim=1)
        x = self.pre_norm(x + self.pos_embed.to(x.dtype))
        for block in self.blocks[:upto]:
            x = block(x)
        return x

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch features [B, N, D] from `feature_layer` (index into the n_layer+1 hidden states,
        0 = the embeddings). Layers above the chosen one are not computed at all."""
        upto = self.cfg.feature_layer % (self.cfg.n_layer + 1)
        x = self.hidden_states(pixels, upto)
        return x[:, 1:] if self.cls_token is not None else x

    def pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        """One vector per image: post-LayerNormed CLS (CLIP), or the mean patch without CLS."""
        x = self.hidden_states(pixels)
        return self.post_norm(x[:, 0] if self.cls_token is not None else x.mean(dim=1))
