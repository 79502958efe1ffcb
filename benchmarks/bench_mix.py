"""Benchmark `oig mix`: wall time and peak memory at several sizes, and whether time grows linearly.

    python benchmarks/bench_mix.py                       # 100k, 300k, 1M examples from 10 slices
    python benchmarks/bench_mix.py --sizes 20000 --repeat 1
    python benchmarks/bench_mix.py --stage writer        # the writer alone, on prebuilt JSONL

Each size gets a temp repository: 10 slices as local OpenAI JSONL files (OpenAIJsonl links, so
`--allow-local-sources`), a training.yaml whose Mixture repeats one slice about 3 times and samples
another at half, and a mixture total equal to everything available. ``--stage cli`` runs the real
command, ``python -m oig mix``, end to end in a child process (validation, materialization,
allocation, writing); ``--stage writer`` runs only ``oig.data.mixwriter.write_mixture`` on the same files.
Each run is measured in its own child: wall time, and peak RSS from getrusage(RUSAGE_CHILDREN).
Prints the median of --repeat runs per size and the time per example relative to the smallest size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLICES = 10
# s0 gets 0.3 of the mixture from a tenth of the data (repeated ~3x), s1 0.05 (sampled at half).
MIXTURE = {"s0": 0.3, "s1": 0.05}


def make_repo(root: Path, size: int) -> Path:
    """A repository with `size` examples split over SLICES slices; returns its folder."""
    data = root / "data"
    raw = root / "raw"
    data.mkdir(parents=True)
    raw.mkdir()
    for s in range(SLICES):
        name = f"s{s}"
        n = size // SLICES + (1 if s < size % SLICES else 0)
        path = raw / f"{name}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            # ~150 bytes a line, compact JSON as materialize writes it; string formatting keeps
            # generating a million lines to a couple of seconds.
            for i in range(n):
                f.write(f'{{"messages":[{{"role":"user","content":"Question {i} of slice {name}: what is {i} plus {s}?"}},'
                        f'{{"role":"assistant","content":"The answer to question {i} is {i + s}, because {i} + {s} = {i + s}."}}]}}\n')
        (data / f"{name}.yaml").write_text(f"description: benchmark slice {name}\nOpenAIJsonl:\n"
                                           f"  - link: {json.dumps(str(path))}\n", encoding="utf-8")
    lines = "".join(f"  {k}: {v}\n" for k, v in MIXTURE.items())
    (root / "training.yaml").write_text(f"Training:\n  seed: 1\nMixture:\n{lines}", encoding="utf-8")
    return root


def child_command(stage: str, repo: Path, out: Path) -> list[str]:
    if stage == "cli":
        return [sys.executable, "-m", "oig", "mix", "--data", str(repo / "data"), "--config",
                str(repo / "training.yaml"), "--out", str(out), "--allow-local-sources", "--format", "json"]
    code = (
        "import json, sys; from pathlib import Path;"
        "from oig.data.allocation import allocate; from oig.data.mixwriter import SliceFile, write_mixture;"
        "repo, out = Path(sys.argv[1]), Path(sys.argv[2]);"
        "files = sorted((repo / 'raw').glob('*.jsonl'));"
        "slices = [SliceFile(p.stem, p, sum(1 for _ in p.open('rb'))) for p in files];"
        f"alloc = allocate({{s.name: s.count for s in slices}}, {MIXTURE!r}, None);"
        "print(json.dumps(write_mixture(out, slices, alloc, 1, 'training.yaml')))"
    )
    return [sys.executable, "-c", code, str(repo), str(out)]


def measure(command: list[str]) -> dict:
    """Run command as a child; wall seconds and its peak RSS. Called in a fresh process per run, so
    RUSAGE_CHILDREN holds this one child only."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"`oig mix` failed ({done.returncode}):\n{done.stderr[-3000:]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    total = json.loads(done.stdout)["total"]
    return {"wall_s": wall, "peak_rss_mb": peak_kib / 1024, "total": total}


def run_once(stage: str, repo: Path) -> dict:
    out, cache = repo / "out", repo / "cache"
    # A cold cache every run: materializing is part of what is measured.
    for folder in (out, cache):
        shutil.rmtree(folder, ignore_errors=True)
    paths = [str(ROOT / "scripts"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "OIG_CACHE_DIR": str(cache),
           "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    done = subprocess.run([sys.executable, __file__, "--measure", *child_command(stage, repo, out)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(done.stderr or done.stdout)
    result = json.loads(done.stdout)
    lines = sum(1 for _ in (out / "mixture.jsonl").open("rb"))
    if lines != result["total"]:
        raise SystemExit(f"mixture.jsonl has {lines} lines, the manifest says {result['total']}")
    return result


def bench(sizes: list[int], repeat: int, stage: str) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="oig-bench-mix-") as tmp:
        for size in sizes:
            repo = make_repo(Path(tmp) / f"n{size}", size)
            runs = [run_once(stage, repo) for _ in range(repeat)]
            wall = statistics.median(r["wall_s"] for r in runs)
            rows.append({"size": size, "wall_s": wall, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                         "us_per_example": wall / size * 1e6, "runs": [round(r["wall_s"], 3) for r in runs]})
            shutil.rmtree(repo)
    base = rows[0]["us_per_example"]
    for r in rows:
        r["ratio"] = r["us_per_example"] / base
    return rows


def report(rows: list[dict], stage: str, repeat: int) -> str:
    lines = [f"oig mix benchmark (stage: {stage}, {SLICES} slices, median of {repeat} run(s))",
             f"{'examples':>10}  {'median s':>9}  {'peak RSS MB':>11}  {'us/example':>10}  {'ratio':>5}  runs"]
    for r in rows:
        lines.append(f"{r['size']:>10,}  {r['wall_s']:>9.2f}  {r['peak_rss_mb']:>11.0f}  {r['us_per_example']:>10.2f}"
                     f"  {r['ratio']:>5.2f}  {r['runs']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--measure"]:
        print(json.dumps(measure(argv[1:])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100_000, 300_000, 1_000_000],
                        help="comma-separated example counts (default: 100000,300000,1000000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size; the median is reported")
    parser.add_argument("--stage", choices=["cli", "writer"], default="cli",
                        help="cli: the whole `oig mix` command; writer: oig.data.mixwriter.write_mixture only")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args(argv)
    rows = bench(args.sizes, args.repeat, args.stage)
    sys.stdout.write(report(rows, args.stage, args.repeat))
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
