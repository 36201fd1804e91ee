"""Tests for the GPT language model: shapes, causality, GQA, KV cache, padding, HF Llama parity."""

import pytest
import torch

from picovlm.config import GPTConfig
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


def test_context_overflow_raises():
    model = tiny_gpt(max_seq_len=8)
    with pytest.raises(ValueError, match="9 tokens exceeds the context of 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    cache = KVCache(model.cfg, batch_size=1, max_len=16)
    model(torch.zeros(1, 6, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="exceeds the context of 8"):
        model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)


# --- HF Llama parity -------------------------------------------------------------------------------


def to_hf_llama_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename our GPT keys to HF LlamaForCausalLM keys (weights are used as they are)."""
    rename = {
        "attn_norm.": "input_layernorm.",
        "attn.": "self_attn.",
        "mlp_norm.": "post_attention_layernorm.",
    }
    out = {}
    for key, value in sd.items():
        if key.startswith("blocks."):
            _, i, rest = key.split(".", 2)
            for old, new in rename.items():
                if rest.startswith(old):
                    rest = new + rest[len(old) :]
                    break
            key = f"model.layers.{i}.{rest}"
        elif key.startswith(("norm.", "tok_emb.")):
            key = "model." + key.replace("tok_emb.", "embed_tokens.")
        out[key] = value
    return out


def hf_twin(model: GPT, config_cls, model_cls, **extra):
    """An HF causal LM with `model`'s weights (norm weights randomized first, so a misplaced norm shows
    up), checking that every key maps."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    c = model.cfg
    hf_cfg = config_cls(
        hidden_size=c.n_embd,
        intermediate_size=c.mlp_hidden,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        num_key_value_heads=c.n_kv_head,
        rms_norm_eps=c.norm_eps,
        rope_theta=c.rope_theta,
        max_position_embeddings=c.max_seq_len,
        vocab_size=c.vocab_size,
        tie_word_embeddings=c.tie_embeddings,
        attention_bias=False,
        **extra,
    )
    hf = model_cls(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(to_hf_llama_state_dict(model.state_dict()), strict=False)
    assert missing == [] and unexpected == []
    return hf


def assert_same_logits(model: GPT, hf) -> None:
    x = torch.randint(0, model.cfg.vocab_size, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(input_ids=x).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("tie", [False, True])
def test_matches_hf_llama(tie):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = tiny_gpt(tie_embeddings=tie, n_head=4, n_kv_head=2, rope_theta=500.0, norm_eps=1e-6)
    hf = hf_twin(model, LlamaConfig, LlamaForCausalLM, mlp_bias=False, hidden_act="silu")
    if tie:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    assert_same_logits(model, hf)


def test_qk_norm_matches_hf_qwen3():
    """qk_norm=True is the Qwen3 layout: RMSNorm per head on queries and keys, before RoPE."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    model = tiny_gpt(n_head=4, n_kv_head=2, qk_norm=True, norm_eps=1e-6)
    assert_same_logits(
        model, hf_twin(model, Qwen3Config, Qwen3ForCausalLM, head_dim=model.cfg.n_embd // model.cfg.n_head)
    )
