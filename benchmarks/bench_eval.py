"""Benchmark `oig eval`: calls per second against a server with a fixed latency, beside the server's bound.

    python benchmarks/bench_eval.py                          # 1,000 cases, concurrency 16 and 64, 200 ms
    python benchmarks/bench_eval.py --concurrency 32 --cases 500 --repeat 1

A local OpenAI-compatible server (tests/fake_openai.py) runs in a child process, so that it does not
share the client's interpreter, and answers every call after exactly --latency seconds. Each run is the
real command, ``oig eval --base-url URL --model-name bench --suites DIR --format json --concurrency N``,
in process (its JSON thrown away), on one suite of --cases contains-checked cases: loading and
validating the suite, every call over the pooled HTTP client, checking and scoring.

Reported per concurrency: calls/s (the median of --repeat runs), the server's bound concurrency /
latency, and their ratio (the target is at least 90%).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests")]

from fake_openai import start_child  # noqa: E402

from oig.cli import main as oig  # noqa: E402


def write_suite(folder: Path, cases: int) -> Path:
    """One suite; the fake server echoes the question, so every case passes (a check of the run too)."""
    lines = ["# yaml-language-server: $schema=../schemas/eval.schema.json", "# The benchmark's suite.",
             "check: contains", "cases:"]
    lines += [f"  - {{id: c{i}, input: 'Question number {i}: what is {i} plus {i}?', reference: 'number {i}:'}}"
              for i in range(cases)]
    suites = folder / "evals"
    suites.mkdir()
    (suites / "bench.yaml").write_text("\n".join(lines) + "\n")
    return suites


def one_run(base_url: str, suites: Path, concurrency: int, cases: int) -> dict:
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = oig(["eval", "--base-url", base_url, "--model-name", "bench", "--suites", str(suites),
                    "--format", "json", "--concurrency", str(concurrency)])
    elapsed = time.perf_counter() - start
    passed = json.loads(out.getvalue())["suites"]["bench"]["passed"] if code == 0 else 0
    return {"calls_per_s": cases / elapsed, "exit": code, "failed": cases - passed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per answer (default 0.2)")
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    proc, base_url = start_child(args.latency)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="oig-bench-eval-") as tmp:
            suites = write_suite(Path(tmp), args.cases)
            for c in args.concurrency:
                runs = [one_run(base_url, suites, c, args.cases) for _ in range(args.repeat)]
                rate = statistics.median(r["calls_per_s"] for r in runs)
                bound = c / args.latency
                rows.append({"concurrency": c, "cases": args.cases, "calls_per_s": round(rate, 1),
                             "bound": round(bound, 1), "ratio": round(rate / bound, 3),
                             "failed": sum(r["failed"] for r in runs), "exits": [r["exit"] for r in runs],
                             "runs": [round(r["calls_per_s"], 1) for r in runs]})
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(10)
    print(f"oig eval against a local server with {args.latency * 1000:g} ms latency, {args.cases} cases")
    print(f"{'concurrency':>11} {'calls/s':>8} {'bound':>7} {'ratio':>6} {'failed':>6}  runs")
    for r in rows:
        print(f"{r['concurrency']:>11} {r['calls_per_s']:>8} {r['bound']:>7} {r['ratio']:>6.1%} {r['failed']:>6}  "
              f"{r['runs']}")
    print(json.dumps({"rows": rows}))
    return 0 if all(r["ratio"] >= 0.9 and r["failed"] == 0 and set(r["exits"]) == {0} for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
