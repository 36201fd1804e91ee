import dataclasses
import json

from picovlm.demo import Exchange, _answer_line, ensure_dataset, format_results, run_demo
from picovlm.engine.pipeline import Pipeline
from picovlm.interop.pretrained import smollm2_folder_path
from picovlm.presets import DATA_PRESETS, PRESETS, pretrained_recipe


def test_run_demo_tiny(tmp_path, capsys):
    out, data = tmp_path / "out", tmp_path / "data"
    out.mkdir()
    (out / "tokenizer.json").write_text("left over by an old run")  # must not be reused
    (out / "notes.txt").write_text("the user's")  # must not be deleted

    result = run_demo(out, data, preset="tiny", progress=False, seed=3)

    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary == result
    assert set(summary) == {"accuracy", "by_type", "seconds", "model", "n_test_questions", "captions", "seed"}
    assert summary["captions"]["n"] == 16 and summary["captions"]["CIDEr"] >= 0
    assert json.loads((out / "captions.json").read_text())["CIDEr"] == summary["captions"]["CIDEr"]
    assert all(
        json.loads((out / s / "model" / "config.json").read_text())["stage"]["seed"] == 3 for s in ("lm", "instruct")
    )
    assert 0 <= summary["accuracy"] <= 1 and summary["seconds"] > 0
    assert summary["n_test_questions"] == 16 * 3
    assert any(line.startswith("  overall ") for line in lines)
    assert summary["model"] == str(out / "instruct" / "model")
    Pipeline.load(summary["model"])
    assert (out / "sample.png").stat().st_size > 0
    assert json.loads((out / "eval.json").read_text())["n"] == summary["n_test_questions"]
    assert len((out / "predictions.jsonl").read_text().splitlines()) == summary["n_test_questions"]
    assert (out / "notes.txt").read_text() == "the user's"


def test_ensure_dataset_reuses_only_a_matching_build(tmp_path):
    preset = DATA_PRESETS["tiny"]()
    assert ensure_dataset(tmp_path, preset) is True
    assert ensure_dataset(tmp_path, preset) is False
    assert ensure_dataset(tmp_path, dataclasses.replace(preset, n_test=3)) is True
    assert len(json.loads((tmp_path / "test.json").read_text())) == 3
    (tmp_path / "scene_config.json").write_text("{ corrupt")
    assert ensure_dataset(tmp_path, preset) is True


def test_format_results():
    results = {
        "accuracy": 0.5,
        "n": 4,
        "by_type": {"color": {"accuracy": 1.0, "n": 2}, "count": {"accuracy": 0.0, "n": 2}},
    }
    assert format_results(results).splitlines() == [
        "  color      1.000  (n=2)",
        "  count      0.000  (n=2)",
        "  overall    0.500  (n=4)",
    ]


def _pretrained_like(lm_folder):
    """The pretrained preset's recipe, shrunk: a random-init EfficientNet twin at 64 px and a tiny HF
    LM stand in for the PyPI parts; the stages (projector-only, then LoRA) are the preset's."""

    def recipe(data_dir: str):
        r = pretrained_recipe(data_dir)
        vision = dataclasses.replace(r.model.vision, cnn_image_size=64, cnn_pretrained=False)
        model = dataclasses.replace(r.model, vision=vision, lm_hf_path=str(lm_folder))
        stages = [dataclasses.replace(s, steps=2, batch_size=4, warmup=0.0, eval_batches=1) for s in r.stages]
        return dataclasses.replace(r, model=model, stages=stages)

    return recipe


def test_run_demo_pretrained_plumbing(tmp_path, capsys, monkeypatch, write_hf_lm):
    lm_folder, _ = write_hf_lm(tmp_path / "lm", "llama", chatml=True)  # SmolLM2 has its own template too
    question = PRESETS["pretrained"].text_question
    shrunk = dataclasses.replace(
        PRESETS["pretrained"], data=DATA_PRESETS["tiny"], recipe=_pretrained_like(lm_folder), eval_limit=5
    )
    monkeypatch.setitem(PRESETS, "pretrained", shrunk)
    result = run_demo(tmp_path / "out", tmp_path / "data", preset="pretrained", progress=False)
    out = capsys.readouterr().out
    assert question and "instruct (2 steps, LoRA)" in out and f"you>     {question}" in out
    assert result["n_test_questions"] == 5 and result["text_question"] == question
    assert isinstance(result["text_answer"], str)
    assert (tmp_path / "out" / "instruct" / "model" / "adapter" / "adapter_config.json").is_file()


def test_pretrained_preset_is_the_llava_recipe_with_real_parts():
    r = pretrained_recipe()
    assert (r.model.vision.kind, r.model.vision.cnn_pretrained, r.model.lm_kind) == ("efficientnet", True, "hf")
    assert r.model.lm_hf_path == str(smollm2_folder_path())
    align, instruct = r.stages
    assert align.trainable == ("projector",) and not align.lora
    assert instruct.lora and "tower" not in instruct.trainable and instruct.init == {"projector": "align"}


def test_answer_line_shows_control_characters_as_escapes():
    # an untrained LM may emit backspaces or escapes: the figure's font has no glyph for them
    line = _answer_line(Exchange("Q?", "a\x08b\n\ufffd", "ab", False))
    assert line.startswith("a\\x08b\\n\\ufffd") and line.isprintable()
    assert _answer_line(Exchange("Q?", "", "ab", False)).startswith("(empty)")
