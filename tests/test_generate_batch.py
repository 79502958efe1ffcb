"""Providers in `mode: batch`: calls through OpenAI's and Together's batch APIs (local fakes), recorded in
the store, polled, resumed after a kill without resubmitting, and failed batches submitted again."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from fake_openai import FakeOpenAI
from fake_together import FakeTogether
from test_generate_run import ROOT, records, run, write_config, write_rows

from oig.errors import InvalidInput
from oig.generate.config import load_config

BATCH = "    mode: batch\n    batch_size: 100\n    poll_s: 0.02\n    flush_s: 0.05\n"
ONE_MODEL = "models:\n  - model: alpha\n    provider: local\n"
SCORE_JUDGE = "judges:\n  - kind: score\n    model: judge\n    provider: local\n"


def batch_config(tmp_path, base_url, **kwargs):
    cfg = write_config(tmp_path, base_url, **kwargs)
    cfg.write_text(cfg.read_text().replace("    concurrency: 4\n", "    concurrency: 4\n" + BATCH))
    return cfg


def batches_in_store(out) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(out / "calls.sqlite")) as con:
        return list(con.execute("SELECT id, status FROM batches ORDER BY created"))


def test_openai_batches_answer_every_call_and_are_recorded(tmp_path):
    with FakeOpenAI() as srv:
        cfg = batch_config(tmp_path, srv.base_url, judges=SCORE_JUDGE)
        summary = run(cfg, tmp_path / "out")
        posted = [r for r in srv.requests if r.method == "POST"]
    # No online call: every answer came through /v1/files + /v1/batches.
    assert {r.path for r in posted} == {"/v1/files", "/v1/batches"}
    # Answers in one batch (4 rows x 2 models), then the judge's verdicts on them in another.
    assert [len(b["lines"]) for b in srv.batches.values()] == [8, 8]
    assert batches_in_store(tmp_path / "out") == [("batch_1", "completed"), ("batch_2", "completed")]
    recs = records(tmp_path / "out")
    assert recs[0]["responses"][0]["text"] == "[alpha] What is the capital of France?"
    assert all(r["best"] is not None for r in recs) and summary.response_errors == 0
    assert summary.stats["batches"] == {"local": {"submitted": 2, "resumed": 0}}
    line = srv.batches["batch_1"]["lines"][0]
    assert set(line) == {"custom_id", "method", "url", "body"} and len(line["custom_id"]) == 64


def test_a_rerun_takes_every_answer_from_the_store(tmp_path):
    with FakeOpenAI() as srv:
        cfg = batch_config(tmp_path, srv.base_url, judges="", models=ONE_MODEL)
        run(cfg, tmp_path / "out")
        summary = run(cfg, tmp_path / "out")
        assert len(srv.batches) == 1
    assert summary.stats["calls"] == 0 and summary.stats["stored"] == 4


def test_failed_lines_are_errors_on_their_answers(tmp_path):
    with FakeOpenAI(status={"beta-long": 400}) as srv:
        cfg = batch_config(tmp_path, srv.base_url, judges="")
        summary = run(cfg, tmp_path / "out")
    for r in records(tmp_path / "out"):
        alpha, beta = r["responses"]
        assert alpha["error"] is None and beta["error"].startswith("HTTP 400: the model beta-long cannot answer")
    assert summary.response_errors == 4


def test_an_expired_batch_is_an_error_and_the_rerun_submits_it_again(tmp_path):
    with FakeOpenAI(batch_states=("validating", "expired")) as srv:
        cfg = batch_config(tmp_path, srv.base_url, judges="", models=ONE_MODEL)
        run(cfg, tmp_path / "out")
        errors = [r["responses"][0]["error"] for r in records(tmp_path / "out")]
        assert errors == ["batch batch_1 ended expired"] * 4
        srv.batch_states = ("completed",)
        summary = run(cfg, tmp_path / "out")
        assert len(srv.batches) == 2 and summary.response_errors == 0
    assert batches_in_store(tmp_path / "out") == [("batch_1", "expired"), ("batch_2", "completed")]


def kill_after_polls(cfg, tmp_path, polls_of) -> int:
    """Run `oig generate` in a child process and kill it once its batch was polled 3 times."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts")}
    proc = subprocess.Popen([sys.executable, "-m", "oig", "generate", "--config", str(cfg), "--out",
                             str(tmp_path / "out"), "--allow-local-sources"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    polls = 0
    while polls < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        polls = polls_of()
    proc.kill()
    proc.wait(10)
    return polls


@pytest.mark.timeout(120)
def test_a_killed_run_polls_its_batch_again_instead_of_resubmitting(tmp_path):
    with FakeOpenAI(batch_states=("validating", *["in_progress"] * 100_000)) as srv:
        cfg = batch_config(tmp_path, srv.base_url, judges="", models=ONE_MODEL)
        write_rows(tmp_path / "rows.jsonl", [{"prompt": f"question {i}"} for i in range(20)])
        polls = kill_after_polls(cfg, tmp_path, lambda: sum(
            r.method == "GET" and r.path == "/v1/batches/batch_1" for r in srv.requests))
        assert polls >= 3 and batches_in_store(tmp_path / "out") == [("batch_1", "in_progress")]
        srv.batches["batch_1"]["states"] = ["completed"]
        summary = run(cfg, tmp_path / "out")
        assert list(srv.batches) == ["batch_1"]  # polled again, never resubmitted
    assert summary.stats["batches"] == {"local": {"submitted": 0, "resumed": 1}}
    assert [r["responses"][0]["text"] for r in records(tmp_path / "out")] == [
        f"[alpha] question {i}" for i in range(20)]


def together_config(tmp_path, url, monkeypatch):
    monkeypatch.setenv("OIG_TEST_TOGETHER_KEY", "tg_test_key")
    cfg = write_config(tmp_path, url, judges="", models=ONE_MODEL)
    cfg.write_text(cfg.read_text().replace("    kind: openai\n", "    kind: together\n    api_key_env: "
                                           "OIG_TEST_TOGETHER_KEY\n").replace("    concurrency: 4\n",
                                                                               "    concurrency: 4\n" + BATCH))
    return cfg


@pytest.mark.timeout(120)
def test_a_killed_run_polls_its_together_batch_again(tmp_path, monkeypatch):
    with FakeTogether(answer="Paris", batch_states=("VALIDATING", *["IN_PROGRESS"] * 100_000)) as fake:
        cfg = together_config(tmp_path, fake.url, monkeypatch)
        polls = kill_after_polls(cfg, tmp_path, lambda: len(fake.find("GET", "/v1/batches/batch-1")))
        assert polls >= 3 and batches_in_store(tmp_path / "out") == [("batch-1", "in_progress")]
        fake.batches["batch-1"]["states"] = ["COMPLETED"]
        summary = run(cfg, tmp_path / "out")
        assert len(fake.find("POST", "/v1/batches")) == 1  # the first run's, never again
    assert summary.stats["batches"] == {"local": {"submitted": 0, "resumed": 1}}
    assert [r["responses"][0]["text"] for r in records(tmp_path / "out")] == ["Paris"] * 4


def test_together_batches_go_through_the_sdk(tmp_path, monkeypatch):
    with FakeTogether(answer="Paris") as fake:
        cfg = together_config(tmp_path, fake.url, monkeypatch)
        summary = run(cfg, tmp_path / "out")
        assert fake.find("POST", "/v1/chat/completions") == []
        [create] = fake.find("POST", "/v1/batches")
    assert create["json"]["endpoint"] == "/v1/chat/completions" and create["json"]["input_file_id"]
    assert [r["responses"][0]["text"] for r in records(tmp_path / "out")] == ["Paris"] * 4
    assert summary.stats["batches"] == {"local": {"submitted": 1, "resumed": 0}}
    assert batches_in_store(tmp_path / "out") == [("batch-1", "completed")]


def test_batch_settings_need_mode_batch(tmp_path):
    cfg = write_config(tmp_path, "http://127.0.0.1:9")
    cfg.write_text(cfg.read_text().replace("    concurrency: 4\n", "    concurrency: 4\n    poll_s: 5\n"))
    with pytest.raises(InvalidInput) as err:
        load_config(cfg)
    [problem] = err.value.problems
    assert "`poll_s` applies to `mode: batch`" in problem.message and problem.line > 0


def test_a_batch_that_cannot_be_submitted_is_every_call_s_error(tmp_path):
    with FakeOpenAI() as srv:
        port = srv.port
    cfg = batch_config(tmp_path, f"http://127.0.0.1:{port}", judges="", models=ONE_MODEL)  # nothing listens
    summary = run(cfg, tmp_path / "out")
    errors = {r["responses"][0]["error"] for r in records(tmp_path / "out")}
    assert len(errors) == 1 and errors.pop().startswith("the batch was not submitted: POST /v1/files:")
    assert summary.response_errors == 4 and batches_in_store(tmp_path / "out") == []


def test_hostile_batch_answers_are_errors_not_urls(tmp_path):
    from servers import LocalServer

    with LocalServer({"POST /v1/files": {"id": "../../admin"}}) as srv:
        cfg = batch_config(tmp_path, srv.url, judges="", models=ONE_MODEL)
        run(cfg, tmp_path / "out")
        assert srv.paths() == ["/v1/files"]  # nothing built from the hostile id was requested
    errors = {r["responses"][0]["error"] for r in records(tmp_path / "out")}
    assert errors == {"the batch was not submitted: the uploaded file has no usable `id` in the answer "
                      "('../../admin')"}
    with LocalServer({"POST /v1/files": {"id": "file-1"}, "POST /v1/batches": {"id": "b1", "status": "validating"},
                      "GET /v1/batches/b1": {"status": "completed", "output_file_id": "f2"},
                      "GET /v1/files/f2/content": b'not json\n{"custom_id": 5}\n'}) as srv:
        cfg = batch_config(tmp_path, srv.url, judges="", models=ONE_MODEL)
        run(cfg, tmp_path / "out2")
    errors = {r["responses"][0]["error"] for r in records(tmp_path / "out2")}
    assert errors == {"batch b1 completed without an answer for this call"}
