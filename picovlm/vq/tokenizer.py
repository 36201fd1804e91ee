"""Images <-> code ids: the VQ-VAE as a tokenizer, what a native model's vocabulary is built from.

    tok = ImageTokenizer.load("runs/vq/vq/model")
    ids = tok.encode([image])          # LongTensor [1, tok.tokens_per_image], ids in [0, tok.codebook_size)
    [again] = tok.decode(ids)          # a PIL image of tok.image_size x tok.image_size

A native model puts these ids after the text vocabulary (id + offset, with the offset the text
tokenizer's size) between <|image_start|> and <|image_end|>: exactly `tokens_per_image` of them,
row by row over a `grid` of (rows, columns) codes, so a 2D position is (i // columns, i % columns).
Images of another size are resized to `image_size` first (non-square ones are squeezed), as
picovlm's vision towers do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from picovlm.vq.model import VQVAE, load_vqvae


def to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """Pixels [B, 3, S, S] in [-1, 1] -> RGB PIL images (rounded to 8 bits, as a PNG stores them)."""
    arrays = ((pixels.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return [Image.fromarray(a.numpy(), "RGB") for a in arrays]


class ImageTokenizer:
    """PIL images <-> flat code ids [B, tokens_per_image], with a trained VQ-VAE."""

    def __init__(self, model: VQVAE):
        self.model = model.eval()

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ImageTokenizer:
        """The tokenizer of a `vq` stage's checkpoint folder (e.g. runs/vq/vq/model)."""
        return cls(load_vqvae(path).to(device))

    @property
    def codebook_size(self) -> int:
        """How many distinct codes there are: the ids run over [0, codebook_size)."""
        return self.model.cfg.codebook_size

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of codes per image; the ids of an image are its rows one after another."""
        return self.model.grid, self.model.grid

    @property
    def tokens_per_image(self) -> int:
        rows, columns = self.grid
        return rows * columns

    @property
    def image_size(self) -> int:
        """The side of the square images it encodes and decodes, in pixels."""
        return self.model.cfg.image_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """What the encoder sees: the images resized to `image_size`, [B, 3, S, S] in [-1, 1], on its device."""
        return self.model.processor(list(images)).to(self.device)

    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> code ids [B, tokens_per_image] (int64, on the CPU)."""
        ids = self.model.encode(self.pixels(images))
        return ids.flatten(1).cpu()

    def decode(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[Image.Image]:
        """Code ids [B, tokens_per_image] (or one image's [tokens_per_image]) -> PIL images."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.ndim == 1:
            ids = ids[None]
        self.check_codes(ids)
        rows, columns = self.grid
        return to_images(self.model.decode(ids.view(-1, rows, columns).to(self.device)))

    def check_codes(self, ids: torch.Tensor, where: str = "codes") -> None:
        """A one-line error, naming `where`, unless ids [B, tokens_per_image] are codes of this tokenizer."""
        rows, columns = self.grid
        if ids.ndim != 2 or ids.shape[1] != self.tokens_per_image:
            raise ValueError(
                f"{where}: expected {self.tokens_per_image} codes per image ({rows}x{columns}), got shape "
                f"{list(ids.shape)}"
            )
        bad = (ids < 0) | (ids >= self.codebook_size)
        if bad.any():
            raise ValueError(f"{where}: code {int(ids[bad][0])} is out of range [0, {self.codebook_size})")
