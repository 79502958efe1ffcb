"""`oig mix` on a large Hugging Face source: the rows stream through, and memory holds indexes, not rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = 600_000  # LAION OIG's layout: one "text" column of <human>:/<bot>: turns, ~140 bytes a row
PICKED = 40_000  # the mixture takes this many of them
# Measured: 189 MB at 300k rows, 210 MB at 600k (~70 bytes a row: line offsets, digests and the
# split's sort, all arrays). Held in memory, the converted records alone would add ~825 bytes a row.
BASE_MB = 180  # the interpreter, pyarrow and a parquet row group being read
BYTES_PER_ROW = 100


def _oig_text_parquet(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = pq.ParquetWriter(path, pa.schema([("text", pa.string())]))
    for start in range(0, rows, 100_000):  # row groups of 100k rows, as the Hub's parquet shards have
        texts = [f"<human>: Question {i}: what is {i} plus 7? Say how.\n<bot>: It is {i + 7}, as {i} + 7 = {i + 7}."
                 for i in range(start, min(start + 100_000, rows))]
        writer.write_table(pa.table({"text": texts}))
    writer.close()


def test_a_large_hub_source_streams_through_in_bounded_memory(tmp_path):
    (tmp_path / "oig-like" / "data").mkdir(parents=True)
    _oig_text_parquet(tmp_path / "oig-like" / "data" / "train-00000-of-00001.parquet", ROWS)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "oig.yaml").write_text("HuggingFace:\n  - link: oig-like\n")
    (tmp_path / "data" / "fix.yaml").write_text("IOPairs:\n" + "".join(
        f"  - input: fix {i}\n    output: fixed {i}\n" for i in range(20)))
    (tmp_path / "training.yaml").write_text(f"Training:\n  seed: 3\nMixtureTotal: {PICKED + 2000}\n"
                                            f"Mixture:\n  oig: {PICKED / (PICKED + 2000)!r}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts"), "OIG_CACHE_DIR": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1"}
    # A child measures its own child, the command: its peak RSS alone, whatever this process holds.
    command = [sys.executable, "-m", "oig", "mix", "--data", str(tmp_path / "data"), "--config",
               str(tmp_path / "training.yaml"), "--out", str(tmp_path / "out"), "--allow-local-sources",
               "--format", "json"]
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_mix.py"), "--measure", *command],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    counts = {s["name"]: (s["available"], s["held_out"], s["count"]) for s in manifest["slices"]}
    assert counts["oig"][0] + counts["oig"][1] == ROWS and counts["oig"][2] == PICKED
    assert measured["total"] == PICKED + 2000
    with open(tmp_path / "out" / "mixture.jsonl", "rb") as f:
        first = json.loads(f.readline())
    assert first["messages"][0]["role"] == "user" and first["messages"][1]["role"] == "assistant"
    bound = BASE_MB + BYTES_PER_ROW * ROWS / 1e6  # 240 MB; with the records in memory it would be ~700 MB
    assert measured["peak_rss_mb"] < bound, measured
