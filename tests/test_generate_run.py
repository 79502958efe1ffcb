"""oig generate end to end against local OpenAI-compatible servers: records, resume, failures, budget."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI
from servers import LocalServer, hub_routes

from oig.data.fetch import SourceOptions
from oig.errors import FetchError, InvalidInput, OigError
from oig.generate.config import load_config
from oig.generate.instructions import load_instructions, prompt_of
from oig.generate.run import generate, summary_line

ROOT = Path(__file__).resolve().parents[1]

ROWS = [
    {"prompt": "What is the capital of France?"},
    {"question": "How many legs has a spider?", "answer": "Eight."},
    {"messages": [{"role": "user", "content": "Say hello"}]},
    {"instruction": "Translate into French.", "input": "Good morning"},
]

JUDGES = """
judges:
  - kind: score
    model: judge
    provider: local
    aspects: [helpfulness, correctness]
  - kind: pairwise
    model: judge
    provider: local
  - kind: reference
    model: judge
    provider: local
"""


def write_rows(path: Path, rows=ROWS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_config(tmp_path: Path, base_url: str, *, models: str | None = None, judges: str = JUDGES,
                 extra: str = "", provider: str = "", name: str = "gen.yaml") -> Path:
    write_rows(tmp_path / "rows.jsonl")
    models = models if models is not None else """
models:
  - model: alpha
    provider: local
  - model: beta-long
    provider: local
    temperature: 0.5
"""
    text = f"""
instructions:
  - link: rows.jsonl
license: CC0-1.0
providers:
  local:
    kind: openai
    base_url: {base_url}
    backoff_s: 0.01
    max_attempts: 2
    concurrency: 4
{provider}
{models}
{judges}
{extra}
"""
    path = tmp_path / name
    path.write_text(text)
    return path


def run(config: Path, out: Path, **kwargs):
    kwargs.setdefault("allow_local", True)
    return generate(load_config(config), out, **kwargs)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- instructions -----------------------------------------------------------------------------------


def test_prompt_of_splits_conversations_and_takes_prompt_only_rows():
    assert prompt_of({"prompt": "Hi"}, None) == ([{"role": "user", "content": "Hi"}], None)
    assert prompt_of({"question": "Q?", "answer": "A."}, None) == ([{"role": "user", "content": "Q?"}], "A.")
    assert prompt_of({"instruction": "Do", "input": "this"}, None) == ([{"role": "user", "content": "Do\n\nthis"}], None)
    convo = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
                          {"role": "assistant", "content": "A1", "weight": 0}, {"role": "user", "content": "U2"}]}
    prompt, ref = prompt_of(convo, None)
    assert ref is None and [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]
    assert all("weight" not in m for m in prompt)
    assert prompt_of({"conversations": [{"from": "human", "value": "hey"}]}, None)[0][0]["content"] == "hey"
    assert prompt_of({"text": "<human>: hi there"}, None) == ([{"role": "user", "content": "hi there"}], None)
    assert prompt_of({"q": "Why?"}, {"question": "q"}) == ([{"role": "user", "content": "Why?"}], None)
    with pytest.raises(ValueError, match="no known layout"):
        prompt_of({"foo": 1}, None)
    with pytest.raises(ValueError, match="end with a user message"):
        prompt_of({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                {"role": "assistant", "content": "c"}]}, None)


def test_instructions_have_stable_ids_and_a_seeded_sample(tmp_path):
    cfg = load_config(write_config(tmp_path, "http://127.0.0.1:9"))
    opts = SourceOptions(allow_local=True, base_dir=cfg.base_dir)
    every = load_instructions(cfg, opts)
    assert [i.source["row"] for i in every] == [0, 1, 2, 3]
    assert every[1].reference == "Eight." and every[0].reference is None
    assert len({i.id for i in every}) == 4
    assert load_instructions(cfg, opts)[2].id == every[2].id  # stable across runs
    sample = load_instructions(cfg, opts, limit=2, seed=7)
    assert sample == load_instructions(cfg, opts, limit=2, seed=7)
    assert len(sample) == 2 and sample[0].source["row"] < sample[1].source["row"]  # kept in source order
    assert {i.id for i in sample} <= {i.id for i in every}


def test_local_instruction_files_need_allow_local(tmp_path):
    cfg = load_config(write_config(tmp_path, "http://127.0.0.1:9"))
    with pytest.raises(FetchError, match="allow-local-sources"):
        load_instructions(cfg, SourceOptions(allow_local=False, base_dir=cfg.base_dir))


def test_bad_rows_are_reported_with_their_line(tmp_path):
    cfg_path = write_config(tmp_path, "http://127.0.0.1:9")
    (tmp_path / "rows.jsonl").write_text('{"prompt": "ok"}\nnot json\n{"foo": 1}\n')
    cfg = load_config(cfg_path)
    with pytest.raises(InvalidInput) as err:
        load_instructions(cfg, SourceOptions(allow_local=True, base_dir=cfg.base_dir))
    messages = [p.message for p in err.value.problems]
    assert any("line 2" in m and "not valid JSON" in m for m in messages)
    assert any("line 3" in m and "no known layout" in m for m in messages)


def test_instructions_from_a_hugging_face_dataset_record_its_revision(tmp_path):
    sha = "a" * 40
    data = b"".join(json.dumps(r).encode() + b"\n" for r in ROWS[:2])
    with LocalServer(hub_routes("org/prompts", sha, {"data/train.jsonl": data})) as hub, \
            FakeOpenAI() as srv:
        cfg_path = write_config(tmp_path, srv.base_url, judges="")
        text = cfg_path.read_text().replace("link: rows.jsonl", f"link: {hub.url}/datasets/org/prompts")
        cfg_path.write_text(text)
        run(cfg_path, tmp_path / "out")
    recs = records(tmp_path / "out")
    assert [r["source"] for r in recs] == [
        {"dataset": f"{hub.url}/datasets/org/prompts", "config": None, "split": "train", "row": i, "revision": sha}
        for i in range(2)]


# --- the pipeline -----------------------------------------------------------------------------------


def test_records_hold_answers_verdicts_and_the_best_and_worst(tmp_path):
    with FakeOpenAI(latency=0.005) as srv:
        cfg = write_config(tmp_path, srv.base_url, extra="aggregator:\n  model: agg\n  provider: local\n")
        summary = run(cfg, tmp_path / "out", progress_stream=io.StringIO())
        requests = len(srv.chat_requests())
    recs = records(tmp_path / "out")
    assert len(recs) == 4 and summary.records == 4
    first = recs[0]
    assert set(first) >= {"id", "source", "messages", "reference", "responses", "evaluations", "battles", "scores",
                          "best", "worst"}
    assert [r["model"] for r in first["responses"]] == ["alpha", "beta-long", "agg"]
    alpha, beta, agg = first["responses"]
    assert alpha["text"] == "[alpha] What is the capital of France?"
    assert alpha["finish_reason"] == "stop" and alpha["error"] is None and alpha["latency_s"] > 0
    assert alpha["usage"]["total_tokens"] == alpha["usage"]["prompt_tokens"] + alpha["usage"]["completion_tokens"]
    assert beta["settings"] == {"temperature": 0.5, "max_tokens": 512}
    assert agg["kind"] == "aggregator" and agg["references"] == [alpha["response_id"], beta["response_id"]]
    # 3 answers: 2 aspects x 3 from the score judge, 3 pairs x 2 orders from the pairwise judge; no reference
    kinds = [e["kind"] for e in first["evaluations"]]
    assert kinds.count("score") == 6 and kinds.count("pairwise") == 6 and kinds.count("reference") == 0
    assert all(e["parse_ok"] and e["raw"] for e in first["evaluations"])
    assert len(first["battles"]) == 3 and all(b["consistent"] for b in first["battles"])
    # The fake judges prefer longer answers: the aggregator's is longest, alpha's shortest.
    assert first["best"]["model"] == "agg" and first["worst"]["model"] == "alpha"
    assert 0 <= first["worst"]["score"] < first["best"]["score"] <= 1
    # The question with an answer gets the reference judge too.
    assert recs[1]["reference"] == "Eight."
    assert sum(e["kind"] == "reference" for e in recs[1]["evaluations"]) == 3
    # 4 rows x (2 answers + 1 aggregate + 3 scores + 6 pairwise) + 3 reference calls for row 1
    assert requests == 4 * 12 + 3
    # Exports
    sft = lines(tmp_path / "out" / "sft.jsonl")
    assert sft[0]["messages"][-1] == {"role": "assistant", "content": agg["text"]}
    prefs = lines(tmp_path / "out" / "prefs.jsonl")
    assert len(prefs) == 4 and prefs[0]["chosen_model"] == "agg" and prefs[0]["rejected_model"] == "alpha"
    battles = lines(tmp_path / "out" / "battles.jsonl")
    assert len(battles) == 12 and {b["winner"] for b in battles} <= {"model_a", "model_b", "tie"}
    run_info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run_info["calls"] == requests and run_info["files"]["records.jsonl"] == 4


def test_a_rerun_makes_no_call_and_writes_the_same_records(tmp_path):
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, srv.base_url)
        run(cfg, tmp_path / "out")
        first = (tmp_path / "out" / "records.jsonl").read_bytes()
        made = len(srv.chat_requests())
        summary = run(cfg, tmp_path / "out")
        assert len(srv.chat_requests()) == made
    assert summary.stats["calls"] == 0 and summary.stats["stored"] == made
    assert (tmp_path / "out" / "records.jsonl").read_bytes() == first


def test_changing_one_model_reruns_only_its_calls(tmp_path):
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, srv.base_url)
        run(cfg, tmp_path / "out")
        before = len(srv.chat_requests())
        cfg.write_text(cfg.read_text().replace("temperature: 0.5", "temperature: 0.9"))
        run(cfg, tmp_path / "out")
        again = srv.chat_requests()[before:]
    # The fake answers the same text, so the judges' inputs are unchanged: only beta-long is asked again.
    assert [r.model for r in again] == ["beta-long"] * 4
    assert all(r.body["temperature"] == 0.9 for r in again)


def test_a_429_with_retry_after_is_retried_and_honoured(tmp_path):
    with FakeOpenAI(rate_limit_first=2, retry_after="0.3") as srv:
        cfg = write_config(tmp_path, srv.base_url, judges="", models="models:\n  - model: alpha\n    provider: local\n")
        start = time.monotonic()
        run(cfg, tmp_path / "out")
        elapsed = time.monotonic() - start
        assert len(srv.chat_requests()) == 4 + 2
    assert elapsed >= 0.3
    assert all(r["responses"][0]["error"] is None for r in records(tmp_path / "out"))


def test_a_failed_call_is_recorded_on_its_answer_and_rows_do_not_shift(tmp_path):
    with FakeOpenAI(status={"beta-long": 400}) as srv:
        cfg = write_config(tmp_path, srv.base_url, judges="")
        summary = run(cfg, tmp_path / "out")
        # 400 is not retried
        assert sum(r.model == "beta-long" for r in srv.chat_requests()) == 4
    recs = records(tmp_path / "out")
    assert [r["source"]["row"] for r in recs] == [0, 1, 2, 3]
    for r in recs:
        alpha, beta = r["responses"]
        assert alpha["error"] is None
        assert beta["text"] is None and beta["error"].startswith("HTTP 400: the model beta-long cannot answer")
    assert summary.response_errors == 4


def test_a_server_killed_mid_run_leaves_errors_and_the_rerun_makes_only_the_missing_calls(tmp_path):
    srv = FakeOpenAI(fail_after=5)
    cfg = write_config(tmp_path, srv.base_url, judges="")
    port = srv.port
    try:
        run(cfg, tmp_path / "out")
    finally:
        srv.close()
    recs = records(tmp_path / "out")
    answered = [x for r in recs for x in r["responses"] if x["error"] is None]
    failed = [x for r in recs for x in r["responses"] if x["error"] is not None]
    assert len(answered) == 5 and len(failed) == 3 and len(recs) == 4
    assert all("gave up after 2 tries" in x["error"] for x in failed)
    with FakeOpenAI(port=port) as again:
        run(cfg, tmp_path / "out")
        assert len(again.chat_requests()) == 3
    assert all(x["error"] is None for r in records(tmp_path / "out") for x in r["responses"])


@pytest.mark.timeout(120)
def test_a_run_killed_mid_way_resumes_from_the_store(tmp_path):
    with FakeOpenAI(latency=0.05) as srv:
        cfg = write_config(tmp_path, srv.base_url, judges="",
                           provider="", models="models:\n  - model: alpha\n    provider: local\n")
        rows = [{"prompt": f"question {i}"} for i in range(40)]
        write_rows(tmp_path / "rows.jsonl", rows)
        cfg.write_text(cfg.read_text().replace("concurrency: 4", "concurrency: 2"))
        env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts")}
        proc = subprocess.Popen([sys.executable, "-m", "oig", "generate", "--config", str(cfg), "--out",
                                 str(tmp_path / "out"), "--allow-local-sources"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        db = tmp_path / "out" / "calls.sqlite"
        stored = 0
        deadline = time.monotonic() + 60
        while stored < 8 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            if db.exists():
                with contextlib.suppress(sqlite3.OperationalError), contextlib.closing(sqlite3.connect(db)) as con:
                    stored = con.execute("SELECT count(*) FROM calls").fetchone()[0]
        proc.kill()
        proc.wait(10)
        assert not (tmp_path / "out" / "records.jsonl").exists()
        con = sqlite3.connect(db)
        kept = {json.loads(v)["text"] for (v,) in con.execute("SELECT value FROM calls")}
        con.close()
        assert 8 <= len(kept) < 40
        before = len(srv.chat_requests())
        run(cfg, tmp_path / "out")
        again = srv.chat_requests()[before:]
    asked = {f"[alpha] {r.body['messages'][-1]['content']}" for r in again}
    assert not asked & kept  # nothing stored was asked again
    assert len(again) == 40 - len(kept)
    assert len(records(tmp_path / "out")) == 40


def test_malformed_judge_output_is_kept_and_never_scored(tmp_path):
    with FakeOpenAI(malformed_judge=True) as srv:
        cfg = write_config(tmp_path, srv.base_url)
        summary = run(cfg, tmp_path / "out")
    recs = records(tmp_path / "out")
    evaluations = [e for r in recs for e in r["evaluations"]]
    assert evaluations and all(not e["parse_ok"] and e["score"] is None for e in evaluations)
    assert all(e["raw"].startswith("Both answers are fine") for e in evaluations)
    assert all("unreadable verdict" in e["error"] for e in evaluations)
    assert all(r["best"] is None and r["scores"] == {} for r in recs)
    assert all(b["winner"] is None for r in recs for b in r["battles"])
    assert summary.parse_failures == len(evaluations) and summary.unscored == 4
    assert lines(tmp_path / "out" / "sft.jsonl") == [] and lines(tmp_path / "out" / "battles.jsonl") == []


def _lenient_judge_unreadable_on_the_good_answer(body: dict) -> str:
    """Models answer well (good) or not (bad). Judge `lenient` rates bad 10/10 and cannot say anything
    readable about good; judge `strict` rates good 5 and bad 1."""
    from fake_openai import JUDGE_MARK, _between

    if not str(body["messages"][0].get("content", "")).startswith(JUDGE_MARK):
        return "A careful, complete and correct answer." if body["model"] == "good" else "meh"
    answer = _between(body["messages"][-1]["content"], "answer")
    if body["model"] == "lenient":
        return "I liked this one a lot!" if "careful" in answer else json.dumps({"scores": {"quality": 10}})
    return json.dumps({"scores": {"quality": 5 if "careful" in answer else 1}})


def test_a_judge_missing_one_verdict_counts_for_no_answer_and_every_export_says_so(tmp_path):
    """Old code: good = strict only (4/9), bad = mean(lenient 1.0, strict 0.0) = 0.5, so bad was chosen."""
    models = "models:\n  - model: good\n    provider: local\n  - model: bad\n    provider: local\n"
    judges = "judges:\n" + "".join(f"  - kind: score\n    model: {m}\n    provider: local\n    aspects: [quality]\n"
                                    for m in ("lenient", "strict"))
    with FakeOpenAI(answer=_lenient_judge_unreadable_on_the_good_answer) as srv:
        cfg = write_config(tmp_path, srv.base_url, models=models, judges=judges)
        write_rows(tmp_path / "rows.jsonl", ROWS[:1])
        summary = run(cfg, tmp_path / "out")
    assert summary.incomplete == 1 and "1 records with missing verdicts" in summary_line(summary)
    out = tmp_path / "out"
    (rec,) = records(out)
    good, bad = rec["responses"]
    assert rec["best"]["model"] == "good" and rec["worst"]["model"] == "bad"
    assert rec["scores"] == {good["response_id"]: pytest.approx(4 / 9, abs=1e-6), bad["response_id"]: 0.0}
    assert rec["judges_counted"] == ["score:strict"]
    missing = [{"judge": "score:lenient", "response_id": good["response_id"], "model": "good"}]
    assert rec["verdicts_complete"] is False and rec["missing_verdicts"] == missing
    (sft,) = lines(out / "sft.jsonl")
    assert sft["messages"][-1]["content"] == good["text"]
    (pref,) = lines(out / "prefs.jsonl")
    assert pref["chosen_model"] == "good" and pref["rejected_model"] == "bad"
    (battle,) = lines(out / "battles.jsonl")
    assert battle["winner"] == "model_a" and battle["model_a"] == "good"
    for row in (sft, pref, battle):
        assert row["verdicts_complete"] is False and row["missing_verdicts"] == missing


def test_complete_verdicts_are_marked_complete_in_every_export(tmp_path):
    with FakeOpenAI() as srv:
        run(write_config(tmp_path, srv.base_url), tmp_path / "out")
    out = tmp_path / "out"
    rows = [*records(out), *lines(out / "sft.jsonl"), *lines(out / "prefs.jsonl"), *lines(out / "battles.jsonl")]
    assert len(rows) > 4 and all(r["verdicts_complete"] is True and r["missing_verdicts"] == [] for r in rows)


def test_pairwise_verdicts_that_disagree_between_orders_are_ties(tmp_path):
    with FakeOpenAI(position_bias=True) as srv:
        cfg = write_config(tmp_path, srv.base_url, judges="judges:\n  - kind: pairwise\n    model: judge\n"
                                                          "    provider: local\n")
        run(cfg, tmp_path / "out")
    recs = records(tmp_path / "out")
    assert all(b["winner"] == "tie" and b["consistent"] is False for r in recs for b in r["battles"])
    assert all(set(r["scores"].values()) == {0.5} for r in recs)
    assert {b["winner"] for b in lines(tmp_path / "out" / "battles.jsonl")} == {"tie"}
    assert lines(tmp_path / "out" / "prefs.jsonl") == []  # no margin between equal scores


def test_the_budget_stops_calls_cleanly(tmp_path):
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, srv.base_url, judges="", extra="prices:\n  alpha: {input: 1000, output: 1000}\n"
                                                                  "  beta-long: {input: 1000, output: 1000}\n")
        summary = run(cfg, tmp_path / "out", budget_usd=0.05)
        made = len(srv.chat_requests())
    assert summary.budget_reached
    recs = records(tmp_path / "out")
    assert len(recs) == 4
    skipped = [x for r in recs for x in r["responses"] if x["error"] and "budget" in x["error"]]
    assert skipped and made + len(skipped) == 8
    assert json.loads((tmp_path / "out" / "run.json").read_text())["budget_reached"] is True


def test_a_budget_needs_every_price(tmp_path):
    cfg = write_config(tmp_path, "http://127.0.0.1:9", extra="prices:\n  alpha: {input: 1, output: 1}\n")
    with pytest.raises(OigError, match="beta-long, judge"):
        run(cfg, tmp_path / "out", budget_usd=1.0)


def test_dry_run_plans_and_prices_without_calling_or_writing(tmp_path):
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, srv.base_url, extra="prices:\n  alpha: {input: 1, output: 2}\n")
        summary = run(cfg, tmp_path / "out", dry_run=True)
        assert srv.chat_requests() == []
    assert not (tmp_path / "out").exists()
    plan = summary.plan_text
    # Per row: 2 answers, 2 score calls, 1 pair in 2 orders; row 1 has a reference: 2 more. 4 x 6 + 2 = 26.
    # Judge calls are planned on placeholder answers, as long as max_tokens allows.
    assert "Plan for 4 instructions" in plan and "Total: 26 calls to make, 0 answers already stored" in plan
    alpha_line = next(line for line in plan.splitlines() if line.strip().startswith("generate") and " alpha " in line)
    assert alpha_line.split()[-2] == "2,048"  # 4 answers at max_tokens 512
    assert "plus models with no price" in plan


def test_dry_run_after_a_run_counts_stored_answers(tmp_path):
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, srv.base_url)
        run(cfg, tmp_path / "out")
        summary = run(cfg, tmp_path / "out", dry_run=True)
    assert "Total: 0 calls to make, 26 answers already stored" in summary.plan_text


def test_api_keys_are_read_from_the_environment_and_never_written(tmp_path, monkeypatch, capsys):
    secret = "sk-test-do-not-leak-123"
    monkeypatch.setenv("MY_KEY", secret)
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, srv.base_url, judges="")
        cfg.write_text(cfg.read_text().replace("    kind: openai\n", "    kind: openai\n    api_key_env: MY_KEY\n"))
        run(cfg, tmp_path / "out")
        assert {r.headers["authorization"] for r in srv.chat_requests()} == {f"Bearer {secret}"}
    for path in (tmp_path / "out").iterdir():
        assert secret.encode() not in path.read_bytes(), path.name
    assert secret not in capsys.readouterr().err


def test_a_missing_api_key_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    cfg = write_config(tmp_path, "http://127.0.0.1:9", judges="",
                       models="models:\n  - model: meta-llama/Llama-3.3-70B-Instruct-Turbo\n",
                       provider="  together:\n    kind: together\n")
    with pytest.raises(OigError, match="set the environment variable TOGETHER_API_KEY"):
        run(cfg, tmp_path / "out")


def test_together_models_go_through_the_together_sdk(tmp_path, monkeypatch):
    monkeypatch.setenv("TOGETHER_API_KEY", "tg-test")
    with FakeOpenAI(rate_limit_first=1, retry_after="0") as srv:
        cfg = write_config(tmp_path, srv.base_url, judges="",
                           models="models:\n  - model: meta-llama/Llama-3.3-70B-Instruct-Turbo\n    top_p: 0.9\n",
                           provider=f"  together:\n    kind: together\n    base_url: {srv.base_url}\n"
                                    "    backoff_s: 0.01\n")
        run(cfg, tmp_path / "out")
        reqs = srv.chat_requests()
    assert len(reqs) == 5  # one 429, then 4 answers
    assert reqs[-1].path == "/v1/chat/completions" and reqs[-1].headers["authorization"] == "Bearer tg-test"
    assert reqs[-1].body["top_p"] == 0.9 and reqs[-1].body["max_tokens"] == 512
    first = records(tmp_path / "out")[0]["responses"][0]
    assert first["text"] == "[meta-llama/Llama-3.3-70B-Instruct-Turbo] What is the capital of France?"
    assert first["usage"]["completion_tokens"] > 0 and first["provider_id"].startswith("chatcmpl-")


def test_progress_is_one_summary_line_when_stderr_is_not_a_terminal(tmp_path):
    stream = io.StringIO()
    with FakeOpenAI() as srv:
        run(write_config(tmp_path, srv.base_url, judges=""), tmp_path / "out", progress_stream=stream)
    out = stream.getvalue()
    assert out.count("\n") == 1 and "\r" not in out
    assert out.startswith("oig generate: 4 records, 8 answers (0 failed)")


def test_progress_draws_a_bar_on_a_terminal(tmp_path):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    with FakeOpenAI() as srv:
        run(write_config(tmp_path, srv.base_url, judges=""), tmp_path / "out", progress_stream=stream)
    assert "4/4 records" in stream.getvalue() and "\r" in stream.getvalue()
