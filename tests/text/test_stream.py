"""Tests for streaming detokenization (pieces concatenate to the full decode, never half a char) and
for stop strings on top of it (`TextStream`: nothing of a stop string is ever shown)."""

import pytest

from picovlm.text.stream import StreamDecoder, TextStream, stop_prefix_length
from picovlm.text.tokenizer import Tokenizer
from picovlm.text.tokens import END, IMAGE, SPECIAL_TOKENS


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    # A tiny vocab trained on ASCII only: CJK and emoji stay split into their UTF-8 bytes (30 merges).
    return Tokenizer.train(["the cat sat on the mat and the dog ran"] * 50, vocab_size=272)


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


def test_windows_keep_context_for_a_tokenizer_that_strips_a_leading_space():
    """SentencePiece-style ("▁" for a space, dropped at the start of a decode): a window that restarts
    without the piece before it as context would lose the space before its first word."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer, hf.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    hf.train_from_iterator(["the cat sat on the mat"] * 20, trainers.BpeTrainer(special_tokens=list(SPECIAL_TOKENS)))
    tok = Tokenizer(hf)
    ids = tok.encode("the cat sat on the mat " * 6)
    assert tok.decode(ids[3:4])[0] != " " and " " in tok.decode(ids[2:4])  # a lone word loses its space
    assert "".join(stream(tok, ids)) == tok.decode(ids)


# --- TextStream: stop strings --------------------------------------------------------------------

TEXT = "the cat sat on the mat"  # tokens with this vocab: the, " ", cat, " ", s, at, " ", o, n, " the", " ", mat


def shown(tok: Tokenizer, stops: tuple[str, ...], text: str = TEXT) -> list[str]:
    """What a TextStream shows after each token of `text`, then at its close."""
    stream = TextStream(tok, stops)
    return [stream.push(i) for i in tok.encode(text)] + [stream.close()]


def test_without_stops_it_shows_what_the_decoder_does(tok):
    ids = tok.encode(TEXT)
    assert shown(tok, ()) == stream(tok, ids)


def test_a_stop_string_split_across_tokens_is_never_shown(tok):
    ids = tok.encode(TEXT)
    assert [tok.decode([i]) for i in ids][2:5] == ["cat", " ", "s"]  # "t s" arrives in three tokens
    pieces = shown(tok, ("t s",))
    so_far = ["".join(pieces[: n + 1]) for n in range(len(pieces))]
    assert all("the ca".startswith(text) for text in so_far)  # not even its first "t", at any point
    assert so_far[-1] == "the ca"


def test_held_back_text_comes_out_once_it_cannot_be_a_stop(tok):
    pieces = shown(tok, ("t d",))  # never occurs: every "t" and "t " waits for the next token, then shows
    assert "".join(pieces) == TEXT
    assert pieces[2] == "ca" and pieces[3] == "" and pieces[4] == "t s"
    assert shown(tok, ("t s",), "the cat")[-1] == "t"  # held back at the end: shown at close


def test_the_first_stop_string_ends_the_text(tok):
    stream = TextStream(tok, ("", "mat", "sat"))  # an empty stop string stops nothing
    pieces = [stream.push(i) for i in tok.encode(TEXT)]
    assert "".join(pieces) == "the cat " and stream.stopped
    assert pieces[-1] == "" and stream.close() == ""  # nothing after a stop string


def test_stop_prefix_length():
    assert stop_prefix_length("the end", ("end.",)) == 3
    assert stop_prefix_length("the end", ("xyz",)) == 0
    assert stop_prefix_length("ab", ("b", "abc")) == 2
    assert stop_prefix_length("the end", ("end",)) == 0  # a whole stop string is a hit, not a prefix
