"""`picovlm demo --preset tiny-native`: the native demo end to end, its files and its summary."""

import json
import math

from picovlm.cli import main
from picovlm.demo_native import comparison


def _real_share(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and 0 <= x <= 1


def test_native_demo_trains_scores_draws_and_reports(tmp_path, capsys):
    out, data, adapter = tmp_path / "run", tmp_path / "data", tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "eval.json").write_text(
        json.dumps({"accuracy": 0.25, "n": 8, "by_type": {"count": {"accuracy": 0.5, "n": 4}}})
    )
    args = ["demo", "--preset", "tiny-native", "--out", str(out), "--data", str(data), "--threads", "1"]
    assert main([*args, "--compare", str(adapter / "eval.json"), "--clip", str(tmp_path / "no-clip")]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed.strip().splitlines()[-1])
    assert {"accuracy", "by_type", "captions", "drawing", "drawing_real_images", "reconstruction", "adapter"} <= set(
        summary
    )
    assert _real_share(summary["accuracy"]) and summary["adapter"]["accuracy"] == 0.25
    drawing = summary["drawing"]
    assert drawing["n"] == 4 and all(_real_share(drawing[k]) for k in ("shape", "color", "count"))
    assert (
        "clip_score" not in drawing and "no CLIP checkpoint at" in printed and "0.500" in printed
    )  # the adapter's count
    assert summary["reconstruction"]["psnr"] > 0 and _real_share(summary["reconstruction"]["codes_used"])
    drawings = json.loads((out / "drawings.json").read_text())
    assert len(drawings) == 4 and set(drawings[0]["judged"]) == {"shape", "color", "count", "position"}
    assert all((out / d["image"]).stat().st_size > 0 for d in drawings)
    for name in ("drawings.png", "eval.json", "captions.json", "drawing.json", "vq.json", "judge/config.json"):
        assert (out / name).stat().st_size > 0, name
    assert main(["judge", "score", "--judge", str(out / "judge"), "--drawings", str(out / "drawings.json")]) == 0
    assert json.loads(capsys.readouterr().out)["shape"] == drawing["shape"]  # drawings.json is what `judge score` reads


def test_comparison_without_adapter_leaves_its_column_empty():
    vqa = {"accuracy": 0.5, "n": 2, "by_type": {"color": {"accuracy": 0.5, "n": 2}}}
    lines = comparison(vqa, {"CIDEr": 1.25, "Bleu_4": 0.5}, None).splitlines()
    assert lines[2].split() == ["color", "0.500"] and lines[4].split() == ["caption", "CIDEr-D", "1.250"]
