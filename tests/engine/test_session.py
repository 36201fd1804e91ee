"""ChatSession: history, pending images, failed turns, saving as LLaVA data."""

import pytest

from picovlm.data.formats import load_samples
from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
from picovlm.engine.session import ChatSession, Drawn
from picovlm.text.tokens import IMAGE
from picovlm.vision.image import ImageError
from tests.native.helpers import drawing_pipeline


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


def test_drawn_images_are_saved_and_kept_in_the_history(tiny_native_run, tmp_path):
    """A native model's drawing (in an answer, or asked for with `draw`) is a saved PNG, an <|image|>
    of the answer and an image of the conversation, in text order; `save` writes the drawn paths."""
    session = ChatSession(drawing_pipeline(tiny_native_run["model"]), SamplingParams(max_tokens=20), tmp_path / "d")
    parts = list(session.send("draw a circle"))
    assert isinstance(parts[0], Drawn) and parts[0].path == tmp_path / "d" / "drawn_001.png"
    drawn = session.draw("a blue square")
    assert drawn.path.name == "drawn_002.png" and drawn.image.size == (32, 32)
    assert session.messages[1]["content"].startswith(IMAGE) and session.messages[3]["content"] == IMAGE
    assert session.images == [parts[0].image, drawn.image]
    (sample,) = load_samples(session.save(tmp_path / "chat.json"), on_error="raise")
    assert [p.resolve() for p in sample.images] == [parts[0].path.resolve(), drawn.path.resolve()]
    assert len(list(session.send("and now?"))) >= 1 and len(session.messages) == 6
