"""`picovlm vq train | eval | encode | decode` on the tiny data, and their one-line errors."""

import dataclasses
import json

import pytest
from PIL import Image

from picovlm.cli import main
from picovlm.presets import VQ_RECIPES


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_train_eval_encode_decode(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["vq", "train", "--preset", "tiny", "--data", str(tiny_data), "--out", str(run)]) == 0
    model = run / "vq" / "model"
    assert f"vq: {model}" in capsys.readouterr().out and (model / "vq.safetensors").is_file()
    assert main(["vq", "train", "--preset", "tiny", "--data", str(tiny_data), "--out", str(run), "--resume"]) == 0

    out = tmp_path / "vq.json"
    args = ["vq", "eval", "--model", str(model), "--data", str(tiny_data / "test.json"), "--out", str(out)]
    assert main([*args, "--limit", "5"]) == 0
    printed = capsys.readouterr().out
    assert last_json(printed) == json.loads(out.read_text())["metrics"] and last_json(printed)["n"] == 5
    assert "| psnr |" in printed and "| codes_used |" in printed

    images = [str(tiny_data / "images" / f"test_00000{k}.png") for k in range(3)]
    codes = tmp_path / "codes.jsonl"
    assert main(["vq", "encode", "--model", str(model), *images, "--out", str(codes)]) == 0
    assert "wrote the codes of 3 images (8x8 each)" in capsys.readouterr().out
    lines = [json.loads(line) for line in codes.read_text().splitlines()]
    assert [r["image"] for r in lines] == images and all(len(r["codes"]) == 64 and r["grid"] == [8, 8] for r in lines)
    assert main(["vq", "encode", "--model", str(model), images[0]]) == 0  # no --out: the lines are printed
    assert last_json(capsys.readouterr().out) == lines[0]

    decoded = tmp_path / "decoded"
    assert main(["vq", "decode", "--model", str(model), str(codes), "--out", str(decoded)]) == 0
    assert f"wrote 3 images to {decoded}" in capsys.readouterr().out
    assert sorted(p.name for p in decoded.iterdir()) == ["test_000000.png", "test_000001.png", "test_000002.png"]
    assert Image.open(decoded / "test_000001.png").size == (32, 32)


def test_dump_config_is_a_vq_recipe(capsys):
    assert main(["vq", "train", "--preset", "demo", "--dump-config"]) == 0
    recipe = json.loads(capsys.readouterr().out)
    assert recipe["stages"][0]["task"] == "vq" and recipe["vq"] == dataclasses.asdict(VQ_RECIPES["demo"]("x").vq)


@pytest.fixture(scope="module")
def model(tiny_vq):
    return str(tiny_vq)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["encode", "--model", "{model}", "{tmp}/missing.png"], "missing.png: image file not found"),
        (["encode", "--model", "{tmp}", "{tmp}/bad.png"], "bad.png: not a readable image"),
        (["encode", "--model", "{tmp}", "{image}"], "not a picovlm checkpoint (no config.json)"),
        (["decode", "--model", "{model}", "{tmp}/none.jsonl", "--out", "{tmp}/d"], "none.jsonl: codes file not found"),
        (["decode", "--model", "{model}", "{tmp}/bad.jsonl", "--out", "{tmp}/d"], "bad.jsonl:1: code 77 is out of"),
        (["eval", "--model", "{model}", "--data", "{tmp}/none.json"], "none.json: data file not found"),
        (["eval", "--model", "{vlm}", "--data", "{test}"], "a 'vlm' checkpoint, not a VQ tokenizer"),
        (["train", "--preset", "tiny", "--data", "{tmp}/nodata", "--out", "{tmp}/r"], "nodata: data folder not found"),
    ],
)
def test_bad_input_is_one_error_line(model, tiny_run, tiny_data, tmp_path, capsys, args, message):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"codes": [77] * 64}) + "\n")
    values = {
        "model": model,
        "tmp": str(tmp_path),
        "image": str(tiny_data / "images" / "test_000000.png"),
        "vlm": str(tiny_run["model"]),
        "test": str(tiny_data / "test.json"),
    }
    assert main(["vq", *(a.format(**values) for a in args)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("picovlm: error: ") and message in err and len(err.strip().splitlines()) == 1, err
