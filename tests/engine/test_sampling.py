"""Next-token sampling: greedy, temperature, top-k, top-p, and the checks on SamplingParams."""

import pytest
import torch

from picovlm.engine.sampling import SamplingParams, sample_next


def logits_batch() -> torch.Tensor:
    return torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 3


def test_greedy_is_argmax():
    logits = logits_batch()
    assert torch.equal(sample_next(logits, SamplingParams(temperature=0.0), None), logits.argmax(-1))


def test_top_k_1_and_tiny_top_p_are_argmax():
    logits = logits_batch()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert torch.equal(sample_next(logits, SamplingParams(temperature=5.0, top_k=1), g), logits.argmax(-1))
        assert torch.equal(sample_next(logits, SamplingParams(temperature=5.0, top_p=1e-6), g), logits.argmax(-1))
        # the smallest float there is (the fuzz test sent it), which is 0 in float32: still the argmax
        assert torch.equal(sample_next(logits, SamplingParams(top_p=5e-324, temperature=1.0), g), logits.argmax(-1))
        for tiny in (5e-324, 1e-40, 1e-30):  # a temperature that small is greedy, not NaN
            assert torch.equal(sample_next(logits * 1e6, SamplingParams(temperature=tiny), g), logits.argmax(-1))


def test_top_k_never_samples_outside_the_top_k():
    logits = logits_batch()
    top3 = logits.topk(3, dim=-1).indices
    g = torch.Generator().manual_seed(0)
    seen = [set() for _ in range(4)]
    for _ in range(200):
        for row, t in enumerate(sample_next(logits, SamplingParams(temperature=10.0, top_k=3), g).tolist()):
            assert t in top3[row].tolist()
            seen[row].add(t)
    assert all(len(s) == 3 for s in seen)  # at a high temperature all three do come up


def test_top_p_keeps_the_smallest_covering_set():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(probs.log(), SamplingParams(temperature=1.0, top_p=0.75), g)) for _ in range(200)}
    assert draws == {0, 1}  # 0.5 < 0.75, 0.5 + 0.3 >= 0.75


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.7, 0.2, 0.1])
    g = torch.Generator().manual_seed(0)
    draws = sample_next(probs.log().expand(4000, 3), SamplingParams(temperature=1.0), g)
    torch.testing.assert_close(torch.bincount(draws, minlength=3) / 4000, probs, atol=0.03, rtol=0)
    hot = sample_next(probs.log().expand(4000, 3), SamplingParams(temperature=100.0), g)  # ~uniform
    torch.testing.assert_close(torch.bincount(hot, minlength=3) / 4000, torch.full((3,), 1 / 3), atol=0.03, rtol=0)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(max_tokens=0), "max_tokens must be >= 1"),
        (dict(temperature=-0.1), "temperature must be a finite number >= 0"),
        (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
        (dict(temperature=float("inf")), "temperature must be a finite number >= 0"),
        (dict(top_p=float("nan")), r"top_p must be in \(0, 1\]"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=-1), "top_k must be >= 0"),
    ],
)
def test_sampling_params_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)
