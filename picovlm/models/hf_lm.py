"""An HF `AutoModelForCausalLM` from a local folder behind our GPT's interface, and its tokenizer.

The VLM, the engine and the training stages talk to a language model through four things: `embed(ids)`,
`forward(ids | inputs_embeds, key_padding_mask, kv_cache, position_ids, return_hidden, segment_ids)`, `cfg`
(n_embd, max_seq_len, ...) and our `KVCache` (which the engine allocates and advances). This wrapper
gives an HF model (Llama, Qwen2, GPT-2, SmolLM, ...) the same four, so it is interchangeable with our
GPT everywhere. The keys and values live in our KVCache's tensors for both (the engine moves rows
between caches as sequences join and leave a batch): each step hands the HF model an HF cache
holding them, and copies the positions it adds back.

The tokenizer is the model's own (its vocabulary and BPE), with picovlm's six special tokens and the two
image markers added where missing (`<|image|>` among them) and the embedding table grown to match: new rows start at the
mean embedding, so they begin as an "average word" instead of noise, except `<|end|>`, `<|bos|>` and
the role markers, which start close to the LM's own end-of-sequence and bos tokens and role words
(`new_token_sources`). The chat template is the LM's own when its folder has one (SmolLM2's
`<|im_start|>user\n...<|im_end|>`, read by `read_hf_template` and kept with the tokenizer): an
instruct LM answers best in the layout it was tuned on, and stops at its own end-of-turn token. A
folder without one (GPT-2, base LMs) gets picovlm's (`<|user|>...<|end|><|assistant|>...`), and only
then do `<|end|>`, `<|bos|>` and the role markers start from the LM's rows: with the LM's template
they are never used, and a copy of the eos row would outbid the LM's real end of turn. Loading the
same folder always gives the same ids and template, so a checkpoint stores the tokenizer (and its
template file) once and nothing else.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from picovlm.checkpoint import naming_damaged_weights
from picovlm.config import GPTConfig
from picovlm.models.gpt import KVCache, default_positions
from picovlm.text.template import read_hf_template
from picovlm.text.tokenizer import Tokenizer
from picovlm.text.tokens import IMAGE_MARKERS, MEDIA_TOKENS, SPECIAL_TOKENS


def _check_folder(path: str | Path) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json; expected a local HF causal LM folder")
    return folder


def hf_lm_tokenizer(path: str | Path) -> Tokenizer:
    """The LM folder's own tokenizer (tokenizer.json) with picovlm's special tokens, image markers and
    video/audio placeholders added, and the folder's chat template if it has one."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as RawTokenizer

    folder = _check_folder(path)
    file = folder / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no fast tokenizer file; an HF LM folder needs tokenizer.json")
    raw = RawTokenizer.from_file(str(file))
    template = read_hf_template(folder, raw.id_to_token)
    ours = (*SPECIAL_TOKENS, *IMAGE_MARKERS, *MEDIA_TOKENS)
    raw.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ours])
    return Tokenizer(raw, source=str(file), chat_template=template)


def new_token_sources(folder: Path, config, base_vocab: int) -> dict[int, tuple[list[int], float]]:
    """Existing rows that some of our added tokens start from, instead of the mean row (none when the
    folder has its own chat template): `<|end|>` from the LM's end-of-sequence token (an instruct LM's
    end of turn), `<|bos|>` from its bos, and the role markers from the last piece of the words "user"
    and "assistant" in the LM's tokenizer; each with the scale its copy gets. Why: the LM then already
    ends an answer with (a copy of) `<|end|>` and reads the roles, instead of learning it from scratch."""
    from tokenizers import Tokenizer as RawTokenizer

    ours = hf_lm_tokenizer(folder)
    if ours.chat_template is not None:  # the LM's own turn tokens are used: ours stay unused mean rows
        return {}
    raw = RawTokenizer.from_file(str(folder / "tokenizer.json"))  # without our tokens

    def first(token_id) -> list[int]:
        token_id = token_id[0] if isinstance(token_id, list | tuple) and token_id else token_id
        return [token_id] if isinstance(token_id, int) and 0 <= token_id < base_vocab else []

    # <|end|> = 1.01 x the eos row: where the LM would end its answer (a large positive eos logit), <|end|>
    # scores higher still, so generation stops at our token and not at the LM's (which is no stop for
    # us); the others = 0.9 x their source + 0.1 x the mean row, so that no two rows tie at argmax
    sources = {ours.end_id: (first(config.eos_token_id), 1.01), ours.bos_id: (first(config.bos_token_id), 0.9)}
    for new, word in ((ours.user_id, "user"), (ours.assistant_id, "assistant")):
        sources[new] = ([i for i in raw.encode(word, add_special_tokens=False).ids if i < base_vocab][-1:], 0.9)
    return {new: (rows, scale) for new, (rows, scale) in sources.items() if rows and new >= base_vocab}


class HFCausalLM(nn.Module):
    """Our GPT's interface over an HF causal LM; `vocab_size` grows its embeddings to fit the tokenizer."""

    def __init__(self, path: str | Path, vocab_size: int, max_seq_len: int, load_weights: bool = True):
        super().__init__()
        from transformers import AutoConfig, AutoModelForCausalLM

        folder = _check_folder(path)
        config = AutoConfig.from_pretrained(folder)
        if load_weights:
            with naming_damaged_weights(folder):
                self.model = AutoModelForCausalLM.from_pretrained(folder).float()  # train in fp32 like our GPT
        else:  # the weights come from a picovlm checkpoint right after: skip reading them twice
            self.model = AutoModelForCausalLM.from_config(config).float()
        old = self.model.get_input_embeddings().weight.shape[0]
        self.base_vocab = old  # ids >= this are the tokens picovlm added (a LoRA stage trains their rows)
        if vocab_size > old:
            sources = new_token_sources(folder, config, old) if load_weights else {}
            self.model.resize_token_embeddings(vocab_size, mean_resizing=False)
            with torch.no_grad():
                tables = [self.model.get_input_embeddings().weight]
                out = self.model.get_output_embeddings()
                if out is not None and out.weight.data_ptr() != tables[0].data_ptr():
                    tables.append(out.weight)
                for table in tables:
                    mean = table[:old].mean(0)
                    table[old:] = mean
                    for new, (rows, scale) in sources.items():
                        if new < vocab_size:
                            table[new] = scale * table[rows].mean(0) + (1 - scale) * mean
        c = self.model.config
        get = lambda *names: next((getattr(c, n) for n in names if getattr(c, n, None) is not None), None)  # noqa: E731
        n_head = get("num_attention_heads", "n_head")
        self.cfg = GPTConfig(
            vocab_size=self.model.get_input_embeddings().weight.shape[0],
            n_layer=get("num_hidden_layers", "n_layer"),
            n_head=n_head,
            n_kv_head=get("num_key_value_heads") or n_head,
            n_embd=get("hidden_size", "n_embd"),
            max_seq_len=min(max_seq_len, get("max_position_embeddings", "n_positions") or max_seq_len),
        )

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

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
        """Same contract as `GPT.forward`: logits, or the last hidden states with `return_hidden`
        (`keep` picks positions from the full output here: HF's `logits_to_keep` is the same for every row).
        `segment_ids` (isolated turns) are refused: HF models take no attention mask of that shape."""
        if segment_ids is not None:
            raise ValueError(
                "segment_ids (isolated turns) need picovlm's GPT; an HF LM attends over the whole sequence"
            )
        x = self.embed(ids) if inputs_embeds is None else inputs_embeds
        B, T, _ = x.shape
        past = kv_cache.pos if kv_cache is not None else 0
        if past + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {past + T} tokens exceeds the context of {self.cfg.max_seq_len}")
        if kv_cache is not None and past + T > kv_cache.max_len:
            raise ValueError(f"KV cache full: {past + T} positions needed, {kv_cache.max_len} allocated")
        if position_ids is None:
            position_ids = default_positions(key_padding_mask, B, past, T, x.device)
        out = self.model(
            inputs_embeds=x,
            attention_mask=None if key_padding_mask is None else key_padding_mask.long(),
            position_ids=position_ids,
            past_key_values=None if kv_cache is None else _hf_cache(kv_cache),
            use_cache=kv_cache is not None,
            output_hidden_states=return_hidden,
            logits_to_keep=1 if last_only else 0,
        )
        if kv_cache is not None:
            _copy_new_positions(out.past_key_values, kv_cache)
            kv_cache.advance(T)
        out = (out.hidden_states[-1][:, -1:] if last_only else out.hidden_states[-1]) if return_hidden else out.logits
        return out if keep is None else out[keep]


def _hf_cache(kv_cache: KVCache):
    """An HF `DynamicCache` with the keys and values `kv_cache` holds so far (a copy the HF model extends)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    if kv_cache.pos:
        for layer, (k, v) in enumerate(zip(kv_cache.k, kv_cache.v, strict=True)):
            cache.update(k[:, :, : kv_cache.pos], v[:, :, : kv_cache.pos], layer)
    return cache


def _copy_new_positions(hf_cache, kv_cache: KVCache) -> None:
    """Write the keys and values the HF model added after `kv_cache.pos` into `kv_cache`."""
    for layer, (k, v, *_) in enumerate(hf_cache):
        if k.shape[-1] != kv_cache.k[0].shape[-1]:
            raise ValueError(f"head size {k.shape[-1]} is not hidden_size / num_heads: the KV cache cannot hold it")
        kv_cache.update(layer, k[:, :, kv_cache.pos :], v[:, :, kv_cache.pos :])
