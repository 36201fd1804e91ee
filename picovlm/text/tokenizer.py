"""Byte-level BPE tokenizer: a thin wrapper over HF `tokenizers` that knows our special tokens.

Byte-level BPE starts from all 256 bytes, so every string encodes and there is no unknown token.
The special tokens are registered as "added tokens": `tokenizers` splits them out of the text before
BPE runs, which is how a literal `<|image|>` in a prompt becomes the single image-placeholder id.
"""

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from picovlm.text.tokens import ASSISTANT, BOS, END, IMAGE, PAD, SPECIAL_TOKENS, USER

N_BYTES = 256


class Tokenizer:
    """Encode text to ids and back; exposes the ids of the special tokens as properties."""

    def __init__(self, hf: HFTokenizer, source: str = "tokenizer"):
        """Wrap an already-built HF tokenizer; `source` only names it in error messages."""
        special = {t.content for t in hf.get_added_tokens_decoder().values() if t.special}
        for token in SPECIAL_TOKENS:
            if token not in special:
                raise ValueError(f"{source}: not a picovlm tokenizer (missing special token {token})")
        self._hf = hf
        self._special = {token: hf.token_to_id(token) for token in SPECIAL_TOKENS}

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2) -> "Tokenizer":
        """Learn BPE merges from `texts`; the specials take ids 0..5 in SPECIAL_TOKENS order."""
        if vocab_size < N_BYTES + len(SPECIAL_TOKENS):
            raise ValueError(
                f"vocab_size {vocab_size} is too small: the byte alphabet and the special tokens "
                f"alone need {N_BYTES + len(SPECIAL_TOKENS)}"
            )
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    def save(self, path: str | Path) -> None:
        """Write one self-contained JSON file (merges, vocab and specials)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._hf.save(str(path))

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Read a file written by `save`, failing loudly on a missing, corrupt or foreign file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: tokenizer file not found")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as err:  # the Rust side raises a bare Exception
            raise ValueError(f"{path}: not a valid tokenizer JSON file ({err})") from err
        return cls(hf, source=str(path))

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; special-token strings inside it become their ids. No BOS is added."""
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Like `encode` for many texts at once (parallel on the Rust side)."""
        return [e.ids for e in self._hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD."""
        return self._hf.decode(list(ids), skip_special_tokens=skip_special)

    def token_to_id(self, token: str) -> int:
        """Id of a single vocabulary entry (a special token or a byte-level piece)."""
        token_id = self._hf.token_to_id(token)
        if token_id is None:
            raise KeyError(f"{token!r} is not in the vocabulary")
        return token_id

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included: the size of the model's embedding table."""
        return self._hf.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int:
        return self._special[BOS]

    @property
    def pad_id(self) -> int:
        return self._special[PAD]

    @property
    def image_id(self) -> int:
        return self._special[IMAGE]

    @property
    def user_id(self) -> int:
        return self._special[USER]

    @property
    def assistant_id(self) -> int:
        return self._special[ASSISTANT]

    @property
    def end_id(self) -> int:
        return self._special[END]
