import json
import logging

import pytest
from PIL import Image

from picovlm.data.formats import detect_format, load_samples, split_format, write_llava_json
from picovlm.data.records import BAD_IMAGE, BAD_RECORD, DAMAGED_FILE, IMAGE_TOKEN, DataError, ImageRef, Sample
from picovlm.data.report import DataReport


def _qa(question: str = "<image>\nWhat is it?", answer: str = "a circle") -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


GOOD = {"id": "ok", "image": "a.png", "conversations": _qa()}


@pytest.fixture
def folder(tmp_path):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)  # its header is read at load time
    return tmp_path


def _at(path, line: int, record) -> str:
    """How a JSONL record is named: its line, and its id when it has one."""
    return f"{path}:{line}" + (f" (id {record['id']})" if isinstance(record, dict) and "id" in record else "")


def _jsonl(folder, records: list, name: str = "data.jsonl"):
    path = folder / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# (bad record, expected message after "{path}:{line}: ")
BAD_RECORDS = [
    ("{not json", "invalid JSON"),
    ([1, 2], "expected a JSON object, got list"),
    ({"image": "a.png"}, "missing key 'conversations' (or 'messages', or 'text' for a caption)"),
    ({"image": "a.png", "conversations": []}, "'conversations' must be a non-empty list"),
    ({"image": "a.png", "conversations": "hi"}, "'conversations' must be a non-empty list"),
    ({"conversations": ["hi"]}, "turn 0 must be an object"),
    ({"conversations": [{"from": "human"}]}, "turn 0 needs string 'from' and 'value'"),
    ({"conversations": [{"from": "human", "value": 3}]}, "turn 0 needs string 'from' and 'value'"),
    ({"conversations": [{"from": "robot", "value": "hi"}]}, "turn 0 has unknown role 'robot'"),
    ({"conversations": _qa("hi")[::-1]}, "turn 0 is from the assistant, expected the user"),
    ({"conversations": _qa("hi")[:1] * 2}, "turn 1 is from the user, expected the assistant"),
    ({"conversations": _qa("hi") + _qa("more")[:1]}, "conversation must end with an assistant turn"),
    ({"conversations": [{"from": "system", "value": "hi"}]}, "conversation has no user or assistant turns"),
    ({"image": "missing.png", "conversations": _qa()}, "image not found: "),
    ({"image": 7, "conversations": _qa()}, "'image' must be a non-empty string or a list of them"),
    ({"image": "a.png", "conversations": _qa("no placeholder")}, "0 <image> placeholder(s) for 1 image(s)"),
    ({"conversations": _qa()}, "1 <image> placeholder(s) for 0 image(s)"),
    ({"image": ["a.png", "b.png"], "conversations": _qa()}, "1 <image> placeholder(s) for 2 image(s)"),
    ({**GOOD, "question_types": ["color", "count"]}, "'question_types' must be a list of 1 strings"),
    ({"image": "a.png", "text": ""}, "'text' must be a non-empty string"),
    ({"text": "a red circle"}, "a caption record needs exactly one image"),
]


@pytest.mark.parametrize(("record", "what"), BAD_RECORDS)
def test_each_problem_raises_with_file_and_line(folder, record, what):
    path = _jsonl(folder, [GOOD, record, GOOD])
    with pytest.raises(DataError) as info:
        load_samples(path, on_error="raise")
    assert str(info.value).startswith(f"{_at(path, 2, record)}: {what}")
    assert "\n" not in str(info.value)


def test_skip_mode_keeps_good_records_and_reports_bad_ones(folder, caplog):
    records = [GOOD, BAD_RECORDS[0][0], GOOD, {"conversations": []}, {"image": "a.png", "text": "a caption"}]
    path = _jsonl(folder, records)
    report = DataReport()
    with caplog.at_level(logging.WARNING, logger="picovlm.data.report"):
        samples = load_samples(path, report=report)
    assert [s.meta["source"] for s in samples] == [f"{path}:1 (id ok)", f"{path}:3 (id ok)", f"{path}:5"]
    assert [r.source for r in report.rejected] == [f"{path}:2", f"{path}:4"]
    assert [r.record for r in report.rejected] == [None, {"conversations": []}]  # broken JSON has no record
    assert [r.getMessage() for r in caplog.records] == [f"{r.source}: {r.error}" for r in report.rejected]
    assert (report.read, report.used, report.counts()) == (5, 3, {BAD_RECORD: 2})


def test_blank_lines_are_ignored_but_counted(folder):
    path = folder / "data.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps({"conversations": []}) + "\n")
    with pytest.raises(DataError, match=r"data\.jsonl:3: "):
        load_samples(path, on_error="raise")


def test_json_array_names_records_by_index_line_and_id(folder):
    path = folder / "data.json"
    path.write_text(json.dumps([GOOD, GOOD, {"conversations": []}, GOOD], indent=2))
    lines = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if line == "  {"]  # record starts
    report = DataReport()
    samples = load_samples(path, report=report)
    assert [s.meta["source"] for s in samples] == [f"{path}#{i} (line {lines[i]}, id ok)" for i in (0, 1, 3)]
    assert [(r.source, r.error) for r in report.rejected] == [
        (f"{path}#2 (line {lines[2]})", "'conversations' must be a non-empty list")
    ]


def test_a_json_list_on_one_line_names_records_by_index_and_id(folder):
    """What json.dump writes: every record is on line 1, so the line says nothing; the index does."""
    path = folder / "train.json"
    records = [{**GOOD, "id": f"train_{i:06d}"} for i in range(5)]
    records[3]["conversations"] = []
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match=rf"^{path}#3 \(id train_000003\): 'conversations' must be a non-empty"):
        load_samples(path, on_error="raise")
    sources = [s.meta["source"] for s in load_samples(path)]
    assert sources == [f"{path}#{i} (id train_{i:06d})" for i in (0, 1, 2, 4)]


def test_a_json_list_cut_short_fails_unless_told_to_keep_what_was_read(folder):
    """train.json cut inside record 3 of 8: the run must not go on with 3 records as if that were all."""
    path = folder / "train.json"
    text = json.dumps([{**GOOD, "id": f"train_{i:06d}"} for i in range(8)])
    path.write_text(text[: text.index('"train_000003"') + 20])
    for on_error in ("skip", "raise"):
        with pytest.raises(DataError, match=rf"^{path}#3: invalid JSON at column \d+: .*; the rest of the file"):
            load_samples(path, on_error=on_error)
    report = DataReport()
    assert len(load_samples(path, report=report, on_bad_file="skip")) == 3
    assert [(r.source, r.reason) for r in report.rejected] == [(f"{path}#3", DAMAGED_FILE)]
    assert (report.read, report.used) == (3, 3)
    assert "not read to the end" in report.summary()


CAPTION = json.dumps({"image": "a.png", "text": "A circle."})


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ('{"conversations": []}', "", "expected a JSON list of records"),
        ("", "", "expected a JSON list of records"),
        ("[\nC,\nC\n]".replace("C", CAPTION)[:-3] + "\n]", "#1 (line 3)", "invalid JSON"),  # second record unclosed
        ("[\nC\nC\n]".replace("C", CAPTION), "#1 (line 3)", "expected ',' or ']' after a record"),
        ("[\nC,\n]".replace("C", CAPTION), "#1 (line 3)", "invalid JSON"),  # trailing comma
        ("[\nC,\nC".replace("C", CAPTION), "#2 (line 3)", "expected ',' or ']' after a record"),  # unclosed list
    ],
)
def test_json_array_syntax_errors(folder, text, where, what):
    path = folder / "data.json"
    path.write_text(text)
    for on_error in ("raise", "skip"):  # the file cannot be read to its end: an error in both modes
        with pytest.raises(DataError) as info:
            load_samples(path, on_error=on_error)
        assert str(info.value).startswith(f"{path}{where}: {what}")


def test_syntax_error_in_json_array_keeps_earlier_records_when_told_to(folder):
    path = folder / "data.json"
    path.write_text("[\n" + json.dumps(GOOD) + ",\n" + json.dumps(GOOD) + ",\n{oops}\n]")
    report = DataReport()
    assert len(load_samples(path, report=report, on_bad_file="skip")) == 2
    (reject,) = report.rejected
    assert reject.source == f"{path}#2 (line 4)" and reject.error.startswith("invalid JSON at line 4, column 2: ")


def test_images_are_checked_from_their_header_at_load_time(folder, monkeypatch):
    (folder / "fake.png").write_text("not an image")
    Image.new("RGB", (8, 8)).save(folder / "big.png")
    monkeypatch.setattr("picovlm.data.records.MAX_IMAGE_PIXELS", 50)
    records = [GOOD, {**GOOD, "image": "fake.png"}, {**GOOD, "image": "big.png"}, {**GOOD, "image": "none.png"}]
    report = DataReport()
    assert len(load_samples(_jsonl(folder, records), report=report)) == 1
    assert report.counts() == {BAD_IMAGE: 3}
    errors = [r.error for r in report.rejected]
    assert errors[0].startswith(f"not a readable image: {folder / 'fake.png'}")
    assert errors[1] == f"image {folder / 'big.png'} is 8x8, more than 50 pixels"
    assert errors[2] == f"image not found: {folder / 'none.png'}"


def test_llava_record_becomes_messages(folder):
    record = {
        **GOOD,
        "conversations": [{"from": "system", "value": "be brief"}, *_qa(), *_qa("and?", "no")],
        "question_types": ["shape", "yesno"],
    }
    (sample,) = load_samples(_jsonl(folder, [record]), on_error="raise")
    assert sample.images == [folder / "a.png"] and sample.image == folder / "a.png"
    assert sample.messages == [
        {"role": "user", "content": f"{IMAGE_TOKEN}\nWhat is it?"},
        {"role": "assistant", "content": "a circle"},
        {"role": "user", "content": "and?"},
        {"role": "assistant", "content": "no"},
    ]
    assert sample.meta == {
        "kind": "chat",
        "id": "ok",
        "question_types": ["shape", "yesno"],
        "source": f"{folder / 'data.jsonl'}:1 (id ok)",
    }


def test_user_and_assistant_role_names_and_text_only_records(folder):
    record = {"conversations": [{"from": "user", "value": "hi"}, {"from": "assistant", "value": "hello"}]}
    (sample,) = load_samples(_jsonl(folder, [record]), on_error="raise")
    assert sample.images == [] and sample.image is None
    assert [m["role"] for m in sample.messages] == ["user", "assistant"]


def test_caption_record(folder):
    (sample,) = load_samples(_jsonl(folder, [{"image": "a.png", "text": "A red circle."}]), on_error="raise")
    assert sample.images == [folder / "a.png"]
    assert sample.messages == [{"role": "assistant", "content": "A red circle."}]
    assert sample.meta["kind"] == "caption"


def test_several_images_per_record(folder):
    record = {"image": ["a.png", "b.png"], "conversations": _qa("<image> and <image>: same?", "no")}
    (sample,) = load_samples(_jsonl(folder, [record]), on_error="raise")
    assert sample.images == [folder / "a.png", folder / "b.png"]
    assert sample.messages[0]["content"] == f"{IMAGE_TOKEN} and {IMAGE_TOKEN}: same?"


def test_image_root_and_check_images(folder):
    sub = folder / "sub"
    sub.mkdir()
    path = _jsonl(sub, [GOOD])
    with pytest.raises(DataError, match="image not found"):
        load_samples(path, on_error="raise")
    assert load_samples(path, on_error="raise", image_root=folder)[0].images == [folder / "a.png"]
    assert load_samples(path, on_error="raise", check_images=False)[0].images == [sub / "a.png"]


def test_bad_arguments(folder):
    with pytest.raises(ValueError, match="extension"):
        load_samples(folder / "data.csv")
    with pytest.raises(ValueError, match="on_error"):
        load_samples(_jsonl(folder, [GOOD]), on_error="ignore")
    with pytest.raises(ValueError, match="on_bad_file"):
        load_samples(_jsonl(folder, [GOOD]), on_bad_file="ignore")


def test_write_llava_json_round_trips(folder):
    records = [
        GOOD,
        {"image": ["a.png", "b.png"], "conversations": _qa("<image><image>", "two"), "question_types": ["count"]},
        {"conversations": _qa("hi", "hello")},
    ]
    samples = load_samples(_jsonl(folder, records), on_error="raise")
    out = folder / "elsewhere" / "out.json"
    write_llava_json(samples, out)
    written = json.loads(out.read_text())
    assert written[0] == {**GOOD, "image": "../a.png"}
    assert written[1]["image"] == ["../a.png", "../b.png"] and written[1]["question_types"] == ["count"]
    assert "image" not in written[2]
    again = load_samples(out, on_error="raise")

    def resolved(samples: list[Sample]) -> list:
        return [([p.resolve() for p in s.images], s.messages, s.meta.get("question_types")) for s in samples]

    assert resolved(again) == resolved(samples)


def test_write_llava_json_rejects_captions(folder):
    caption = Sample([folder / "a.png"], [{"role": "assistant", "content": "A circle."}], {"kind": "caption"})
    with pytest.raises(ValueError, match="not a user/assistant conversation"):
        write_llava_json([caption], folder / "out.json")


@pytest.mark.parametrize("text", ["[]", "[\n\n]\n", "  [ ]  "])
def test_empty_json_list(folder, text):
    path = folder / "data.json"
    path.write_text(text)
    assert load_samples(path, on_error="raise") == []


# ShareGPT-style "images" and OpenAI-style "messages" records, in .json and .jsonl alike.

MESSAGES = {
    "images": ["a.png"],
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "a circle"},
    ],
}


def test_sharegpt_images_key_and_openai_messages_read_like_llava(folder):
    sharegpt = {"images": ["a.png"], "conversations": _qa()}
    as_string = {"images": ["a.png"], "messages": [{"role": "user", "content": "<image>\nWhat is it?"},
                                                   {"role": "assistant", "content": "a circle"}]}  # fmt: skip
    url = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file://a.png"}},
                                                     {"type": "text", "text": "What is it?"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "a circle"}]}]}  # fmt: skip
    samples = load_samples(_jsonl(folder, [GOOD, sharegpt, MESSAGES, as_string, url]), on_error="raise")
    assert len(samples) == 5
    for s in samples:
        assert s.images == [folder / "a.png"] and s.meta["kind"] == "chat"
        assert s.messages == samples[0].messages


@pytest.mark.parametrize(
    ("record", "what"),
    [
        ({**GOOD, "images": ["a.png"]}, "use 'image' or 'images', not both"),
        ({**MESSAGES, "conversations": _qa()}, "use 'conversations' or 'messages', not both"),
        ({"images": "a.png", "messages": []}, "'messages' must be a non-empty list"),
        ({"messages": [{"role": "user"}]}, "message 0 needs a string 'role' and a 'content'"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "message 0 has unknown role 'tool'"),
        ({"messages": [{"role": "user", "content": 3}]}, "message 0 'content' must be a string or a list of parts"),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "message 0 has a part of unknown type"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "message 0 has a text part without"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}
                ]
            },
            "message 0: only local image paths are read from data files",
        ),
        ({**MESSAGES, "images": []}, "1 <image> placeholder(s) for 0 image(s)"),
        ({"conversations": _qa(f"{IMAGE_TOKEN} hi")}, "turn 0 contains the reserved token <|image|>"),
    ],
)
def test_sharegpt_and_messages_problems(folder, record, what):
    path = _jsonl(folder, [GOOD, record])
    with pytest.raises(DataError) as info:
        load_samples(path, on_error="raise")
    assert str(info.value).startswith(f"{_at(path, 2, record)}: {what}")


def test_format_is_picked_from_the_path_or_named(folder):
    for name, fmt in [("a.json", "json"), ("a.JSONL", "jsonl"), ("s.tar.gz", "webdataset"), ("d.parquet", "cauldron")]:
        assert detect_format(folder / name) == fmt
    assert split_format("webdataset:shards/x") == ("webdataset", "shards/x")
    assert split_format("c:/data/x.json") == (None, "c:/data/x.json")  # not a format name: a path
    named = _jsonl(folder, [GOOD], name="records.txt")
    assert len(load_samples(named, on_error="raise", format="jsonl")) == 1
    (folder / "empty").mkdir()
    with pytest.raises(ValueError, match="a folder with no dataset files"):
        load_samples(folder / "empty")


def test_samples_with_archived_images_are_not_written_as_llava(folder):
    ref = ImageRef("shard.tar:k.png", lambda: b"")
    sample = Sample([ref], [{"role": "user", "content": IMAGE_TOKEN}, {"role": "assistant", "content": "x"}])
    with pytest.raises(ValueError, match="sample 0 has images inside an archive or dataset"):
        write_llava_json([sample], folder / "out.json")


def test_a_stage_trains_from_sharegpt_and_messages_jsonl(tmp_path, llava_samples, train_from):
    """The tiny dataset's conversations as ShareGPT JSONL and as messages JSONL: same batches as
    from its LLaVA JSON, and a stage trains on both files."""
    sharegpt, messages = [], []
    for s in llava_samples:
        image = str(s.images[0])  # absolute: these files live elsewhere
        turns = [{**m, "content": m["content"].replace(IMAGE_TOKEN, "<image>")} for m in s.messages]
        sharegpt.append({"images": [image], "conversations": [{"from": {"user": "human"}.get(t["role"], "gpt"),
                                                               "value": t["content"]} for t in turns]})  # fmt: skip
        messages.append({"images": [image], "messages": turns})
    for name, records in (("sharegpt.jsonl", sharegpt), ("messages.jsonl", messages)):
        samples = load_samples(_jsonl(tmp_path, records, name), on_error="raise")
        assert [s.messages for s in samples] == [s.messages for s in llava_samples]
    train_from(tmp_path, ("sharegpt.jsonl", "messages.jsonl"), samples)


def test_video_and_audio_fields_beside_image(folder):
    for name in ("c.mp4", "d.wav", "e.flac"):
        (folder / name).write_bytes(b"")
    record = {
        "id": "mixed",
        "image": "a.png",
        "video": "c.mp4",
        "audio": ["d.wav", "e.flac"],
        "conversations": _qa("<audio><image>\nIs it loud? <video> and <audio>", "yes"),
    }
    (sample,) = load_samples(_jsonl(folder, [record]), on_error="raise")
    assert sample.images == [folder / "a.png"]
    assert sample.media == {"video": [folder / "c.mp4"], "audio": [folder / "d.wav", folder / "e.flac"]}
    assert sample.messages[0]["content"] == "<|audio|><|image|>\nIs it loud? <|video|> and <|audio|>"
    assert sample.modalities == "image+video+audio" and sample.inputs("audio")[1] == folder / "e.flac"
    write_llava_json([sample], folder / "out" / "round.json")
    (again,) = load_samples(folder / "out" / "round.json", on_error="raise")
    resolved = {k: [p.resolve() for p in v] for k, v in again.media.items()}
    assert resolved == sample.media and again.messages == sample.messages
    (caption,) = load_samples(_jsonl(folder, [{"audio": "d.wav", "text": "a beep"}], "c.jsonl"), on_error="raise")
    assert caption.meta["kind"] == "caption" and caption.modalities == "audio"


@pytest.mark.parametrize(
    ("record", "what"),
    [
        ({"video": "c.mp4", "conversations": _qa("What moves?")}, "0 <video> placeholder(s) for 1 video(s)"),
        ({"conversations": _qa("<audio>\nHow loud?")}, "1 <audio> placeholder(s) for 0 audio(s)"),
        ({"video": "gone.mp4", "conversations": _qa("<video>\nWhat?")}, "video not found:"),
        ({"audio": 3, "conversations": _qa("<audio>\nWhat?")}, "'audio' must be a non-empty string or a list of them"),
        ({"conversations": _qa("<|video|> What?")}, "turn 0 contains the reserved token <|video|>"),
        ({"video": "c.mp4", "image": "a.png", "text": "two things"}, "a caption record needs exactly one image"),
    ],
)
def test_video_and_audio_problems_name_the_record(folder, record, what):
    (folder / "c.mp4").write_bytes(b"")
    path = _jsonl(folder, [GOOD, record])
    with pytest.raises(DataError) as info:
        load_samples(path, on_error="raise")
    assert str(info.value).startswith(f"{path}:2: {what}")
