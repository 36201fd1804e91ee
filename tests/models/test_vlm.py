"""Tests for the adapter VLM: image-token expansion, merging features into slots, loss, gradients."""

import pytest
import torch
import torch.nn.functional as F

from picovlm.config import GPTConfig, VisionConfig, ViTConfig, VLMConfig
from picovlm.models.modalities import Slots, expand_placeholders
from picovlm.models.vlm import IGNORE_INDEX, VLM, masked_lm_loss, merge_embeds

IMG = 2  # image placeholder id in these tests


def tiny_vlm(projector: str = "pixel_shuffle2", seed: int = 0) -> VLM:
    torch.manual_seed(seed)
    vit = ViTConfig(image_size=16, patch_size=4, n_embd=16, n_layer=2, n_head=2, mlp_ratio=2.0)
    lm = GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_kv_head=1, n_embd=32, mlp_hidden=48, max_seq_len=64)
    return VLM(VLMConfig(vision=VisionConfig(vit=vit), projector=projector, lm=lm), image_token_id=IMG)


def expand_image_tokens(ids, mask, n_images, tokens_per_image, markers=None):
    return expand_placeholders(ids, mask, [Slots(IMG, "image", n_images, tokens_per_image)], markers)


def test_expand_image_tokens():
    ids = [0, 3, IMG, 10, 11, IMG, 5]
    mask = [0, 0, 1, 1, 1, 0, 1]  # a (wrong) 1 on a placeholder must still become 0
    out_ids, out_mask = expand_image_tokens(ids, mask, n_images=2, tokens_per_image=3)
    assert out_ids == [0, 3, IMG, IMG, IMG, 10, 11, IMG, IMG, IMG, 5]
    assert out_mask == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1]
    assert expand_image_tokens([0, 4], [0, 1], 0, 3) == ([0, 4], [0, 1])


def test_expand_image_tokens_between_markers():
    start, end = 40, 41
    out_ids, out_mask = expand_image_tokens([0, IMG, 10, IMG], [1, 1, 1, 1], 2, 2, markers=(start, end))
    assert out_ids == [0, start, IMG, IMG, end, 10, start, IMG, IMG, end]
    assert out_mask == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0]  # no loss on an image's tokens or its markers


@pytest.mark.parametrize("n_images", [0, 1, 3])
def test_expand_image_tokens_count_mismatch(n_images):
    with pytest.raises(ValueError, match=f"text has 2 <\\|image\\|> placeholders but {n_images} images"):
        expand_image_tokens([IMG, 7, IMG], [0, 0, 0], n_images, 4)


def test_expand_several_modalities_each_at_its_own_placeholders():
    VID, AUD = 5, 6
    slots = [Slots(IMG, "image", 1, 2), Slots(VID, "video", 1, 3), Slots(AUD, "audio", 2, 1)]
    out_ids, out_mask = expand_placeholders([0, AUD, VID, 9, IMG, AUD], [1] * 6, slots, markers=(40, 41))
    assert out_ids == [0, 40, AUD, 41, 40, VID, VID, VID, 41, 9, 40, IMG, IMG, 41, 40, AUD, 41]
    assert out_mask == [1] + [0] * 8 + [1] + [0] * 7
    with pytest.raises(ValueError, match=r"text has 1 <\|video\|> placeholders but 2 videos"):
        expand_placeholders([VID], [0], [Slots(VID, "video", 2, 3)])


def test_merge_puts_each_image_at_its_slots():
    M, D = 2, 5
    ids = torch.tensor(
        [
            [0, IMG, IMG, 7, 8, 9, IMG, IMG, 4],  # sample 0: images 0 and 1
            [0, 5, 6, 11, IMG, IMG, 12, 13, 1],  # sample 1: image 2
        ]
    )
    text = torch.randn(2, 9, D)
    images = torch.arange(3 * M * D, dtype=torch.float32).view(3, M, D) + 100
    out = merge_embeds(text, ids, images, IMG)
    torch.testing.assert_close(out[0, 1:3], images[0])
    torch.testing.assert_close(out[0, 6:8], images[1])
    torch.testing.assert_close(out[1, 4:6], images[2])
    text_slots = ids != IMG
    torch.testing.assert_close(out[text_slots], text[text_slots])
    assert text.max() < 100  # the input was not modified in place


def test_merge_count_mismatch_raises():
    ids = torch.tensor([[IMG, IMG, IMG, 5]])
    with pytest.raises(ValueError, match=r"3 placeholder slots \(id 2\) in the text but 2 inputs x 2 tokens = 4"):
        merge_embeds(torch.zeros(1, 4, 3), ids, torch.zeros(2, 2, 3), IMG)


def test_tokens_per_image_and_encode_images():
    model = tiny_vlm()
    assert model.tokens_per_image == 4  # 4x4 patches, 2x2 pixel shuffle
    assert model.encode_images(torch.randn(3, 3, 16, 16)).shape == (3, 4, 32)
    assert tiny_vlm("mlp2x_gelu").tokens_per_image == 16


def sample_batch(model: VLM):
    n = model.tokens_per_image
    ids = torch.tensor([[0, 3] + [IMG] * n + [10, 11, 12, 5], [0, 3, 20, 21] + [IMG] * n + [22, 5]])
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return ids, pixels


def test_forward_logits_use_the_image():
    model = tiny_vlm().eval()
    ids, pixels = sample_batch(model)
    logits = model(ids, pixels)
    assert logits.shape == (2, ids.shape[1], 64)
    other = model(ids, pixels.flip(0))
    assert not torch.allclose(logits[:, -1], other[:, -1])


def test_loss_counts_only_labelled_positions():
    model = tiny_vlm().eval()
    ids, pixels = sample_batch(model)
    logits = model(ids, pixels)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[1, 9] = 22  # one target: predicted from position 8
    loss = model(ids, pixels, labels=labels)
    torch.testing.assert_close(loss, F.cross_entropy(logits[1, 8][None], torch.tensor([22])))

    labels[0, -1] = 5  # two targets: the mean of the two
    expected = (
        F.cross_entropy(logits[1, 8][None], torch.tensor([22]))
        + F.cross_entropy(logits[0, -2][None], torch.tensor([5]))
    ) / 2
    torch.testing.assert_close(model(ids, pixels, labels=labels), expected)

    labels[0, 0] = 7  # a label on the first position has nothing predicting it: ignored
    torch.testing.assert_close(model(ids, pixels, labels=labels), expected)


def test_the_head_runs_only_where_a_loss_is_taken_with_the_same_loss_and_gradients():
    model = tiny_vlm()
    ids, pixels = sample_batch(model)
    labels = ids.masked_fill(ids == IMG, IGNORE_INDEX)
    labels[:, :3] = IGNORE_INDEX
    rows = []
    model.lm.lm_head.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    loss = model(ids, pixels, labels=labels)
    assert rows == [int((labels[:, 1:] != IGNORE_INDEX).sum())]  # one row per target, not B x T
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    full = masked_lm_loss(model(ids, pixels), labels)  # the head over every position
    torch.testing.assert_close(loss, full)
    for g, h in zip(grads, torch.autograd.grad(full, list(model.parameters()), allow_unused=True), strict=True):
        assert (g is None) == (h is None)
        if g is not None:
            torch.testing.assert_close(g, h)


def test_image_tokens_without_pixels_raise():
    model = tiny_vlm()
    ids, _ = sample_batch(model)
    with pytest.raises(ValueError, match="no images were given"):
        model(ids)
    with pytest.raises(ValueError, match="no images were given"):
        model(ids, torch.empty(0, 3, 16, 16))
    assert model(torch.tensor([[0, 3, 4]])).shape == (1, 3, 64)  # text only is fine


def test_gradients_reach_projector_and_tower():
    model = tiny_vlm()
    ids, pixels = sample_batch(model)
    labels = ids.masked_fill(ids == IMG, IGNORE_INDEX)
    model(ids, pixels, labels=labels).backward()
    for name, p in model.named_parameters():
        if name.startswith("tower.blocks.1.") or name.startswith("tower.post_norm."):
            continue  # feature_layer=-2 skips the last block; post_norm only serves `pooled`
        assert p.grad is not None and p.grad.abs().sum() > 0, name
