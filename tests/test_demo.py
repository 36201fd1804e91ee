import dataclasses
import json

from picovlm.demo import ensure_dataset, format_results, run_demo
from picovlm.engine.pipeline import Pipeline
from picovlm.presets import DATA_PRESETS


def test_run_demo_tiny(tmp_path, capsys):
    out, data = tmp_path / "out", tmp_path / "data"
    out.mkdir()
    (out / "tokenizer.json").write_text("left over by an old run")  # must not be reused
    (out / "notes.txt").write_text("the user's")  # must not be deleted

    result = run_demo(out, data, preset="tiny", progress=False)

    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary == result
    assert set(summary) == {"accuracy", "by_type", "seconds", "model", "n_test_questions"}
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
