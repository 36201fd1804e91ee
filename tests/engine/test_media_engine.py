"""Videos and audio through the one engine: batched with other prompts, alone, and in a chat session."""

import pytest

from picovlm.data.formats import load_samples
from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
from picovlm.engine.session import ChatSession
from picovlm.models.modalities import MODALITIES
from picovlm.text.tokens import AUDIO, VIDEO
from picovlm.video.decode import VideoError

PARAMS = SamplingParams(max_tokens=4, temperature=0.8, seed=3)


def test_a_row_decodes_the_same_alone_and_beside_others(tiny_av_run):
    pipe = Pipeline.load(tiny_av_run["model"])
    data = tiny_av_run["data"]
    video = MODALITIES["video"].load(data / "clips" / "test_000001.mp4")
    audio = MODALITIES["audio"].load(data / "sounds" / "test_000002.flac")
    rows = [
        ([{"role": "user", "content": f"{VIDEO}\nWhich way?"}], {"video": [video]}),
        ([{"role": "user", "content": f"{AUDIO}\nHow loud?"}], {"audio": [audio]}),
        ([{"role": "user", "content": f"{VIDEO}{AUDIO}\nBoth?"}], {"video": [video], "audio": [audio]}),
        ([{"role": "user", "content": "Text only?"}], {}),
    ]
    together = pipe.generate([m for m, _ in rows], [[] for _ in rows], PARAMS, [md for _, md in rows])
    assert together == [pipe.generate([m], [[]], PARAMS, [md])[0] for m, md in rows]


def test_session_keeps_every_modality_and_saves_them(tiny_av_run, tmp_path):
    data = tiny_av_run["data"]
    session = ChatSession(Pipeline.load(tiny_av_run["model"]), SamplingParams(max_tokens=2))
    with pytest.raises(VideoError, match="missing.mp4: video file not found"):
        session.attach(data / "clips" / "missing.mp4", "video")
    assert session.attach(data / "clips" / "test_000000.mp4", "video") == 1
    assert session.attach(data / "sounds" / "test_000000.flac", "audio") == 1
    first = "".join(session.send("what is it?"))
    assert session.attach(data / "sounds" / "test_000001.flac", "audio") == 2
    second = "".join(session.send("and now?"))
    assert [m["content"] for m in session.messages] == [
        f"{VIDEO}{AUDIO}\nwhat is it?",
        first,
        f"{AUDIO}\nand now?",
        second,
    ]
    (sample,) = load_samples(session.save(tmp_path / "chat.json"), on_error="raise")
    assert [p.resolve() for p in sample.inputs("audio")] == [data / "sounds" / f"test_00000{i}.flac" for i in (0, 1)]
    assert sample.messages == session.messages and sample.modalities == "video+audio"
    with pytest.raises(ValueError, match="unknown modality 'smell'"):
        session.attach(data / "x", "smell")
