"""Tests for image loading (defensive errors) and the resize/normalize image processor."""

import io
import random

import pytest
import torch
from PIL import Image

from picovlm.vision.image import ImageError, ImageProcessor, ImageTooLarge, load_image


def png_bytes(size=(6, 4), color=(255, 0, 0), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_load_good_png(tmp_path):
    path = tmp_path / "red.png"
    path.write_bytes(png_bytes())
    for source in (path, str(path)):
        im = load_image(source)
        assert im.mode == "RGB" and im.size == (6, 4)
        assert im.getpixel((0, 0)) == (255, 0, 0)


def test_load_converts_to_rgb(tmp_path):
    path = tmp_path / "gray.png"
    path.write_bytes(png_bytes(color=128, mode="L"))
    im = load_image(path)
    assert im.mode == "RGB" and im.getpixel((1, 1)) == (128, 128, 128)


def test_load_bytes():
    im = load_image(png_bytes(color=(1, 2, 3)))
    assert im.mode == "RGB" and im.getpixel((0, 0)) == (1, 2, 3)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="nope.png: image file not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path)  # a directory is not an image file


def test_corrupt_file(tmp_path):
    path = tmp_path / "junk.jpg"
    path.write_bytes(random.Random(0).randbytes(64) + b"\x00" * 64)
    with pytest.raises(ImageError, match="junk.jpg: not a readable image"):
        load_image(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.png"
    data = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(data, format="PNG")
    path.write_bytes(data.getvalue()[:200])
    with pytest.raises(ImageError, match="cut.png: not a readable image"):
        load_image(path)


def test_corrupt_bytes():
    with pytest.raises(ImageError, match="<image bytes>: not a readable image"):
        load_image(b"definitely not an image")
    with pytest.raises(ImageError, match="upload-7: not a readable image"):
        load_image(b"definitely not an image", name="upload-7")


def test_too_many_pixels(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(size=(20, 10)))
    with pytest.raises(ImageError, match=r"big.png: image is 20x10, more than the limit of 199 pixels"):
        load_image(path, max_pixels=199)
    assert load_image(path, max_pixels=200).size == (20, 10)
    with pytest.raises(ImageError, match="<image bytes>: image is 20x10"):
        load_image(png_bytes(size=(20, 10)), max_pixels=100)


def test_processor_shape_and_normalization():
    proc = ImageProcessor(size=8, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    images = [Image.new("RGB", (8, 8), (255, 0, 51)), Image.new("RGB", (20, 12), (0, 255, 255))]
    x = proc(images)
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, :, 3, 5], torch.tensor([1.0, -1.0, 0.2]))
    torch.testing.assert_close(x[1, :, 0, 0], torch.tensor([-1.0, 3.0, 1.0]))  # resized, same colour


def test_processor_channel_order():
    im = Image.new("RGB", (2, 2), (0, 0, 0))
    im.putpixel((1, 0), (255, 0, 0))  # x=1, y=0
    x = ImageProcessor(size=2, mean=(0, 0, 0), std=(1, 1, 1))([im])
    assert x[0, 0, 0, 1] == 1.0 and x[0, 0, 1, 0] == 0.0 and x[0, 1:, 0, 1].abs().sum() == 0


def test_processor_converts_non_rgb():
    proc = ImageProcessor(size=4, mean=(0, 0, 0), std=(1, 1, 1))
    gray = Image.new("L", (4, 4), 51)
    rgba = Image.new("RGBA", (4, 4), (255, 102, 0, 0))
    x = proc([gray, rgba])
    assert x.shape == (2, 3, 4, 4)
    torch.testing.assert_close(x[0, :, 0, 0], torch.full((3,), 0.2))
    torch.testing.assert_close(x[1, :, 0, 0], torch.tensor([1.0, 0.4, 0.0]))


def test_processor_empty_list():
    x = ImageProcessor(size=8)([])
    assert x.shape == (0, 3, 8, 8)


def test_decoded_pil_images_get_the_same_limit_and_conversion():
    im = load_image(Image.new("L", (4, 2), 7), name="row 3")
    assert im.mode == "RGB" and im.size == (4, 2)
    with pytest.raises(ImageTooLarge, match="row 3: image is 4x2, more than the limit of 5 pixels"):
        load_image(Image.new("RGB", (4, 2)), max_pixels=5, name="row 3")
