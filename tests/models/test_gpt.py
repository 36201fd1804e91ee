"""Tests for the GPT language model: shapes, causality, GQA, KV cache, padding, HF Llama parity."""

import pytest
import torch

from picovlm.config import GPTConfig
from picovlm.interop.mapping import gpt_config_from_hf, gpt_from_hf, gpt_hf_config, gpt_to_hf
from picovlm.models.gpt import GPT, KVCache


def tiny_cfg(**kw) -> GPTConfig:
    base = dict(vocab_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, mlp_hidden=48, max_seq_len=32)
    return GPTConfig(**{**base, **kw})


def tiny_gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    model = GPT(tiny_cfg(**kw)).eval()
    with torch.no_grad():  # larger weights than the 0.02 init: logits differ clearly between tokens
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    return model


def ids_of(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_output_shape_and_gqa(n_kv_head):
    model = tiny_gpt(n_kv_head=n_kv_head)
    x = torch.randint(0, 64, (3, 7))
    assert model(x).shape == (3, 7, 64)
    assert model.blocks[0].attn.k_proj.out_features == n_kv_head * 8


def test_inputs_embeds_equal_ids():
    model = tiny_gpt()
    x = torch.randint(0, 64, (2, 5))
    torch.testing.assert_close(model(inputs_embeds=model.embed(x)), model(x))


def test_causal():
    model = tiny_gpt()
    x = torch.randint(0, 64, (1, 10))
    y = x.clone()
    y[0, 6] = (x[0, 6] + 1) % 64
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_tied_embeddings_share_the_tensor():
    model = tiny_gpt(tie_embeddings=True)
    assert model.lm_head.weight is model.tok_emb.weight
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(p.numel() for p in tiny_gpt(tie_embeddings=False).parameters()) - 64 * 32
    untied = tiny_gpt(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.tok_emb.weight


def test_kv_cache_matches_full_sequence():
    model = tiny_gpt()
    x = torch.randint(0, 64, (2, 12))
    full = model(x)
    cache = KVCache(model.cfg, batch_size=2, max_len=12)
    steps = [model(x[:, :5], kv_cache=cache)]  # prefill
    steps.append(model(x[:, 5:8], kv_cache=cache))  # a chunk of several tokens after a prefix
    for t in range(8, 12):
        steps.append(model(x[:, t : t + 1], kv_cache=cache))
    assert cache.pos == 12
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_kv_cache_overflow_raises():
    model = tiny_gpt()
    cache = KVCache(model.cfg, batch_size=1, max_len=4)
    model(torch.zeros(1, 4, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="KV cache full"):
        model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)


def test_left_padded_batch_matches_rows_alone():
    model = tiny_gpt()
    rows = [[5, 9, 3, 7, 1, 2, 8], [4, 4, 10], [11, 12, 13, 14, 15]]
    T = max(len(r) for r in rows)
    pad = 0
    ids = torch.full((3, T), pad, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, T - len(r) :] = torch.tensor(r)
        mask[i, T - len(r) :] = True
    batched = model(ids, key_padding_mask=mask)[:, -1]
    for i, r in enumerate(rows):
        alone = model(ids_of(r))[0, -1]
        torch.testing.assert_close(batched[i], alone, atol=1e-5, rtol=0)

    # and one cached decode step afterwards still agrees
    cache = KVCache(model.cfg, batch_size=3, max_len=T + 1)
    model(ids, key_padding_mask=mask, kv_cache=cache)
    nxt = torch.tensor([[20], [21], [22]])
    step = model(nxt, key_padding_mask=torch.cat([mask, torch.ones(3, 1, dtype=torch.bool)], 1), kv_cache=cache)
    for i, r in enumerate(rows):
        alone = model(ids_of(r + [20 + i]))[0, -1]
        torch.testing.assert_close(step[i, -1], alone, atol=1e-5, rtol=0)


def decode_steps(model: GPT, steps: int, padded: bool) -> torch.Tensor:
    """Logits of a prefill (left-padded, or two rows of one length without a mask, as the engine sends
    them) then `steps` greedy decode steps, [steps + 1, B, vocab]."""
    ids = torch.tensor([[0, 0, 5, 9, 3], [4, 4, 10, 11, 12]])
    mask = torch.tensor([[not padded] * 2 + [True] * 3, [True] * 5])
    cache = KVCache(model.cfg, batch_size=2, max_len=5 + steps + 3)  # spare columns the mask must hide
    out = [model(ids, key_padding_mask=mask if padded else None, kv_cache=cache)[:, -1]]
    for _ in range(steps):
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.bool)], 1)
        nxt = out[-1].argmax(-1, keepdim=True)
        out.append(model(nxt, key_padding_mask=mask if padded else None, kv_cache=cache)[:, -1])
    return torch.stack(out)


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_compiled_decode_steps_match_eager_ones(backend, padded):
    """The compiled step writes at a tensor column and attends over the cache's whole capacity under a
    mask; it must give the eager step's logits (and so its greedy tokens), left padding and GQA included.
    "eager" runs the traced graph as is (the step's logic), "inductor" what `--compile` runs."""
    model = tiny_gpt(qk_norm=True)
    with torch.inference_mode():
        expected = decode_steps(model, steps=6, padded=padded)
        model.compile_decode(backend=backend)
        got = decode_steps(model, steps=6, padded=padded)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_compiled_decode_still_refuses_a_full_cache():
    model = tiny_gpt()
    model.compile_decode(backend="eager")
    cache = KVCache(model.cfg, batch_size=1, max_len=4)
    with torch.inference_mode():
        model(torch.zeros(1, 4, dtype=torch.long), kv_cache=cache)
        with pytest.raises(ValueError, match="KV cache full"):
            model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)


def test_context_overflow_raises():
    model = tiny_gpt(max_seq_len=8)
    with pytest.raises(ValueError, match="9 tokens exceeds the context of 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    cache = KVCache(model.cfg, batch_size=1, max_len=16)
    model(torch.zeros(1, 6, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="exceeds the context of 8"):
        model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)


# --- HF Llama parity (the maps live in picovlm/interop/mapping.py) ----------------------------------


def hf_twin(model: GPT, model_cls):
    """An HF causal LM with `model`'s weights (norm weights randomized first, so a misplaced norm shows
    up), through the package's map (`picovlm.interop.mapping`), checking that every key maps."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    hf = model_cls(gpt_hf_config(model.cfg)).eval()
    missing, unexpected = hf.load_state_dict(gpt_to_hf(model.state_dict()), strict=False)
    assert missing == [] and unexpected == []
    # and back: the inverse map restores our keys exactly
    assert set(gpt_from_hf(hf.state_dict())) == set(model.state_dict())
    return hf


def assert_same_logits(model: GPT, hf) -> None:
    x = torch.randint(0, model.cfg.vocab_size, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(input_ids=x).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("tie", [False, True])
def test_matches_hf_llama(tie):
    from transformers import LlamaForCausalLM

    model = tiny_gpt(tie_embeddings=tie, n_head=4, n_kv_head=2, rope_theta=500.0, norm_eps=1e-6)
    hf = hf_twin(model, LlamaForCausalLM)
    assert gpt_config_from_hf(hf.config) == model.cfg
    if tie:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    assert_same_logits(model, hf)


def test_qk_norm_matches_hf_qwen3():
    """qk_norm=True is the Qwen3 layout: RMSNorm per head on queries and keys, before RoPE."""
    from transformers import Qwen3ForCausalLM

    model = tiny_gpt(n_head=4, n_kv_head=2, qk_norm=True, norm_eps=1e-6)
    hf = hf_twin(model, Qwen3ForCausalLM)
    assert gpt_config_from_hf(hf.config) == model.cfg
    assert_same_logits(model, hf)


def test_segments_make_each_turn_equal_to_the_prefix_plus_that_turn_alone():
    """Packed turns (segment 0 shared, positions restarting after it) give each turn the logits it
    would get as the only turn after the prefix, and an earlier turn cannot change a later one."""
    model = tiny_gpt()
    prefix, turn1, turn2 = [5, 9, 3], [7, 1, 2], [8, 4, 10, 11]
    ids = ids_of(prefix + turn1 + turn2)
    segments = ids_of([0] * 3 + [1] * 3 + [2] * 4)
    positions = ids_of([0, 1, 2] + [3, 4, 5] + [3, 4, 5, 6])
    packed = model(ids, position_ids=positions, segment_ids=segments)[0]
    torch.testing.assert_close(packed[3:6], model(ids_of(prefix + turn1))[0, 3:], atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[6:], model(ids_of(prefix + turn2))[0, 3:], atol=1e-5, rtol=0)
    other = model(ids_of(prefix + [13, 14, 15] + turn2), position_ids=positions, segment_ids=segments)[0]
    torch.testing.assert_close(other[6:], packed[6:], atol=1e-6, rtol=0)
    assert not torch.allclose(model(ids)[0, 6:], packed[6:])  # without segments turn 2 sees turn 1


def test_segments_refuse_a_kv_cache():
    model = tiny_gpt()
    cache = KVCache(model.cfg, batch_size=1, max_len=8)
    with pytest.raises(ValueError, match="segment_ids"):
        model(ids_of([1, 2]), segment_ids=ids_of([0, 1]), kv_cache=cache)
