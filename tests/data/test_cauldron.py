"""the_cauldron layout through `datasets`: save_to_disk folders and parquet, lazy images, errors by row."""

import io

import datasets
import pytest
from PIL import Image

from picovlm.data.batches import ImageCache
from picovlm.data.formats import load_samples
from picovlm.data.records import IMAGE_TOKEN, DataError, ImageRef
from picovlm.data.report import DataReport

FEATURES = datasets.Features(
    {
        "images": datasets.Sequence(datasets.Image()),
        "texts": [
            {
                "user": datasets.Value("string"),
                "assistant": datasets.Value("string"),
                "source": datasets.Value("string"),
            }
        ],
    }
)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """`datasets` turns parquet into a cached Arrow file: keep it out of the home folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def turn(user: str, assistant: str, source: str = "vqav2") -> dict:
    return {"user": user, "assistant": assistant, "source": source}


ROWS = {
    "images": [
        [Image.new("RGB", (8, 8), "red")],
        [Image.new("RGB", (8, 8), "blue"), Image.new("RGB", (8, 8), "lime")],
        [],
    ],
    "texts": [
        [turn("What colour?", "Red."), turn("Sure?", "Yes.")],
        [turn("Same colour?", "No.", "nlvr2")],
        [turn("Say hi.", "Hi.", "text_only")],
    ],
}


def write(tmp_path, rows: dict, how: str):
    ds = datasets.Dataset.from_dict(rows, features=FEATURES)
    if how == "disk":
        ds.save_to_disk(str(tmp_path / "disk"))
        return tmp_path / "disk"
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train-00000.parquet"))
    return tmp_path / "pq" / "train-00000.parquet" if how == "parquet" else tmp_path / "pq"


@pytest.mark.parametrize("how", ["disk", "parquet", "parquet_folder"])
def test_rows_become_conversations_with_images_first(tmp_path, how):
    path = write(tmp_path, ROWS, how)
    a, b, c = load_samples(path, on_error="raise")
    assert a.messages == [
        {"role": "user", "content": f"{IMAGE_TOKEN}\nWhat colour?"},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes."},
    ]
    assert a.meta == {"kind": "chat", "subset": "vqav2", "source": f"{path}:row 0"}
    assert b.messages[0]["content"] == f"{IMAGE_TOKEN}{IMAGE_TOKEN}\nSame colour?"
    assert [ImageCache()(im).getpixel((0, 0)) for im in b.images] == [(0, 0, 255), (0, 255, 0)]
    assert all(isinstance(im, ImageRef) for im in a.images + b.images)
    assert c.images == [] and c.messages[0]["content"] == "Say hi."


def test_format_can_be_named_and_arrow_files_read(tmp_path):
    path = write(tmp_path, ROWS, "disk")
    arrow = next(path.glob("*.arrow"))
    assert len(load_samples(arrow, on_error="raise")) == 3
    assert len(load_samples(path, on_error="raise", format="cauldron")) == 3
    with pytest.raises(ValueError, match="unknown format 'parquet'"):
        load_samples(path, format="parquet")


def test_bytes_and_path_cells_without_the_image_feature(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "red.png")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buf, "PNG")
    rows = {"images": [[{"bytes": None, "path": "red.png"}], [{"bytes": buf.getvalue(), "path": None}]],
            "texts": [[turn("Colour?", "Red.")], [turn("Colour?", "Blue.")]]}  # fmt: skip
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "d"))
    samples = load_samples(tmp_path / "d", on_error="raise", image_root=tmp_path)
    assert [s.images[0].load().getpixel((0, 0)) for s in samples] == [(255, 0, 0), (0, 0, 255)]


@pytest.mark.parametrize(
    ("texts", "images", "what"),
    [
        ([], [], "'texts' must be a non-empty list"),
        ([{"user": "hi", "assistant": None, "source": "x"}], [], "texts[0] needs string 'user' and 'assistant'"),
        ([turn("<image> what?", "x")], [], "texts hold an <image> placeholder"),
        ([turn(f"{IMAGE_TOKEN} what?", "x")], [], "text turn 0 contains the reserved token"),
        ([turn("what?", "x")], [{"bytes": None, "path": "missing.png"}], "image not found: "),
        ([turn("what?", "x")], [{"bytes": b"not a png", "path": None}], "not a readable image: "),
        ([turn("what?", "x")], [{"bytes": None, "path": None}], "image 0: an image with neither bytes nor a path"),
    ],
)
def test_bad_rows_name_the_row(tmp_path, texts, images, what):
    good = [turn("What?", "Something.")]
    rows = {"images": [[], images, []], "texts": [good, texts, good]}
    path = tmp_path / "d"
    datasets.Dataset.from_dict(rows).save_to_disk(str(path))
    with pytest.raises(DataError) as info:
        load_samples(path, on_error="raise")
    assert str(info.value).startswith(f"{path}:row 1: {what}")
    report = DataReport()
    assert [s.meta["source"] for s in load_samples(path, report=report)] == [f"{path}:row 0", f"{path}:row 2"]
    assert [(r.source, r.record) for r in report.rejected] == [(f"{path}:row 1", {"texts": texts})]


def test_wrong_layouts_are_clear_errors(tmp_path):
    datasets.Dataset.from_dict({"image": [1], "question": ["q"]}).save_to_disk(str(tmp_path / "other"))
    with pytest.raises(DataError, match=r"other: not the_cauldron layout: no column\(s\) \['images', 'texts'\]"):
        load_samples(tmp_path / "other")
    ds = datasets.Dataset.from_dict(ROWS, features=FEATURES)
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"a DatasetDict with splits \['test', 'train'\]: give one split's folder"):
        load_samples(tmp_path / "dd")


def test_a_stage_trains_from_a_cauldron_dataset(tmp_path, llava_samples, train_from):
    rows: dict[str, list] = {"images": [], "texts": []}
    for s in llava_samples:
        pairs = [s.messages[k : k + 2] for k in range(0, len(s.messages), 2)]
        texts = [turn(q["content"].removeprefix(f"{IMAGE_TOKEN}\n"), a["content"], "scenes") for q, a in pairs]
        rows["images"].append([Image.open(s.images[0])])
        rows["texts"].append(texts)
    datasets.Dataset.from_dict(rows, features=FEATURES).save_to_disk(str(tmp_path / "scenes"))
    samples = load_samples(tmp_path / "scenes", on_error="raise")
    assert [s.messages for s in samples] == [s.messages for s in llava_samples]
    train_from(tmp_path, ("scenes",), samples)
