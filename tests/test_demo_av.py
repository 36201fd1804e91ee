"""`picovlm demo --preset tiny-av`: the av demo end to end, the report's table and its summary."""

import json

from picovlm.cli import main
from picovlm.demo_av import format_table, table


def test_av_demo_trains_scores_and_reports(tmp_path, capsys):
    out, data = tmp_path / "run", tmp_path / "data"
    assert main(["demo", "--preset", "tiny-av", "--out", str(out), "--data", str(data), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed.strip().splitlines()[-1])
    assert set(summary["accuracy"]) == {"video", "audio"} and 0 <= summary["single_frame"] <= 1
    assert {k.split("/")[0] for k in summary["by_type"]} == {"video", "audio"}
    assert summary["ms_per_train_sample"] > 0 and summary["ms_per_question"]["video"] > 0
    assert "single frame" in printed and "(needs time)" in printed and "audio -> caption retrieval" in printed
    results = json.loads((out / "eval.json").read_text())
    assert results["video"]["n"] == results["frame"]["n"]  # the baseline is asked the same questions
    assert (out / "video.predictions.jsonl").is_file() and (out / "frame.predictions.jsonl").is_file()
    assert main(["demo", "--preset", "tiny-av", "--out", str(out), "--data", str(data), "--threads", "1"]) == 0
    assert "reusing the dataset already there" in capsys.readouterr().out


def test_table_groups_types_by_whether_they_need_time():
    by = lambda d: {k: {"accuracy": a, "n": n} for k, (a, n) in d.items()}  # noqa: E731
    results = {
        "video": {
            "accuracy": 0.6,
            "n": 10,
            "by_type": by({"direction": (1.0, 4), "color": (0.5, 4), "count": (0.0, 2)}),
        },
        "frame": {
            "accuracy": 0.4,
            "n": 10,
            "by_type": by({"direction": (0.25, 4), "color": (0.5, 4), "count": (0.5, 2)}),
        },
        "audio": {"accuracy": 1.0, "n": 2, "by_type": by({"pitch": (1.0, 2)})},
    }
    rows = {(m, t): (acc, n, base) for m, t, _, acc, n, base in table(results)}
    assert rows["video", "(needs time)"] == (4 / 6, 6, (0.25 * 4 + 0.5 * 2) / 6)
    assert rows["video", "(one frame)"] == (0.5, 4, 0.5)
    assert rows["audio", "pitch"] == (1.0, 2, None)
    assert "direction      yes" in format_table(table(results))
