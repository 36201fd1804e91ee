"""The VQ tokenizer's report: PSNR/MSE of 8-bit reconstructions and codebook use, written as `picovlm eval` does."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from picovlm.eval.reconstruction import codebook_usage, distinct_images, image_mse, psnr, run_reconstruction
from tests.vq.helpers import train_tiny_vq


@pytest.fixture(scope="module")
def tiny_vq(tiny_data, tmp_path_factory):
    return train_tiny_vq(tiny_data, tmp_path_factory.mktemp("vq"))


def test_psnr_and_mse_of_8_bit_images():
    black, grey = Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4), (51, 51, 51))  # 51 = 0.2 * 255
    assert image_mse([black, grey], [black, black]) == [0.0, pytest.approx(0.04)]
    assert psnr(0.04) == pytest.approx(10 * math.log10(25)) and psnr(0.0) == 100.0


def test_codebook_usage():
    assert codebook_usage(torch.tensor([5, 5, 5, 5])) == {"codes_used": 1.0, "perplexity": pytest.approx(4.0)}
    assert codebook_usage(torch.tensor([7, 0, 0, 0])) == {"codes_used": 0.25, "perplexity": pytest.approx(1.0)}
    two = codebook_usage(torch.tensor([1, 3, 0, 0]))
    assert two["codes_used"] == 0.5 and 1 < two["perplexity"] < 2


def test_the_report_on_a_test_split(tiny_vq, tiny_data, tmp_path):
    out = tmp_path / "eval" / "vq.json"
    results = run_reconstruction(tiny_vq, tiny_data / "test.json", out, batch_size=5, progress=False)
    m = results["metrics"]
    assert results["task"] == "vq" and json.loads(out.read_text())["metrics"] == m
    assert m["n"] == 16 and m["grid"] == "8x8" and m["codebook_size"] == 16  # the 16 test images, each once
    rows = [json.loads(line) for line in (tmp_path / "eval" / "vq.predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and m["mse"] == pytest.approx(np.mean([r["mse"] for r in rows]))
    assert m["psnr"] == pytest.approx(psnr(m["mse"])) and m["psnr_p05"] <= max(r["psnr"] for r in rows)
    assert 0 < m["codes_used"] <= 1 and 1 <= m["perplexity"] <= 16
    assert "| vq | value |" in (tmp_path / "eval" / "vq.md").read_text()
    assert Image.open(tmp_path / "eval" / "vq.samples.png").size == (8 * 32, 2 * 32)  # 8 originals over their copies
    assert results["notes"] == []


def test_images_of_another_size_are_noted(tiny_vq, tiny_data, tmp_path):
    big = tmp_path / "big.png"
    Image.open(tiny_data / "images" / "test_000000.png").resize((48, 48)).save(big)
    (tmp_path / "one.jsonl").write_text(json.dumps({"image": "big.png", "text": "a circle"}) + "\n")
    results = run_reconstruction(tiny_vq, tmp_path / "one.jsonl", tmp_path / "vq.json", progress=False)
    assert results["metrics"]["n"] == 1
    assert results["notes"] == ["1 of 1 images resized to 32x32 and compared at that size"]


def test_a_file_without_images_is_an_error(tmp_path):
    (tmp_path / "t.jsonl").write_text("")
    with pytest.raises(ValueError, match="no images found"):
        distinct_images(tmp_path / "t.jsonl")
