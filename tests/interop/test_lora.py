"""LoRA via peft: which parameters learn, adapters saved apart, resumed, merged; QLoRA's CPU message."""

import pytest
import torch

from picovlm.config import GPTConfig, VisionConfig, ViTConfig, VLMConfig
from picovlm.interop.lora import add_lora, load_lora, lora_targets, merge_lora, save_lora, trainable_parameters
from picovlm.models.vlm import VLM


def tiny_vlm(**vlm_kw) -> VLM:
    torch.manual_seed(0)
    vit = ViTConfig(image_size=16, patch_size=4, n_embd=32, n_layer=1, n_head=4)
    lm = GPTConfig(vocab_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, mlp_hidden=48, max_seq_len=64)
    return VLM(VLMConfig(vision=VisionConfig(vit=vit), projector="mlp2x_gelu", lm=lm, **vlm_kw), image_token_id=2)


def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 64, (2, 24), generator=g)
    ids[:, 1:17] = 2
    return ids, torch.randn(2, 3, 16, 16, generator=g)


def train_steps(model, n=3):
    ids, pixels = batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(n):
        model(ids, pixels, labels=ids).backward()
        opt.step()
        opt.zero_grad()


def logits(model):
    ids, pixels = batch()
    with torch.no_grad():
        return model.eval()(ids, pixels)


def test_adapters_on_lm_linears_only_projector_fully_trained():
    model = tiny_vlm()
    base = logits(model)
    targets = lora_targets(model.lm)
    assert "lm_head" not in targets and "blocks.0.attn.q_proj" in targets and "blocks.1.mlp.down_proj" in targets
    add_lora(model, r=4)
    torch.testing.assert_close(logits(model), base)  # B starts at zero: the model is unchanged
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("projector.") for n in trainable)
    assert {n for n in trainable if n.startswith("projector.")} == {
        f"projector.{n}" for n, _ in model.projector.named_parameters()
    }
    n_train, n_total = trainable_parameters(model)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    layers = [model.lm.get_submodule(t).base_layer for t in targets]
    assert len(layers) == 2 * 7 and lora == sum(4 * (m.in_features + m.out_features) for m in layers)  # r x (in + out)
    assert n_train == lora + sum(p.numel() for p in model.projector.parameters()) < n_total


def test_save_resume_merge(tmp_path):
    model = add_lora(tiny_vlm(), r=4)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    train_steps(model.train())
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    trained = logits(model)
    save_lora(model, tmp_path / "adapter")
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapter" / "adapter.safetensors")
    assert saved and all("lora_" in k or k.startswith("projector.") for k in saved)

    resumed = load_lora(tiny_vlm(), tmp_path / "adapter")  # same base (seeded), adapters from disk
    torch.testing.assert_close(logits(resumed), trained)
    train_steps(resumed.train(), 1)  # training goes on from there
    assert not torch.allclose(logits(resumed), trained)

    merged = merge_lora(load_lora(tiny_vlm(), tmp_path / "adapter"))
    assert not any("lora_" in n or "base_layer" in n for n, _ in merged.named_parameters())
    assert set(merged.state_dict()) == set(tiny_vlm().state_dict())  # loads as a plain checkpoint
    torch.testing.assert_close(logits(merged), trained, atol=1e-5, rtol=0)


def test_qlora_on_cpu_says_so_in_one_line():
    if torch.cuda.is_available():
        pytest.fail("this test is about CPU-only machines")
    with pytest.raises(
        ValueError, match=r"^QLoRA \(4bit\) needs bitsandbytes on a CUDA GPU, and this machine has none"
    ):
        add_lora(tiny_vlm(), quantize="4bit")
    with pytest.raises(ValueError, match="not our GPT"):
        add_lora(tiny_vlm(), gradient_checkpointing=True)


def test_hf_lm_with_gradient_checkpointing(tmp_path, write_hf_lm):
    from picovlm.models.hf_lm import hf_lm_tokenizer

    folder, _ = write_hf_lm(tmp_path / "llama", "llama")
    tok = hf_lm_tokenizer(folder)
    model = tiny_vlm(lm_kind="hf", lm_hf_path=str(folder))
    model.lm.cfg.vocab_size = tok.vocab_size
    add_lora(model, r=4, gradient_checkpointing=True)
    assert model.lm.model.is_gradient_checkpointing
    ids, pixels = batch()
    model.train()(ids, pixels, labels=ids).backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
