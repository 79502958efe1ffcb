"""Benchmark: `oig validate` against a bare libyaml parse and against check-jsonschema.

Generates 200,000 IOPairs (about 68 MB of YAML in 20 files), then reports medians of several runs:
  - a bare parse with yaml.CSafeLoader of the same files (the baseline, measured in the same run),
  - oig's validation of them (read, safe parse, schema, checks), and the ratio to the baseline,
  - check-jsonschema with the slice schema on the same files (one run: it is far slower),
  - `oig validate` on the repository's shipped data/, start-up included (a subprocess).

    python benchmarks/bench_validate.py [--pairs 200000] [--files 20] [--runs 5] [--skip-check-jsonschema]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from oig.data.validate import ValidateOptions, validate  # noqa: E402

WORDS = ["the", "model", "data", "answer", "question", "explain", "why", "how", "what", "where", "slice", "train", "community", "open", "chat", "please", "thanks", "résumé", "naïve", "東京", "code", "python", "list", "value", "example", "learn", "better", "write", "short"]


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def generate(folder: Path, pairs: int, files: int) -> int:
    rng = random.Random(0)
    per_file = pairs // files
    total = 0
    for i in range(files):
        items = []
        for _ in range(per_file):
            output = sentence(rng, 15, 49)
            if rng.random() < 0.2:  # some multi-line answers, as real data has
                output += "\n" + sentence(rng, 5, 15) + "\n- " + sentence(rng, 3, 8)
            items.append({"input": sentence(rng, 5, 25) + "?", "output": output})
        path = folder / f"slice{i:02d}.yaml"
        with path.open("w", encoding="utf-8") as f:
            f.write("# yaml-language-server: $schema=../schemas/slice.schema.json\nlicense: CC0-1.0\n")
            yaml.dump({"IOPairs": items}, f, Dumper=yaml.CSafeDumper, allow_unicode=True, width=120, sort_keys=False)
        total += path.stat().st_size
    return total


def bare_parse(files: list[Path]) -> None:
    for path in files:
        with path.open("rb") as f:
            yaml.load(f.read(), Loader=yaml.CSafeLoader)


def oig_validate(folder: Path) -> None:
    problems = validate([folder], ValidateOptions())
    assert not any(p.severity == "error" for p in problems), problems[:3]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=200_000)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--skip-check-jsonschema", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        folder.mkdir()
        size = generate(folder, args.pairs, args.files)
        files = sorted(folder.glob("*.yaml"))
        print(f"{args.pairs:,} pairs in {len(files)} files, {size / 1e6:.1f} MB")

        base, ours = [], []
        for _ in range(args.runs):  # interleaved, so machine noise hits both alike
            base.append(timed(lambda: bare_parse(files)))
            ours.append(timed(lambda: oig_validate(folder)))
        b, o = statistics.median(base), statistics.median(ours)
        print(f"bare CSafeLoader parse : median {b:6.2f} s  ({size / 1e6 / b:5.1f} MB/s)  runs {[round(x, 2) for x in base]}")
        print(f"oig validate (in-proc) : median {o:6.2f} s  ({size / 1e6 / o:5.1f} MB/s)  runs {[round(x, 2) for x in ours]}")
        print(f"ratio oig / bare parse : {o / b:.2f}x   (target <= 1.5x)")

        if not args.skip_check_jsonschema:
            exe = Path(sys.executable).with_name("check-jsonschema")
            cmd = [str(exe), "--schemafile", str(ROOT / "schemas" / "slice.schema.json"), *map(str, files)]
            t = timed(lambda: subprocess.run(cmd, check=True, capture_output=True))
            print(f"check-jsonschema       : {t:6.2f} s (one run)   oig is {t / o:.1f}x faster (target >= 10x)")

        env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts")}
        cli = [sys.executable, "-m", "oig", "validate"]
        runs = [timed(lambda: subprocess.run(cli, cwd=ROOT, env=env, check=True, capture_output=True))
                for _ in range(args.runs)]
        print(f"oig validate, shipped data/, start-up included: median {statistics.median(runs):.3f} s (target < 1 s)")


if __name__ == "__main__":
    main()
