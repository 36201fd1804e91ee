"""ChatSession: history, pending images, failed turns, saving as LLaVA data."""

import pytest

from picovlm.data.formats import load_samples
from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
from picovlm.engine.session import ChatSession
from picovlm.text.tokens import IMAGE
from picovlm.vision.image import ImageError


def test_history_images_and_save(tiny_run, tmp_path):
    images = tiny_run["data"] / "images"
    session = ChatSession(Pipeline.load(tiny_run["model"]), SamplingParams(max_tokens=3))
    with pytest.raises(ValueError, match="empty"):
        session.save(tmp_path / "chat.json")
    with pytest.raises(ImageError):
        session.attach(images / "missing.png")
    assert session.attach(images / "test_000000.png") == 1
    first = "".join(session.send("what colour?"))
    assert session.pending == [] and len(session.images) == 1
    assert session.attach(images / "test_000001.png") == 2
    second = "".join(session.send("and this one?"))
    assert [m["content"] for m in session.messages] == [
        f"{IMAGE}\nwhat colour?",
        first,
        f"{IMAGE}\nand this one?",
        second,
    ]

    with pytest.raises(ValueError):  # too long for the context: the history stays as it was
        "".join(session.send("what " * 200))
    assert len(session.messages) == 4

    saved = session.save(tmp_path / "out" / "chat.json")
    (sample,) = load_samples(saved, on_error="raise")
    assert [p.resolve() for p in sample.images] == [images / "test_000000.png", images / "test_000001.png"]
    assert sample.messages == session.messages
    session.reset()
    assert session.messages == [] and session.images == [] and session.pending == []
