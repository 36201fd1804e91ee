"""Autoregressive generation with a KV cache: prefill the prompt once, then one token per step.

Several prompts of different lengths decode together: they are left-padded so every row writes
its next token at the same cache position, and a key-padding mask hides the pads (positions count
real tokens only, so a padded prompt decodes exactly as it would alone).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from picovlm.engine.sampling import SamplingParams, sample_next
from picovlm.models.gpt import KVCache
from picovlm.models.vlm import VLM


@torch.inference_mode()
def generate_tokens(
    model: VLM,
    prompts: list[list[int]],
    pixels: torch.Tensor | None,
    params: SamplingParams,
    stop_ids: tuple[int, ...],
    pad_id: int,
    use_cache: bool = True,
) -> Iterator[list[int | None]]:
    """Yield, at each step, the new token of every row (None for rows that have stopped).

    pixels holds the images of all prompts, in prompt order. A row stops at a stop id (which is
    yielded) or after `params.max_tokens` tokens. With use_cache=False every step recomputes the
    whole sequence: slow, but the reference the cached path is tested against.
    """
    device = next(model.parameters()).device
    B, longest = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, longest), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(B, longest, dtype=torch.bool, device=device)
    for row, p in enumerate(prompts):
        ids[row, longest - len(p) :] = torch.tensor(p, device=device)
        mask[row, longest - len(p) :] = True
    padded = bool((~mask).any())
    gen = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
    cache = KVCache(model.cfg.lm, B, longest + params.max_tokens, device, next(model.lm.parameters()).dtype)
    cache = cache if use_cache else None
    done = torch.zeros(B, dtype=torch.bool, device=device)
    stops = torch.tensor(stop_ids, dtype=torch.long, device=device)

    logits = model(ids, pixels, key_padding_mask=mask if padded else None, kv_cache=cache)[:, -1]
    full_ids = ids
    for step in range(params.max_tokens):
        logits[:, model.image_token_id] = float("-inf")  # images are inputs only: fed back, one would crash
        nxt = sample_next(logits, params, gen)
        yield [None if d else int(t) for t, d in zip(nxt.tolist(), done.tolist(), strict=True)]
        done |= torch.isin(nxt, stops)
        if bool(done.all()) or step + 1 == params.max_tokens:
            return
        mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)
        full_ids = torch.cat([full_ids, nxt[:, None]], dim=1)
        kpm = mask if padded else None
        if cache is not None:
            logits = model(nxt[:, None], key_padding_mask=kpm, kv_cache=cache)[:, -1]
        else:
            logits = model(full_ids, pixels, key_padding_mask=kpm)[:, -1]
