"""A small run of benchmarks/bench_generate.py, so that the benchmark cannot rot."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_generate  # noqa: E402


def test_benchmark_smoke():
    proc, base_url = bench_generate.start_child(0.05)
    try:
        result = bench_generate.one_run(base_url, calls=48, concurrency=8, kind="openai")
    finally:
        proc.stdin.close()
        proc.wait(10)
    assert result["errors"] == 0
    # The target (90% of concurrency / latency) is for the full benchmark; a loaded CI machine and a
    # run this short (6 rounds) only have to show that calls overlap: at least half the ideal rate.
    assert result["calls_per_s"] >= 0.5 * 8 / 0.05
    assert result["rerun_calls_per_s"] > result["calls_per_s"] and result["store_ms_per_write"] < 50
    assert bench_generate.store_loop(200) < 50


def test_scale_benchmark_smoke():
    # One run in its own process, as the benchmark makes them: records all written, memory measured.
    proc, base_url = bench_generate.start_child(0.0)
    try:
        [row] = bench_generate.scale_runs(base_url, [300], concurrency=8, latency=0.01, repeat=1)
    finally:
        proc.stdin.close()
        proc.wait(10)
    assert row["records_ok"] and row["errors"] == 0
    assert 20 < row["peak_rss_mib"] < 1000 and row["calls_per_s"] > 0
