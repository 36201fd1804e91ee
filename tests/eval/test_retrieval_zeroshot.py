import numpy as np
import pytest
import torch

from picovlm.eval.retrieval import retrieval_metrics
from picovlm.eval.zeroshot import class_embeddings, topk_accuracy


def test_retrieval_worked_example():
    # 3 images, 6 texts; texts 2k and 2k+1 describe image k
    sim = np.array(
        [
            [0.9, 0.4, 0.8, 0.2, 0.0, 0.0],  # image 0: its text 0 ranks 1st
            [0.5, 0.1, 0.2, 0.3, 0.6, 0.0],  # image 1: texts 2, 3 rank 4th and 3rd -> rank 3
            [0.0, 0.0, 0.0, 0.0, 0.1, 0.7],  # image 2: its text 5 ranks 1st
        ]
    )
    m = retrieval_metrics(sim, [0, 0, 1, 1, 2, 2])
    assert m["i2t_R@1"] == pytest.approx(2 / 3) and m["i2t_R@5"] == 1.0
    assert m["i2t_mean_rank"] == pytest.approx(5 / 3) and m["i2t_median_rank"] == 1.0
    # text -> image ranks (by column): 1, 1, 2, 1, 2, 1
    assert m["t2i_R@1"] == pytest.approx(4 / 6) and m["t2i_R@5"] == 1.0
    assert m["t2i_mean_rank"] == pytest.approx(8 / 6) and m["t2i_median_rank"] == 1.0


def test_retrieval_ties_are_not_a_free_win():
    m = retrieval_metrics(np.zeros((4, 4)), [0, 1, 2, 3])
    assert m["t2i_R@1"] == 0.25 and m["i2t_R@1"] == 0.25


def test_topk_accuracy():
    scores = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5], [1.0, 1.0, 1.0]])
    m = topk_accuracy(scores, [1, 2, 0, 2], ks=(1, 2))
    assert m["top1"] == 0.25  # only row 0; the tie in row 3 goes to class 0
    assert m["top2"] == 0.5  # row 1 (2nd) too; row 2's class 0 is 3rd


def test_class_embeddings_average_templates():
    vecs = {
        "a cat.": [1.0, 0.0],
        "a photo of a cat.": [0.0, 1.0],
        "a dog.": [1.0, 0.0],
        "a photo of a dog.": [1.0, 0.0],
    }

    def encode(texts):
        return torch.tensor([vecs[t] for t in texts])

    emb = class_embeddings(encode, ["cat", "dog"], ("a {}.", "a photo of a {}."))
    assert torch.allclose(emb, torch.tensor([[0.5**0.5, 0.5**0.5], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="template"):
        class_embeddings(encode, ["cat"], ("no placeholder",))
