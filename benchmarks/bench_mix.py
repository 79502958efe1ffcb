"""Benchmark `oig mix`: wall time and peak memory at several sizes, and whether time grows linearly.

    python benchmarks/bench_mix.py                       # 100k, 300k, 1M examples from 10 slices
    python benchmarks/bench_mix.py --sizes 20000 --repeat 1
    python benchmarks/bench_mix.py --stage writer        # the writer alone, on prebuilt JSONL
    python benchmarks/bench_mix.py --large               # 10M examples, against `datasets`, 2 runs each
    python benchmarks/bench_mix.py --sizes 1000000 --peer --inputs /tmp/oig-bench-inputs
    python benchmarks/bench_mix.py --one-source 40000000 --total 1000000   # N of one 40M-row source

Each size gets a temp repository: 10 slices as local OpenAI JSONL files (OpenAIJsonl links, so
`--allow-local-sources`), a training.yaml whose Mixture repeats one slice about 3 times and samples
another at half, and a mixture total equal to everything available. ``--stage cli`` runs the real
command, ``python -m oig mix``, end to end in a child process (validation, materialization,
allocation, writing); ``--stage writer`` runs only ``oig.data.mixwriter.write_mixture`` on the same files.
Each run is measured in its own child: wall time, and peak RSS from getrusage(RUSAGE_CHILDREN).
Prints the median of --repeat runs per size and the time per example relative to the smallest size.

``--peer`` also runs the same job with the `datasets` library (``peer_job``), alternating with oig
run by run so machine noise hits both: load every slice's JSONL into Arrow (a cold cache each run),
hold out 100 examples of each, repeat or sample each slice to oig's count for it, add the slice name,
concatenate, shuffle and write JSON lines. It prints both medians, the ratio oig / datasets and both
peaks, against the targets of ``--large`` (10M examples): at most 0.5x the datasets time, under
1 GB and under 3 minutes. ``--inputs DIR`` keeps the generated slices there for the next invocation.

``--one-source ROWS --total N`` mixes N examples out of one slice of ROWS examples (LAION's OIG has
about 40M): the whole command once, with its wall time and peak RSS, and the peak per source row.
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


TARGET_RATIO = 0.5  # oig / datasets, at --large
TARGET_PEAK_MB = 1024
TARGET_WALL_S = 180.0
LARGE = 10_000_000
SHARD_ROWS = 10_000_000  # rows a file of --one-source (~1.6 GB)
PEER_EVAL = 100  # examples the peer holds out of each slice (oig holds out 1,000 in all by default)


def make_repo(root: Path, size: int) -> Path:
    """A repository with `size` examples split over SLICES slices; returns its folder. A folder that
    already holds a complete one of that size (``--inputs``) is reused as it is."""
    data = root / "data"
    raw = root / "raw"
    done = root / "complete"
    if done.is_file() and done.read_text() == str(size):
        return root
    shutil.rmtree(root, ignore_errors=True)
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
    done.write_text(str(size))
    return root


def make_one_source(root: Path, rows: int, total: int) -> Path:
    """A repository whose one slice has `rows` examples and whose mixture takes `total` of them."""
    done = root / "complete"
    if done.is_file() and done.read_text() == f"one {rows} {total}":
        return root
    shutil.rmtree(root, ignore_errors=True)
    (root / "data").mkdir(parents=True)
    (root / "raw").mkdir()
    links = []
    for shard, first in enumerate(range(0, rows, SHARD_ROWS)):  # files under the 2 GiB download limit
        path = root / "raw" / f"big-{shard:05d}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for start in range(first, min(first + SHARD_ROWS, rows), 100_000):
                f.write("".join(f'{{"messages":[{{"role":"user","content":"Question {i}: what is {i} plus 7?"}},'
                                f'{{"role":"assistant","content":"The answer to question {i} is {i + 7}."}}]}}\n'
                                for i in range(start, min(start + 100_000, first + SHARD_ROWS, rows))))
        links.append(f"  - link: {json.dumps(str(path))}\n")
    (root / "data" / "big.yaml").write_text("OpenAIJsonl:\n" + "".join(links), encoding="utf-8")
    (root / "training.yaml").write_text(f"Training:\n  seed: 1\nMixtureTotal: {total}\n", encoding="utf-8")
    done.write_text(f"one {rows} {total}")
    return root


def one_source(rows: int, total: int, inputs: Path | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="oig-bench-mix-") as tmp:
        repo = make_one_source((inputs or Path(tmp)) / f"one{rows}", rows, total)
        result = run_once("cli", repo)
        for folder in ("out", "cache"):
            shutil.rmtree(repo / folder, ignore_errors=True)
    return {"rows": rows, **result, "bytes_per_row": result["peak_rss_mb"] * 1024 * 1024 / rows}


def peer_job(repo: Path, out: Path, cache: Path) -> dict:
    """The same job with `datasets` (run in a child by ``--peer``): slices in, mixture.jsonl out."""
    from datasets import concatenate_datasets, disable_progress_bars, load_dataset

    from oig.data.allocation import allocate

    disable_progress_bars()
    splits = {}
    for path in sorted((repo / "raw").glob("*.jsonl")):
        ds = load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache))
        # The slice name before any shuffle: a column added after one makes datasets rewrite every row.
        ds = ds.add_column("slice", [path.stem] * len(ds))
        splits[path.stem] = ds.train_test_split(test_size=PEER_EVAL, seed=1)
    counts = allocate({n: len(d["train"]) for n, d in splits.items()}, MIXTURE, None).counts
    parts, held = [], []
    for name, d in splits.items():
        train, k = d["train"], counts[name]
        passes, rest = divmod(k, len(train))
        picks = [train.shuffle(seed=1 + p) for p in range(passes)]
        if rest:
            picks.append(train.shuffle(seed=1 + passes).select(range(rest)))
        parts.append(concatenate_datasets(picks))
        held.append(d["test"])
    out.mkdir(parents=True, exist_ok=True)
    mixture = concatenate_datasets(parts).shuffle(seed=1)
    mixture.to_json(str(out / "mixture.jsonl"), lines=True, force_ascii=False)
    concatenate_datasets(held).to_json(str(out / "eval.jsonl"), lines=True, force_ascii=False)
    return {"total": len(mixture)}


def child_command(stage: str, repo: Path, out: Path) -> list[str]:
    if stage == "datasets":
        return [sys.executable, __file__, "--peer-job", str(repo), str(out), str(repo / "cache" / "datasets")]
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
           "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(cache / "hf")}
    done = subprocess.run([sys.executable, __file__, "--measure", *child_command(stage, repo, out)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(done.stderr or done.stdout)
    result = json.loads(done.stdout)
    lines = sum(1 for _ in (out / "mixture.jsonl").open("rb"))
    if lines != result["total"]:
        raise SystemExit(f"mixture.jsonl has {lines} lines, the manifest says {result['total']}")
    return result


def _summary(size: int, runs: list[dict]) -> dict:
    wall = statistics.median(r["wall_s"] for r in runs)
    return {"size": size, "wall_s": wall, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "us_per_example": wall / size * 1e6, "runs": [round(r["wall_s"], 3) for r in runs]}


def bench(sizes: list[int], repeat: int, stage: str, inputs: Path | None = None) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="oig-bench-mix-") as tmp:
        for size in sizes:
            repo = make_repo((inputs or Path(tmp)) / f"n{size}", size)
            rows.append(_summary(size, [run_once(stage, repo) for _ in range(repeat)]))
            if inputs is None:
                shutil.rmtree(repo)
    base = rows[0]["us_per_example"]
    for r in rows:
        r["ratio"] = r["us_per_example"] / base
    return rows


def compare(sizes: list[int], repeat: int, inputs: Path | None = None) -> list[dict]:
    """oig (the whole command) against the datasets peer, alternating run by run, per size."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="oig-bench-mix-") as tmp:
        for size in sizes:
            repo = make_repo((inputs or Path(tmp)) / f"n{size}", size)
            runs: dict[str, list[dict]] = {"cli": [], "datasets": []}
            for _ in range(repeat):
                for stage in runs:
                    runs[stage].append(run_once(stage, repo))
            oig, peer = _summary(size, runs["cli"]), _summary(size, runs["datasets"])
            rows.append({"size": size, "oig": oig, "datasets": peer, "ratio": oig["wall_s"] / peer["wall_s"]})
            shutil.rmtree(repo / "out", ignore_errors=True)
            shutil.rmtree(repo / "cache", ignore_errors=True)
            if inputs is None:
                shutil.rmtree(repo)
    return rows


def report_compare(rows: list[dict], repeat: int) -> str:
    lines = [f"oig mix against the datasets peer ({SLICES} slices, cold caches, median of {repeat} run(s) each, "
             "alternating)",
             f"{'examples':>10}  {'oig s':>8}  {'datasets s':>10}  {'ratio':>5}  {'oig MB':>7}  {'datasets MB':>11}"
             "  runs (oig | datasets)"]
    for r in rows:
        o, d = r["oig"], r["datasets"]
        lines.append(f"{r['size']:>10,}  {o['wall_s']:>8.1f}  {d['wall_s']:>10.1f}  {r['ratio']:>5.2f}  "
                     f"{o['peak_rss_mb']:>7.0f}  {d['peak_rss_mb']:>11.0f}  {o['runs']} | {d['runs']}")
    for r in rows:
        if r["size"] >= LARGE:
            o = r["oig"]
            checks = [("ratio", r["ratio"] <= TARGET_RATIO, f"{r['ratio']:.2f} <= {TARGET_RATIO}"),
                      ("oig peak", o["peak_rss_mb"] < TARGET_PEAK_MB, f"{o['peak_rss_mb']:.0f} MB < {TARGET_PEAK_MB} MB"),
                      ("oig time", o["wall_s"] < TARGET_WALL_S, f"{o['wall_s']:.1f} s < {TARGET_WALL_S:.0f} s")]
            lines += [f"target at {r['size']:,}: {name} {text}: {'met' if ok else 'MISSED'}" for name, ok, text in checks]
    return "\n".join(lines) + "\n"


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
    if argv[:1] == ["--peer-job"]:
        print(json.dumps(peer_job(*map(Path, argv[1:4]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100_000, 300_000, 1_000_000],
                        help="comma-separated example counts (default: 100000,300000,1000000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size; the median is reported")
    parser.add_argument("--stage", choices=["cli", "writer"], default="cli",
                        help="cli: the whole `oig mix` command; writer: oig.data.mixwriter.write_mixture only")
    parser.add_argument("--peer", action="store_true", help="also run the same job with `datasets`, alternating")
    parser.add_argument("--large", action="store_true",
                        help=f"{LARGE:,} examples against `datasets`, 2 runs each (--sizes {LARGE} --peer --repeat 2)")
    parser.add_argument("--inputs", type=Path, help="keep the generated slices in this folder and reuse them")
    parser.add_argument("--one-source", type=int, metavar="ROWS", help="one slice of ROWS examples; mix --total of it")
    parser.add_argument("--total", type=int, default=1_000_000, help="with --one-source: the mixture's size")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args(argv)
    if args.one_source:
        row = one_source(args.one_source, args.total, args.inputs)
        print(f"one source of {row['rows']:,} examples, {row['total']:,} mixed: {row['wall_s']:.1f} s, peak RSS "
              f"{row['peak_rss_mb']:.0f} MB ({row['bytes_per_row']:.0f} bytes a source row)")
        if args.json:
            print(json.dumps(row))
        return 0
    if args.large:
        args.sizes, args.peer = [LARGE], True
        args.repeat = 2 if "--repeat" not in argv else args.repeat
    if args.peer:
        if args.stage != "cli":
            parser.error("--peer compares the whole command: leave out --stage")
        rows = compare(args.sizes, args.repeat, args.inputs)
        sys.stdout.write(report_compare(rows, args.repeat))
    else:
        rows = bench(args.sizes, args.repeat, args.stage, args.inputs)
        sys.stdout.write(report(rows, args.stage, args.repeat))
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
