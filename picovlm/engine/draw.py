"""Drawing with a native model: a caption in, an image out, through the one engine (`DecodeBatch`).

The prompt ends with <|image_start|>; the model's `decode_hook` (native/constraint.py) then lets the
sampler pick image codes only, exactly the grid's number of them, and forces <|image_end|>. The codes
go back through the frozen VQ decoder to pixels.

Classifier-free guidance (`guidance` > 0): every prompt runs beside its unconditional twin (the
caption dropped, as a share of the training prompts was), and both rows sample from
`uncond + (1 + guidance) * (cond - uncond)`, so they stay the same sequence.

`draw_codes_recomputed` is the reference without a KV cache (the whole sequence through the model at
every step): the same tokens, for bench/draw.py and the tests to compare against.
"""

from __future__ import annotations

import dataclasses

import torch
from PIL import Image

from picovlm.engine.batch import DecodeBatch, Sequence, placeholder_mask
from picovlm.engine.sampling import SamplingParams, sample_next
from picovlm.native.constraint import ImageSpans
from picovlm.native.model import NativeModel
from picovlm.native.processor import NativeProcessor
from picovlm.text.tokenizer import Tokenizer


class Guided:
    """The image-span constraint, then guidance: the rows are [conditional..., unconditional...], the
    i-th of each half the same drawing, and all of them live until the image ends (no row leaves early,
    so the halves stay aligned)."""

    def __init__(self, spans: ImageSpans, scale: float):
        self.spans, self.scale = spans, scale

    def constrain(self, histories: list[list[int]], logits: torch.Tensor) -> torch.Tensor:
        logits = self.spans.constrain(histories, logits)
        half = logits.shape[0] // 2
        cond, uncond = logits[:half], logits[half:]
        mixed = torch.where(cond.isfinite(), uncond + (1 + self.scale) * (cond - uncond), cond)
        return torch.cat([mixed, mixed])

    def span_index(self, histories: list[list[int]]) -> torch.Tensor:
        return self.spans.span_index(histories)


def drawing_params(model: NativeModel, params: SamplingParams | None) -> SamplingParams:
    """`params` with room for exactly one image (its codes and <|image_end|>), always seeded (default 0)
    so that guided twins draw alike and a drawing is repeatable."""
    params = params or SamplingParams()
    seed = 0 if params.seed is None else params.seed
    return dataclasses.replace(params, max_tokens=model.vocab.tokens_per_image + 1, stop=(), seed=seed)


def draw_codes(
    model: NativeModel,
    tokenizer: Tokenizer,
    prompts: list[str],
    params: SamplingParams | None = None,
    guidance: float = 0.0,
) -> torch.Tensor:
    """The code ids [len(prompts), tokens_per_image] the model draws for each caption (batched)."""
    processor, params = NativeProcessor(tokenizer, model), drawing_params(model, params)
    texts = prompts + ([""] * len(prompts) if guidance else [])
    seqs = [Sequence(i, processor.draw_prompt(t), None, params, ignore_stop=True) for i, t in enumerate(texts)]
    engine = DecodeBatch(model, tokenizer, Guided(model.decode_hook, guidance) if guidance else None)
    engine.add(seqs)
    tokens: dict[int, list[int]] = {i: [] for i in range(len(texts))}
    while len(engine):
        for step in engine.step():
            if step.error is not None:
                raise step.error
            tokens[step.key].append(step.token)
    return torch.stack([image_codes(model, tokens[i]) for i in range(len(prompts))])


def image_codes(model: NativeModel, tokens: list[int]) -> torch.Tensor:
    """The codes of a drawn span (`tokens`: its codes, then <|image_end|>)."""
    n = model.vocab.tokens_per_image
    if len(tokens) != n + 1 or tokens[n] != model.vocab.image_end:
        raise RuntimeError(f"a drawing must be {n} codes and <|image_end|>, got {len(tokens)} tokens")
    return model.vocab.codes_of(tokens[:n])


def draw(
    model: NativeModel,
    tokenizer: Tokenizer,
    prompts: list[str],
    params: SamplingParams | None = None,
    guidance: float = 0.0,
) -> list[Image.Image]:
    """One image per caption, decoded by the model's frozen VQ decoder."""
    return model.image_tokenizer.decode(draw_codes(model, tokenizer, prompts, params, guidance))


@torch.inference_mode()
def draw_codes_recomputed(
    model: NativeModel, tokenizer: Tokenizer, prompt: str, params: SamplingParams | None = None
) -> torch.Tensor:
    """The codes of one drawing with no KV cache: every step runs the whole sequence so far (the
    baseline the cache is measured against); same constraint, same sampling, same tokens."""
    params = drawing_params(model, params)
    ids = NativeProcessor(tokenizer, model).draw_prompt(prompt)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(params.seed)
    generated: list[int] = []
    placeholders = placeholder_mask(model, device)
    for _ in range(params.max_tokens):
        logits = model(torch.tensor([ids + generated], device=device))[:, -1].float()
        logits.masked_fill_(placeholders, float("-inf"))
        logits = model.decode_hook.constrain([ids + generated], logits)
        generated.append(int(sample_next(logits, params, generator)[0]))
    return image_codes(model, generated)
