"""The eval harness on videos and sounds: the vqa task per modality and question type, and the
endpoint client's content parts, which the server's parser reads back."""

import json

import pytest

from picovlm.eval.clients import EndpointClient
from picovlm.eval.harness import run_eval
from picovlm.eval.vqa import questions_from, score_vqa
from picovlm.models.modalities import MODALITIES
from picovlm.serve.protocol import Limits, decode_media, parse_chat_request


def test_vqa_scores_each_modality_apart(tiny_av_run, tmp_path):
    data = tiny_av_run["data"]
    mixed = tmp_path / "mixed.json"  # video and sound questions in one file, paths made absolute
    records = []
    for name in ("test_video.json", "test_audio.json"):
        for r in json.loads((data / name).read_text()):
            key = "video" if "video" in r else "audio"
            records.append({**r, key: str(data / r[key])})
    mixed.write_text(json.dumps(records))
    results = run_eval("vqa", mixed, tmp_path / "vqa.json", model=tiny_av_run["model"], progress=False)
    m = results["metrics"]
    assert set(m["by_modality"]) == {"video", "audio"}
    assert sum(v["n"] for v in m["by_modality"].values()) == m["n"]
    assert set(m["by_modality"]["video"]["by_type"]) <= {"direction", "speed", "event", "count", "color", "shape"}
    rows = [json.loads(line) for line in (tmp_path / "vqa.predictions.jsonl").read_text().splitlines()]
    assert {r["modality"] for r in rows} == {"video", "audio"}


def test_scores_by_modality_count_what_each_got_right():
    samples = load_samples_like()
    qs = questions_from(samples)
    m = score_vqa(qs, [q.answer if q.modality == "audio" else "wrong" for q in qs])
    assert m["by_modality"]["audio"]["accuracy"] == 1.0 and m["by_modality"]["video"]["accuracy"] == 0.0
    images = [q for q in qs if q.modality == "image"]
    assert len(images) == 1 and "by_modality" not in score_vqa(images, ["a"])  # image-only results stay as they were


def load_samples_like():
    from picovlm.data.records import Sample

    def sample(modality):
        media = {} if modality == "image" else {modality: ["x"]}
        token = MODALITIES[modality].token
        return Sample(["i.png"] if modality == "image" else [], [
            {"role": "user", "content": f"{token}\nq?"}, {"role": "assistant", "content": "a"}
        ], {"question_types": ["t"]}, media)  # fmt: skip

    return [sample("video"), sample("audio"), sample("audio"), sample("image")]


def test_endpoint_parts_are_what_the_server_reads(tiny_av_run):
    data = tiny_av_run["data"]
    video = MODALITIES["video"].load(data / "clips" / "test_000003.mp4")
    audio = MODALITIES["audio"].load(data / "sounds" / "test_000003.flac")
    body = EndpointClient("http://x", "m").request_body([], "Which way?", 4, {"video": [video], "audio": [audio]})
    req = parse_chat_request(body, "m", Limits())
    assert req.messages == [{"role": "user", "content": "<|video|>\n<|audio|>\nWhich way?"}]
    back = [decode_media(m, p, d, Limits()) for m, p, d in req.media_sources]
    assert back[0].times == video.times and back[1].samples == pytest.approx(audio.samples, abs=1e-4)
