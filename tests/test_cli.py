import builtins
import dataclasses
import itertools
import json

import pytest

from picovlm.cli import _stream, main
from picovlm.config import RecipeConfig, from_dict
from picovlm.data.formats import load_samples
from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
from picovlm.presets import tiny_recipe
from picovlm.text.tokens import IMAGE
from picovlm.vision.image import load_image


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
        ("train", ["--preset", "--config", "--data", "--out", "--stages", "--resume", "--dump-config"]),
        ("eval", ["--model", "--data", "--limit", "--batch-size", "--out"]),
        (
            "generate",
            ["--model", "--image", "--prompt", "--max-tokens", "--temperature", "--top-k", "--top-p", "--seed"],
        ),
        ("chat", ["--model", "--image", "--max-tokens", "--temperature", "/image", "/save", "/reset", "/quit"]),
        ("demo", ["--out", "--data", "--preset"]),
    ],
)
def test_help(command, flags, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in flags)


def test_usage_error_is_not_an_exception(capsys):
    assert main(["eval", "--data", "x.json"]) == 2  # argparse: --model is required
    assert "--model" in capsys.readouterr().err


def _error_cases(tiny_run, tmp_path):
    model, data = str(tiny_run["model"]), tiny_run["data"]
    image = str(data / "images" / "test_000000.png")
    corrupt = tmp_path / "recipe.json"
    corrupt.write_text('{"stages": [')
    unknown_key = tmp_path / "typo.json"
    unknown_key.write_text('{"data_dirr": "x"}')
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
    """Spy on Pipeline.stream: what each turn sent (messages, number of images)."""
    calls, real = [], Pipeline.stream

    def stream(self, messages, images, params=None, media=None):
        calls.append(([dict(m) for m in messages], len(images)))
        return real(self, messages, images, params, media)

    monkeypatch.setattr(Pipeline, "stream", stream)
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
