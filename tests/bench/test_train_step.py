"""bench/train_step.py --quick runs and ends with the JSON line of its keys (the numbers are not checked:
timings belong to the benchmark, not to a test)."""

import json
import math
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "train_step.py"
KEYS = (
    "train_speedup_vs_hf",
    "train_speedup_vs_hf_as_run",
    "train_memory_ratio_vs_hf",
    "mfu_vs_matmul",
    "length_grouped_useful_tokens_per_s_gain",
    "micro_batch_useful_tokens_per_s_gain",
)


def test_quick_run_ends_with_the_json_keys():
    out = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--reps", "1"], check=True, capture_output=True, text=True, timeout=300
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["same_loss_as_hf"] is True  # the same weights and batch give the same loss in both
    for key in KEYS:
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, key
    assert set(result["stages"]) == {"align", "instruct"}
    assert 0 < result["useful_tokens"] < math.prod(result["batch"])  # rows are padded: not every token counts
    grouping = result["length_grouping"]
    assert grouping["by_length_padding_share"] < grouping["random_padding_share"]
    assert grouping["micro_batch_padding_share"] < grouping["random_padding_share"]
