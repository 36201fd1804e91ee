"""Dynamic int8 quantization for CPU inference: Linear weights stored as int8, activations quantized per call.

A decode step on a CPU reads every weight once per token, so it is bound by memory bandwidth; int8
weights are a quarter of fp32's bytes. `torch.ao.quantization.quantize_dynamic` does this for the
`nn.Linear` layers of the language model and the projector; the vision tower stays fp32 (it runs once
per image, in prefill, where the time is matmul arithmetic rather than weight reads). A tied LM head
shares its weight with the embedding, so it stays fp32 too. Torch marks this eager-mode API deprecated
in favour of torchao, which is not a dependency here; the warning is silenced, not the behaviour.
"""

from __future__ import annotations

import warnings

import torch

from picovlm.models.vlm import VLM

QUANTIZE_CHOICES = ("int8",)


def quantize_model(model: VLM, mode: str) -> VLM:
    """`model` with its LM's and projector's Linear layers in dynamic int8 (in place, returned)."""
    if mode not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize {mode!r}: choose one of {', '.join(QUANTIZE_CHOICES)}")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("quantize int8 is dynamic CPU quantization: load the model on the CPU")
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("lm", "projector"):  # a native model has no projector
            part = getattr(model, name, None)
            if part is None:
                continue
            skip = {"lm_head"} if name == "lm" and getattr(part.cfg, "tie_embeddings", False) else set()
            spec = {n for n, m in part.named_modules() if isinstance(m, torch.nn.Linear) and n not in skip}
            setattr(model, name, torch.ao.quantization.quantize_dynamic(part, spec, dtype=torch.qint8))
    return model
