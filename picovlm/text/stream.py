"""Incremental detokenization, for printing tokens as the model generates them.

Decoding each new id alone is wrong: byte-level BPE can split one UTF-8 character across tokens, so a
lone token may decode to U+FFFD. Re-decoding everything at every step is right but O(n^2). Instead we
decode a short window of ids, from `prefix` on: text up to `read` has been emitted, so each step
decodes the window once, emits what extends past the text already emitted from it, and holds back
while the new text ends in U+FFFD (an unfinished character). A window that has grown past a few ids
restarts at the last emitted piece, which stays in it as context (a tokenizer may decode a token
differently at the start of a text, e.g. without its leading space).

`TextStream` adds stop strings on top: the text of one answer, cut before the first stop string.
"""

from picovlm.text.tokenizer import Tokenizer

REPLACEMENT_CHAR = "\ufffd"
# ids a window may span before it restarts: one decode per id, of a few ids only (1.0 us an id on the
# tiny tokenizer, against 1.3 us when the emitted part is decoded again at every id)
WINDOW = 6


class StreamDecoder:
    """Turns a stream of ids into text pieces whose concatenation equals `tok.decode(all_ids)`."""

    def __init__(self, tok: Tokenizer, skip_special: bool = True):
        self.tok = tok
        self.skip_special = skip_special
        # special tokens decode to nothing when skipped, whatever surrounds them: no need to decode them
        self.skipped = {tok.token_to_id(t) for t in tok.special_tokens} if skip_special else set()
        self.ids: list[int] = []
        self.prefix = 0  # start of the window
        self.read = 0  # ids before this have been emitted as text
        self.emitted = ""  # the text of ids[prefix:read], as the window decodes it

    def _pending(self) -> tuple[str, str]:
        """(the window's text, the part of it not yet emitted)."""
        window = self.tok.decode(self.ids[self.prefix :], self.skip_special)
        return window, window[len(self.emitted) :]

    def _emitted(self, window: str) -> None:
        """Everything so far is emitted; a long window restarts at the piece just emitted."""
        piece_start, self.read, self.emitted = self.read, len(self.ids), window
        if self.read - self.prefix > WINDOW:
            self.prefix = piece_start
            self.emitted = self.tok.decode(self.ids[self.prefix : self.read], self.skip_special)

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes (often "", e.g. mid-character or a skipped special)."""
        self.ids.append(token_id)
        if token_id in self.skipped:
            return ""
        window, piece = self._pending()
        if not piece or piece.endswith(REPLACEMENT_CHAR):
            return ""
        self._emitted(window)
        return piece

    def flush(self) -> str:
        """Return whatever is still held back (e.g. a truncated character, as U+FFFD)."""
        window, piece = self._pending()
        self._emitted(window)
        return piece


class TextStream:
    """One answer's token ids -> the text to show as it grows, ending before the first stop string.

    A stop string may arrive split across tokens ("END" as "EN" + "D"), and what was shown cannot be
    taken back, so the end of the text that could still grow into a stop string is held back until
    the next tokens settle it. The server, `Pipeline.stream` and `Pipeline.generate` all get their
    text from here (through the engine), so they cut an answer in the same place.
    """

    def __init__(self, tok: Tokenizer, stops: tuple[str, ...] = ()):
        self.decoder = StreamDecoder(tok)
        self.stops = tuple(s for s in stops if s)
        self.held = ""  # decoded but not shown yet: it may be the start of a stop string
        self.stopped = False  # a stop string was reached: the answer ends before it

    def push(self, token_id: int) -> str:
        """Add one id; return the text that is now safe to show (often "")."""
        return self._release(self.decoder.push(token_id), final=False)

    def close(self) -> str:
        """The answer has ended: return the text still held back."""
        return self._release(self.decoder.flush(), final=True)

    def _release(self, piece: str, final: bool) -> str:
        if not self.stops:  # nothing to hold back or cut (the common case: keep it cheap)
            return piece
        if self.stopped:
            return ""
        text = self.held + piece
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped, self.held = True, ""
            return text[: min(hits)]
        cut = len(text) - (0 if final else stop_prefix_length(text, self.stops))
        self.held = text[cut:]
        return text[:cut]


def stop_prefix_length(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is the beginning of a stop string (0 if none)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
