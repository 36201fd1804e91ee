"""Tests for the modalities beside images: one placeholder mechanism, one merge, videos through the
image tower and projector, audio through its own tower and projector, in any mix."""

import numpy as np
import pytest
import torch
from PIL import Image

from picovlm.audio.wave import Audio
from picovlm.checkpoint import save_checkpoint
from picovlm.config import AudioConfig, GPTConfig, VideoConfig, VisionConfig, ViTConfig, VLMConfig
from picovlm.models.processor import VLMProcessor
from picovlm.models.vlm import VLM, load_vlm, media_token_ids, vlm_checkpoint_config
from picovlm.text.padding import IGNORE_INDEX
from picovlm.text.tokens import AUDIO, IMAGE, VIDEO
from picovlm.video.decode import load_video, write_video


def av_config(tok, pool: str = "frames") -> VLMConfig:
    vit = ViTConfig(image_size=16, patch_size=4, n_embd=16, n_layer=1, n_head=2, mlp_ratio=2.0)
    lm = GPTConfig(
        vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_kv_head=1, n_embd=32, mlp_hidden=48, max_seq_len=96
    )
    audio = AudioConfig(kind="whisper", seconds=0.5, n_mels=16, n_embd=16, n_layer=1, n_head=2, pool=13)
    video = VideoConfig(frames=4, pool=pool)
    return VLMConfig(vision=VisionConfig(vit=vit), projector="pixel_shuffle2", lm=lm, video=video, audio=audio)


def av_model(tok, pool: str = "frames", seed: int = 0) -> VLM:
    torch.manual_seed(seed)
    cfg = av_config(tok, pool)
    return VLM(cfg, tok.image_id, media_token_ids(cfg, tok)).eval()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    frames = [Image.new("RGB", (16, 16), (20 * k, 100, 200 - 20 * k)) for k in range(8)]
    return load_video(write_video(frames, tmp_path_factory.mktemp("video") / "clip.mp4"))


def sound(freq: float = 440.0) -> Audio:
    t = np.arange(8000) / 16000
    return Audio((0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000)


def test_each_modality_has_its_input_and_part(tok):
    model = av_model(tok)
    inputs = model.inputs
    assert {k: (v.token_id, v.num_tokens) for k, v in inputs.items()} == {
        "image": (tok.image_id, 4),  # 4x4 patches, 2x2 pixel shuffle
        "video": (tok.placeholder_id(VIDEO), 16),  # 4 frames of an image's 4 tokens, in order
        "audio": (tok.placeholder_id(AUDIO), 1),  # 13 encoder tokens pooled into 1
    }
    assert set(model.parts) == {"tower", "projector", "lm", "temporal", "audio_tower", "audio_projector"}
    assert "temporal" not in av_model(tok, pool="mean").parts  # a mean over time learns nothing
    assert av_model(tok, pool="mean").inputs["video"].num_tokens == 4


def test_a_sample_may_mix_image_video_and_audio(tok, clip):
    model = av_model(tok)
    proc = VLMProcessor.for_model(model, tok)
    messages = [
        {"role": "user", "content": f"{AUDIO}{IMAGE}{VIDEO}{AUDIO} what is in the picture"},
        {"role": "assistant", "content": "a cat"},
    ]
    enc = proc.encode_conversation(
        messages, [Image.new("RGB", (16, 16))], {"video": [clip], "audio": [sound(), sound(900)]}
    )
    assert enc.pixels.shape == (1, 3, 16, 16)
    assert enc.media["video"].shape == (1, 4, 3, 16, 16) and enc.media["audio"].shape == (2, 16, 50)
    ids = torch.tensor([enc.ids])
    assert [int((ids == i).sum()) for i in (tok.image_id, tok.placeholder_id(VIDEO), tok.placeholder_id(AUDIO))] == [
        4,
        16,
        2,
    ]
    labels = torch.tensor([[i if m else IGNORE_INDEX for i, m in zip(enc.ids, enc.loss_mask, strict=True)]])
    model.train()
    loss = model(ids, enc.pixels, labels=labels, **enc.media)
    loss.backward()
    for part in ("tower", "temporal", "audio_tower", "audio_projector", "projector"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(part + ".")]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part


def test_each_modality_fills_exactly_its_own_slots(tok, clip):
    """Changing the sound changes the embeddings at the audio slots only; the video's order matters."""
    model = av_model(tok)
    proc = VLMProcessor.for_model(model, tok)
    messages = [{"role": "user", "content": f"{VIDEO}{AUDIO} what"}]
    a = proc.encode_prompt(messages, [], media={"video": [clip], "audio": [sound(300)]})
    b = proc.encode_prompt(messages, [], media={"video": [clip], "audio": [sound(2000)]})
    ids = torch.tensor([a.ids])
    with torch.no_grad():
        ea, eb = model.embed(ids, None, **a.media), model.embed(ids, None, **b.media)
        reversed_ = model.embed(ids, None, video=a.media["video"].flip(1), audio=a.media["audio"])
    changed = (ea - eb).abs().sum(-1)[0] > 0
    assert changed.tolist() == (ids[0] == tok.placeholder_id(AUDIO)).tolist()
    video_slots = ids[0] == tok.placeholder_id(VIDEO)
    assert not torch.allclose(ea[0, video_slots], reversed_[0, video_slots])  # time order is seen


def test_refusals_name_what_is_wrong(tok, clip):
    model = av_model(tok)
    proc = VLMProcessor.for_model(model, tok)
    with pytest.raises(ValueError, match=r"text has 1 <\|video\|> placeholders but 0 videos were given"):
        proc.encode_prompt([{"role": "user", "content": f"{VIDEO} what"}], [])
    ids = torch.tensor(
        [proc.encode_prompt([{"role": "user", "content": f"{VIDEO} what"}], [], media={"video": [clip]}).ids]
    )
    with pytest.raises(ValueError, match=r"text has <\|video\|> tokens but no videos were given"):
        model(ids)
    with pytest.raises(ValueError, match="this model reads no 'depth' input"):
        model(ids, depth=torch.zeros(1))
    images_only = VLM(
        VLMConfig(vision=av_config(tok).vision, projector="pixel_shuffle2", lm=av_config(tok).lm), tok.image_id
    )
    plain = VLMProcessor.for_model(images_only, tok)
    with pytest.raises(ValueError, match="this model reads no videos; it reads: image"):
        plain.encode_prompt([{"role": "user", "content": f"{VIDEO} what"}], [], media={"video": [clip]})
    with pytest.raises(ValueError, match="this model reads no audio clips"):
        plain.encode_prompt([{"role": "user", "content": f"{AUDIO} what"}], [])
    with pytest.raises(ValueError, match="reads video, audio but got no placeholder id"):
        VLM(av_config(tok), tok.image_id)


def test_old_tokenizers_say_they_lack_the_placeholders(old_tok):
    with pytest.raises(ValueError, match=r"this tokenizer has no <\|video\|>"):
        media_token_ids(av_config(old_tok), old_tok)


def test_checkpoint_round_trip_keeps_every_part_and_id(tok, tmp_path, clip):
    model = av_model(tok)
    tok_file = tmp_path / "tok.json"
    tok.save(tok_file)
    save_checkpoint(tmp_path / "model", model, vlm_checkpoint_config(model), model.parts, {}, tok_file)
    loaded, _ = load_vlm(tmp_path / "model")
    assert loaded.token_ids == model.token_ids and loaded.parts == model.parts
    proc = VLMProcessor.for_model(model, tok)
    enc = proc.encode_prompt(
        [{"role": "user", "content": f"{VIDEO}{AUDIO} what"}], [], media={"video": [clip], "audio": [sound()]}
    )
    ids = torch.tensor([enc.ids])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, **enc.media), model(ids, **enc.media))
