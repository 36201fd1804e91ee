"""Zero-shot classification with a CLIP-style model: each class name is put into several prompt
templates, the template embeddings are averaged (and renormalized) into one class embedding, and an
image's class is the one whose embedding is most similar (the recipe of the CLIP paper).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# Phrasings close to the captions picovlm's CLIP stage learns from; pass others for other data
# (CLIP's ImageNet set starts with "a photo of a {}.").
TEMPLATES = ("A picture of a {}.", "There is a {}.", "a {}.", "A small {}.", "A large {}.")


def class_embeddings(
    encode_texts: Callable[[list[str]], torch.Tensor], classes: list[str], templates: tuple[str, ...] = TEMPLATES
) -> torch.Tensor:
    """[n_classes, D] unit vectors: the mean of each class's template embeddings, renormalized."""
    if not templates or any("{}" not in t for t in templates):
        raise ValueError("every prompt template needs a {} for the class name")
    rows = []
    for name in classes:
        emb = encode_texts([t.format(name) for t in templates])
        rows.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)


def topk_accuracy(scores: np.ndarray, labels: list[int] | np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[str, Any]:
    """{"top1", "top5", ...} fractions: is the true class among the k best-scoring? scores [N, C]."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores {scores.shape} do not match {labels.shape[0]} labels")
    if len(labels) == 0:
        raise ValueError("no images to score")
    order = np.argsort(-scores, axis=1, kind="stable")  # ties go to the lower class index, as argmax does
    rank = 1 + np.argmax(order == labels[:, None], axis=1)
    return {f"top{k}": float((rank <= k).mean()) for k in ks} | {"n": int(len(labels)), "n_classes": scores.shape[1]}
