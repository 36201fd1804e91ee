"""webdataset tar shards: grouping by key, lazy images, refused pickles, errors with shard and key."""

import io
import json
import logging
import tarfile

import pytest
from PIL import Image

from picovlm.data.batches import ImageCache
from picovlm.data.formats import load_samples
from picovlm.data.records import DAMAGED_FILE, IMAGE_TOKEN, DataError, ImageRef
from picovlm.data.report import DataReport
from picovlm.data.webdataset import split_key
from picovlm.vision.image import ImageError


def png(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, "PNG")
    return buf.getvalue()


def write_tar(path, members: list[tuple[str, bytes]], mode: str = "w"):
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def chat(question: str = "<image>\nwhat colour?", answer: str = "red") -> bytes:
    turns = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return json.dumps({"id": "x", "conversations": turns}).encode()


GOOD = [("a.png", png("red")), ("a.json", chat()), ("b.jpg", png("blue")), ("b.txt", b"a blue square\n")]


def test_split_key_is_webdatasets():
    assert split_key("dir/abc.0.PNG") == ("dir/abc", "0.png")
    assert split_key("abc.json") == ("abc", "json")


@pytest.mark.parametrize("name", ["shard.tar", "shard.tar.gz"])
def test_records_and_captions_with_their_images(tmp_path, name):
    path = write_tar(tmp_path / name, GOOD, "w:gz" if name.endswith("gz") else "w")
    a, b = load_samples(path, on_error="raise")
    assert a.messages == [
        {"role": "user", "content": f"{IMAGE_TOKEN}\nwhat colour?"},
        {"role": "assistant", "content": "red"},
    ]
    assert a.meta == {"kind": "chat", "id": "x", "source": f"{path}:a"}
    assert b.messages == [{"role": "assistant", "content": "a blue square"}] and b.meta["kind"] == "caption"
    assert [type(s.images[0]) for s in (a, b)] == [ImageRef, ImageRef]
    assert a.images[0].load().getpixel((0, 0)) == (255, 0, 0)
    assert ImageCache()(b.images[0]).getpixel((0, 0)) == (0, 0, 255)


def test_uncompressed_images_are_read_when_needed_not_at_load(tmp_path):
    path = write_tar(tmp_path / "s.tar", GOOD)
    (a, _) = load_samples(path, on_error="raise")
    path.unlink()  # the samples hold offsets into the shard, not the bytes
    with pytest.raises(ImageError, match=r"s\.tar:a\.png: cannot read the image"):
        a.images[0].load()


def test_several_images_in_extension_order_and_folder_of_shards(tmp_path):
    two = chat("<image> and <image>: same?", "no")
    write_tar(tmp_path / "1.tar", [("k.1.png", png("blue")), ("k.0.png", png("red")), ("k.json", two)])
    write_tar(tmp_path / "0.tar", GOOD)
    samples = load_samples(tmp_path, on_error="raise")
    assert [s.meta["source"] for s in samples] == [f"{tmp_path / '0.tar'}:{k}" for k in "ab"] + [
        f"{tmp_path / '1.tar'}:k"
    ]
    assert [im.load().getpixel((0, 0)) for im in samples[2].images] == [(255, 0, 0), (0, 0, 255)]


@pytest.mark.parametrize(
    ("members", "what"),
    [
        (
            [("b.png", png("red")), ("b.pyd", b"\x80\x04K\x01.")],
            "refusing pickle member b.pyd (unpickling can run code",
        ),
        ([("b.png", png("red")), ("b.txt", b"x"), ("b.pickle", b"")], "refusing pickle member b.pickle"),
        ([("b.png", png("red"))], "no .json or .txt member for this key"),
        ([("b.png", png("red")), ("b.json", b"{oops")], "b.json is not valid JSON"),
        ([("b.png", png("red")), ("b.json", b"[1]")], "b.json must hold a JSON object, not list"),
        ([("b.txt", b"a caption")], "a caption record needs exactly one image"),
        ([("b.png", png("red")), ("b.json", chat("no placeholder"))], "0 <image> placeholder(s) for 1 image(s)"),
        ([("b.png", png("red")), ("b.txt", b"\xff\xfe")], "b.txt is not UTF-8 text"),
    ],
)
def test_bad_keys_name_shard_and_key(tmp_path, members, what):
    path = write_tar(tmp_path / "s.tar", [GOOD[0], GOOD[1], *members])
    with pytest.raises(DataError) as info:
        load_samples(path, on_error="raise")
    assert str(info.value).startswith(f"{path}:b: {what}")
    report = DataReport()
    assert [s.meta["source"] for s in load_samples(path, report=report)] == [f"{path}:a"]
    assert [r.source for r in report.rejected] == [f"{path}:b"]


def test_links_and_damaged_shards_are_reported(tmp_path, caplog):
    path = tmp_path / "link.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("c.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
        info = tarfile.TarInfo("c.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DataError, match=r"link\.tar:c: member c\.png is a link or special file"):
        load_samples(path, on_error="raise")

    whole = write_tar(tmp_path / "whole.tar", GOOD).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[: 512 * 5 + 100])  # a's members whole, b's image cut short
    unread = r"the rest of the file was not read \(on_bad_file=\"skip\" keeps the 1 record read before it\)$"
    with pytest.raises(DataError, match=rf"^{cut}:end: damaged shard .*; {unread}"):
        load_samples(cut)  # the records after the damage are lost: not a run to go on with unasked
    report = DataReport()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="picovlm.data.report"):
        samples = load_samples(cut, report=report, on_bad_file="skip")
    assert [s.meta["source"] for s in samples] == [f"{cut}:a"]
    assert report.rejected[-1].source == f"{cut}:end" and report.rejected[-1].reason == DAMAGED_FILE
    assert [r.getMessage() for r in caplog.records] == [f"{r.source}: {r.error}" for r in report.rejected]

    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(DataError, match=r"junk\.tar: not a readable tar file"):
        load_samples(tmp_path / "junk.tar", on_error="raise")


def test_a_stage_trains_from_shards(tmp_path, llava_samples, train_from):
    """The tiny dataset's conversations as a shard: same batches as from its JSON, and a stage trains."""
    members = []
    for i, s in enumerate(llava_samples):
        record = {"conversations": [{"from": m["role"], "value": m["content"].replace(IMAGE_TOKEN, "<image>")}
                                    for m in s.messages]}  # fmt: skip
        members += [(f"s{i:03d}.png", s.images[0].read_bytes()), (f"s{i:03d}.json", json.dumps(record).encode())]
    write_tar(tmp_path / "train-000.tar", members[:8])
    write_tar(tmp_path / "train-001.tar", members[8:])
    samples = load_samples(tmp_path, on_error="raise")
    assert [s.messages for s in samples] == [s.messages for s in llava_samples]
    train_from(tmp_path, ("webdataset:.",), samples)
