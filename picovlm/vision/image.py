"""Loading images safely and turning them into the tensors a tower expects.

Images come from users (files, data URLs, uploads), so loading is defensive: a size limit checked
before decoding (decompression bombs), and one-line errors that say which file and what is wrong.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

MAX_IMAGE_PIXELS = 40_000_000  # ~ 6300 x 6300: far above anything a VLM tower uses


class ImageError(ValueError):
    """An image that cannot be used; the message names the image and the reason."""


class ImageTooLarge(ImageError):
    """An image with more pixels than allowed (told from its header, before any decoding)."""


def load_image(
    source: str | Path | bytes | Image.Image, max_pixels: int = MAX_IMAGE_PIXELS, name: str | None = None
) -> Image.Image:
    """Open a path or raw bytes as an RGB PIL image, refusing missing, corrupt or oversized input.
    An already decoded PIL image (from a dataset library) gets the same size limit and conversion."""
    label = name or (str(source) if not isinstance(source, (bytes, Image.Image)) else "<image bytes>")
    if isinstance(source, Image.Image):
        w, h = source.size
        if w * h > max_pixels:
            raise ImageTooLarge(f"{label}: image is {w}x{h}, more than the limit of {max_pixels} pixels")
        return source.convert("RGB")
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise ImageError(f"{label}: image file not found")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            w, h = im.size  # read from the header: nothing is decoded yet
            if w * h > max_pixels:
                raise ImageTooLarge(f"{label}: image is {w}x{h}, more than the limit of {max_pixels} pixels")
            return im.convert("RGB")
    except ImageError:
        raise
    except Image.DecompressionBombError as e:  # PIL's own guard, for headers far past our limit
        raise ImageTooLarge(f"{label}: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{label}: not a readable image ({type(e).__name__}: {e})") from None


@dataclass
class ImageProcessor:
    """Resize to a square and normalize: the preprocessing a tower was trained with travels with it."""

    size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resample: int = Image.BICUBIC

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """[n, 3, size, size] float tensor."""
        if not images:
            return torch.empty(0, 3, self.size, self.size)
        arrays = []
        for im in images:
            if im.mode != "RGB":
                im = im.convert("RGB")
            if im.size != (self.size, self.size):
                im = im.resize((self.size, self.size), self.resample)
            arrays.append(np.asarray(im, dtype=np.float32))
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std
