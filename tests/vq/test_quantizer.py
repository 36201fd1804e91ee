"""The codebook: lookup shapes, straight-through gradients, EMA updates, seeding and dead-code restarts."""

import pytest
import torch

from picovlm.vq.quantizer import VectorQuantizer, kmeans_plus_plus


def as_grid(vectors: torch.Tensor) -> torch.Tensor:
    """[N, D] vectors as encoder output [1, D, 1, N]."""
    return vectors.T[None, :, None, :]


def trained(quantizer: VectorQuantizer, codebook: torch.Tensor) -> VectorQuantizer:
    """`quantizer` in training mode, past its seeding, with `codebook` each code at a fair share of use."""
    k = len(codebook)
    quantizer.codebook.copy_(codebook)
    quantizer.usage.fill_(1 / k)
    quantizer.vector_sum.copy_(codebook / k)
    return quantizer.train()


def test_shapes_and_nearest_codes():
    q = VectorQuantizer(codebook_size=8, dim=3).eval()
    z = torch.randn(2, 3, 4, 5)
    out, ids, commitment = q(z)
    assert out.shape == z.shape and ids.shape == (2, 4, 5) and ids.dtype == torch.long and commitment.ndim == 0
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    expected = torch.cdist(flat, q.codebook).argmin(1).view(2, 4, 5)
    assert torch.equal(ids, expected) and torch.equal(q.nearest(z), expected)
    assert torch.allclose(out, q.lookup(ids))  # the forward value is the codes themselves
    assert commitment == pytest.approx(float(((z - q.lookup(ids)) ** 2).mean()), rel=1e-5)


def test_straight_through_gradient_and_commitment():
    """The gradient of the output reaches z unchanged (as if quantization were the identity); the
    commitment loss pulls z towards its code."""
    q = VectorQuantizer(codebook_size=4, dim=2).eval()
    z = torch.randn(1, 2, 3, 3, requires_grad=True)
    out, ids, commitment = q(z)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)
    z.grad = None
    q(z)[2].backward()
    assert torch.allclose(z.grad, 2 * (z - q.lookup(ids)).detach() / z.numel())


def test_ema_moves_each_code_towards_the_mean_of_its_vectors():
    q = trained(VectorQuantizer(codebook_size=2, dim=1, decay=0.9), torch.tensor([[0.0], [10.0]]))
    batch = as_grid(torch.tensor([[1.0], [2.0], [3.0], [8.0]]))  # three nearest to code 0, one to code 1
    usage = 0.9 * 0.5 + 0.1 * torch.tensor([3 / 4, 1 / 4])
    vector_sum = 0.9 * torch.tensor([0.0, 10.0]) / 2 + 0.1 * torch.tensor([6.0, 8.0]) / 4
    q(batch)
    assert torch.allclose(q.usage, usage) and torch.allclose(q.codebook[:, 0], vector_sum / usage)
    for _ in range(200):
        q(batch)
    assert torch.allclose(q.codebook[:, 0], torch.tensor([2.0, 8.0]), atol=1e-3)  # the two cluster means


def test_eval_mode_changes_nothing():
    q = trained(VectorQuantizer(codebook_size=4, dim=2), torch.randn(4, 2)).eval()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q(torch.randn(2, 2, 3, 3))
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())


def test_the_first_training_step_seeds_the_codebook_with_batch_vectors():
    q = VectorQuantizer(codebook_size=6, dim=2).train()
    vectors = torch.randn(40, 2)
    q(as_grid(vectors))
    assert (q.codebook[:, None] == vectors[None]).all(-1).any(1).all()  # every code is a vector of the batch
    assert len({tuple(c) for c in q.codebook.tolist()}) == 6  # k-means++ picks distinct ones
    assert torch.allclose(q.usage, torch.full((6,), q.dead_below / 6))


def test_a_dead_code_restarts_where_the_codebook_fits_worst():
    """Code 2 is nearest to nothing: it is restarted onto the one vector that codes 0 and 1 fit badly,
    not onto the plentiful vectors they fit exactly."""
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [50.0, 50.0]])
    q = trained(VectorQuantizer(codebook_size=3, dim=2, decay=0.5, dead_below=0.5), codebook)
    q.usage[2] = 0.0
    vectors = torch.tensor([[0.0, 0.0]] * 10 + [[1.0, 0.0]] * 10 + [[5.0, 5.0]])
    q(as_grid(vectors))
    assert torch.equal(q.codebook[2], torch.tensor([5.0, 5.0]))
    assert q.usage[2] == pytest.approx(0.5 / 3)
    assert torch.allclose(q.codebook[:2], codebook[:2], atol=0.5)  # the live codes only took their EMA step


def test_kmeans_plus_plus_picks_every_distinct_row_before_repeating():
    x = torch.tensor([[0.0], [0.0], [3.0], [7.0]])
    picks = kmeans_plus_plus(x, 3, torch.ones(4))
    assert sorted(picks[:, 0].tolist()) == [0.0, 3.0, 7.0]
    assert len(kmeans_plus_plus(x, 5, torch.ones(4))) == 5  # more picks than distinct rows: repeats, no error


def test_bad_sizes_are_errors():
    with pytest.raises(ValueError, match="at least 2 codes"):
        VectorQuantizer(codebook_size=1, dim=4)
