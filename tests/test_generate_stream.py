"""Records streamed to disk: appended in order, checkpointed, resumed after a kill, renamed at the end."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI
from test_generate_export import record
from test_generate_run import ROOT, lines, run, write_config, write_rows

from oig.generate import stream
from oig.generate.stream import Sink

PLAN = {"config_sha256": "c" * 64, "seed": 1, "limit": None, "count": 4, "instructions_sha256": "i" * 64}


def sink(out: Path, plan: dict = PLAN) -> Sink:
    return Sink(out, plan, prefs_policy="best_vs_worst", prefs_margin=0.0, seed=1, pairwise=False, total=4)


def rec(rid: str) -> dict:
    return {**record(rid, {"a": 0.9, "b": 0.1}), "evaluations": []}


def test_records_are_on_disk_as_they_finish_and_renamed_at_the_end(tmp_path):
    s = sink(tmp_path)
    assert s.open() == 0
    s.write(rec("r1"))
    # Before the end: the part files hold the finished record, the final names do not exist yet.
    assert [r["id"] for r in lines(tmp_path / "records.jsonl.part")] == ["r1"]
    assert len(lines(tmp_path / "prefs.jsonl.part")) == 1 and not (tmp_path / "records.jsonl").exists()
    s.write(rec("r2"))
    assert s.finish() == {"records.jsonl": 2, "sft.jsonl": 2, "prefs.jsonl": 2, "battles.jsonl": 2}
    s.close()
    assert [r["id"] for r in lines(tmp_path / "records.jsonl")] == ["r1", "r2"]
    assert not (tmp_path / "progress.json").exists() and not list(tmp_path.glob("*.part"))
    assert s.counts["records"] == 2 and s.counts["responses"] == 4


def test_an_interrupted_run_resumes_after_its_checkpoint_and_drops_a_torn_line(tmp_path):
    s = sink(tmp_path)
    s.open()
    s.write(rec("r1"))
    s.write(rec("r2"))
    s.close()  # checkpoint at 2 records
    with open(tmp_path / "records.jsonl.part", "ab") as f:
        f.write(b'{"id": "r3", "respon')  # killed mid-line
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["counts"]["records"] == 2 and progress["total"] == 4
    again = sink(tmp_path)
    assert again.open() == 2
    again.write(rec("r3"))
    files = again.finish()
    assert [r["id"] for r in lines(tmp_path / "records.jsonl")] == ["r1", "r2", "r3"]
    assert files["records.jsonl"] == 3 and again.counts["records"] == 3


def test_another_plan_or_a_damaged_checkpoint_starts_the_files_again(tmp_path):
    s = sink(tmp_path)
    s.open()
    s.write(rec("r1"))
    s.close()
    assert sink(tmp_path, {**PLAN, "seed": 2}).open() == 0
    assert (tmp_path / "records.jsonl.part").read_bytes() == b""
    (tmp_path / "progress.json").write_text('{"version": 1, "plan": "not json')
    assert sink(tmp_path).open() == 0
    # A checkpoint pointing past the end of a file (the file lost its tail) is not trusted either.
    s = sink(tmp_path)
    s.open()
    s.write(rec("r1"))
    s.close()
    os.truncate(tmp_path / "sft.jsonl.part", 3)
    assert sink(tmp_path).open() == 0


def test_a_run_holds_no_more_records_than_its_window(tmp_path, monkeypatch):
    # Records started but not yet written are the only ones in memory: at most the window of 4 x concurrency.
    from oig.generate import run as run_module

    started, outstanding = [0], []
    real_process, real_write = run_module.process, Sink.write

    async def process(ctx, inst):
        started[0] += 1
        return await real_process(ctx, inst)

    def write(self, record):
        real_write(self, record)
        outstanding.append(started[0] - self.counts["records"])

    monkeypatch.setattr(run_module, "process", process)
    monkeypatch.setattr(Sink, "write", write)
    with FakeOpenAI(latency={"alpha": 0.002}) as srv:
        cfg = write_config(tmp_path, srv.base_url, judges="", models="models:\n  - model: alpha\n    provider: local\n")
        write_rows(tmp_path / "rows.jsonl", [{"prompt": f"q{i}"} for i in range(200)])
        summary = run(cfg, tmp_path / "out")
    assert summary.records == 200 and len(outstanding) == 200
    assert max(outstanding) <= 4 * 4  # concurrency 4
    assert [r["messages"][0]["content"] for r in lines(tmp_path / "out" / "records.jsonl")] == [
        f"q{i}" for i in range(200)]


@pytest.mark.timeout(120)
def test_a_killed_run_resumes_without_recomputing_or_rewriting_its_records(tmp_path):
    n = 120
    with FakeOpenAI(latency=0.05) as srv:
        cfg = write_config(tmp_path, srv.base_url, judges="", models="models:\n  - model: alpha\n    provider: local\n")
        write_rows(tmp_path / "rows.jsonl", [{"prompt": f"question {i}"} for i in range(n)])
        cfg.write_text(cfg.read_text().replace("concurrency: 4", "concurrency: 2"))
        env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts")}
        proc = subprocess.Popen([sys.executable, "-m", "oig", "generate", "--config", str(cfg), "--out",
                                 str(tmp_path / "out"), "--allow-local-sources"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        progress = tmp_path / "out" / stream.PROGRESS
        checkpointed = 0
        deadline = time.monotonic() + 60
        while checkpointed < 10 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            with contextlib.suppress(OSError, ValueError, KeyError):
                checkpointed = json.loads(progress.read_text())["counts"]["records"]
        proc.kill()
        proc.wait(10)
        assert 10 <= checkpointed < n, "the run should be killed part way, after a checkpoint"
        offset = json.loads(progress.read_text())["offsets"]["records.jsonl"]
        kept = (tmp_path / "out" / "records.jsonl.part").read_bytes()[:offset]
        before = len(srv.chat_requests())
        summary = run(cfg, tmp_path / "out")
        made = len(srv.chat_requests()) - before
    assert summary.resumed >= checkpointed and summary.records == n
    # The resumed records were not looked at again: neither called nor read from the store.
    assert summary.stats["calls"] + summary.stats["stored"] == n - summary.resumed == made + summary.stats["stored"]
    final = (tmp_path / "out" / "records.jsonl").read_bytes()
    assert kept and final.startswith(kept)  # the records written before the kill, byte for byte
    assert [r["messages"][0]["content"] for r in lines(tmp_path / "out" / "records.jsonl")] == [
        f"question {i}" for i in range(n)]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["resumed_records"] == summary.resumed
    assert not (tmp_path / "out" / stream.PROGRESS).exists()


def test_a_run_stopped_by_an_error_keeps_its_records_and_the_cli_says_it_resumed(tmp_path, monkeypatch, capsys):
    from oig.cli import main
    from oig.errors import OigError
    from oig.generate import run as run_module

    real_process = run_module.process
    calls = [0]

    async def failing(ctx, inst):
        calls[0] += 1
        if calls[0] == 12:
            raise OigError("cannot load the reward model")  # a run-stopping error, mid way
        return await real_process(ctx, inst)

    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, srv.base_url, judges="", models="models:\n  - model: alpha\n    provider: local\n")
        write_rows(tmp_path / "rows.jsonl", [{"prompt": f"q{i}"} for i in range(30)])
        cfg.write_text(cfg.read_text().replace("concurrency: 4", "concurrency: 1"))
        monkeypatch.setattr(run_module, "process", failing)
        args = ["generate", "--config", str(cfg), "--out", str(tmp_path / "out"), "--allow-local-sources"]
        assert main(args) == 1
        assert "cannot load the reward model" in capsys.readouterr().err
        written = len(lines(tmp_path / "out" / "records.jsonl.part"))
        assert 1 <= written < 12
        monkeypatch.setattr(run_module, "process", real_process)
        assert main(args) == 0
    out = capsys.readouterr().out
    assert f"resumed: {written} records written by an interrupted run were kept as they were" in out
    assert [r["messages"][0]["content"] for r in lines(tmp_path / "out" / "records.jsonl")] == [
        f"q{i}" for i in range(30)]
