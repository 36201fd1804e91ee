"""Tests for streaming detokenization: pieces concatenate to the full decode, never half a char."""

import pytest

from picovlm.text.stream import StreamDecoder
from picovlm.text.tokenizer import Tokenizer
from picovlm.text.tokens import END, IMAGE


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    # A tiny vocab trained on ASCII only: CJK and emoji stay split into their UTF-8 bytes.
    return Tokenizer.train(["the cat sat on the mat and the dog ran"] * 50, vocab_size=270)


def stream(tok: Tokenizer, ids: list[int], skip_special: bool = True) -> list[str]:
    decoder = StreamDecoder(tok, skip_special=skip_special)
    return [decoder.push(i) for i in ids] + [decoder.flush()]


@pytest.mark.parametrize("text", ["the cat sat", "café 你好 🙂 the dog", "🙂🙂日本語", "ends with emoji 😀"])
def test_pieces_concatenate_to_decode(tok, text):
    ids = tok.encode(text)
    pieces = stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)


def test_multibyte_chars_are_held_back(tok):
    ids = tok.encode("你")
    assert len(ids) == 3  # one token per UTF-8 byte with this vocab
    assert stream(tok, ids) == ["", "", "你", ""]


@pytest.mark.parametrize("skip_special", [True, False])
def test_special_tokens(tok, skip_special):
    ids = tok.encode(f"{IMAGE}the cat 🙂{END}")
    assert "".join(stream(tok, ids, skip_special)) == tok.decode(ids, skip_special)


def test_truncated_char_is_flushed(tok):
    ids = tok.encode("ok 🙂")[:-1]  # drop the last byte of the emoji
    pieces = stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids)
    assert pieces[-1].endswith("\ufffd")


def test_decodes_only_a_small_window(tok, monkeypatch):
    ids = tok.encode("the cat 你好 sat on the mat 🙂 " * 50)
    widths: list[int] = []
    real_decode = tok.decode

    def recording_decode(window, skip_special=True):
        widths.append(len(window))
        return real_decode(window, skip_special)

    monkeypatch.setattr(tok, "decode", recording_decode)
    assert "".join(stream(tok, ids)) == real_decode(ids)
    assert max(widths) <= 10
