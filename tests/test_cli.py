import builtins
import dataclasses
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

import picovlm
from picovlm.checkpoint import load_trainer_state, read_config
from picovlm.cli import _stream, main
from picovlm.config import RecipeConfig, from_dict
from picovlm.data.formats import load_samples
from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
from picovlm.presets import tiny_recipe
from picovlm.text.tokens import IMAGE
from picovlm.vision.image import load_image
from tests.native.helpers import drawing_pipeline


def test_data_train_eval_generate(tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["data", "--preset", "tiny", "--out", str(data), "--n-test", "4"]) == 0
    assert (data / "test.json").is_file() and len(json.loads((data / "test.json").read_text())) == 4

    assert main(["train", "--preset", "tiny", "--data", str(data), "--out", str(run)]) == 0
    model = run / "instruct" / "model"
    assert str(model) in capsys.readouterr().out

    results = tmp_path / "results.json"
    args = ["eval", "--model", str(model), "--data", str(data / "test.json"), "--batch-size", "4"]
    assert main([*args, "--limit", "5", "--out", str(results)]) == 0
    out = capsys.readouterr().out
    printed = json.loads(out.strip().splitlines()[-1])
    assert printed == json.loads(results.read_text())["metrics"]  # the default task: vqa on the test file
    assert printed["n"] == 5 and "| vqa | value |" in out and "by_type/" in out
    predictions = tmp_path / "results.predictions.jsonl"  # every question's answer, beside --out
    assert len(predictions.read_text().splitlines()) == 5 and f"predictions: {predictions}" in out

    image = data / "images" / "test_000000.png"
    args = [
        "generate",
        "--model",
        str(model),
        "--image",
        str(image),
        "--prompt",
        "What colour?",
        "--max-tokens",
        "5",
        "--temperature",
        "1",
        "--top-k",
        "5",
        "--seed",
        "0",
    ]
    assert main(args) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_train_stages_and_resume(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(tiny_data), "--out", str(run), "--stages", "lm"]
    assert main(args) == 0
    assert (run / "lm" / "model").is_dir() and not (run / "clip").exists()
    assert main([*args, "--resume"]) == 0


def test_dump_config_round_trips(tmp_path, capsys):
    assert main(["train", "--preset", "tiny", "--data", "somewhere", "--dump-config"]) == 0
    dumped = json.loads(capsys.readouterr().out)
    assert from_dict(RecipeConfig, dumped) == tiny_recipe("somewhere")


@pytest.mark.parametrize(
    "command, flags",
    [
        ("data", ["--preset", "--out", "--n-train", "--n-val", "--n-test", "--seed"]),
        (
            "train",
            [
                "--preset",
                "--config",
                "--data",
                "--out",
                "--stages",
                "--resume",
                "--dump-config",
                "--rejects",
                "--skip-bad-files",
                "--threads",
            ],
        ),  # fmt: skip
        ("eval", ["--model", "--data", "--limit", "--batch-size", "--out", "--quantize", "--compile"]),
        (
            "generate",
            [
                "--model",
                "--image",
                "--prompt",
                "--max-tokens",
                "--temperature",
                "--top-p",
                "--seed",
                "--quantize",
                "--compile",
            ],
        ),
        (
            "chat",
            [
                "--model",
                "--image",
                "--max-tokens",
                "--temperature",
                "/image",
                "/save",
                "/reset",
                "/quit",
                "--quantize",
                "--compile",
            ],
        ),
        ("serve", ["--model", "--max-batch", "--threads", "--quantize", "--compile"]),
        ("draw", ["--model", "--out", "--guidance", "--temperature", "--quantize", "--compile"]),
        ("demo", ["--out", "--data", "--preset", "--compare", "--clip", "--judge"]),
    ],
)
def test_help(command, flags, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in flags)


def test_usage_error_is_not_an_exception(capsys):
    assert main(["eval", "--data", "x.json"]) == 2  # argparse: --model is required
    assert "--model" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--quantize", "int8"], ["--compile"]])
def test_load_options_with_an_endpoint_are_one_clear_error(flag, capsys):
    assert main(["eval", "--endpoint", "http://127.0.0.1:9", "--data", "x.json", *flag]) == 1
    assert capsys.readouterr().err == (
        "picovlm: error: --quantize and --compile apply to --model (a local checkpoint), not to --endpoint\n"
    )


def _error_cases(tiny_run, tmp_path):
    model, data = str(tiny_run["model"]), tiny_run["data"]
    image = str(data / "images" / "test_000000.png")
    corrupt = tmp_path / "recipe.json"
    corrupt.write_text('{"stages": [')
    unknown_key = tmp_path / "typo.json"
    unknown_key.write_text('{"data_dirr": "x"}')
    wrong_type = tmp_path / "wrong_type.json"
    wrong_type.write_text('{"stages": [{"name": "a"}, {"name": "b", "steps": "ten"}]}')
    out_of_range = tmp_path / "out_of_range.json"
    out_of_range.write_text('{"stages": [{"name": "a", "batch_size": 0}]}')
    not_an_image = tmp_path / "fake.png"
    not_an_image.write_text("hello")
    generate = ["generate", "--model", model, "--image", image, "--prompt", "hi"]
    run = str(tmp_path / "r")
    return {
        "missing model": ["eval", "--model", str(tmp_path / "nope"), "--data", str(data / "test.json")],
        "missing data": ["eval", "--model", model, "--data", str(tmp_path / "nope.json")],
        "missing image": ["generate", "--model", model, "--image", str(tmp_path / "n.png"), "--prompt", "hi"],
        "not an image": ["generate", "--model", model, "--image", str(not_an_image), "--prompt", "hi"],
        "bad top-p": [*generate, "--top-p", "2"],
        "bad temperature": [*generate, "--temperature", "-1"],
        "special token in prompt": ["generate", "--model", model, "--image", image, "--prompt", "<|end|>"],
        "corrupt config": ["train", "--config", str(corrupt), "--data", str(data), "--out", run],
        "unknown config key": ["train", "--config", str(unknown_key), "--out", run],
        "config of a wrong type": ["train", "--config", str(wrong_type), "--data", str(data), "--out", run],
        "config out of range": ["train", "--config", str(out_of_range), "--data", str(data), "--out", run],
        "unknown stage": ["train", "--preset", "tiny", "--data", str(data), "--out", run, "--stages", "lm,x"],
        "missing data folder": ["train", "--preset", "tiny", "--data", str(tmp_path / "nope"), "--out", run],
        "no --out": ["train", "--preset", "tiny", "--data", str(data)],
        "chat image missing": ["chat", "--model", model, "--image", str(tmp_path / "no.png")],
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing model",
        "missing data",
        "missing image",
        "not an image",
        "bad top-p",
        "bad temperature",
        "special token in prompt",
        "corrupt config",
        "unknown config key",
        "config of a wrong type",
        "config out of range",
        "unknown stage",
        "missing data folder",
        "no --out",
        "chat image missing",
    ],
)
def test_errors_are_one_line(case, tiny_run, tmp_path, capsys):
    argv = _error_cases(tiny_run, tmp_path)[case]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("picovlm: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists()  # a failed train writes nothing


def test_a_config_error_names_the_file_and_the_field(tiny_run, tmp_path, capsys):
    cases = _error_cases(tiny_run, tmp_path)
    expected = {
        "config of a wrong type": ("wrong_type.json", 'stages[1].steps: expected an integer, got a string ("ten")'),
        "config out of range": ("out_of_range.json", "stages[0].batch_size: must be >= 1, got 0"),
    }
    for case, (name, what) in expected.items():
        assert main(cases[case]) == 1
        assert capsys.readouterr().err == f"picovlm: error: {tmp_path / name}: {what}\n"


@pytest.fixture
def damaged_model(tiny_run, tmp_path):
    """A copy of the tiny model with its lm.safetensors cut short (a copy: the folder stands alone)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_run["model"], model)
    lm = model / "lm.safetensors"
    lm.write_bytes(lm.read_bytes()[:-100])
    return model


@pytest.mark.parametrize("command", ["generate", "eval", "export", "chat"])
def test_a_damaged_weights_file_is_one_line_naming_it(command, damaged_model, tiny_run, tmp_path, capsys):
    image = str(tiny_run["data"] / "images" / "test_000000.png")
    model = str(damaged_model)
    argv = {
        "generate": ["generate", "--model", model, "--image", image, "--prompt", "hi"],
        "eval": ["eval", "--model", model, "--data", str(tiny_run["data"] / "test.json")],
        "export": ["export", "--model", model, str(tmp_path / "hf")],
        "chat": ["chat", "--model", model],
    }[command]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"picovlm: error: {damaged_model / 'lm.safetensors'}: damaged or incomplete file")
    assert err.count("\n") == 1 and "Traceback" not in err


def _copy_data(tiny_data, folder):
    shutil.copytree(tiny_data, folder)
    return folder


def test_train_counts_rejects_and_stops_on_a_damaged_file(tiny_data, tmp_path, capsys):
    data = _copy_data(tiny_data, tmp_path / "data")
    n_captions = len((data / "train_captions.jsonl").read_text().splitlines()) + 1
    n_records = n_captions + len(json.loads((data / "train.json").read_text()))  # what the lm stage reads
    with open(data / "train_captions.jsonl", "a") as f:
        f.write(json.dumps({"image": "images/none.png", "text": "a caption"}) + "\n")
    rejects, run = tmp_path / "rejects.jsonl", tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(data), "--out", str(run), "--stages", "lm", "--threads", "1"]
    assert main([*args, "--rejects", str(rejects)]) == 0
    (line,) = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert line["stage"] == "lm" and line["reason"] == "bad image" and line["record"]["image"] == "images/none.png"
    assert line["source"] == f"{data / 'train_captions.jsonl'}:{n_captions}"
    summary = f"lm data: {n_records} records read, {n_records - 1} used, 1 skipped (1 bad image)"
    assert summary in capsys.readouterr().out.splitlines()

    text = (data / "train.json").read_text()
    (data / "train.json").write_text(text[: len(text) // 2])  # cut mid-record
    assert main([*args, "--out", str(tmp_path / "run2")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"picovlm: error: {data / 'train.json'}#") and "the rest of the file was not read" in err
    assert err.count("\n") == 1 and not (tmp_path / "run2" / "lm").exists()
    assert main([*args, "--out", str(tmp_path / "run2"), "--skip-bad-files"]) == 0
    assert "not read to the end" in capsys.readouterr().out


def test_a_damaged_trainer_state_on_resume_is_one_line(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(tiny_data), "--out", str(run), "--stages", "lm"]
    assert main(args) == 0
    capsys.readouterr()
    state = run / "lm" / "model" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    assert main([*args, "--resume"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"picovlm: error: {state}: damaged or incomplete file") and err.count("\n") == 1


def _wait_for(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_ctrl_c_in_training_saves_a_checkpoint_to_resume_from(tiny_data, tmp_path):
    """A real `picovlm train` process and a real SIGINT: exit 130 with one line saying where it stopped,
    a checkpoint of that step, and `--resume` goes on from it (each step logged once)."""
    recipe = tiny_recipe(str(tiny_data))
    recipe.stages[0] = dataclasses.replace(recipe.stages[0], steps=100_000, log_every=1, save_every=0)
    config, run = tmp_path / "recipe.json", tmp_path / "run"
    config.write_text(json.dumps(dataclasses.asdict(recipe)))
    root = Path(picovlm.__file__).parent.parent
    argv = [sys.executable, "-m", "picovlm", "train", "--config", str(config), "--out", str(run), "--stages", "lm"]
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*argv, "--threads", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        log = run / "lm" / "log.jsonl"
        _wait_for(lambda: log.is_file() and len(log.read_text().splitlines()) >= 2, 120)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    step = read_config(run / "lm" / "model")["step"]
    last = err.strip().splitlines()[-1]
    assert last == (
        f"picovlm: interrupted: lm stopped after step {step} of 100000, saved to {run / 'lm' / 'model'}; "
        "`picovlm train --resume` goes on from there"
    )
    assert step >= 2 and load_trainer_state(run / "lm" / "model")["step"] == step

    recipe.stages[0] = dataclasses.replace(recipe.stages[0], steps=step + 2)
    config.write_text(json.dumps(dataclasses.asdict(recipe)))
    assert main(["train", "--config", str(config), "--out", str(run), "--stages", "lm", "--resume"]) == 0
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in logged if r.get("train")] == list(range(1, step + 3))


def _script(monkeypatch, lines):
    """Feed `lines` to input() and record the prompts; EOFError once they run out, like stdin."""
    feed = iter(lines)

    def fake_input(prompt=""):
        print(prompt, end="")
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(builtins, "input", fake_input)


def _record_streams(monkeypatch):
    """Spy on Pipeline.stream_parts (what a chat turn calls): what each turn sent (messages, number of images)."""
    calls, real = [], Pipeline.stream_parts

    def stream_parts(self, messages, images, params=None, media=None):
        calls.append(([dict(m) for m in messages], len(images)))
        return real(self, messages, images, params, media)

    monkeypatch.setattr(Pipeline, "stream_parts", stream_parts)
    return calls


def test_chat_keeps_history_and_images(tiny_run, monkeypatch, capsys):
    image = tiny_run["data"] / "images" / "test_000000.png"
    calls = _record_streams(monkeypatch)
    missing = image.parent / "no.png"
    _script(
        monkeypatch,
        [
            f"/image {image}",
            "what colour?",
            "",
            "and the shape?",
            f"/image {missing}",
            "/bogus",
            "/reset",
            "how many?",
            "/quit",
            "never read",
        ],
    )
    assert main(["chat", "--model", str(tiny_run["model"]), "--max-tokens", "4"]) == 0
    out, err = capsys.readouterr()
    assert out.count("picovlm> ") == 3
    assert err.count("picovlm: error: ") == 2 and "no.png" in err and "/bogus" in err
    first, second, after_reset = calls
    assert first[1] == 1 and first[0] == [{"role": "user", "content": f"{IMAGE}\nwhat colour?"}]
    assert second[1] == 1 and len(second[0]) == 3 and second[0][0] == first[0][0]
    assert second[0][1]["role"] == "assistant"
    assert second[0][2] == {"role": "user", "content": "and the shape?"}
    assert after_reset == ([{"role": "user", "content": "how many?"}], 0)


def test_chat_shows_and_saves_what_a_native_model_draws(tiny_native_run, tmp_path, monkeypatch, capsys):
    """An image span in the answer and /draw: each saved as a PNG, its path printed where it was drawn,
    and the drawing is in the history the next turn sends."""
    pipe = drawing_pipeline(tiny_native_run["model"])
    monkeypatch.setattr(Pipeline, "load", lambda path, **kw: pipe)
    calls = _record_streams(monkeypatch)
    _script(monkeypatch, ["draw a red circle", "/draw two blue squares", "and now?", "/draw"])
    model, saved = str(tiny_native_run["model"]), tmp_path / "drawn"
    assert main(["chat", "--model", model, "--max-tokens", "20", "--save-dir", str(saved)]) == 0
    out, err = capsys.readouterr()
    first, second, third = (saved / f"drawn_00{n}.png" for n in (1, 2, 3))
    assert f"picovlm> [image drawn: {first}]" in out and f"picovlm> [image drawn: {second}]\n" in out
    assert f"picovlm> [image drawn: {third}]" in out and not (saved / "drawn_004.png").exists()
    assert all(Image.open(p).size == (32, 32) for p in (first, second, third))
    messages, n_images = calls[-1]
    assert n_images == 2 and messages[1]["content"].startswith(IMAGE) and messages[3]["content"] == IMAGE
    assert messages[2] == {"role": "user", "content": "two blue squares"}
    assert err.count("picovlm: error:") == 1 and "/draw needs a caption" in err


def test_chat_draw_needs_a_native_model(tiny_run, tmp_path, monkeypatch, capsys):
    _script(monkeypatch, ["/draw a red circle"])
    assert main(["chat", "--model", str(tiny_run["model"]), "--save-dir", str(tmp_path / "d")]) == 0
    assert "picovlm: error: this model does not draw images" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_chat_image_flag_and_eof(tiny_run, monkeypatch, capsys):
    image = tiny_run["data"] / "images" / "test_000001.png"
    calls = _record_streams(monkeypatch)
    _script(monkeypatch, ["hello"])
    assert main(["chat", "--model", str(tiny_run["model"]), "--image", str(image), "--max-tokens", "2"]) == 0
    assert calls == [([{"role": "user", "content": f"{IMAGE}\nhello"}], 1)]
    assert capsys.readouterr().out.count("you> ") == 2  # EOF after the second prompt ends the chat


def test_chat_save(tiny_run, tmp_path, monkeypatch, capsys):
    image = tiny_run["data"] / "images" / "test_000002.png"
    saved = tmp_path / "chats" / "chat.json"
    _script(monkeypatch, ["/save " + str(saved), "hi", f"/save {tmp_path / 'chat.txt'}", f"/save {saved}"])
    assert main(["chat", "--model", str(tiny_run["model"]), "--image", str(image), "--max-tokens", "3"]) == 0
    out, err = capsys.readouterr()
    assert err.count("picovlm: error: ") == 2 and "empty" in err and ".json" in err
    assert f"saved to {saved}" in out
    (sample,) = load_samples(saved, on_error="raise")
    assert [p.resolve() for p in sample.images] == [image.resolve()] and sample.messages[0] == {
        "role": "user",
        "content": f"{IMAGE}\nhi",
    }


def test_a_stop_string_split_across_pieces_is_never_printed(tiny_run, capsys):
    """`generate` and `chat` print each piece as it comes, and what is printed stays: a stop string that
    arrives in two pieces must not be printed, not even its first character."""
    pipe = Pipeline.load(tiny_run["model"])
    pipe.tokenizer.stop_ids = ()  # the tiny model ends after 1-3 tokens: let it talk
    messages = [{"role": "user", "content": f"{IMAGE}\ndescribe the picture"}]
    images = [load_image(tiny_run["data"] / "images" / "test_000000.png")]
    params = SamplingParams(max_tokens=24, temperature=1.0, seed=0)
    pieces = list(pipe.stream(messages, images, params))
    full = "".join(pieces)
    # a stop string of the last character of one piece and the first of the next, where it first occurs
    ends = list(itertools.accumulate(len(p) for p in pieces))[:-1]
    start = next(n - 1 for n in ends if full.find(full[n - 1 : n + 1]) == n - 1)
    stop = full[start : start + 2]
    assert _stream(pipe, messages, images, dataclasses.replace(params, stop=(stop,))) == full[:start]
    assert capsys.readouterr().out == full[:start] + "\n"


def test_chat_attaches_videos_and_sounds(tiny_av_run, monkeypatch, capsys):
    data = tiny_av_run["data"]
    video, sound = data / "clips" / "test_000000.mp4", data / "sounds" / "test_000000.flac"
    _script(monkeypatch, [f"/video {video}", f"/audio {sound}", "what moves?", f"/audio {data / 'no.wav'}", "/quit"])
    assert main(["chat", "--model", str(tiny_av_run["model"]), "--max-tokens", "3"]) == 0
    out, err = capsys.readouterr()
    assert "(video added to your next message; 1 in the conversation)" in out
    assert "(audio added to your next message; 1 in the conversation)" in out
    assert out.count("picovlm> ") == 1 and err.count("picovlm: error: ") == 1 and "no.wav: audio file not found" in err
    _script(monkeypatch, ["hello"])
    assert main(["chat", "--model", str(tiny_av_run["model"]), "--video", str(video), "--max-tokens", "2"]) == 0
    assert capsys.readouterr().out.count("picovlm> ") == 1


def test_generate_about_a_video_or_a_sound(tiny_av_run, capsys):
    data, model = tiny_av_run["data"], str(tiny_av_run["model"])
    video, sound = data / "clips" / "test_000000.mp4", data / "sounds" / "test_000000.flac"
    args = ["generate", "--model", model, "--prompt", "which way?", "--max-tokens", "2"]
    assert main([*args, "--video", str(video), "--audio", str(sound)]) == 0
    assert capsys.readouterr().out.endswith("\n")
    assert main(args) == 1
    assert "generate needs --image, --video or --audio" in capsys.readouterr().err
    assert main([*args, "--video", str(sound)]) == 1  # a sound is no video: one line, no traceback
    assert "test_000000.flac: no video stream" in capsys.readouterr().err


def test_judge_train_and_score(tiny_data, tmp_path, capsys):
    judge = tmp_path / "judge"
    assert main(["judge", "train", "--data", str(tiny_data), "--out", str(judge), "--steps", "5"]) == 0
    trained = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert trained["n"] == 16 and set(trained) >= {"shape", "color", "count", "position"}
    captions = [json.loads(line) for line in (tiny_data / "test_captions.jsonl").read_text().splitlines()]
    drawings = tmp_path / "drawings.json"
    records = [{"image": str(tiny_data / c["image"]), "prompt": c["text"]} for c in captions[:4]]
    drawings.write_text(json.dumps(records))
    assert main(["judge", "score", "--judge", str(judge), "--drawings", str(drawings)]) == 0
    scored = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert scored["n"] == 4 and "clip_score" not in scored
    drawings.write_text(json.dumps([*records, {"image": records[0]["image"], "prompt": "nothing here"}]))
    assert main(["judge", "score", "--judge", str(judge), "--drawings", str(drawings)]) != 0
    assert "drawings.json:4: prompt names no shape" in capsys.readouterr().err
