"""The language model: a small decoder-only GPT in the nanochat style, laid out like Llama.

Read top to bottom: RMSNorm -> rotary embeddings -> attention (grouped-query, optional QK-norm, KV cache) ->
SwiGLU MLP -> block -> GPT. Module names follow HF `LlamaForCausalLM` (q_proj, gate_proj, ...), and
RoPE uses the same rotate-half convention, so export is a renaming of keys, not a permutation.

The model takes either token ids or ready-made embeddings (`inputs_embeds`): that second door is
how a VLM feeds image features in (see `picovlm.models.vlm.merge_embeds`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from picovlm.config import GPTConfig


class KVCache:
    """Keys and values of every layer for a batch of sequences that share one write position.

    Batches of prompts of different lengths are left-padded, so all rows advance together and one
    integer `pos` is enough; padded slots are masked out by the caller's `key_padding_mask`. Each layer
    has its own tensor [B, n_kv_head, max_len, head_dim]: a compiled decode step (`GPT.compile_decode`)
    writes them in place, where slices of one tensor for all layers made it copy the whole cache every step.
    """

    def __init__(self, cfg: GPTConfig, batch_size: int, max_len: int, device=None, dtype=None):
        shape = (batch_size, cfg.n_kv_head, max_len, cfg.n_embd // cfg.n_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.pos = 0
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys/values for `layer`; return all keys/values so far."""
        end = self.pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions needed, {self.max_len} allocated")
        self.k[layer][:, :, self.pos : end] = k
        self.v[layer][:, :, self.pos : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.pos += n

    def place(self, rows, cols, src: KVCache, src_rows, src_cols) -> None:
        """Copy `src`'s keys and values at (src_rows, src_cols) into (rows, cols) of every layer (the engine
        moves rows between caches as they join and leave)."""
        for mine, theirs in zip(self.k + self.v, src.k + src.v, strict=True):
            mine[rows, :, cols] = theirs[src_rows, :, src_cols]


class ColumnWrite:
    """A KVCache as a compiled decode step sees it: this step's keys and values go to `column`, given as
    a tensor (a Python int that changes every step would make torch.compile build a new graph every
    step), and attention reads every column of the cache (the caller's mask hides the unwritten ones)."""

    def __init__(self, cache: KVCache, column: int):
        if column >= cache.max_len:
            raise ValueError(f"KV cache full: {column + 1} positions needed, {cache.max_len} allocated")
        self.k, self.v = cache.k, cache.v
        self.column = torch.tensor([column], device=cache.k[0].device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k[layer].index_copy_(2, self.column, k)
        self.v[layer].index_copy_(2, self.column, v)
        return self.k[layer], self.v[layer]


def rope_tables(head_dim: int, positions: torch.Tensor, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for rotate-half RoPE at integer `positions` [B, T] -> [B, 1, T, head_dim]. The sin table's
    first half is negated: `apply_rope` then rotates with one `roll` (see there)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    angles = positions.float()[..., None] * inv_freq  # [B, T, head_dim/2]
    sin = angles.sin()
    return torch.cat((angles, angles), dim=-1)[:, None].cos(), torch.cat((-sin, sin), dim=-1)[:, None]


class RopeCache:
    """`rope_tables` for every position up to the context, computed once: a decode step then looks its
    positions up (one index op) instead of recomputing angles, powers and cosines (about ten ops)."""

    def __init__(self, head_dim: int, max_len: int, theta: float):
        self.args, self.device = (head_dim, max_len, theta), None

    def __call__(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.device != positions.device:
            head_dim, max_len, theta = self.args
            cos, sin = rope_tables(head_dim, torch.arange(max_len, device=positions.device)[None], theta)
            self.cos, self.sin, self.device = cos[0, 0], sin[0, 0], positions.device  # [max_len, head_dim]
        return self.cos[positions][:, None], self.sin[positions][:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: x * cos + cat(-x2, x1) * sin. `roll` gives cat(x2, x1) in one op, and the minus
    sits in the first half of `sin` (negating a factor is exact: the same bits as negating x2)."""
    return (x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0 and cfg.n_head % cfg.n_kv_head == 0
        self.layer, self.n_head, self.n_kv_head = layer, cfg.n_head, cfg.n_kv_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * self.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * self.head_dim, cfg.n_embd, bias=False)
        # With normalized q and k an attention logit is a scaled cosine: a head can focus sharply as soon
        # as directions align, instead of first growing its weights (long plateaus in small models).
        self.q_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else nn.Identity()

    def forward(self, x, cos, sin, attn_mask, kv_cache: KVCache | None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(self.q_norm(q), cos, sin), apply_rope(self.k_norm(k), cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)
        # grouped-query: SDPA lets each kv head serve n_head/n_kv_head queries in place. Repeating the
        # cache instead copied all of it in every layer and step (at 9/3 heads, batch 8, 400 positions,
        # one thread: 22 ms per layer against 1.3 ms, and the same values)
        gqa = self.n_kv_head != self.n_head
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, attn_mask, kv_cache):
        x = x + self.attn(self.attn_norm(x), cos, sin, attn_mask, kv_cache)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.rope = RopeCache(cfg.n_embd // cfg.n_head, cfg.max_seq_len, cfg.rope_theta)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        self.compiled_step = None  # `compile_decode` sets it

    def compile_decode(self, backend: str = "inductor") -> None:
        """Run every decode step (one new token a row, with a KV cache) through `torch.compile`.

        Why: a decode step of a small model is about a thousand tiny torch ops, each costing more to
        dispatch than to compute; inductor fuses the norms, RoPE, the MLP's pointwise ops and the
        residual adds into a few kernels. The compiled step sees no Python number that changes from
        step to step (the write column comes in as a tensor, see `ColumnWrite`, and attention spans the
        cache's whole capacity under a mask), so one graph, dynamic in batch size and cache capacity,
        serves every step and every batch. The prefill stays eager: its lengths vary from call to call.
        The compile is paid here, by a warm-up of one row and of two (torch gives a batch of one its own
        graph), not by the first answer: 35 s for the demo's LM on one CPU thread, 11 s once inductor's
        disk cache has it.
        """
        self.compiled_step = torch.compile(self._step, dynamic=True, backend=backend)
        weight = self.tok_emb.weight
        with torch.inference_mode():
            for rows in (1, 2):
                cache = KVCache(self.cfg, rows, 3, weight.device, weight.dtype)
                self(torch.zeros(rows, 2, dtype=torch.long, device=weight.device), kv_cache=cache)
                self(torch.zeros(rows, 1, dtype=torch.long, device=weight.device), kv_cache=cache)

    def _step(self, x: torch.Tensor, cos, sin, attn_mask: torch.Tensor, cache: ColumnWrite) -> torch.Tensor:
        """One decode step's blocks, final norm and head: what `compile_decode` compiles."""
        for block in self.blocks:
            x = block(x, cos, sin, attn_mask, cache)
        return self.lm_head(self.norm(x))

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tok_emb(ids)

    def forward(
        self,
        ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
        return_hidden: bool = False,
        segment_ids: torch.Tensor | None = None,
        last_only: bool = False,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, vocab] for `ids` [B, T] or `inputs_embeds` [B, T, D] (with `return_hidden`,
        the final normed hidden states [B, T, D] instead: a text encoder's output).

        key_padding_mask: bool [B, T_past + T], True where a real token sits (left padding is False).
        With a kv_cache, the new tokens are appended after `kv_cache.pos` positions.
        segment_ids: long [B, T] (training, no cache): a token sees the earlier tokens of its own
        segment and of segment 0, a shared prefix (see `isolated_turns`).
        last_only: the output at the last position only ([B, 1, ...]): what a prefill needs. The head of
        a 49k vocabulary over a whole prompt costs about a quarter of a 135M LM's prefill, and its
        logits [B, T, vocab] hundreds of MB.
        keep: bool [B, T], the positions whose output is wanted: [N, ...] for its N True entries, in order.
        Training needs logits only where a loss is taken (the answers: a fifth of a demo batch's tokens).
        """
        x = self.tok_emb(ids) if inputs_embeds is None else inputs_embeds
        B, T, _ = x.shape
        past = kv_cache.pos if kv_cache is not None else 0
        if past + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {past + T} tokens exceeds the context of {self.cfg.max_seq_len}")
        if position_ids is None:
            position_ids = default_positions(key_padding_mask, B, past, T, x.device)
        cos, sin = self.rope(position_ids)
        if self.compiled_step is not None and kv_cache is not None and T == 1 and not return_hidden and keep is None:
            mask = capacity_mask(key_padding_mask, B, past, kv_cache.max_len, x.device)
            logits = self.compiled_step(x, cos, sin, mask, ColumnWrite(kv_cache, past))
            kv_cache.advance(1)
            return logits
        attn_mask = build_attn_mask(key_padding_mask, past, T, x.device)
        if segment_ids is not None:
            if kv_cache is not None or key_padding_mask is not None:
                raise ValueError("segment_ids are for training on whole sequences: no kv_cache or padding mask")
            attn_mask = segment_mask(segment_ids)
        for block in self.blocks:
            x = block(x, cos, sin, attn_mask, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = self.norm(x[:, -1:] if last_only else x if keep is None else x[keep])
        return x if return_hidden else self.lm_head(x)


def default_positions(key_padding_mask, B: int, past: int, T: int, device) -> torch.Tensor:
    """Positions count real tokens only, so a left-padded prompt gets the same RoPE phases as the
    same prompt alone (batched generation then matches unbatched generation)."""
    if key_padding_mask is None:
        return torch.arange(past, past + T, device=device).expand(B, T)
    pos = key_padding_mask.long().cumsum(-1) - 1
    return pos[:, past : past + T].clamp(min=0)


def build_attn_mask(key_padding_mask, past: int, T: int, device) -> torch.Tensor | None:
    """Boolean [B, 1, T, past+T] mask (True = may attend), or None when plain causal suffices."""
    if key_padding_mask is None and (past == 0 or T == 1):
        return None  # SDPA's is_causal (prefill) or no mask at all (one new token sees everything)
    causal = torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past)
    mask = causal[None, None]
    if key_padding_mask is not None:
        mask = mask & key_padding_mask[:, None, None, :]
        # a fully padded query row would give NaNs; let it see itself (its output is never used)
        mask = mask | torch.eye(T, past + T, dtype=torch.bool, device=device).roll(past, dims=1)[None, None]
    return mask


def capacity_mask(key_padding_mask, B: int, past: int, capacity: int, device) -> torch.Tensor:
    """Boolean [B, 1, 1, capacity] for one new token written at column `past`: it sees the real tokens
    up to and including itself, and none of the columns not written yet."""
    visible = (torch.arange(capacity, device=device) <= past).expand(B, capacity)
    if key_padding_mask is not None:
        visible = visible & F.pad(key_padding_mask, (0, capacity - key_padding_mask.shape[1]), value=False)
    return visible[:, None, None, :]


def segment_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Boolean [B, 1, T, T]: causal, and a token sees only its own segment and segment 0."""
    T = segment_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
    q, k = segment_ids[:, :, None], segment_ids[:, None, :]
    return (causal & ((q == k) | (k == 0)))[:, None]
