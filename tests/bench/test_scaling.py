"""bench/scaling.py --quick runs end to end: its last line carries every sweep's ratios and the PNGs
are written where --out says (timings are not checked: they belong to the benchmark)."""

import json
import math
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scaling.py"
PNGS = {f"scaling_tiny_{sweep}.png" for sweep in ("length", "images", "batch", "train")}


def test_quick_run_writes_the_plots_and_ends_with_the_keys(tmp_path):
    cmd = [sys.executable, str(BENCH), "--quick", "--out", str(tmp_path)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["same_tokens_as_hf"] is True  # both decode the same weights to the same greedy tokens
    assert result["same_loss_as_hf"] is True  # and give the same training loss on the same batch
    assert {p.name for p in tmp_path.iterdir()} == PNGS
    assert all((tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in PNGS)
    sweeps = {k.rsplit("_", 1)[0] for k in result["decode_speedup_vs_hf"]}
    assert sweeps == {"length", "images", "batch"}
    assert {k.rsplit("_", 1)[0] for k in result["train_speedup_vs_hf"]} == {"train_batch", "train_length"}
    for key in ("prefill_speedup_vs_hf", "decode_speedup_vs_hf", "train_speedup_vs_hf"):
        assert all(math.isfinite(v) and v > 0 for v in result[key].values()), key
    lengths = [p["prompt_tokens"] for p in result["points"] if p["sweep"] == "length"]
    assert lengths == sorted(lengths) and len(set(lengths)) == len(lengths)  # the prompts do grow
    assert "torch thread" in result["machine"]
