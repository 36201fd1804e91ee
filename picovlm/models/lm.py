"""The language-model registry: `VLMConfig.lm_kind` picks which LM a VLM is built around.

  gpt  our GPT (`picovlm.models.gpt`), configured by `VLMConfig.lm`
  hf   any HF `AutoModelForCausalLM` in the local folder `VLMConfig.lm_hf_path` (`picovlm.models.hf_lm`)

Both expose the same interface (embed, forward with inputs_embeds / key padding / KV cache /
position_ids / segment_ids, cfg), so the VLM, the engine, the training stages, the evaluation and the
server do not know which one runs (an HF LM refuses segment_ids, isolated turns, in one line).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from picovlm.config import VLMConfig
from picovlm.models.gpt import GPT


def _build_gpt(cfg: VLMConfig) -> nn.Module:
    return GPT(cfg.lm)


def _build_hf(cfg: VLMConfig) -> nn.Module:
    from picovlm.models.hf_lm import HFCausalLM

    if not cfg.lm_hf_path:
        raise ValueError("lm kind 'hf' needs lm_hf_path: a local folder with an HF causal LM")
    return HFCausalLM(cfg.lm_hf_path, cfg.lm.vocab_size, cfg.lm.max_seq_len)


LMS: dict[str, Callable[[VLMConfig], nn.Module]] = {"gpt": _build_gpt, "hf": _build_hf}


def build_lm(cfg: VLMConfig) -> nn.Module:
    if cfg.lm_kind not in LMS:
        raise ValueError(f"unknown lm kind {cfg.lm_kind!r}; known: {', '.join(LMS)}")
    return LMS[cfg.lm_kind](cfg)
