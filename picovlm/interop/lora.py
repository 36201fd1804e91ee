"""LoRA (and QLoRA) on the VLM's language model through `peft`, with the projector fully trained.

    add_lora(model, r=8)           low-rank adapters on every linear layer of the LM except the LM head
    save_lora(model, dir)          the adapters (+ projector) alone: kilobytes, apart from the base
    load_lora(model, dir)          the same adapters on a fresh base: evaluation, or resuming training
    merge_lora(model)              fold the adapters into the base weights: a plain model again
    merged_state_dict(model)       the merged weights under plain names, leaving the model as it is

`new_tokens` (ids) also trains those rows of the embedding table (peft's trainable tokens; with tied
embeddings the output rows too): the special tokens picovlm adds to a pretrained LM (`<|image|>`,
`<|user|>`, `<|end|>`, ...) start as an average word, and a frozen table would leave them there. Only
those rows learn and are saved with the adapters.

Why "all linear layers but the head": adapting attention only (the original LoRA) leaves the MLPs,
most of the LM's parameters, untouched; the head is tied to the embeddings in many LMs and is where
new tokens (`<|image|>`) would need full rows, not a low-rank update. The tower stays frozen.

QLoRA keeps the frozen base in 4-bit (or 8-bit) through `bitsandbytes`, which needs a CUDA GPU:
on a CPU-only machine `add_lora(..., quantize="4bit")` stops with one line saying so.
Gradient checkpointing (`gradient_checkpointing=True`) applies to HF LMs; with a frozen embedding
table it also needs the input embeddings to require grad, or no gradient flows through the
recomputed blocks: `enable_input_require_grads` does that.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from picovlm.checkpoint import read_tensors

ADAPTER_FILE, ADAPTER_CONFIG = "adapter.safetensors", "adapter_config.json"
ADAPTER_MARKS = ("lora_", "trainable_tokens_")  # in the names of the parameters that peft adds


def is_adapter_param(name: str) -> bool:
    return any(mark in name for mark in ADAPTER_MARKS)


def lora_targets(lm: nn.Module) -> list[str]:
    """Names of the LM's linear layers (nn.Linear, or GPT-2's Conv1D), the output head excluded."""
    head = lm.model.get_output_embeddings() if hasattr(lm, "model") else getattr(lm, "lm_head", None)
    names = []
    for name, module in lm.named_modules():
        is_linear = isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
        if is_linear and module is not head:
            names.append(name)
    if not names:
        raise ValueError("the language model has no linear layers to put LoRA adapters on")
    return names


def _quantize_check(quantize: str | None) -> None:
    if quantize is None:
        return
    if quantize not in ("4bit", "8bit"):
        raise ValueError(f"unknown quantize {quantize!r}: '4bit' or '8bit'")
    if not torch.cuda.is_available():
        raise ValueError(f"QLoRA ({quantize}) needs bitsandbytes on a CUDA GPU, and this machine has none; use LoRA")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ValueError("QLoRA needs bitsandbytes: pip install 'picovlm[lora]'") from None


def _quantize_lm(lm: nn.Module, quantize: str, targets: list[str]) -> None:
    """Replace each target linear layer by its bitsandbytes 4/8-bit twin (frozen base weights)."""
    import bitsandbytes as bnb

    for name in targets:
        parent, _, leaf = name.rpartition(".")
        owner = lm.get_submodule(parent) if parent else lm
        old = getattr(owner, leaf)
        if quantize == "4bit":
            new = bnb.nn.Linear4bit(old.in_features, old.out_features, bias=old.bias is not None, quant_type="nf4")
            new.weight = bnb.nn.Params4bit(old.weight.data, requires_grad=False, quant_type="nf4")
        else:
            new = bnb.nn.Linear8bitLt(
                old.in_features, old.out_features, bias=old.bias is not None, has_fp16_weights=False
            )
            new.weight = bnb.nn.Int8Params(old.weight.data, requires_grad=False, has_fp16_weights=False)
        if old.bias is not None:
            new.bias = old.bias
        setattr(owner, leaf, new.to(old.weight.device if old.weight.device.type == "cuda" else "cuda"))


def add_lora(
    model: nn.Module,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    targets: list[str] | None = None,
    quantize: str | None = None,
    gradient_checkpointing: bool = False,
    new_tokens: list[int] | None = None,
) -> nn.Module:
    """Put LoRA adapters on `model.lm` in place; afterwards only adapters and projector require grad.
    `new_tokens`: embedding rows (token ids) that learn as well."""
    from peft import LoraConfig, inject_adapter_in_model

    _quantize_check(quantize)
    if r < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {r}")
    targets = targets or lora_targets(model.lm)
    if quantize:
        _quantize_lm(model.lm, quantize, targets)
    new_tokens = sorted(int(i) for i in new_tokens or [])
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, trainable_token_indices=new_tokens or None
    )
    model.lm = inject_adapter_in_model(config, model.lm)
    model.lora_config = {"r": r, "alpha": alpha, "dropout": dropout, "targets": targets, "new_tokens": new_tokens}
    for name, p in model.named_parameters():
        p.requires_grad = is_adapter_param(name) or name.startswith("projector.")
    if gradient_checkpointing:
        hf = getattr(model.lm, "model", None)
        if hf is None or not hasattr(hf, "gradient_checkpointing_enable"):
            raise ValueError("gradient checkpointing is available for HF LMs (lm kind 'hf'), not our GPT")
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        hf.enable_input_require_grads()
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (a 4-bit weight counts as its stored elements)."""
    ps = list(model.parameters())
    return sum(p.numel() for p in ps if p.requires_grad), sum(p.numel() for p in ps)


def save_lora(model: nn.Module, folder: str | Path) -> Path:
    """Write the adapters and the projector (what a LoRA stage changed) apart from the base."""
    if not hasattr(model, "lora_config"):
        raise ValueError("the model has no LoRA adapters (call add_lora first)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if _is_adapted(k)}
    save_file(state, folder / ADAPTER_FILE)
    (folder / ADAPTER_CONFIG).write_text(json.dumps(model.lora_config, indent=2) + "\n")
    return folder


def _is_adapted(key: str) -> bool:
    return is_adapter_param(key) or key.startswith("projector.")


def load_lora(model: nn.Module, folder: str | Path) -> nn.Module:
    """Add the saved adapters to a fresh base `model` and load them (and the projector)."""
    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"{folder}: no {ADAPTER_CONFIG}; not a LoRA adapter folder")
    cfg = json.loads((folder / ADAPTER_CONFIG).read_text())
    add_lora(model, cfg["r"], cfg["alpha"], cfg["dropout"], cfg["targets"], new_tokens=cfg.get("new_tokens"))
    state = read_tensors(folder / ADAPTER_FILE)
    expected = {k for k in model.state_dict() if _is_adapted(k)}
    if set(state) != expected:
        odd = sorted(set(state) ^ expected)
        raise ValueError(f"{folder}: adapters do not fit this model ({len(odd)} keys differ, e.g. {odd[0]})")
    model.load_state_dict(state, strict=False)
    return model


def _merge_into_base(lm: nn.Module) -> None:
    """Fold every adapter of `lm` into its base layer and put the base layer back in its place."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import TrainableTokensWrapper

    for name, module in list(lm.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            base = module.get_base_layer()
        elif isinstance(module, TrainableTokensWrapper):
            module.token_adapter.merge()
            base = module.token_adapter.base_layer
        else:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(lm.get_submodule(parent) if parent else lm, leaf, base)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer and drop the LoRA wrappers: plain parameter names again."""
    _merge_into_base(model.lm)
    del model.lora_config
    for p in model.parameters():
        p.requires_grad = True
    return model


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What `merge_lora(model).state_dict()` would be, computed on a copy of the LM so that training
    goes on with the adapters apart (a LoRA stage checkpoints this: a plain model anyone can load).
    Tensors shared in the model (a tied head) stay shared, so a checkpoint stores them once."""
    import copy

    lm = copy.deepcopy(model.lm)
    _merge_into_base(lm)
    state = {k: v for k, v in model.state_dict(keep_vars=True).items() if not k.startswith("lm.")}
    state.update({f"lm.{k}": v for k, v in lm.state_dict(keep_vars=True).items()})
    return state
