"""Byte-level BPE tokenizer: a thin wrapper over HF `tokenizers` that knows our special tokens.

Byte-level BPE starts from all 256 bytes, so every string encodes and there is no unknown token.
The special tokens are registered as "added tokens": `tokenizers` splits them out of the text before
BPE runs, which is how a literal `<|image|>` in a prompt becomes the single image-placeholder id.

A tokenizer taken from an HF LM folder may carry that model's own chat template (`ChatTemplate`): it
belongs with the vocabulary, since its turn markers are tokens of it, so it is saved and loaded with the
tokenizer, in `<name>.chat_template.json` beside `<name>.json` (tokenizer.json itself stays a plain
`tokenizers` file that any HF tool reads). Without one, picovlm's own template is used (text/chat.py).
"""

import functools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from picovlm.text.template import ChatTemplate
from picovlm.text.tokens import (
    ASSISTANT,
    BOS,
    END,
    IMAGE,
    IMAGE_END,
    IMAGE_MARKERS,
    IMAGE_START,
    MEDIA_TOKENS,
    PAD,
    SPECIAL_TOKENS,
    USER,
)

N_BYTES = 256


def chat_template_file(tokenizer_file: str | Path) -> Path:
    """Where the chat template of the tokenizer saved at `tokenizer_file` lives (if it has one)."""
    path = Path(tokenizer_file)
    return path.with_name(path.stem + ".chat_template.json")


class Tokenizer:
    """Encode text to ids and back; exposes the ids of the special tokens as properties."""

    def __init__(self, hf: HFTokenizer, source: str = "tokenizer", chat_template: ChatTemplate | None = None):
        """Wrap an already-built HF tokenizer; `source` only names it in error messages. With a
        `chat_template`, conversations use that template instead of picovlm's (see text/chat.py)."""
        special = {t.content for t in hf.get_added_tokens_decoder().values() if t.special}
        for token in SPECIAL_TOKENS:
            if token not in special:
                raise ValueError(f"{source}: not a picovlm tokenizer (missing special token {token})")
        self._hf, self.source = hf, source
        # the image markers only where the tokenizer has them (one made before they existed has not)
        optional = (*IMAGE_MARKERS, *MEDIA_TOKENS)
        self._special = {t: hf.token_to_id(t) for t in (*SPECIAL_TOKENS, *optional) if t in special}
        # longest first, so that a token that begins with another one is matched whole
        self.special_tokens = tuple(sorted(special, key=len, reverse=True))
        self.chat_template = chat_template
        self.stop_ids = (self._special[END],)
        if chat_template is not None:
            try:
                ends = [chat_template.end_of_turn(self.special_tokens), *chat_template.stop_tokens]
            except ValueError as err:
                raise ValueError(f"{source}: {err}") from None
            self.stop_ids = tuple(dict.fromkeys(hf.token_to_id(t) for t in ends if t in special))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2) -> "Tokenizer":
        """Learn BPE merges from `texts`; the specials take the first ids, in SPECIAL_TOKENS, IMAGE_MARKERS
        then MEDIA_TOKENS order."""
        specials = [*SPECIAL_TOKENS, *IMAGE_MARKERS, *MEDIA_TOKENS]
        if vocab_size < N_BYTES + len(specials):
            raise ValueError(
                f"vocab_size {vocab_size} is too small: the byte alphabet and the special tokens "
                f"alone need {N_BYTES + len(specials)}"
            )
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    def save(self, path: str | Path) -> None:
        """Write one self-contained JSON file (merges, vocab and specials), and the chat template beside
        it when there is one (a stale template file from an earlier save is removed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._hf.save(str(path))
        template = chat_template_file(path)
        if self.chat_template is None:
            template.unlink(missing_ok=True)
        else:
            template.write_text(json.dumps(self.chat_template.to_json(), indent=2) + "\n")

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
        template, template_path = None, chat_template_file(path)
        if template_path.is_file():
            try:
                template = ChatTemplate.from_json(json.loads(template_path.read_text()))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
                raise ValueError(f"{template_path}: not a valid chat template file ({err!r})") from None
        return cls(hf, source=str(path), chat_template=template)

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; special-token strings inside it become their ids. No BOS is added."""
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Like `encode`, with each token's (start, end) character span in `text`."""
        enc = self._hf.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

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

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters of text that one token can stand for, so that a text of n characters is at
        least n / max_token_chars tokens: a bound that tells a text too long for a context without
        tokenizing it. No token covers more characters than its vocabulary entry has (a byte-level entry
        has one per byte, each character at least one byte; a SentencePiece entry has its "▁" for the
        space). A normalizer may compose up to 4 characters into one (Unicode's longest canonical
        decomposition), so a tokenizer with one counts 4 per entry character."""
        longest = max(len(entry) for entry in self._hf.get_vocab(with_added_tokens=True))
        return longest * (4 if self._hf.normalizer is not None else 1)

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
    def has_image_markers(self) -> bool:
        """Whether <|image_start|> and <|image_end|> are special tokens here (not in one made before them)."""
        return IMAGE_START in self._special and IMAGE_END in self._special

    @property
    def image_marker_ids(self) -> tuple[int, int]:
        """(<|image_start|>, <|image_end|>) ids, for `image_markers`; a tokenizer made before the markers
        existed has none, and says so."""
        if not self.has_image_markers:
            raise ValueError(
                f"{self.source}: this tokenizer has no {IMAGE_START} / {IMAGE_END} (it was made before image "
                "markers existed); image_markers needs a tokenizer trained with them"
            )
        return self._special[IMAGE_START], self._special[IMAGE_END]

    def placeholder_id(self, token: str) -> int:
        """The id of a modality's placeholder (<|video|>, <|audio|>); a tokenizer made before it existed
        has none, and says so."""
        if token not in self._special:
            raise ValueError(
                f"{self.source}: this tokenizer has no {token} (it was made before that modality existed); "
                "a model that reads it needs a tokenizer trained with it"
            )
        return self._special[token]

    @property
    def end_id(self) -> int:
        """picovlm's <|end|>; generation stops at `stop_ids`, which is (end_id,) with our template."""
        return self._special[END]
