"""Continuous batching: sequences join and leave a running batch between decode steps.

`generate_tokens` decodes a fixed set of prompts from start to end. A server cannot wait for a fixed
set: requests arrive while others are half done. `DecodeBatch` keeps one KV cache for whatever
sequences are running and lets the caller `add` new ones and `remove` finished or abandoned ones
between steps, so every step is one forward pass for all of them.

The layout is the one `generate_tokens` uses, kept up to date as rows come and go: every row is
right-aligned so that all rows write their next token at the same cache position, and a key-padding
mask hides the empty columns on the left. Positions count real tokens only (see
`picovlm.models.gpt.default_positions`), so a row decodes exactly as it would alone:

    cache columns:  0 1 2 3 4 5 6
    row a (long)    x x x x x x .     <- all rows write here next
    row b (short)   - - - x x x .
    row c (joined)  - - - - x x .

Adding a row longer than the window shifts the others right; removing the longest row lets the
window shrink from the left, so attention only ever spans the longest running sequence.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import torch

from picovlm.engine.sampling import SamplingParams, sample_next
from picovlm.models.gpt import KVCache
from picovlm.models.vlm import VLM


@dataclass
class Sequence:
    """One prompt to continue: token ids (image placeholders expanded), its images, how to sample."""

    key: Hashable
    ids: list[int]
    pixels: torch.Tensor | None  # [n_images, 3, H, W], or None for text only
    params: SamplingParams
    ignore_stop: bool = False  # decode exactly params.max_tokens tokens (benchmarks)
    generated: int = 0
    generator: torch.Generator | None = field(default=None, repr=False)


@dataclass
class Step:
    """The token a sequence got this step; `finished` is "stop" (a stop id) or "length" or None."""

    key: Hashable
    token: int
    finished: str | None


class DecodeBatch:
    """The running sequences of one model and their shared, right-aligned KV cache."""

    def __init__(self, model: VLM, stop_ids: tuple[int, ...], pad_id: int):
        self.model, self.pad_id = model, pad_id
        self.stop_ids = set(stop_ids)
        self.device = next(model.parameters()).device
        self.dtype = next(model.lm.parameters()).dtype
        self.capacity = model.cfg.lm.max_seq_len
        self.rows: list[Sequence] = []
        self.cache: KVCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.bool, device=self.device)  # [rows, window]
        self.logits = torch.zeros(0, model.cfg.lm.vocab_size, device=self.device)  # next-token logits per row

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def window(self) -> int:
        return self.mask.shape[1]

    @torch.inference_mode()
    def add(self, seqs: list[Sequence]) -> None:
        """Prefill `seqs` together (left-padded) and merge them into the running batch."""
        if not seqs:
            return
        for s in seqs:
            if len(s.ids) + s.params.max_tokens > self.capacity:
                raise ValueError(f"{len(s.ids)} prompt + {s.params.max_tokens} new tokens exceed {self.capacity}")
            if s.params.seed is not None:
                s.generator = torch.Generator(device=self.device).manual_seed(s.params.seed)
        longest = max(len(s.ids) for s in seqs)
        ids = torch.full((len(seqs), longest), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(seqs), longest, dtype=torch.bool, device=self.device)
        for row, s in enumerate(seqs):
            ids[row, longest - len(s.ids) :] = torch.tensor(s.ids, device=self.device)
            mask[row, longest - len(s.ids) :] = True
        pixels = [s.pixels for s in seqs if s.pixels is not None and s.pixels.shape[0] > 0]
        pixels = torch.cat(pixels).to(self.device, self.dtype) if pixels else None
        cache = KVCache(self.model.cfg.lm, len(seqs), longest, self.device, self.dtype)
        padded = bool((~mask).any())
        logits = self.model(ids, pixels, key_padding_mask=mask if padded else None, kv_cache=cache)[:, -1]
        self._merge(cache, mask, logits.float())
        self.rows += seqs

    def _merge(self, new: KVCache, new_mask: torch.Tensor, new_logits: torch.Tensor) -> None:
        """Append the rows of `new` to the running cache, right-aligning both to the wider window."""
        old_w, new_w = self.window, new_mask.shape[1]
        width = max(old_w, new_w)
        n_old, n_new = len(self.rows), new_mask.shape[0]
        cache = KVCache(self.model.cfg.lm, n_old + n_new, self.capacity, self.device, self.dtype)
        mask = torch.zeros(n_old + n_new, width, dtype=torch.bool, device=self.device)
        if n_old:
            cache.k[:, :n_old, :, width - old_w : width] = self.cache.k[:, :, :, :old_w]
            cache.v[:, :n_old, :, width - old_w : width] = self.cache.v[:, :, :, :old_w]
            mask[:n_old, width - old_w :] = self.mask
        cache.k[:, n_old:, :, width - new_w : width] = new.k[:, :, :, :new_w]
        cache.v[:, n_old:, :, width - new_w : width] = new.v[:, :, :, :new_w]
        mask[n_old:, width - new_w :] = new_mask
        cache.pos = width
        self.cache, self.mask = cache, mask
        self.logits = torch.cat([self.logits, new_logits])

    def remove(self, keys: set[Hashable]) -> None:
        """Drop these sequences (finished, or their client went away) and shrink the window."""
        keep = [i for i, s in enumerate(self.rows) if s.key not in keys]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache, self.mask = None, self.mask[:0, :0]
            self.logits = self.logits[:0]
            return
        index = torch.tensor(keep, device=self.device)
        mask = self.mask[index]
        # columns that are padding in every remaining row hold nothing: cut them from the left
        trim = int((~mask).all(dim=0).long().cumprod(dim=0).sum())
        width = mask.shape[1] - trim
        cache = KVCache(self.model.cfg.lm, len(keep), self.capacity, self.device, self.dtype)
        cache.k[:, :, :, :width] = self.cache.k[:, index, :, trim : trim + width]
        cache.v[:, :, :, :width] = self.cache.v[:, index, :, trim : trim + width]
        cache.pos = width
        self.cache, self.mask, self.logits = cache, mask[:, trim:], self.logits[index]

    @torch.inference_mode()
    def step(self) -> list[Step]:
        """Sample one token for every row, drop the rows that finished, feed the rest one step."""
        logits = self.logits
        logits[:, self.model.image_token_id] = float("-inf")  # images are inputs only
        out: list[Step] = []
        for row, s in enumerate(self.rows):
            token = int(sample_next(logits[row : row + 1], s.params, s.generator)[0])
            s.generated += 1
            finished = None
            if token in self.stop_ids and not s.ignore_stop:
                finished = "stop"
            elif s.generated >= s.params.max_tokens:
                finished = "length"
            out.append(Step(s.key, token, finished))
        self.remove({o.key for o in out if o.finished})
        if self.rows:
            alive = {o.key: o.token for o in out if not o.finished}
            nxt = torch.tensor([[alive[s.key]] for s in self.rows], dtype=torch.long, device=self.device)
            self.mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=torch.bool, device=self.device)], 1)
            if self.window > self.capacity:
                raise RuntimeError("decode window outgrew the context (a row exceeded its token budget)")
            self.logits = self.model(nxt, key_padding_mask=self.mask, kv_cache=self.cache)[:, -1].float()
        return out
