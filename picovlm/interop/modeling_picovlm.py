"""transformers' LLaVA with picovlm's two parts that LLaVA lacks: a hybrid patch stem and a pixel-shuffle projector.

`picovlm export --format hf-picovlm` copies this file, as it is, into the folder it writes, and the
folder's config.json names its classes (`auto_map`), so that

    AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)

runs a picovlm model whose tower or projector has no counterpart in transformers (the demo's:
`stem="hybrid"`, `pixel_shuffle2+pos`) with everything else transformers' own: LLaVA's model, CLIP's
vision encoder, Llama or Qwen3, `generate`, and the stock `LlavaProcessor`. It imports transformers
and torch only (a user of the folder need not install picovlm); the layers below are the arithmetic
of picovlm/vision/vit.py `HybridStem` and picovlm/models/projectors.py, checked against them by
tests/interop/test_picovlm_llava.py (the same logits and greedy tokens).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import LlavaConfig, LlavaForConditionalGeneration
from transformers.activations import ACT2FN


class PicoVLMConfig(LlavaConfig):
    """LLaVA's config plus the tower's stem and the projector's shape.

    stem_widths: the hybrid stem's conv widths, from its one input channel (luminance) to the tower's
    width; empty for CLIP's plain patch conv. pixel_shuffle: each r x r block of patches becomes one
    token (1: none). projector_norm: a LayerNorm before the first linear. slot_embeddings: a learned
    vector added to each of this many image tokens (0: none).
    """

    model_type = "picovlm_llava"

    def __init__(
        self,
        stem_widths: list[int] | None = None,
        pixel_shuffle: int = 1,
        projector_norm: bool = False,
        slot_embeddings: int = 0,
        **kwargs,
    ):
        self.stem_widths = list(stem_widths or [])
        self.pixel_shuffle, self.projector_norm, self.slot_embeddings = pixel_shuffle, projector_norm, slot_embeddings
        super().__init__(**kwargs)


class HybridPatchEmbedding(nn.Module):
    """CLIP's patch conv plus a CNN on the image's luminance (3x3 convs, the first stride 1, the rest
    stride 2, ReLU between them), added to it: the patch conv alone sees each patch on its own."""

    def __init__(self, channels: int, width: int, patch_size: int, stem_widths: list[int]):
        super().__init__()
        self.patch = nn.Conv2d(channels, width, patch_size, stride=patch_size, bias=False)
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(stem_widths, stem_widths[1:], strict=False)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1), nn.ReLU()]
        self.convs = nn.Sequential(*layers[:-1])

    @property
    def weight(self) -> torch.Tensor:  # CLIP's embeddings read the patch conv's dtype from here
        return self.patch.weight

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.patch(pixels) + self.convs(pixels.mean(dim=1, keepdim=True))


class PicoVLMProjector(nn.Module):
    """[B, grid*grid, D] tower features -> pixel shuffle (r x r patches, row-major, into one token) ->
    LayerNorm -> linear -> act -> linear -> + one learned vector per token slot."""

    def __init__(self, config: PicoVLMConfig):
        super().__init__()
        r, dim, out = config.pixel_shuffle, config.vision_config.hidden_size, config.text_config.hidden_size
        self.r, merged = r, dim * r * r
        self.layer_norm = nn.LayerNorm(merged) if config.projector_norm else nn.Identity()
        self.linear_1 = nn.Linear(merged, out)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(out, out)
        self.slots = nn.Parameter(torch.zeros(config.slot_embeddings, out)) if config.slot_embeddings else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        B, N, D = features.shape
        if self.r > 1:
            g = round(N**0.5) // self.r
            if (g * self.r) ** 2 != N:
                raise ValueError(f"pixel shuffle {self.r} needs a square grid of {self.r}x{self.r} blocks, got {N}")
            blocks = features.view(B, g, self.r, g, self.r, D).permute(0, 1, 3, 2, 4, 5)
            features = blocks.reshape(B, g * g, self.r * self.r * D)
        h = self.linear_2(self.act(self.linear_1(self.layer_norm(features))))
        return h if self.slots is None else h + self.slots.to(h.dtype)


class PicoVLMForConditionalGeneration(LlavaForConditionalGeneration):
    """`LlavaForConditionalGeneration` with the stem and projector of `PicoVLMConfig`."""

    config_class = PicoVLMConfig

    def __init__(self, config: PicoVLMConfig):
        super().__init__(config)
        if config.stem_widths:
            vision = config.vision_config
            stem = HybridPatchEmbedding(vision.num_channels, vision.hidden_size, vision.patch_size, config.stem_widths)
            embeddings = next(m for m in self.model.vision_tower.modules() if hasattr(m, "patch_embedding"))
            embeddings.patch_embedding = stem
        self.model.multi_modal_projector = PicoVLMProjector(config)
        self.post_init()
