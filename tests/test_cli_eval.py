"""oig eval: against a local OpenAI-compatible server and the tiny model in process; --compare; formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI

from oig.cli import main

TAIL = "base_model: tiny\nrun_id: r1\ntrained_at: '2026-11-23T12:00:00Z'\n"
# The fake server answers "[MODEL] <question>": a case passes when its reference is in the question.
SUITE = """\
# yaml-language-server: $schema=../schemas/eval.schema.json
# A test suite.
check: contains
cases:
  - {id: echo-paris, input: "Say Paris", reference: Paris}
  - {id: echo-rome, input: "Say Rome", reference: Rome}
  - {id: capital, input: "What is the capital of France?", reference: Paris}
  - {id: mc, input: "Pick B", check: choice, choices: [x, y], reference: B}
"""
KEYS = ["cases", "passed", "failed", "unreadable", "score", "ci95", "previous", "delta", "delta_ci95", "results"]


@pytest.fixture
def suites(tmp_path) -> Path:
    folder = tmp_path / "evals"
    folder.mkdir()
    (folder / "echo.yaml").write_text(SUITE)
    return folder


def together_yaml(path: Path, url: str, name: str) -> Path:
    path.write_text(f"together:\n  model: {name}\n  base_url: {url}\n" + TAIL)
    return path


def test_against_a_server_json_has_the_stable_keys(suites, capsys):
    with FakeOpenAI() as srv:
        code = main(["eval", "--base-url", srv.base_url, "--model-name", "m1", "--suites", str(suites),
                     "--format", "json", "--concurrency", "4"])
        requests = srv.chat_requests()
    out = capsys.readouterr().out
    assert code == 0, out
    results = json.loads(out)
    assert list(results) == ["model", "previous", "suites", "lm_eval", "comparison"]
    assert results["model"] == f"m1 at {srv.base_url}" and results["previous"] is None
    s = results["suites"]["echo"]
    assert list(s) == KEYS
    # "Pick B\n\nA. x\nB. y..." is echoed after "[m1]": the first standalone letter naming a choice is B.
    assert (s["cases"], s["passed"], s["failed"], s["unreadable"], s["score"]) == (4, 3, 1, 0, 0.75)
    assert [r["id"] for r in s["results"]] == ["echo-paris", "echo-rome", "capital", "mc"]
    assert set(s["results"][0]) == {"id", "passed", "answer", "detail"}
    assert len(requests) == 4 and {r.body["model"] for r in requests} == {"m1"}
    assert all(r.body["temperature"] == 0 and r.body["max_tokens"] == 256 for r in requests)


def test_compare_prints_the_previous_score_and_the_delta(suites, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TOGETHER_API_KEY", "test-key")
    answers = {"new": lambda b: "Paris and Rome", "old": lambda b: "Rome"}
    with FakeOpenAI(answer=lambda body: answers[body["model"]](body)) as srv:
        new = together_yaml(tmp_path / "model.yaml", srv.base_url, "new")
        old = together_yaml(tmp_path / "old.yaml", srv.base_url, "old")
        assert main(["eval", "--model-yaml", str(new), "--compare", str(old), "--suites", str(suites),
                     "--format", "json"]) == 0
        results = json.loads(capsys.readouterr().out)
        assert main(["eval", "--model-yaml", str(new), "--compare", str(old), "--suites", str(suites)]) == 0
        text = capsys.readouterr().out
        assert main(["eval", "--model-yaml", str(new), "--compare", str(old), "--suites", str(suites),
                     "--format", "markdown"]) == 0
        markdown = capsys.readouterr().out
    s = results["suites"]["echo"]
    assert results["previous"] == str(old)
    assert (s["score"], s["previous"]["score"], s["delta"]) == (0.75, 0.25, 0.5)
    assert s["delta_ci95"] is not None and s["delta_ci95"][0] <= 0.5 <= s["delta_ci95"][1]
    assert list(s["previous"]) == ["cases", "passed", "failed", "unreadable", "score", "ci95", "results"]
    assert "echo" in text and "75.0%" in text and "25.0%" in text and "+50.0 pts" in text
    assert markdown.count("|") > 10 and "| echo | 4 | 3 |" in markdown


def test_compare_with_a_model_that_cannot_be_loaded_exits_1(suites, tmp_path, capsys):
    gone = tmp_path / "old.yaml"
    gone.write_text("model:\n  local_path: runs/nothing-here\n" + TAIL)
    with FakeOpenAI() as srv:
        assert main(["eval", "--base-url", srv.base_url, "--model-name", "m", "--suites", str(suites),
                     "--compare", str(gone)]) == 1
        assert "--compare" in capsys.readouterr().err
        broken = tmp_path / "runs" / "broken"
        broken.mkdir(parents=True)
        (broken / "config.json").write_text("{}")
        bad = tmp_path / "bad.yaml"
        bad.write_text("model:\n  local_path: runs/broken\n" + TAIL)
        assert main(["eval", "--base-url", srv.base_url, "--model-name", "m", "--suites", str(suites),
                     "--compare", str(bad)]) == 1
        err = capsys.readouterr().err
    assert "cannot be asked" in err and str(bad) in err
    assert main(["eval", "--suites", str(suites), "--compare", str(tmp_path / "missing.yaml"),
                 "--base-url", "http://127.0.0.1:9", "--model-name", "m"]) == 1


def test_an_unreachable_server_is_an_error_naming_the_suite(suites, capsys):
    assert main(["eval", "--base-url", "http://127.0.0.1:9", "--model-name", "m", "--suites", str(suites)]) == 1
    err = capsys.readouterr().err
    assert "suite echo: 4 of 4 case(s) could not be checked" in err


def test_a_judged_suite_uses_the_judge_and_needs_one(suites, capsys):
    (suites / "judged.yaml").write_text("cases:\n  - {id: j, input: hi, check: judge, rubric: a greeting}\n")
    with FakeOpenAI(answer=lambda b: '{"pass": true}' if b["model"] == "judge" else "hello") as srv:
        args = ["eval", "--base-url", srv.base_url, "--model-name", "m", "--suites", str(suites), "--format", "json"]
        assert main(args) == 1
        assert "judged have judged cases but no judge model" in capsys.readouterr().err
        assert main(args + ["--judge-model", "judge", "--judge-base-url", srv.base_url]) == 0
    s = json.loads(capsys.readouterr().out)["suites"]["judged"]
    assert (s["passed"], s["results"][0]["detail"]) == (1, "judge: pass")


def test_invalid_suites_are_reported_with_lines(suites, capsys):
    (suites / "bad.yaml").write_text("cases:\n  - {input: hi}\n")
    assert main(["eval", "--base-url", "http://127.0.0.1:9", "--suites", str(suites)]) == 1
    assert "bad.yaml:2:" in capsys.readouterr().err


def test_usage_errors_and_help(suites, capsys):
    assert main(["eval", "--model-name", "m", "--suites", str(suites)]) == 2
    assert main(["eval", "--model", "x", "--base-url", "http://127.0.0.1:9", "--suites", str(suites)]) == 2
    assert main(["eval", "--concurrency", "0"]) == 2
    assert main(["eval", "--help"]) == 0
    assert "--compare MODEL_YAML" in capsys.readouterr().out


def test_gate_applies_training_yaml_gate(suites, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TOGETHER_API_KEY", "test-key")
    config = tmp_path / "training.yaml"
    config.write_text("Gate:\n  max_drop: 0.1\n")
    answers = {"new": "Paris and Rome", "old": "Rome"}
    with FakeOpenAI(answer=lambda body: answers[body["model"]]) as srv:
        new = together_yaml(tmp_path / "model.yaml", srv.base_url, "new")
        old = together_yaml(tmp_path / "old.yaml", srv.base_url, "old")
        base = ["eval", "--suites", str(suites), "--gate", "--config", str(config)]
        assert main(base + ["--model-yaml", str(new), "--compare", str(old)]) == 0
        assert "the release gate passed" in capsys.readouterr().err
        assert main(base + ["--model-yaml", str(old), "--compare", str(new)]) == 1  # 0.75 -> 0.25
        err = capsys.readouterr().err
    assert "gate: suite echo: the score fell from 0.7500 to 0.2500" in err and "the release gate failed" in err


@pytest.mark.usefixtures("one_torch_thread")
def test_the_tiny_model_in_process(suites, tmp_path, capsys):
    from test_serve import train_tiny

    model = train_tiny(tmp_path / "tiny")
    (tmp_path / "model.yaml").write_text("model:\n  local_path: tiny\n" + TAIL)
    assert main(["eval", "--model", str(model), "--suites", str(suites), "--format", "json",
                 "--max-tokens", "16"]) == 0
    s = json.loads(capsys.readouterr().out)["suites"]["echo"]
    assert s["results"][2]["answer"] == "Paris" and s["results"][2]["passed"] is True
    assert main(["eval", "--model-yaml", str(tmp_path / "model.yaml"), "--compare", str(tmp_path / "model.yaml"),
                 "--suites", str(suites), "--format", "json", "--max-tokens", "16"]) == 0
    s = json.loads(capsys.readouterr().out)["suites"]["echo"]
    assert s["delta"] == 0.0 and s["delta_ci95"] == [0.0, 0.0]


def test_a_judged_comparison_named_in_training_yaml_runs_with_compare(suites, tmp_path, capsys, monkeypatch):
    import re

    monkeypatch.setenv("TOGETHER_API_KEY", "test-key")

    def answer(body):
        if body["model"] == "judge":  # prefers the answer that names Paris, in either order
            first = re.search(r"<answer_A>\n(.*?)\n</answer_A>", body["messages"][-1]["content"], re.S).group(1)
            return json.dumps({"winner": "A" if "Paris" in first else "B", "rationale": "names Paris"})
        return "Paris and Rome" if body["model"] == "new" else "Rome"

    with FakeOpenAI(answer=answer) as srv:
        config = tmp_path / "training.yaml"
        config.write_text(f"Eval:\n  judge: {{model: judge, base_url: {srv.base_url}}}\n  comparison_suite: echo\n")
        new = together_yaml(tmp_path / "model.yaml", srv.base_url, "new")
        old = together_yaml(tmp_path / "old.yaml", srv.base_url, "old")
        assert main(["eval", "--model-yaml", str(new), "--compare", str(old), "--suites", str(suites),
                     "--config", str(config), "--format", "json"]) == 0
        judged = [r for r in srv.chat_requests() if r.body["model"] == "judge"]
    comparison = json.loads(capsys.readouterr().out)["comparison"]
    # 4 prompts, each judged in both orders; the new model names Paris in every answer, the old never.
    assert len(judged) == 8 and comparison["wins"] == 4 and comparison["win_rate"] == 1.0
    assert comparison["unreadable"] == 0 and comparison["ci95"][1] == 1.0
