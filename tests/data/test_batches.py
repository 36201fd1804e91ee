"""Samples -> batches: labels only on assistant tokens, image order, resumable streams."""

import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from picovlm.config import GPTConfig, VisionConfig, ViTConfig, VLMConfig
from picovlm.data import batches
from picovlm.data.batches import (
    BatchStream,
    Encodings,
    ImageCache,
    TowerFeatures,
    as_chat,
    clip_batch,
    context_length,
    fit_context,
    text_batch,
    vlm_batch,
)
from picovlm.data.isolation import stable_draw
from picovlm.data.records import TOO_LONG, BadRecord, DataError, ImageRef, Sample
from picovlm.models.clip import end_pooled_captions
from picovlm.models.processor import VLMProcessor
from picovlm.models.vlm import VLM
from picovlm.text.padding import IGNORE_INDEX
from picovlm.text.tokens import IMAGE
from picovlm.vision.image import ImageProcessor
from picovlm.vision.vit import ViT


@pytest.fixture
def images(tmp_path) -> list[Path]:
    paths = []
    for i, colour in enumerate(["red", "blue", "green"]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (16, 16), colour).save(paths[-1])
    return paths


def chat(image: Path, answer: str) -> Sample:
    return Sample(
        [image],
        [{"role": "user", "content": f"{IMAGE}\nwhat is in the picture"}, {"role": "assistant", "content": answer}],
        {"kind": "chat"},
    )


def test_vlm_batch_labels_only_assistant_tokens(tok, images):
    proc = VLMProcessor(tok, ImageProcessor(16), tokens_per_image=4, max_len=64)
    batch = vlm_batch([chat(images[0], "red"), chat(images[1], "a blue cat on the mat")], proc, ImageCache())
    assert batch["pixels"].shape == (2, 3, 16, 16)
    assert batch["ids"].shape == batch["labels"].shape
    for row in range(2):
        labelled = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX].tolist()
        assert labelled[-1] == tok.end_id
        assert tok.decode(labelled) == ["red", "a blue cat on the mat"][row]
    assert int((batch["ids"] == tok.image_id).sum()) == 2 * 4
    # image order follows sample order: row 0's image is red
    assert batch["pixels"][0, 0].mean() > batch["pixels"][0, 2].mean()


def test_caption_becomes_image_then_caption(images):
    s = Sample([images[0]], [{"role": "assistant", "content": "a red square"}], {"kind": "caption"})
    msgs = as_chat(s)
    assert msgs[0]["role"] == "user" and IMAGE in msgs[0]["content"]
    assert msgs[1] == {"role": "assistant", "content": "a red square"}


def test_text_batch_drops_images_and_labels_every_token(tok, images):
    batch = text_batch([chat(images[0], "red")], tok, max_len=64)
    assert not (batch["ids"] == tok.image_id).any()
    assert torch.equal(batch["labels"], batch["ids"])


def test_clip_batch_lengths_point_at_end_token(tok, images):
    samples = [
        Sample([p], [{"role": "assistant", "content": t}], {"kind": "caption"})
        for p, t in zip(images, ["red", "a blue cat", "green mat on the cat"], strict=True)
    ]
    batch = clip_batch(samples, end_pooled_captions(tok, max_len=32), ImageProcessor(16), ImageCache())
    for row, n in enumerate(batch["lengths"].tolist()):
        assert batch["ids"][row, n - 1] == tok.end_id


def test_stream_is_deterministic_and_resumable():
    samples = list(range(10))
    a = BatchStream(samples, 3, lambda s: {"x": torch.tensor(s)}, seed=1)
    first = [next(a)["x"].tolist() for _ in range(7)]  # crosses two epoch boundaries
    for epoch in (first[0:3], first[3:6]):  # 3 batches of 3 per epoch, the ragged 10th sample dropped
        seen = sum(epoch, [])
        assert len(set(seen)) == 9  # no repeats within an epoch
    b = BatchStream(samples, 3, lambda s: {"x": torch.tensor(s)}, seed=1)
    for _ in range(4):
        next(b)
    state = b.state_dict()
    c = BatchStream(samples, 3, lambda s: {"x": torch.tensor(s)}, seed=1)
    c.load_state_dict(state)
    assert [next(c)["x"].tolist() for _ in range(3)] == first[4:]
    other = BatchStream(samples, 3, lambda s: {"x": torch.tensor(s)}, seed=2)
    assert [next(other)["x"].tolist() for _ in range(3)] != first[:3]


def _padding(stream: BatchStream, n: int) -> float:
    """The share of padding in `n` batches of rows `[1] * length`, right-padded to the longest."""
    pad = total = 0
    for _ in range(n):
        rows = next(stream)["rows"]
        longest = max(map(len, rows))
        pad, total = pad + sum(longest - len(r) for r in rows), total + longest * len(rows)
    return pad / total


def test_batches_by_length_waste_less_padding_and_keep_every_sample():
    lengths = [random.Random(i).randint(5, 200) for i in range(103)]
    samples = [[1] * n for n in lengths]
    make = lambda s: {"rows": s, "x": torch.tensor([len(r) for r in s])}  # noqa: E731
    grouped = BatchStream(samples, 4, make, seed=3, lengths=lengths, group_by_length=True)
    seen = [len(r) for _ in range(25) for r in next(grouped)["rows"]]  # one epoch: 25 batches, 3 dropped
    assert sorted(seen) != seen and len(seen) == 100  # batches in a shuffled order ...
    assert len(set(map(id, (samples[i] for i in grouped._order[:100])))) == 100  # ... each sample once
    plain, grouped = (
        BatchStream(samples, 4, make, seed=3),
        BatchStream(samples, 4, make, seed=3, lengths=lengths, group_by_length=True),
    )
    assert _padding(grouped, 25) < 0.05 < 0.3 < _padding(plain, 25)
    again = BatchStream(samples, 4, make, seed=3, lengths=lengths, group_by_length=True)
    for _ in range(7):
        next(again)
    resumed = BatchStream(samples, 4, make, seed=3, lengths=lengths, group_by_length=True)
    resumed.load_state_dict(again.state_dict())
    assert next(resumed)["x"].tolist() == next(again)["x"].tolist()


def test_shards_of_a_batch_are_disjoint_and_make_the_whole_batch():
    samples = list(range(20))
    whole = BatchStream(samples, 6, lambda s: {"x": torch.tensor(s)}, seed=5)
    ranks = [BatchStream(samples, 6, lambda s: {"x": torch.tensor(s)}, seed=5) for _ in range(3)]
    for r, stream in enumerate(ranks):
        stream.shard(r, 3)
    for _ in range(5):  # across an epoch boundary
        shares = [next(s)["x"].tolist() for s in ranks]
        assert sorted(sum(shares, [])) == sorted(next(whole)["x"].tolist())
        assert all(len(share) == 2 for share in shares)
    with pytest.raises(ValueError, match="cannot be shared by 7"):
        whole.shard(0, 7)


def test_parts_of_a_batch_are_its_samples_sorted_by_length_and_cut():
    lengths = [random.Random(i).randint(5, 200) for i in range(40)]
    samples = [[1] * n for n in lengths]
    make = lambda s: {"rows": s}  # noqa: E731
    whole = BatchStream(samples, 8, make, seed=4, lengths=lengths)
    cut = BatchStream(samples, 8, make, seed=4, lengths=lengths, micro_batch=3)
    for _ in range(7):  # across an epoch boundary (5 batches an epoch)
        rows, parts = next(whole)["rows"], [p["rows"] for p in cut.next_parts()]
        assert [len(p) for p in parts] == [3, 3, 2]
        flat = [len(r) for p in parts for r in p]
        assert flat == sorted(flat) and sorted(flat) == sorted(map(len, rows))
    ranks = [BatchStream(samples, 8, make, seed=4, lengths=lengths, micro_batch=3) for _ in range(2)]
    for r, stream in enumerate(ranks):
        stream.shard(r, 2)
    shares = [[len(row) for p in s.next_parts() for row in p["rows"]] for s in ranks]
    assert [len(s) for s in shares] == [4, 4]  # each rank cuts its own share
    assert sorted(shares[0] + shares[1]) == sorted(map(len, next(BatchStream(samples, 8, make, seed=4))["rows"]))
    with pytest.raises(ValueError, match="need each sample's length"):
        BatchStream(samples, 8, make, micro_batch=3)


def test_too_few_samples_for_a_batch():
    with pytest.raises(ValueError, match="fewer than one batch"):
        BatchStream([1, 2], 3, lambda s: {})


def test_frozen_tower_features_match_pixels_and_run_once_per_image(tok, images):
    """A stage with a frozen tower feeds cached tower features: same loss as from pixels, and the
    tower sees each image once however often it is drawn."""
    torch.manual_seed(0)
    vit = ViTConfig(image_size=16, patch_size=4, n_embd=16, n_layer=2, n_head=2, mlp_ratio=2.0)
    lm = GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_kv_head=2, n_embd=32, mlp_hidden=48)
    model = VLM(VLMConfig(vision=VisionConfig(vit=vit), projector="pixel_shuffle2", lm=lm), tok.image_id)
    proc = VLMProcessor(tok, model.tower.processor, model.tokens_per_image, max_len=64)
    seen = []
    model.tower.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    cache = ImageCache()
    features = TowerFeatures(model.tower, cache)
    samples = [chat(images[0], "red"), chat(images[1], "blue"), chat(images[0], "a red cat")]

    cached = vlm_batch(samples, proc, cache, features)
    assert "pixels" not in cached and cached["features"].shape == (3, 16, 16)
    assert seen == [2]  # two distinct images, one tower call
    vlm_batch(samples, proc, cache, features)
    assert seen == [2]  # all cached now

    plain = vlm_batch(samples, proc, cache)
    assert torch.equal(plain["ids"], cached["ids"]) and torch.equal(plain["labels"], cached["labels"])
    from_pixels = model(plain["ids"], plain["pixels"], plain["labels"])
    from_features = model(cached["ids"], labels=cached["labels"], features=cached["features"])
    torch.testing.assert_close(from_features, from_pixels)


def test_tower_features_past_the_memory_cap_are_computed_each_time(tok, images):
    vit = ViTConfig(image_size=16, patch_size=4, n_embd=16, n_layer=1, n_head=2, mlp_ratio=2.0)
    tower = ViT(vit)
    calls = []
    tower.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    features = TowerFeatures(tower, ImageCache(), max_bytes=16 * 16 * 4)  # room for one image's features
    first = features([images[0], images[1]])
    again = features([images[0], images[1]])
    assert calls == [2, 1] and torch.equal(first, again)


def test_isolated_turns_split_after_each_answer_and_restart_positions(tok, images):
    two_turns = Sample(
        [images[0]],
        [
            {"role": "user", "content": f"{IMAGE}\nwhat is in the picture"},
            {"role": "assistant", "content": "red"},
            {"role": "user", "content": "what is on the mat"},
            {"role": "assistant", "content": "a blue cat"},
        ],
        {"kind": "chat"},
    )
    proc = VLMProcessor(tok, ImageProcessor(16), tokens_per_image=4, max_len=64)
    batch = vlm_batch([two_turns, chat(images[1], "red")], proc, ImageCache(), isolate_turns=1.0)
    ids, labels, pos, seg = batch["ids"], batch["labels"], batch["position_ids"], batch["segment_ids"]
    for row in range(2):
        prefix = int((ids[row] == tok.image_id).nonzero().max()) + 1
        assert seg[row, :prefix].eq(0).all() and pos[row, :prefix].tolist() == list(range(prefix))
        assert seg[row, prefix] == 1 and pos[row, prefix] == prefix
    # row 0: turn 2 starts right after turn 1's labelled answer (its end marker) and restarts positions
    answered = (labels[0] != IGNORE_INDEX).nonzero().flatten().tolist()
    first_end = next(i for i, j in zip(answered, answered[1:] + [None], strict=True) if j != i + 1)
    start = first_end + 1
    assert seg[0, start - 1] == 1 and seg[0, start] == 2
    prefix = int((ids[0] == tok.image_id).nonzero().max()) + 1  # row 0's (the loop above ended on row 1)
    assert pos[0, start] == prefix and pos[0, start + 1] == prefix + 1
    # every labelled token of turn 2 is in segment 2
    assert all(seg[0, i] == 2 for i in answered if i > start)


def test_an_isolated_turn_is_its_question_asked_alone(tok, images):
    """Every turn of an isolated conversation, the later ones too, has the tokens, positions and
    therefore the logits of the same question asked alone (`{IMAGE}\n{question}`, as `picovlm eval`
    and `Pipeline.ask` send it), while the image is in the batch once."""
    torch.manual_seed(0)
    vit = ViTConfig(image_size=16, patch_size=4, n_embd=16, n_layer=1, n_head=2, mlp_ratio=2.0)
    lm = GPTConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_kv_head=2, n_embd=32, mlp_hidden=48)
    model = VLM(VLMConfig(vision=VisionConfig(vit=vit), projector="pixel_shuffle2", lm=lm), tok.image_id).eval()
    proc = VLMProcessor(tok, model.tower.processor, model.tokens_per_image, max_len=96)
    turns = [("what is in the picture", "red"), ("what is on the mat", "a blue cat"), ("is it big", "no")]
    messages = [{"role": "user", "content": f"{IMAGE}\n{turns[0][0]}"}, {"role": "assistant", "content": turns[0][1]}]
    for question, answer in turns[1:]:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    batch = vlm_batch([Sample([images[0]], messages, {"kind": "chat"})], proc, ImageCache(), isolate_turns=1.0)
    assert int((batch["ids"] == tok.image_id).sum()) == model.tokens_per_image  # one copy of the image
    with torch.no_grad():
        together = model(batch["ids"], batch["pixels"], **{k: batch[k] for k in ("position_ids", "segment_ids")})
    seg = batch["segment_ids"][0]
    for k, (question, answer) in enumerate(turns, start=1):
        alone_messages = [{"role": "user", "content": f"{IMAGE}\n{question}"}, {"role": "assistant", "content": answer}]
        alone = vlm_batch([Sample([images[0]], alone_messages, {"kind": "chat"})], proc, ImageCache())
        prefix = int(seg.eq(0).sum())
        expected = alone["ids"][0, prefix:]
        assert batch["ids"][0, seg == k].tolist() == expected.tolist(), f"turn {k}"
        with torch.no_grad():
            single = model(alone["ids"], alone["pixels"])
        torch.testing.assert_close(together[0, seg == k], single[0, prefix:], atol=1e-5, rtol=1e-4)


def test_isolating_a_share_of_the_conversations_keeps_the_rest_whole(tok, images):
    proc = VLMProcessor(tok, ImageProcessor(16), tokens_per_image=4, max_len=64)
    samples = [chat(images[i % 3], f"red {'cat ' * i}".strip()) for i in range(12)]
    batch = vlm_batch(samples, proc, ImageCache(), isolate_turns=0.5)
    whole = batch["segment_ids"].eq(0).all(1)
    assert 0 < int(whole.sum()) < 12  # some of each
    T = batch["ids"].shape[1]
    assert torch.equal(batch["position_ids"][whole], torch.arange(T).expand(int(whole.sum()), T))
    again = vlm_batch(samples, proc, ImageCache(), isolate_turns=0.5)
    assert torch.equal(again["segment_ids"], batch["segment_ids"])  # the same share in every epoch and run


def test_encodings_tokenize_each_sample_once_and_change_no_batch(tok, images, monkeypatch):
    proc = VLMProcessor(tok, ImageProcessor(16), tokens_per_image=4, max_len=64)
    samples = [chat(images[i % 3], f"red {'cat ' * i}".strip()) for i in range(6)]
    calls = []
    real = batches.encode
    monkeypatch.setattr(batches, "encode", lambda *a: calls.append(a[1]) or real(*a))
    encodings = Encodings()
    for epoch in (samples, samples[::-1]):
        calls.clear()
        kept = vlm_batch(epoch, proc, ImageCache(), isolate_turns=0.5, encodings=encodings)
        assert len(calls) == (6 if epoch is samples else 0)  # the second epoch's draw tokenizes nothing
        plain = vlm_batch(epoch, proc, ImageCache(), isolate_turns=0.5)
        assert kept.keys() == plain.keys() and all(torch.equal(kept[k], plain[k]) for k in plain)


def conversation(images: list[Path], answers: int, long_answer: str = "red") -> Sample:
    """`answers` question-answer turns; image k is shown in question k (as many as there are images)."""
    messages = []
    for k in range(answers):
        shown = IMAGE + "\n" if k < len(images) else ""
        messages += [
            {"role": "user", "content": f"{shown}what is in the picture"},
            {"role": "assistant", "content": long_answer},
        ]
    return Sample(list(images), messages, {"kind": "chat", "question_types": ["color"] * answers})


def test_fit_context_skips_or_cuts_after_an_answer_never_inside_an_image(tok, images):
    proc = VLMProcessor(tok, ImageProcessor(16), tokens_per_image=8, max_len=64)
    short = conversation(images[:1], 1)
    assert fit_context(short, proc, truncate=True) is short  # fits: untouched
    long = conversation(images[:2], 6)  # the second image is in the second question
    assert context_length(long, proc) > 64
    with pytest.raises(BadRecord, match=r"^too long: \d+ tokens \(images included\), longer than the context of 64$"):
        fit_context(long, proc, truncate=False)
    cut = fit_context(long, proc, truncate=True)
    kept = len(cut.messages) // 2
    assert 1 <= kept < 6 and cut.messages == long.messages[: 2 * kept] and cut.messages[-1]["role"] == "assistant"
    assert (
        context_length(cut, proc) <= 64 < context_length(conversation(images[:2], kept + 1), proc)
    )  # the most that fit
    assert cut.images == long.images[: min(kept, 2)] and cut.meta["question_types"] == ["color"] * kept
    encoded = proc.encode_conversation_ids(cut.messages, len(cut.images))  # every image whole, in the context
    assert encoded.ids.count(tok.image_id) == 8 * len(cut.images) and len(encoded.ids) <= 64
    with pytest.raises(BadRecord) as info:  # not even the first answer fits: skipped
        fit_context(conversation(images[:1], 2, "a blue cat on the mat " * 20), proc, truncate=True)
    assert info.value.reason == TOO_LONG
    caption = Sample([images[0]], [{"role": "assistant", "content": "red " * 80}], {"kind": "caption"})
    with pytest.raises(BadRecord):  # one answer, nothing to cut
        fit_context(caption, proc, truncate=True)


def _broken(name: str) -> ImageRef:
    return ImageRef(name, lambda: b"\x89PNG\r\n\x1a\n cut short")


def test_a_stream_leaves_out_samples_whose_image_does_not_decode(images):
    samples = [chat(images[i % 3], str(i)) for i in range(6)]
    samples[2], samples[4] = chat(_broken("bad-a"), "2"), chat(_broken("bad-b"), "4")
    cache, rejected = ImageCache(), []

    def make(batch: list[Sample]) -> dict:
        return {
            "answers": torch.tensor([int(s.messages[-1]["content"]) for s in batch]),
            "n": [cache(s.image) for s in batch],
        }

    stream = BatchStream(samples, 3, make, seed=1, on_reject=lambda s, m: rejected.append((s.image.name, m)))
    drawn = [next(stream)["answers"].tolist() for _ in range(6)]
    assert sorted(name for name, _ in rejected) == ["bad-a", "bad-b"]  # each reported once
    assert all(m.startswith(name + ": not a readable image") for name, m in rejected)
    # 6 batches of 3 = 3 epochs: each epoch trains once on each sample left, in batches short of the bad ones
    assert sorted(i for d in drawn for i in d) == sorted([0, 1, 3, 5] * 3)

    again, restored = BatchStream(samples, 3, make, seed=1, on_reject=lambda s, m: restored.append(s.image.name)), []
    again.load_state_dict(stream.state_dict())
    assert sorted(restored) == ["bad-a", "bad-b"]  # counted again by a resumed run, not tripped on
    assert next(again)["answers"].tolist() == next(stream)["answers"].tolist()

    assert stream.rewind() is stream and (stream.epoch, stream.cursor) == (0, 0)
    everything_bad = BatchStream([chat(_broken(f"b{i}"), "0") for i in range(2)], 1, make)
    with pytest.raises(DataError, match="no sample left to train on: all 2 have an unreadable image"):
        next(everything_bad)


def test_isolated_turns_share_the_image_end_marker(tok, images):
    """With image markers the shared prefix runs to the <|image_end|> closing the last image, so every
    turn, not only the first, follows the image as a question asked alone does."""
    sample = Sample(
        [images[0]],
        [
            {"role": "user", "content": f"{IMAGE}\nwhat is in the picture"},
            {"role": "assistant", "content": "red"},
            {"role": "user", "content": "what is on the mat"},
            {"role": "assistant", "content": "a blue cat"},
        ],
        {"kind": "chat"},
    )
    proc = VLMProcessor(tok, ImageProcessor(16), tokens_per_image=4, max_len=64, image_markers=True)
    batch = vlm_batch([sample], proc, ImageCache(), isolate_turns=1.0)
    ids, pos, seg = batch["ids"][0].tolist(), batch["position_ids"][0], batch["segment_ids"][0]
    prefix = ids.index(tok.image_marker_ids[1]) + 1
    assert ids[prefix - 5 : prefix - 1] == [tok.image_id] * 4
    assert seg[:prefix].eq(0).all() and seg[prefix] == 1 and pos[prefix] == prefix
    second = int(seg.eq(2).nonzero()[0])
    assert pos[second] == prefix  # turn 2 restarts right after the marker too


def test_a_stable_draw_does_not_depend_on_the_folder_of_the_data(tmp_path):
    messages = [{"role": "user", "content": f"{IMAGE}\nWhat colour?"}, {"role": "assistant", "content": "red"}]
    here = Sample([tmp_path / "a" / "images" / "0001.png"], messages, {"kind": "chat"})
    moved = Sample([Path("/elsewhere/images/0001.png")], messages, {"kind": "chat"})
    packed = Sample([ImageRef("/shards/000.tar:0001.png", read=bytes)], messages, {"kind": "chat"})
    assert stable_draw(here) == stable_draw(moved)
    other = Sample([Path("/elsewhere/images/0002.png")], messages, {"kind": "chat"})
    draws = {stable_draw(s) for s in (here, other, packed)}
    assert len(draws) == 3 and all(0 <= d < 1 for d in draws)
