"""bench/generate.py in its smallest form: it runs end to end and its last line carries the issue's keys."""

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "generate.py"


def test_quick_run_ends_with_the_keys(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_generate", BENCH)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    bench.main(["--quick", "--batches", "1", "2", "--compile"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("same_tokens_as_hf", "decode_speedup_vs_hf", "prefill_speedup_vs_hf", "decode_bandwidth_share"):
        assert key in last
    assert last["same_tokens_as_hf"] is True  # both decode the same weights to the same greedy tokens
    assert set(last["decode_speedup_vs_hf"]) == {"tiny_b1_i1", "tiny_b2_i1"}
    assert all(v > 0 for v in last["decode_bandwidth_share"].values())
    assert all("int8_decode_speedup" in row for row in last["rows"])
    assert last["compiled_same_tokens_as_hf"] is True  # the compiled step decodes what HF does too
    assert set(last["compiled_decode_speedup_vs_hf"]) == {"tiny_b1_i1", "tiny_b2_i1"}
