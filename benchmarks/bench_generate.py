"""Benchmark `oig generate`: calls per second against a server with a fixed latency, and the store's cost.

    python benchmarks/bench_generate.py                        # concurrency 16 and 64, 200 ms latency
    python benchmarks/bench_generate.py --concurrency 32 --calls 640 --kind together --repeat 1
    python benchmarks/bench_generate.py --scale 10000 100000 --concurrency 128 --latency 0.1 --repeat 1

A local OpenAI-compatible server (tests/fake_openai.py) runs in a child process, so that it does not
share the client's interpreter, and answers every call after exactly --latency seconds. Each run is
the real pipeline, ``oig.generate.run.generate``, on --calls one-line instructions (default 80 x concurrency) with one model and
no judges, in a fresh output folder: every call goes through the provider's semaphore, the store
lookup, the HTTP client (httpx, or the together SDK with --kind together) and the store write.

Reported per concurrency: calls/s (median of --repeat runs), the ideal concurrency / latency, their
ratio (the target is at least 90%), a rerun's calls/s when every answer comes from the store, and the
store's cost per call (the mean time of one committed write, measured inside the run, and a separate
loop of 5,000 writes of the same size).

``--scale N ...``: one run per N instructions, each in a fresh child process so that its peak resident
memory (``getrusage``'s ``ru_maxrss``) is that run's alone; reported per N: peak RSS in MiB, calls/s
and their ratio to concurrency / latency. Memory that stays flat from 10k to 100k instructions is the
target: nothing in the run may hold every record or every instruction.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests")]

from fake_openai import start_child  # noqa: E402

from oig.generate.config import load_config  # noqa: E402
from oig.generate.run import generate  # noqa: E402
from oig.generate.store import CallStore, call_key  # noqa: E402


def write_config(folder: Path, base_url: str, calls: int, concurrency: int, kind: str) -> Path:
    with (folder / "rows.jsonl").open("w") as f:
        for i in range(calls):
            f.write(json.dumps({"prompt": f"Question number {i}: what is {i} plus {i}?"}) + "\n")
    path = folder / "gen.yaml"
    path.write_text(f"""
instructions:
  - link: rows.jsonl
providers:
  bench:
    kind: {"together" if kind == "together" else "openai"}
    base_url: {base_url}
    concurrency: {concurrency}
    max_attempts: 1
{"    api_key_env: OIG_BENCH_KEY" if kind == "together" else ""}
models:
  - model: bench-model
    provider: bench
""")
    return path


def one_run(base_url: str, calls: int, concurrency: int, kind: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="oig-bench-generate-") as tmp:
        folder = Path(tmp)
        cfg = load_config(write_config(folder, base_url, calls, concurrency, kind))
        start = time.perf_counter()
        summary = generate(cfg, folder / "out", allow_local=True)
        elapsed = time.perf_counter() - start
        errors = summary.response_errors
        start = time.perf_counter()
        generate(cfg, folder / "out", allow_local=True)
        rerun = time.perf_counter() - start
    return {"calls_per_s": calls / elapsed, "rerun_calls_per_s": calls / rerun, "errors": errors,
            "store_ms_per_write": summary.stats["store_ms_per_write"]}


def scale_child(base_url: str, n: int, concurrency: int) -> dict:
    """One run of n instructions in this (fresh) process: its peak RSS and calls/s."""
    import resource

    with tempfile.TemporaryDirectory(prefix="oig-bench-scale-") as tmp:
        folder = Path(tmp)
        cfg = load_config(write_config(folder, base_url, n, concurrency, "openai"))
        start = time.perf_counter()
        summary = generate(cfg, folder / "out", allow_local=True)
        elapsed = time.perf_counter() - start
        records = sum(1 for _ in (folder / "out" / "records.jsonl").open())
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"instructions": n, "records": records, "errors": summary.response_errors, "seconds": round(elapsed, 2),
            "calls_per_s": round(n / elapsed, 1), "peak_rss_mib": round(peak_kib / 1024, 1)}


def scale_runs(base_url: str, sizes: list[int], concurrency: int, latency: float, repeat: int) -> list[dict]:
    import subprocess

    rows = []
    for n in sizes:
        runs = []
        for _ in range(repeat):
            out = subprocess.run([sys.executable, __file__, "--scale-child", str(n), "--base-url", base_url,
                                  "--concurrency", str(concurrency)], capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        rate = statistics.median(r["calls_per_s"] for r in runs)
        rows.append({"instructions": n, "concurrency": concurrency, "latency_s": latency,
                     "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
                     "calls_per_s": rate, "ideal": round(concurrency / latency, 1),
                     "ratio": round(rate / (concurrency / latency), 3), "errors": sum(r["errors"] for r in runs),
                     "records_ok": all(r["records"] == n for r in runs),
                     "runs": [(r["calls_per_s"], r["peak_rss_mib"]) for r in runs]})
    return rows


def store_loop(n: int = 5000) -> float:
    """ms per committed write of a typical answer (~600 bytes of JSON), outside any event loop."""
    value = {"text": "An answer of a few sentences. " * 15, "finish_reason": "stop", "latency_s": 0.2,
             "usage": {"prompt_tokens": 20, "completion_tokens": 120, "total_tokens": 140}, "attempts": 1,
             "error": None, "provider_id": "chatcmpl-123", "cost_usd": 0.0001}
    with tempfile.TemporaryDirectory(prefix="oig-bench-store-") as tmp, CallStore(Path(tmp) / "calls.sqlite") as store:
        keys = [call_key({"i": i}) for i in range(n)]
        start = time.perf_counter()
        for key in keys:
            store.put(key, "chat", "m", value)
        return 1000 * (time.perf_counter() - start) / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per answer (default 0.2)")
    # 80 waves per run: a run's fixed cost (config, instructions, store, exports: ~0.1 s) and its ramp
    # up and down then weigh ~1% instead of ~5% (measured at 64: 89.9% with 20 waves, 94.7% with 80).
    parser.add_argument("--calls", type=int, default=None, help="calls per run (default: 80 x concurrency)")
    parser.add_argument("--kind", choices=["openai", "together"], default="openai")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=int, nargs="+", default=None, metavar="N",
                        help="instruction counts for the memory benchmark (one child process per run)")
    parser.add_argument("--scale-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scale_child is not None:
        print(json.dumps(scale_child(args.base_url, args.scale_child, args.concurrency[0])))
        return 0

    import os

    os.environ.setdefault("OIG_BENCH_KEY", "bench-key")  # the together SDK wants a key; the fake ignores it
    proc, base_url = start_child(args.latency)
    rows = []
    try:
        if args.scale:
            scale = scale_runs(base_url, args.scale, args.concurrency[0], args.latency, args.repeat)
            print(f"oig generate at scale: one model, concurrency {args.concurrency[0]}, {args.latency * 1000:g} ms "
                  f"latency, ideal {args.concurrency[0] / args.latency:g} calls/s")
            print(f"{'instructions':>12} {'peak RSS MiB':>12} {'calls/s':>8} {'ratio':>6} {'errors':>6}  runs")
            for r in scale:
                print(f"{r['instructions']:>12} {r['peak_rss_mib']:>12} {r['calls_per_s']:>8} {r['ratio']:>6.1%} "
                      f"{r['errors']:>6}  {r['runs']}")
            print(json.dumps({"scale": scale}))
            return 0 if all(r["errors"] == 0 and r["records_ok"] for r in scale) else 1
        for c in args.concurrency:
            calls = args.calls or 80 * c
            runs = [one_run(base_url, calls, c, args.kind) for _ in range(args.repeat)]
            rate = statistics.median(r["calls_per_s"] for r in runs)
            ideal = c / args.latency
            rows.append({"concurrency": c, "calls": calls, "calls_per_s": round(rate, 1), "ideal": round(ideal, 1),
                         "ratio": round(rate / ideal, 3),
                         "rerun_calls_per_s": round(statistics.median(r["rerun_calls_per_s"] for r in runs)),
                         "store_ms_per_write": statistics.median(r["store_ms_per_write"] for r in runs),
                         "errors": sum(r["errors"] for r in runs),
                         "runs": [round(r["calls_per_s"], 1) for r in runs]})
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(10)
    loop_ms = store_loop()
    print(f"oig generate against a local server with {args.latency * 1000:g} ms latency ({args.kind} client)")
    print(f"{'concurrency':>11} {'calls':>6} {'calls/s':>8} {'ideal':>7} {'ratio':>6} {'rerun/s':>8} "
          f"{'store ms':>9} {'errors':>6}  runs")
    for r in rows:
        print(f"{r['concurrency']:>11} {r['calls']:>6} {r['calls_per_s']:>8} {r['ideal']:>7} {r['ratio']:>6.1%} "
              f"{r['rerun_calls_per_s']:>8} {r['store_ms_per_write']:>9.3f} {r['errors']:>6}  {r['runs']}")
    print(f"store: {loop_ms:.3f} ms per committed write in a plain loop of 5,000 (WAL, synchronous=NORMAL)")
    print(json.dumps({"rows": rows, "store_loop_ms_per_write": round(loop_ms, 4)}))
    return 0 if all(r["ratio"] >= 0.9 and r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
