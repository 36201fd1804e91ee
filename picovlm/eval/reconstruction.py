"""How well a VQ image tokenizer keeps the images it encodes, and how much of its codebook it uses.

    run_reconstruction("runs/vq/vq/model", data="data/demo/test.json", out="eval/vq.json")

encodes every distinct image of a dataset file (any format `load_samples` reads), decodes the
codes, and compares the two as 8-bit images (what a decoded PNG holds) at the tokenizer's size:

    mse          mean squared error per pixel and channel, pixels in [0, 1]
    psnr         10 log10(1 / mse) of that dataset-wide mse, in dB: the errors of all images pooled,
                 so the few badly kept images weigh in; psnr_p05 is the 5th percentile of the
                 images' own PSNRs (a perfectly kept image counts as PSNR_CAP)
    codes_used   share of the codebook that at least one code of the images is
    perplexity   exp(entropy) of the codes' frequencies: how many codes are used, counted as if
                 equally often (codebook_size at most)

and writes, as `picovlm eval` does, the results JSON, a markdown table and one line per image
(.predictions.jsonl) beside `out`, plus `.samples.png`: the first images above their reconstructions.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from picovlm.data.formats import load_samples
from picovlm.eval.harness import BATCH_SIZE, Evaluation, output_paths, write_outputs
from picovlm.vision.image import load_image
from picovlm.vq.tokenizer import ImageTokenizer, to_images

PSNR_CAP = 100.0  # dB: the PSNR of an image kept exactly (its own mse is 0)
SAMPLES = 8  # images shown in .samples.png


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error of pixels in [0, 1]."""
    return PSNR_CAP if mse <= 0 else min(PSNR_CAP, -10 * math.log10(mse))


def image_mse(a: list[Image.Image], b: list[Image.Image]) -> list[float]:
    """Each pair's mean squared error, pixels in [0, 1]."""
    return [
        float(((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2).mean()) / 255**2
        for x, y in zip(a, b, strict=True)
    ]


def codebook_usage(counts: torch.Tensor) -> dict[str, float]:
    """Share of the codes used and the perplexity of how often each is, from counts [codebook_size]."""
    p = counts.double() / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"codes_used": float((counts > 0).double().mean()), "perplexity": float(entropy.exp())}


def distinct_images(data: Path, images: Path | None = None, limit: int | None = None) -> list[Path]:
    """Every image of a dataset file once, in order of first use (the first `limit`)."""
    if not data.exists():
        raise FileNotFoundError(f"{data}: data file not found")
    samples = load_samples(data, on_error="raise", image_root=images)
    found = list(dict.fromkeys(p for s in samples for p in s.images))[:limit]
    if not found:
        raise ValueError(f"{data}: no images found")
    return found


def evaluate_reconstruction(
    tokenizer: ImageTokenizer, paths: list[Path], batch_size: int = BATCH_SIZE, progress: bool = True
) -> tuple[Evaluation, list[Image.Image]]:
    """The metrics of the module docstring over `paths`, one row per image, and the first SAMPLES
    originals above their reconstructions, as one image."""
    counts = torch.zeros(tokenizer.codebook_size, dtype=torch.long)
    rows: list[dict[str, Any]] = []
    shown: list[Image.Image] = []
    size, resized = (tokenizer.image_size,) * 2, 0
    for i in tqdm(range(0, len(paths), batch_size), desc="vq", disable=not progress):
        chunk = paths[i : i + batch_size]
        loaded = [load_image(p) for p in chunk]
        resized += sum(im.size != size for im in loaded)
        originals = to_images(tokenizer.pixels(loaded))  # the images at the tokenizer's size, 8 bits
        ids = tokenizer.encode(originals)
        again = tokenizer.decode(ids)
        counts += torch.bincount(ids.flatten(), minlength=tokenizer.codebook_size)
        for path, mse in zip(chunk, image_mse(originals, again), strict=True):
            rows.append({"image": str(path), "mse": mse, "psnr": psnr(mse)})
        shown += [im for pair in zip(originals, again, strict=True) for im in pair][: 2 * SAMPLES - len(shown)]
    mse = float(np.mean([r["mse"] for r in rows]))
    metrics = {
        "n": len(rows),
        "mse": mse,
        "psnr": psnr(mse),
        "psnr_p05": float(np.percentile([r["psnr"] for r in rows], 5)),
        **codebook_usage(counts),
        "codebook_size": tokenizer.codebook_size,
        "grid": "x".join(map(str, tokenizer.grid)),
    }
    if resized:
        metrics["notes"] = [f"{resized} of {len(rows)} images resized to {size[0]}x{size[1]} and compared at that size"]
    return Evaluation(metrics, rows, None), shown


def sample_sheet(pairs: list[Image.Image]) -> Image.Image:
    """Originals in the top row, their reconstructions below (`pairs`: original, reconstruction, ...)."""
    size = pairs[0].size[0]
    sheet = Image.new("RGB", (size * (len(pairs) // 2), 2 * size))
    for k, im in enumerate(pairs):
        sheet.paste(im, ((k // 2) * size, (k % 2) * size))
    return sheet


def run_reconstruction(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    images: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a `vq` checkpoint on the images of `data`; returns the results dict it writes to `out`."""
    paths = distinct_images(Path(data), Path(images) if images else None, limit)
    tokenizer = ImageTokenizer.load(model)
    evaluation, shown = evaluate_reconstruction(tokenizer, paths, batch_size, progress)
    files = {k: v for k, v in output_paths(Path(out)).items() if k != "official"}  # no official format
    samples = Path(f"{Path(out).with_suffix('')}.samples.png")
    notes = evaluation.metrics.pop("notes", [])
    results = {
        "task": "vq",
        "model": str(model),
        "data": str(data),
        "limit": limit,
        "metrics": evaluation.metrics,
        "notes": notes,
        "files": {**{k: str(v) for k, v in files.items()}, "samples": str(samples)},
    }
    write_outputs(files, results, evaluation)
    sample_sheet(shown).save(samples)
    return results
