"""A small run of benchmarks/bench_serve.py, so that the benchmark cannot rot."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_serve  # noqa: E402


@pytest.mark.parametrize("client, stream", [("http.client", False), ("httpx", True)])
def test_benchmark_smoke(capsys, client, stream):
    assert bench_serve.main(["--tokens", "8", "--concurrency", "1", "4", "--requests", "2", "--repeat", "1",
                             "--client", client, *(["--stream"] if stream else [])]) == 0
    out = capsys.readouterr().out
    assert f"clients: {client}, 2 requests each per run, 8 tokens an answer" + (", streamed" if stream else "") in out
    assert re.search(r"generate on a batch of 16: [\d,]+ tokens/s", out)
    for clients in (1, 4):
        found = re.search(rf"oig serve, +{clients} client\(s\): ([\d,]+) tokens/s .* mean batch ([\d.]+) rows", out)
        assert found and int(found.group(1).replace(",", "")) > 0, out
    # Four clients at once share batches: more than one row each on average.
    assert float(re.search(r"4 client\(s\).* mean batch ([\d.]+) rows", out).group(1)) > 1.0
