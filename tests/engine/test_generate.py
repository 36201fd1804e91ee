"""Tests for generation (KV cache vs recompute, batching, stops, seeds) and next-token sampling."""

import pytest
import torch

from picovlm.engine.generate import generate_tokens
from picovlm.engine.sampling import SamplingParams, sample_next
from picovlm.models.vlm import VLM

PAD, IMG, END = 1, 2, 5


def image_prompt(model: VLM, text: list[int], n_images: int = 1) -> list[int]:
    return [0, 3] + [IMG] * (model.tokens_per_image * n_images) + text + [4]


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def run(model, prompts, pixels, params, stop_ids=(), use_cache=True) -> list[list[int | None]]:
    """Rows of generated tokens (None after a row stopped)."""
    steps = list(generate_tokens(model, prompts, pixels, params, stop_ids, PAD, use_cache=use_cache))
    return [list(row) for row in zip(*steps, strict=True)]


def greedy(n: int = 8) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0)


def test_kv_cache_equals_recompute(model):
    prompt = image_prompt(model, [10, 11, 12])
    cached = run(model, [prompt], images(1), greedy(10))
    recomputed = run(model, [prompt], images(1), greedy(10), use_cache=False)
    assert cached == recomputed
    assert len(cached[0]) == 10 and len(set(cached[0])) > 1  # not a degenerate constant output


def test_batched_equals_alone(model):
    prompts = [image_prompt(model, [10, 11]), [0, 3, 20, 21, 22, 23, 24, 25, 4], image_prompt(model, [30], 2)]
    pix = images(3)
    alone = [
        run(model, [prompts[0]], pix[:1], greedy())[0],
        run(model, [prompts[1]], None, greedy())[0],
        run(model, [prompts[2]], pix[1:], greedy())[0],
    ]
    assert len({tuple(a) for a in alone}) == 3  # the rows really differ
    assert run(model, prompts, pix, greedy()) == alone
    assert run(model, prompts, pix, greedy(), use_cache=False) == alone


def test_stop_ids_end_a_row(model):
    prompts = [image_prompt(model, [10, 11]), image_prompt(model, [40, 41, 42])]
    ref = run(model, prompts, images(2), greedy(10))
    stop = next(t for t in ref[0][2:] if t not in ref[1])  # ends row 0 early, never row 1
    unused = next(t for t in range(6, 64) if t not in ref[0] + ref[1] and t != IMG)
    cut = ref[0].index(stop) + 1
    assert cut < 10
    out = run(model, prompts, images(2), greedy(10), stop_ids=(unused, stop))
    assert out[0] == ref[0][:cut] + [None] * (10 - cut)  # the stop token is yielded once, then None
    assert out[1] == ref[1]
    # when every row has stopped, generation ends early
    assert run(model, [prompts[0]], images(1), greedy(10), stop_ids=(stop,)) == [ref[0][:cut]]


@pytest.mark.parametrize("n", [1, 3])
def test_max_tokens(model, n):
    out = run(model, [image_prompt(model, [10]), [0, 3, 4]], images(1), greedy(n))
    assert [len(row) for row in out] == [n, n]


def test_never_emits_the_image_token(model):
    with torch.no_grad():
        saved = model.lm.lm_head.weight[IMG].clone()
        model.lm.lm_head.weight[IMG] = model.lm.lm_head.weight[7] * 50  # would win every argmax
    try:
        out = run(model, [image_prompt(model, [10])], images(1), greedy(4))
        sampled = run(model, [[0, 3, 4]], None, SamplingParams(max_tokens=4, temperature=1.0, seed=0))
    finally:
        with torch.no_grad():
            model.lm.lm_head.weight[IMG] = saved
    assert IMG not in out[0] and IMG not in sampled[0]


def test_seeds(model):
    def sample(seed):
        params = SamplingParams(max_tokens=8, temperature=1.0, seed=seed)
        return run(model, [image_prompt(model, [10])], images(1), params)

    assert sample(0) == sample(0)
    assert sample(0) != sample(1)


# --- sample_next -----------------------------------------------------------------------------------


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
        (dict(temperature=-0.1), "temperature must be >= 0"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=-1), "top_k must be >= 0"),
    ],
)
def test_sampling_params_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)
