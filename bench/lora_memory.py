"""Trainable parameters and peak memory of one training step: full fine-tuning vs LoRA vs QLoRA.

    python bench/lora_memory.py            # each mode in a fresh subprocess (peak RSS is per process)
    python bench/lora_memory.py --demo     # the same on the `make demo` model (4 x 128 GPT, batch 16 x 112)

The default model: our ViT (4 layers, 128 wide) + mlp2x_gelu + a Llama-layout GPT (8 layers, 512 wide,
~30M parameters), batch 8 x 256 tokens, AdamW. Ends with one JSON line.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import torch


def run(mode: str, demo: bool) -> dict:
    import dataclasses

    from picovlm.config import GPTConfig, VisionConfig, ViTConfig, VLMConfig
    from picovlm.interop.lora import add_lora, trainable_parameters
    from picovlm.models.vlm import VLM
    from picovlm.presets import demo_recipe

    torch.manual_seed(0)
    torch.set_num_threads(1)
    if demo:
        cfg = demo_recipe().model
        cfg = dataclasses.replace(cfg, lm=dataclasses.replace(cfg.lm, vocab_size=512))
        batch, seq = 16, 112
    else:
        lm = GPTConfig(vocab_size=8192, n_layer=8, n_head=8, n_kv_head=8, n_embd=512, mlp_hidden=1536, max_seq_len=256)
        cfg = VLMConfig(vision=VisionConfig(vit=ViTConfig()), projector="mlp2x_gelu", lm=lm)
        batch, seq = 8, 256
    model = VLM(cfg, image_token_id=2)
    if mode == "full":
        for p in model.tower.parameters():
            p.requires_grad = False
    else:
        try:
            add_lora(model, r=8, quantize="4bit" if mode == "qlora" else None)
        except ValueError as e:
            return {"mode": mode, "error": str(e)}
    trainable, total = trainable_parameters(model)
    ids = torch.randint(3, cfg.lm.vocab_size, (batch, seq))
    ids[:, 1 : 1 + model.tokens_per_image] = 2
    pixels = torch.randn(batch, 3, 64, 64)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    t0 = time.perf_counter()
    for _ in range(2):
        model(ids, pixels, labels=ids).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "mode": mode,
        "trainable": trainable,
        "total": total,
        "peak_rss_mb": round(peak),
        "s_per_step": round((time.perf_counter() - t0) / 2, 2),
    }


if __name__ == "__main__":
    demo = "--demo" in sys.argv
    modes = [a for a in sys.argv[1:] if a != "--demo"]
    if modes:
        print(json.dumps(run(modes[0], demo)))
    else:
        rows = [
            json.loads(
                subprocess.run(
                    [sys.executable, __file__, m, *(["--demo"] * demo)], capture_output=True, text=True, check=True
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            for m in ("full", "lora", "qlora")
        ]
        for r in rows:
            print(r)
        print(json.dumps({"lora_memory": rows}))
