"""The av recipe through the one loop: the clap stage pretrains the audio tower the VLM then reads,
and a VLM stage learns from videos and sounds with the parts of both paths."""

import torch
from safetensors.torch import load_file

from picovlm.checkpoint import part_files, read_config
from picovlm.config import StageConfig
from picovlm.data.formats import load_samples
from picovlm.models.clip import CLIPModel, load_clip
from picovlm.models.vlm import load_vlm
from picovlm.presets import RECIPES
from picovlm.text.tokenizer import Tokenizer
from picovlm.train.stage_tasks import build_stage_task, load_stage_model
from picovlm.train.stages import checkpoint_dir


def test_clap_checkpoint_holds_the_audio_tower_the_vlm_starts_from(tiny_av_run):
    run = tiny_av_run["run"]
    clap = checkpoint_dir(run, "clap")
    model = load_stage_model(clap)
    assert isinstance(model, CLIPModel) and read_config(clap)["task"] == "clap"
    assert set(part_files(clap)) == {"audio_tower", "clip"}
    align = read_config(checkpoint_dir(run, "align"))
    tower = load_file(part_files(clap)["audio_tower"])
    vlm, _ = load_vlm(checkpoint_dir(run, "align"))
    ours = {k.removeprefix("audio_tower."): v for k, v in vlm.state_dict().items() if k.startswith("audio_tower.")}
    assert ours.keys() == tower.keys() and all(torch.equal(ours[k], tower[k]) for k in tower)
    assert set(align["parts"]) == {"tower", "projector", "lm", "temporal", "audio_tower", "audio_projector"}


def test_instruct_learns_the_adapters_of_both_paths_and_the_lm(tiny_av_run):
    run = tiny_av_run["run"]
    instruct, align = checkpoint_dir(run, "instruct"), checkpoint_dir(run, "align")
    before, after = part_files(align), part_files(instruct)
    changed = set()
    for part in before:
        old, new = load_file(before[part]), load_file(after[part])
        if any(not torch.equal(old[k], new[k]) for k in old):
            changed.add(part)
    assert changed == {"projector", "temporal", "audio_projector", "lm"}  # the towers stay frozen
    ids = read_config(instruct)["media_token_ids"]
    assert ids == read_config(align)["media_token_ids"] and set(ids) == {"video", "audio"}


def test_a_vlm_batch_of_videos_and_sounds_has_each_tensor(tiny_av_run):
    data = tiny_av_run["data"]
    recipe = RECIPES["tiny-av"](str(data))
    words = load_samples(data / "train_video.json") + load_samples(data / "train_audio.json")
    tok = Tokenizer.load(tiny_av_run["run"] / "tokenizer.json")
    task = build_stage_task(
        recipe, StageConfig(name="x", task="vlm", trainable=("projector", "lm"), isolate_turns=1.0), tok
    )
    samples = words[:3] + words[-2:]
    batch = task.make_batch(samples)
    assert batch["video"].shape == (3, 4, 3, 16, 16) and batch["audio"].shape == (2, 16, 50)
    assert "features" not in batch  # no images in this batch, and the frozen tower is not asked for any
    loss = task.loss(batch)
    assert torch.isfinite(loss)
    again = task.make_batch(samples)  # from the cache of decoded clips and spectrograms
    assert torch.equal(again["video"], batch["video"]) and len(task.media.tensors) == 5
    vid = tok.placeholder_id("<|video|>")
    first_turn = batch["segment_ids"][0][batch["ids"][0] == vid]
    assert (first_turn == 0).all()  # the video is in the shared prefix every isolated turn sees


def test_clap_model_embeds_sounds_and_captions(tiny_av_run):
    from picovlm.audio.wave import load_audio
    from picovlm.eval.embedder import ClipEmbedder

    embedder = ClipEmbedder.load(checkpoint_dir(tiny_av_run["run"], "clap"))
    sounds = [load_audio(p) for p in sorted((tiny_av_run["data"] / "sounds").glob("test_*.flac"))[:3]]
    emb = embedder.encode_images(sounds)
    assert emb.shape == (3, 32) and torch.allclose(emb.norm(dim=-1), torch.ones(3))
    assert load_clip(checkpoint_dir(tiny_av_run["run"], "clap"))[2] == "gpt"
