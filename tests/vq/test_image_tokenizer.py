"""The tokenizer API a native model uses: PIL images <-> flat code ids, the codes file, clear errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from picovlm.eval.reconstruction import image_mse
from picovlm.vq.codes import png_names, read_codes, write_codes
from picovlm.vq.model import VQVAE, load_vqvae
from picovlm.vq.tokenizer import ImageTokenizer
from tests.vq.helpers import train_tiny_vq


@pytest.fixture(scope="module")
def tokenizer(tiny_vq) -> ImageTokenizer:
    return ImageTokenizer.load(tiny_vq)


def test_encode_gives_flat_ids_of_the_grid_and_decode_gives_images(tokenizer, tiny_data):
    images = [Image.open(tiny_data / "images" / f"test_00000{k}.png") for k in range(3)]
    ids = tokenizer.encode(images)
    rows, columns = tokenizer.grid
    assert (rows, columns) == (8, 8) and tokenizer.tokens_per_image == 64 and tokenizer.codebook_size == 16
    assert ids.shape == (3, 64) and ids.dtype == torch.long and 0 <= ids.min() and ids.max() < 16
    decoded = tokenizer.decode(ids)
    assert [im.size for im in decoded] == [(32, 32)] * 3 and decoded[0].mode == "RGB"
    assert tokenizer.decode(ids[1])[0].tobytes() == decoded[1].tobytes()  # one image's ids, unbatched
    assert tokenizer.decode(ids.tolist())[2].tobytes() == decoded[2].tobytes()  # plain lists too


def test_images_of_another_size_are_resized_first(tokenizer, tiny_data):
    image = Image.open(tiny_data / "images" / "test_000000.png").convert("RGB")
    other = image.resize((50, 40), Image.NEAREST)  # not even square: squeezed, as the towers do
    ids = tokenizer.encode([other])
    assert ids.shape == (1, 64) and torch.equal(ids, tokenizer.encode([other.resize((32, 32), Image.BICUBIC)]))
    assert torch.equal(tokenizer.encode([image.convert("L")]), tokenizer.encode([image.convert("L").convert("RGB")]))


def test_a_trained_tokenizer_reconstructs_better_than_its_init(tiny_data, tmp_path):
    images = [Image.open(tiny_data / "images" / f"test_{k:06d}.png").convert("RGB") for k in range(16)]
    errors = []
    for steps in (1, 60):  # one step: the codebook seeded from data, the networks as initialized
        tokenizer = ImageTokenizer.load(train_tiny_vq(tiny_data, tmp_path / str(steps), steps=steps))
        errors.append(np.mean(image_mse(images, tokenizer.decode(tokenizer.encode(images)))))
    assert errors[1] < errors[0] / 4


def test_bad_codes_are_one_line_errors(tokenizer):
    with pytest.raises(ValueError, match=r"^codes: expected 64 codes per image \(8x8\), got shape \[1, 10\]$"):
        tokenizer.decode(torch.zeros(1, 10, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^codes: code 16 is out of range \[0, 16\)$"):
        tokenizer.decode(torch.full((64,), 16))
    with pytest.raises(ValueError, match="code -1 is out of range"):
        tokenizer.decode(torch.full((64,), -1))


def test_the_codes_file_round_trips(tokenizer, tiny_data, tmp_path):
    images = [Image.open(tiny_data / "images" / f"test_00000{k}.png") for k in range(2)]
    ids = tokenizer.encode(images)
    write_codes(tmp_path / "codes.jsonl", ["a/x.png", "b/x.png"], ids, tokenizer.grid)
    names, again = read_codes(tmp_path / "codes.jsonl", tokenizer)
    assert names == ["a/x.png", "b/x.png"] and torch.equal(again, ids)
    assert png_names(names) == ["x_0.png", "x_1.png"] and png_names(["a/y.png", "z"]) == ["y.png", "z.png"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"codes.jsonl:2: invalid JSON"),
        ('{"codes": "abc"}', r"codes.jsonl:2: 'codes' must be a list of integers"),
        ('{"codes": [1, 2.5]}', r"codes.jsonl:2: 'codes' must be a list of integers"),
        ('{"grid": [4, 4], "codes": [0]}', r"codes.jsonl:2: grid \[4, 4\] is not this tokenizer's \[8, 8\]"),
        ('{"codes": [0, 1]}', r"codes.jsonl:2: expected 64 codes per image"),
        ('{"codes": [99]}', r"codes.jsonl:2: expected 64 codes"),
        (json.dumps({"codes": [99] * 64}), r"codes.jsonl:2: code 99 is out of range \[0, 16\)"),
    ],
)
def test_a_bad_line_of_a_codes_file_is_named(tokenizer, tmp_path, line, message):
    path = tmp_path / "codes.jsonl"
    path.write_text(json.dumps({"image": "ok.png", "codes": [0] * 64}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=message):
        read_codes(path, tokenizer)


def test_missing_or_empty_codes_files(tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl: codes file not found"):
        read_codes(tmp_path / "nope.jsonl", tokenizer)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl: no codes in the file"):
        read_codes(tmp_path / "empty.jsonl", tokenizer)


def test_only_a_vq_checkpoint_loads(tiny_run, tiny_vq):
    with pytest.raises(ValueError, match=r"a 'vlm' checkpoint, not a VQ tokenizer"):
        load_vqvae(tiny_run["model"])
    model = load_vqvae(tiny_vq)
    assert isinstance(model, VQVAE) and not model.training
