"""Tests for the byte-level BPE tokenizer: training, specials, round trips, save/load."""

import pickle
import unicodedata

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, normalizers, pre_tokenizers

from picovlm.text.tokenizer import Tokenizer
from picovlm.text.tokens import IMAGE, IMAGE_END, IMAGE_MARKERS, IMAGE_START, SPECIAL_TOKENS


def corpus() -> list[str]:
    subjects = ["a cat", "the dog", "two birds", "a red car", "my friend", "the old man"]
    verbs = ["sits on", "looks at", "runs past", "jumps over", "stands near"]
    objects = ["the table", "a green tree", "the river", "a wooden fence", "the house"]
    sentences = [f"{s} {v} {o}." for s in subjects for v in verbs for o in objects]
    return sentences + ["café 你好 🙂", "naïve façade, 日本語 😀"] * 5


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(corpus(), vocab_size=400)


def test_specials_take_the_first_ids(tok):
    assert [tok.token_to_id(s) for s in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    ids = [tok.bos_id, tok.pad_id, tok.image_id, tok.user_id, tok.assistant_id, tok.end_id]
    assert ids == list(range(len(SPECIAL_TOKENS)))


def test_image_markers_take_the_next_ids(tok):
    n = len(SPECIAL_TOKENS)
    assert tok.has_image_markers and tok.image_marker_ids == (n, n + 1)
    assert [tok.token_to_id(t) for t in IMAGE_MARKERS] == [n, n + 1]
    ids = tok.encode(f"{IMAGE_START}{IMAGE}{IMAGE_END}")
    assert ids == [n, tok.image_id, n + 1] and tok.decode(ids) == ""


def test_a_tokenizer_from_before_the_markers_loads_and_says_what_it_lacks(old_tok, tmp_path):
    old_tok.save(tmp_path / "tokenizer.json")
    loaded = Tokenizer.load(tmp_path / "tokenizer.json")
    ids = [loaded.bos_id, loaded.pad_id, loaded.image_id, loaded.user_id, loaded.assistant_id, loaded.end_id]
    assert ids == list(range(len(SPECIAL_TOKENS))) and loaded.encode("a cat") == old_tok.encode("a cat")
    assert not loaded.has_image_markers
    with pytest.raises(ValueError, match=r"tokenizer.json: this tokenizer has no <\|image_start\|> / <\|image_end\|>"):
        _ = loaded.image_marker_ids


def test_vocab_and_merges(tok):
    assert 256 + len(SPECIAL_TOKENS) + len(IMAGE_MARKERS) < tok.vocab_size <= 400
    text = "the dog jumps over the river."
    assert len(tok.encode(text)) < len(text.encode())  # merges were learned and are used


@pytest.mark.parametrize(
    "text",
    ["a cat sits on the table.", "café 你好 🙂", "unseen: Ωμέγα ∑ ñ 🦙", "tabs\tand\nnewlines  ", "\x00", ""],
)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_specials_are_recognized_in_text(tok):
    ids = tok.encode(f"look{IMAGE} at this")
    assert ids.count(tok.image_id) == 1
    assert tok.decode(ids) == "look at this"
    assert tok.decode(ids, skip_special=False) == f"look{IMAGE} at this"


def test_no_bos_added(tok):
    assert tok.bos_id not in tok.encode("a cat")


def test_encode_batch_matches_encode(tok):
    texts = ["a cat", f"{IMAGE}the dog", "你好"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_token_to_id_unknown(tok):
    with pytest.raises(KeyError, match="not in the vocabulary"):
        tok.token_to_id("<|nope|>")


def test_vocab_size_too_small():
    with pytest.raises(ValueError, match="too small"):
        Tokenizer.train(["abc"], vocab_size=100)


def test_save_load_round_trip(tok, tmp_path):
    path = tmp_path / "sub" / "tokenizer.json"
    tok.save(path)
    loaded = Tokenizer.load(path)
    texts = corpus()[:20] + [f"{IMAGE} café 🙂"]
    assert [loaded.encode(t) for t in texts] == [tok.encode(t) for t in texts]
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.image_id == tok.image_id


def test_pickle_round_trip(tok):
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode("the dog 你好") == tok.encode("the dog 你好")
    assert clone.end_id == tok.end_id


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        Tokenizer.load(tmp_path / "nope.json")


def test_load_corrupt_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer"):
        Tokenizer.load(path)


def test_load_foreign_tokenizer(tmp_path):
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    path = tmp_path / "foreign.json"
    hf.save(str(path))
    with pytest.raises(ValueError, match=r"not a picovlm tokenizer \(missing special token <\|bos\|>\)"):
        Tokenizer.load(path)


def test_max_token_chars_bounds_the_tokens_of_any_text(tok):
    """A text of n characters is at least n / max_token_chars tokens, whatever it holds: the bound the
    server refuses over-long prompts by without tokenizing them. With a normalizer, 4 per character
    (NFC composes U+1F87 from 4 code points)."""
    longest = max((tok.decode([i], skip_special=False) for i in range(tok.vocab_size)), key=len)
    texts = [longest * 50, IMAGE * 40, *corpus(), "\u1f87" * 30, "a" * 1000]
    for t in texts:
        assert len(tok.encode(t)) * tok.max_token_chars >= len(t), t[:40]
    assert tok.max_token_chars >= len(longest) and tok.max_token_chars >= len(IMAGE)
    hf = HFTokenizer.from_str(tok._hf.to_str())
    hf.normalizer = normalizers.NFC()
    composing = Tokenizer(hf)
    assert composing.max_token_chars == 4 * tok.max_token_chars
    decomposed = unicodedata.normalize("NFD", "\u1f87") * 100  # 400 characters that NFC makes 100
    assert len(composing.encode(decomposed)) * composing.max_token_chars >= len(decomposed)
