"""The decoding engine: sequences join and leave a running batch between decode steps.

Everything that generates goes through `DecodeBatch`. `Pipeline.generate` and `Pipeline.stream` (and
with them the CLI and the eval harness) add their prompts at once and step until every row has
ended; the server's scheduler adds requests as they arrive and removes those whose client went away.
Either way every step is one forward pass for all running sequences.

Every row is right-aligned so that all rows write their next token at the same cache position, and
a key-padding mask hides the empty columns on the left. Positions count real tokens only (see
`picovlm.models.gpt.default_positions`), so a row decodes exactly as it would alone:

    cache columns:  0 1 2 3 4 5 6
    row a (long)    x x x x x x .     <- all rows write here next
    row b (short)   - - - x x x .
    row c (joined)  - - - - x x .

Prompts added together are prefilled together, left-padded to the longest. Adding a row longer than
the window shifts the others right; removing the longest row lets the window shrink from the left,
so attention only ever spans the longest running sequence.

A row ends at a stop id of the tokenizer or a stop string ("stop"), or after `max_tokens` tokens
("length"), and leaves the batch in that same step. Its text comes from its own `TextStream`, and
when it samples, it draws from its own generator (seeded by its `SamplingParams.seed`): what a
request gets never depends on which other requests share its batch. Nor does whether it fails: a row
whose draw or text raises (a NaN in its logits or its parameters, a bug) ends in that step with
"error" and the exception, and only that row; the others get their tokens from the same step.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from picovlm.engine.sampling import SamplingParams, sample_next
from picovlm.models.gpt import KVCache
from picovlm.models.vlm import VLM
from picovlm.text.stream import TextStream
from picovlm.text.tokenizer import Tokenizer


def placeholder_mask(model: VLM, device: torch.device) -> torch.Tensor:
    """bool [vocab]: the model's input placeholders (<|image|>, ...), which are never sampled. Built
    once: a list index would become a new index tensor and an index_put at every step."""
    mask = torch.zeros(model.cfg.lm.vocab_size, dtype=torch.bool, device=device)
    mask[model.placeholder_ids] = True
    return mask


class DecodeHook(Protocol):
    """Constrains a model's next-token logits from each row's tokens so far, and gives the extra input
    of each step's forward (native/constraint.py's `ImageSpans` is one)."""

    def constrain(self, histories: list[list[int]], logits: torch.Tensor) -> torch.Tensor: ...

    def span_index(self, histories: list[list[int]]) -> torch.Tensor: ...


@dataclass
class Sequence:
    """One prompt to continue: token ids (placeholders expanded), its images (and other inputs), how to sample."""

    key: Hashable
    ids: list[int]
    pixels: torch.Tensor | None  # [n_images, 3, H, W], or None for text only
    params: SamplingParams
    ignore_stop: bool = False  # stop ids do not end it: exactly params.max_tokens tokens (benchmarks)
    media: dict[str, torch.Tensor] = field(default_factory=dict)  # videos, audio: `VLM.forward(**media)`
    # set by DecodeBatch.add
    tokens: list[int] = field(default_factory=list, init=False)  # tokens sampled so far (what a decode hook reads)
    generator: torch.Generator | None = field(default=None, init=False, repr=False)
    text: TextStream | None = field(default=None, init=False, repr=False)

    @property
    def generated(self) -> int:
        """How many tokens were sampled so far."""
        return len(self.tokens)


@dataclass
class Step:
    """What a sequence got in one step: its new token, the text that is now safe to show, and on its
    last step why it ended: "stop" (a stop id, which is not text, or a stop string), "length", or
    "error" (its draw or its text raised `error`; `token` is None if no token was drawn)."""

    key: Hashable
    token: int | None
    text: str
    finished: str | None
    error: Exception | None = None


class DecodeBatch:
    """The running sequences of one model and their shared, right-aligned KV cache."""

    def __init__(self, model: VLM, tokenizer: Tokenizer, hook: DecodeHook | None = None):
        """`hook`: what constrains each step's logits (default: the model's `decode_hook`, if it has one:
        a native model's image spans)."""
        self.model, self.tokenizer = model, tokenizer
        self.hook = hook if hook is not None else getattr(model, "decode_hook", None)
        self.stop_ids = set(tokenizer.stop_ids)
        self.device = next(model.parameters()).device
        self.dtype = next(model.lm.parameters()).dtype  # of the KV cache
        tower = getattr(model, "tower", None)  # a native model has none: its images are tokens
        self.pixel_dtype = next(tower.parameters()).dtype if tower is not None else self.dtype
        self.capacity = model.cfg.lm.max_seq_len
        self.rows: list[Sequence] = []
        self.cache: KVCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.bool, device=self.device)  # [rows, window], True = a real token
        self.padded = False  # whether any row has padding in the window (else no mask is needed)
        self.logits = torch.zeros(0, model.cfg.lm.vocab_size, device=self.device)  # next-token logits per row
        self.placeholders = placeholder_mask(model, self.device)

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
        for s in seqs:
            s.tokens, s.text = [], TextStream(self.tokenizer, s.params.stop)
            if s.params.seed is not None:
                s.generator = torch.Generator(device=self.device).manual_seed(s.params.seed)
        longest = max(len(s.ids) for s in seqs)
        ids = torch.full((len(seqs), longest), self.tokenizer.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(seqs), longest, dtype=torch.bool, device=self.device)
        for row, s in enumerate(seqs):
            ids[row, longest - len(s.ids) :] = torch.tensor(s.ids, device=self.device)
            mask[row, longest - len(s.ids) :] = True
        pixels = [s.pixels for s in seqs if s.pixels is not None and s.pixels.shape[0] > 0]
        pixels = torch.cat(pixels).to(self.device, self.pixel_dtype) if pixels else None
        names = dict.fromkeys(name for s in seqs for name in s.media)  # each modality's items, row by row
        media = {name: torch.cat([s.media[name] for s in seqs if name in s.media]).to(self.device) for name in names}
        cache = KVCache(self.model.cfg.lm, len(seqs), longest, self.device, self.dtype)
        padded = any(len(s.ids) < longest for s in seqs)
        mask_arg = mask if padded else None
        logits = self.model(ids, pixels, key_padding_mask=mask_arg, kv_cache=cache, last_only=True, **media)[:, -1]
        self._merge(seqs, cache, mask, logits.float())

    def _merge(self, seqs: list[Sequence], new: KVCache, new_mask: torch.Tensor, new_logits: torch.Tensor) -> None:
        """Append the rows of `new` to the running cache, right-aligning both to the wider window."""
        old_w, new_w = self.window, new_mask.shape[1]
        width = max(old_w, new_w)
        n_old = len(self.rows)
        self.rows = self.rows + seqs
        cache = self._new_cache(width)
        mask = torch.zeros(len(self.rows), width, dtype=torch.bool, device=self.device)
        everything = slice(None)
        if n_old:
            cache.place(slice(0, n_old), slice(width - old_w, width), self.cache, everything, slice(0, old_w))
            mask[:n_old, width - old_w :] = self.mask
        cache.place(slice(n_old, None), slice(width - new_w, width), new, everything, slice(0, new_w))
        mask[n_old:, width - new_w :] = new_mask
        self.cache, self.mask, self.padded = cache, mask, bool((~mask).any())
        self.logits = torch.cat([self.logits, new_logits])

    def _new_cache(self, width: int) -> KVCache:
        """An empty cache for the running rows, `width` columns in use. It is rebuilt whenever a row
        joins or leaves, and some row leaves within the fewest tokens any row has left, so it needs room
        for that many more columns only: memory follows the answers, not the model's whole context."""
        room = min(s.params.max_tokens - s.generated for s in self.rows)
        cache = KVCache(self.model.cfg.lm, len(self.rows), width + room, self.device, self.dtype)
        cache.pos = width
        return cache

    @torch.inference_mode()
    def remove(self, keys: set[Hashable]) -> None:
        """Drop these sequences (finished, or their client went away) and shrink the window."""
        keep = [i for i, s in enumerate(self.rows) if s.key not in keys]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache, self.mask, self.padded = None, self.mask[:0, :0], False
            self.logits = self.logits[:0]
            return
        index = torch.tensor(keep, device=self.device)
        mask = self.mask[index]
        # columns that are padding in every remaining row hold nothing: cut them from the left
        trim = int((~mask).all(dim=0).long().cumprod(dim=0).sum())
        width = mask.shape[1] - trim
        cache = self._new_cache(width)
        cache.place(slice(None), slice(0, width), self.cache, index, slice(trim, trim + width))
        self.cache, self.mask, self.logits = cache, mask[:, trim:], self.logits[index]
        self.padded = bool((~self.mask).any())

    @torch.inference_mode()
    def step(self) -> list[Step]:
        """Sample one token for every row, drop the rows that ended, feed the rest one step."""
        self.logits.masked_fill_(self.placeholders, float("-inf"))  # inputs only: fed back, one would crash
        if self.hook is not None:
            self.logits = self.hook.constrain(self._histories(), self.logits)
        steps = [self._advance(s, token) for s, token in zip(self.rows, self._sample(), strict=True)]
        self.remove({st.key for st in steps if st.finished})
        if self.rows:
            fed = torch.tensor([[st.token] for st in steps if not st.finished], dtype=torch.long, device=self.device)
            self.mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=torch.bool, device=self.device)], 1)
            mask = self.mask if self.padded else None
            extra = {} if self.hook is None else {"span_index": self.hook.span_index(self._histories()).to(self.device)}
            self.logits = self.model(fed, key_padding_mask=mask, kv_cache=self.cache, **extra)[:, -1].float()
        return steps

    def _histories(self) -> list[list[int]]:
        """Every running row's tokens so far: its prompt, then what it generated."""
        return [s.ids + s.tokens for s in self.rows]

    def _sample(self) -> list[int | Exception]:
        """The next token of every row, one `sample_next` call per group of rows: all greedy rows, each
        seeded row alone (it draws from its own generator, so its answer does not depend on the rows
        beside it), and the unseeded rows that sample alike (on a CPU one draw costs about as much for
        one row as for eight, and eight draws are a third of a tiny model's step). A row whose draw
        raised has the exception in place of its token."""
        groups: dict[tuple, list[int]] = {}
        for row, s in enumerate(self.rows):
            p = s.params
            if p.temperature == 0:
                groups.setdefault(("greedy",), []).append(row)
            elif s.generator is not None:
                groups[("seeded", row)] = [row]
            else:
                groups.setdefault((p.temperature, p.top_k, p.top_p), []).append(row)
        tokens: list[int | Exception] = [0] * len(self.rows)
        for rows in groups.values():
            for row, token in zip(rows, self._draw(rows), strict=True):
                tokens[row] = token
        return tokens

    def _draw(self, rows: list[int]) -> list[int | Exception]:
        """One `sample_next` call for rows that sample alike. If it raises, each row draws alone, so that
        only the rows at fault get the exception (a seeded row is alone already: its generator is never
        drawn from twice, and its answer stays the one it gets alone)."""
        first = self.rows[rows[0]]
        logits = self.logits if len(rows) == len(self.rows) else self.logits[rows]
        try:
            return sample_next(logits, first.params, first.generator).tolist()
        except Exception as e:
            return [e] if len(rows) == 1 else [token for row in rows for token in self._draw([row])]

    def _advance(self, s: Sequence, token: int | Exception) -> Step:
        """Count `token` for `s`, turn it into text, and decide whether `s` has ended (with "error" if
        its draw or its text raised)."""
        if isinstance(token, Exception):
            return Step(s.key, None, "", "error", token)
        s.tokens.append(token)
        try:
            at_stop_id = token in self.stop_ids and not s.ignore_stop
            # neither the stop token nor a token past the text vocabulary (a native model's image code) is text
            text = "" if at_stop_id or token >= self.tokenizer.vocab_size else s.text.push(token)
            if not (at_stop_id or s.text.stopped or s.generated >= s.params.max_tokens):
                return Step(s.key, token, text, None)
            text += s.text.close()
        except Exception as e:
            return Step(s.key, token, "", "error", e)
        return Step(s.key, token, text, "stop" if at_stop_id or s.text.stopped else "length")
