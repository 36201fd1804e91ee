"""Image-text retrieval metrics (the COCO/Flickr "Karpathy test" protocol): every image has
several captions; image-to-text ranks all captions for each image, text-to-image ranks all images
for each caption.

For image-to-text the rank of an image is that of its best-ranked caption (as CLIP and ALBEF
report it); ranks are 1-based, and ties
go to the lower index. Recall@K is the fraction of queries whose rank is <= K.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _summary(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    out = {f"{prefix}_R@{k}": float((ranks <= k).mean()) for k in (1, 5, 10)}
    out[f"{prefix}_mean_rank"] = float(ranks.mean())
    out[f"{prefix}_median_rank"] = float(np.median(ranks))
    return out


def retrieval_metrics(similarity: np.ndarray, image_of_text: list[int] | np.ndarray) -> dict[str, Any]:
    """similarity: [n_images, n_texts] scores (higher = more alike); image_of_text[t] is the image
    caption t describes. Returns i2t_R@1/5/10, i2t_mean_rank, i2t_median_rank, the same for t2i,
    and rsum (the sum of the six recalls, in percent, as papers report it)."""
    sim = np.asarray(similarity, dtype=np.float64)
    owner = np.asarray(image_of_text)
    n_images, n_texts = sim.shape
    if owner.shape != (n_texts,):
        raise ValueError(f"image_of_text has {owner.shape[0]} entries for {n_texts} texts")
    if owner.min(initial=0) < 0 or owner.max(initial=0) >= n_images:
        raise ValueError("image_of_text holds an index outside the images")
    # Ranks from a stable sort: ties go to the lower index, as argmax/topk break them, so a model
    # that scores everything alike gets chance-level numbers rather than perfect ones.
    t2i_order = np.argsort(-sim, axis=0, kind="stable")  # [n_images, n_texts]: images best-first per text
    t2i = 1 + np.argmax(t2i_order == owner[None, :], axis=0)
    i2t_order = np.argsort(-sim, axis=1, kind="stable")  # texts best-first per image
    is_mine = owner[i2t_order] == np.arange(n_images)[:, None]
    if not is_mine.any(axis=1).all():
        raise ValueError(f"image {int(np.argmin(is_mine.any(axis=1)))} has no caption")
    i2t = 1 + np.argmax(is_mine, axis=1)
    out: dict[str, Any] = {**_summary(i2t, "i2t"), **_summary(t2i, "t2i")}
    out["rsum"] = 100 * sum(v for k, v in out.items() if "_R@" in k)
    out["n_images"], out["n_texts"] = n_images, n_texts
    return out
