"""Incremental detokenization, for printing tokens as the model generates them.

Decoding each new id alone is wrong: byte-level BPE can split one UTF-8 character across tokens, so a
lone token may decode to U+FFFD. Re-decoding everything at every step is right but O(n^2). Instead we
keep two offsets into the ids: text up to `read` has been emitted, and `prefix` marks where a short
window of context starts. Each step decodes only ids[prefix:], emits what extends past the already
emitted ids[prefix:read], and holds back while the new text ends in U+FFFD (an unfinished character).
"""

from picovlm.text.tokenizer import Tokenizer

REPLACEMENT_CHAR = "\ufffd"


class StreamDecoder:
    """Turns a stream of ids into text pieces whose concatenation equals `tok.decode(all_ids)`."""

    def __init__(self, tok: Tokenizer, skip_special: bool = True):
        self.tok = tok
        self.skip_special = skip_special
        self.ids: list[int] = []
        self.prefix = 0  # start of the context window
        self.read = 0  # ids before this have been emitted as text

    def _pending(self) -> str:
        """Text of the ids not yet emitted, decoded with the window's context."""
        emitted = self.tok.decode(self.ids[self.prefix : self.read], self.skip_special)
        window = self.tok.decode(self.ids[self.prefix :], self.skip_special)
        return window[len(emitted) :]

    def _advance(self) -> None:
        """Everything so far is emitted: the next window starts where this one ended."""
        self.prefix, self.read = self.read, len(self.ids)

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes (often "", e.g. mid-character or a skipped special)."""
        self.ids.append(token_id)
        piece = self._pending()
        if not piece or piece.endswith(REPLACEMENT_CHAR):
            return ""
        self._advance()
        return piece

    def flush(self) -> str:
        """Return whatever is still held back (e.g. a truncated character, as U+FFFD)."""
        piece = self._pending()
        self._advance()
        return piece
