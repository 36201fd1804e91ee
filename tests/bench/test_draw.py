"""bench/draw.py in its smallest form: it runs end to end and its last line carries the issue's keys."""

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "draw.py"


def test_one_grid_one_repeat_ends_with_the_keys(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_draw", BENCH)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)
    spec.loader.exec_module(bench)
    bench.main(["--grids", "8x8", "--repeats", "1"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["same_tokens"] is True
    assert set(last["kv_speedup"]) == {"8x8"} and last["kv_speedup"]["8x8"] > 0
    assert last["grids"]["8x8"]["tokens"] == 65  # 8x8 codes and <|image_end|>


def test_the_compiled_way_draws_the_same_tokens_and_is_reported(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_draw", BENCH)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)
    spec.loader.exec_module(bench)
    bench.main(["--grids", "8x8", "--repeats", "1", "--compile"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["same_tokens"] is True and last["compiled_kv_speedup"]["8x8"] > 0
    assert last["grids"]["8x8"]["kv_compiled_s"] > 0
