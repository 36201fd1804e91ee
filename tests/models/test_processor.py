"""Tests for VLMProcessor: conversations with images -> expanded ids, loss mask, pixels."""

import pytest
from PIL import Image

from picovlm.models.processor import VLMProcessor
from picovlm.text.tokens import IMAGE
from picovlm.vision.image import ImageProcessor


def make(tok, tokens_per_image: int = 4, max_len: int = 64, image_markers: bool = False) -> VLMProcessor:
    return VLMProcessor(tok, ImageProcessor(size=8), tokens_per_image, max_len, image_markers)


def images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (10, 6), (40 * i, 0, 0)) for i in range(n)]


def test_conversation_expands_placeholders(tok):
    proc = make(tok)
    messages = [
        {"role": "user", "content": f"{IMAGE}what is in the picture? {IMAGE}"},
        {"role": "assistant", "content": "a cat on the mat"},
    ]
    enc = proc.encode_conversation(messages, images(2))
    assert len(enc.ids) == len(enc.loss_mask)
    assert enc.ids.count(tok.image_id) == 8
    first = enc.ids.index(tok.image_id)
    assert enc.ids[first : first + 4] == [tok.image_id] * 4  # one placeholder -> one contiguous run
    assert enc.pixels.shape == (2, 3, 8, 8)
    assert all(m == 0 for i, m in zip(enc.ids, enc.loss_mask, strict=True) if i == tok.image_id)
    target = [i for i, m in zip(enc.ids, enc.loss_mask, strict=True) if m]
    assert tok.decode(target, skip_special=False) == "a cat on the mat<|end|>"
    # without the expansion, the ids are the plain template
    plain = make(tok, tokens_per_image=1).encode_conversation(messages, images(2))
    assert len(enc.ids) == len(plain.ids) + 2 * 3


def test_text_only_conversation(tok):
    enc = make(tok).encode_conversation([{"role": "assistant", "content": "a red cat"}], [])
    assert tok.image_id not in enc.ids and enc.pixels.shape == (0, 3, 8, 8)


def test_prompt_ends_with_assistant_marker(tok):
    enc = make(tok).encode_prompt([{"role": "user", "content": f"{IMAGE}describe"}], images(1))
    assert enc.ids[-1] == tok.assistant_id and enc.ids.count(tok.image_id) == 4
    assert set(enc.loss_mask) == {0}


def test_too_long_raises(tok):
    messages = [{"role": "user", "content": f"{IMAGE}what is in the picture?"}]
    n = len(make(tok, max_len=1000).encode_conversation(messages, images(1)).ids)
    make(tok, max_len=n).encode_conversation(messages, images(1))  # exactly fits
    with pytest.raises(
        ValueError,
        match=f"input is {n} tokens \\(1 images x 4 tokens included\\), longer than the context of {n - 1}",
    ):
        make(tok, max_len=n - 1).encode_conversation(messages, images(1))


def test_prompt_reserve_raises(tok):
    messages = [{"role": "user", "content": "describe"}]
    n = len(make(tok).encode_prompt(messages, []).ids)
    make(tok, max_len=n + 5).encode_prompt(messages, [], reserve=5)
    with pytest.raises(ValueError, match=f"prompt is {n} tokens; with 6 new tokens it exceeds the context"):
        make(tok, max_len=n + 5).encode_prompt(messages, [], reserve=6)


@pytest.mark.parametrize("n_images", [0, 2])
def test_placeholder_image_count_mismatch(tok, n_images):
    messages = [{"role": "user", "content": f"{IMAGE}describe"}, {"role": "assistant", "content": "yes"}]
    with pytest.raises(ValueError, match=f"1 <\\|image\\|> placeholders but {n_images} images"):
        make(tok).encode_conversation(messages, images(n_images))


def test_image_markers_wrap_each_image(tok):
    messages = [{"role": "user", "content": f"{IMAGE}what is this? {IMAGE}"}, {"role": "assistant", "content": "a cat"}]
    plain = make(tok).encode_conversation(messages, images(2))
    marked = make(tok, image_markers=True)
    enc = marked.encode_conversation(messages, images(2))
    start, end = tok.image_marker_ids
    first = enc.ids.index(start)
    assert enc.ids[first : first + 6] == [start, *[tok.image_id] * 4, end]
    assert enc.ids.count(start) == enc.ids.count(end) == 2 and len(enc.ids) == len(plain.ids) + 4
    assert [i for i in enc.ids if i not in (start, end)] == plain.ids  # nothing else changes
    assert [m for i, m in zip(enc.ids, enc.loss_mask, strict=True) if i not in (start, end)] == plain.loss_mask
    assert all(m == 0 for i, m in zip(enc.ids, enc.loss_mask, strict=True) if i in (start, end))
    assert marked.tokens_per_placeholder == 6 and make(tok).tokens_per_placeholder == 4
    prompt = marked.encode_prompt([{"role": "user", "content": f"{IMAGE}describe"}], images(1))
    assert prompt.ids[2:8] == [start, *[tok.image_id] * 4, end]  # after <|bos|><|user|>


def test_a_tokenizer_without_markers(old_tok):
    """Works as before without image markers; asked for them, it says so once, when the processor is made."""
    messages = [{"role": "user", "content": f"{IMAGE}describe"}, {"role": "assistant", "content": "a cat"}]
    enc = make(old_tok).encode_conversation(messages, images(1))
    body = old_tok.encode("describe") + [old_tok.end_id, old_tok.assistant_id, *old_tok.encode("a cat"), old_tok.end_id]
    assert enc.ids == [old_tok.bos_id, old_tok.user_id, *[old_tok.image_id] * 4, *body]
    with pytest.raises(ValueError, match=r"^old tokenizer: this tokenizer has no <\|image_start\|>"):
        make(old_tok, image_markers=True)
