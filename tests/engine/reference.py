"""The reference the engine is tested against: greedy decoding of one prompt without a KV cache.

Every step runs the model over the whole sequence so far: no cache, no padding, no batch mates, so
nothing the engine does to be fast (prefill once, right-aligned rows joining and leaving, masks) is
in it. Slow, and plainly right.
"""

import torch

from picovlm.models.vlm import VLM


@torch.no_grad()
def decode_without_cache(
    model: VLM, ids: list[int], pixels: torch.Tensor | None, max_tokens: int, stop_ids: tuple[int, ...] = ()
) -> list[int]:
    """Greedy tokens after `ids` (its images in `pixels`): up to `max_tokens`, or through a stop id."""
    device = next(model.parameters()).device
    sequence = torch.tensor([ids], device=device)
    tokens: list[int] = []
    while len(tokens) < max_tokens and not (tokens and tokens[-1] in stop_ids):
        logits = model(sequence, pixels)[0, -1]
        logits[model.image_token_id] = float("-inf")  # as the engine: images are inputs only
        tokens.append(int(logits.argmax()))
        sequence = torch.cat([sequence, torch.tensor([[tokens[-1]]], device=device)], dim=1)
    return tokens
