"""`oig bugs ...` through the real entry point, in-process, against local GitHub and Together servers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fake_github import FakeGitHub
from fake_together import FakeTogether
from test_bugs import event, rendered

from oig.bugs import github as bugs_github
from oig.bugs import suite as bugs
from oig.bugs.report import Bug
from oig.cli import main

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "ghs_test_token"
KEY = "tg_test_key"
REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def github(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.delenv("GITHUB_REPOSITORY", raising=False)
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    monkeypatch.delenv("OIG_BOT_LOGIN", raising=False)
    with FakeGitHub(token=TOKEN) as fake:
        monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
        monkeypatch.setenv("GITHUB_API_URL", fake.url)
        yield fake


@pytest.fixture
def together(monkeypatch, tmp_path):
    with FakeTogether(api_key=KEY, answer="Berlin") as fake:
        (tmp_path / "model.yaml").write_text(
            f"model:\n  hub_repo: octo/oig-model\n  revision: {REV}\n"
            f"together:\n  model: oig-lab/oig-model\n  base_url: {fake.url}\n"
            "base_model: tiny\nrun_id: run-1\ntrained_at: '2026-11-23T12:00:00Z'\n")
        yield fake


def write_event(tmp_path: Path, number: int, body: str | None, **kw) -> Path:
    path = tmp_path / f"event-{number}.json"
    path.write_text(json.dumps(event(number, body, **kw)))
    return path


def test_help_for_every_action(capsys):
    assert main(["bugs", "--help"]) == 0
    out = capsys.readouterr().out
    for action in ("parse", "eval", "report", "comment-results", "claims"):
        assert action in out
        assert main(["bugs", action, "--help"]) == 0
        assert "usage: oig bugs " + action in capsys.readouterr().out
    assert main(["bugs"]) == 2  # an action is required


# --- parse ----------------------------------------------------------------------------------------------


def test_parse_json_and_text(tmp_path, capsys):
    payload = write_event(tmp_path, 12, rendered("What is 2+2?", "5", "4", "abc123", crlf=True))
    assert main(["bugs", "parse", str(payload)]) == 0
    assert json.loads(capsys.readouterr().out) == {"input": "What is 2+2?", "output": "5", "expected": "4",
                                                   "model_version": "abc123", "number": 12}
    body = tmp_path / "body.md"
    body.write_text(rendered("hi", "bye"))
    assert main(["bugs", "parse", str(body), "--format", "text"]) == 0
    out = capsys.readouterr().out
    assert "Input:\nhi\n" in out and "Expected output:\n(none)" in out


def test_parse_errors_say_what_is_missing(tmp_path, capsys):
    payload = write_event(tmp_path, 3, rendered(None, "x"))
    assert main(["bugs", "parse", str(payload)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("oig bugs: error: the bug report cannot be used: Input is missing")
    assert "Traceback" not in err
    no_body = write_event(tmp_path, 4, None)
    assert main(["bugs", "parse", str(no_body)]) == 1
    assert "Issue #4 has no body" in capsys.readouterr().err


# --- report: the bug-report workflow ----------------------------------------------------------------------


def test_report_a_malformed_then_fixed_issue_without_a_together_key(github, together, tmp_path, capsys):
    github.add_issue(5, rendered(None, "Berlin"))
    path = write_event(tmp_path, 5, rendered(None, "Berlin"))
    assert main(["bugs", "report", "--event", str(path)]) == 0
    assert "issue #5: needs-info; comment created; labels +needs-info" in capsys.readouterr().out
    [comment] = github.comments_on(5)
    assert comment["body"].startswith(bugs_github.REPORT_MARKER)
    assert "**Input** is missing" in comment["body"]
    assert github.labels_of(5) == ["bug", "needs-info"]
    assert {"bug", "needs-info", "reproduced", "not-reproduced"} <= set(github.labels)

    # The reporter edits the issue: the same comment is updated; no key, so reproduction is skipped.
    good = rendered("What is the capital of France?", "Berlin", "Paris")
    github.issues[5]["body"] = good
    path = write_event(tmp_path, 5, good, labels=("bug", "bug-report", "needs-info"), action="edited")
    assert main(["bugs", "report", "--event", str(path)]) == 0
    assert "issue #5: skipped; comment updated; labels -needs-info" in capsys.readouterr().out
    [comment] = github.comments_on(5)
    assert "**Reproduction skipped**: no Together API key" in comment["body"]
    assert github.labels_of(5) == ["bug"]
    assert together.requests == []


def test_report_reproduces_with_the_together_endpoint(github, together, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TOGETHER_API_KEY", KEY)
    body = rendered("What is the capital of France? @octocat", "Berlin", "Paris", REV[:7])
    github.add_issue(6, body)
    path = write_event(tmp_path, 6, body)
    assert main(["bugs", "report", "--event", str(path)]) == 0
    assert "issue #6: reproduced; comment created; labels +reproduced" in capsys.readouterr().out
    [comment] = github.comments_on(6)
    text = comment["body"]
    assert "**Reproduced**" in text and "**Current answer**" in text and "```text\nBerlin\n```" in text
    assert "@octocat" not in text and "@\u200boctocat" in text
    assert f"`octo/oig-model` at revision `{REV}`" in text
    assert "differs" not in text  # the report named the short form of the current revision
    assert github.labels_of(6) == ["bug", "reproduced"]
    sent = together.find("POST", "/v1/chat/completions")[0]["json"]
    assert sent["messages"] == [{"role": "user", "content": "What is the capital of France? @octocat"}]

    # The model now answers right: the label flips, the one comment is updated in place.
    together.answer = "Paris."
    path = write_event(tmp_path, 6, body, labels=("bug", "bug-report", "reproduced"), action="edited")
    assert main(["bugs", "report", "--event", str(path)]) == 0
    assert "not-reproduced" in capsys.readouterr().out
    assert len(github.comments_on(6)) == 1 and "**Not reproduced**" in github.comments_on(6)[0]["body"]
    assert github.labels_of(6) == ["bug", "not-reproduced"]


def test_report_without_expected_output_compares_with_the_reported_output(github, together, tmp_path, monkeypatch):
    monkeypatch.setenv("TOGETHER_API_KEY", KEY)
    body = rendered("Tell me a joke", "Berlin")
    github.add_issue(7, body)
    assert main(["bugs", "report", "--event", str(write_event(tmp_path, 7, body))]) == 0
    assert github.labels_of(7) == ["bug", "reproduced"]


def test_report_ignores_issues_without_the_bug_label(github, tmp_path, capsys):
    path = write_event(tmp_path, 8, rendered("a", "b"), labels=("question",))
    assert main(["bugs", "report", "--event", str(path)]) == 0
    assert "issue #8: not-a-bug" in capsys.readouterr().out
    assert github.requests == []


def test_report_ignores_a_plain_issue_labelled_bug(github, tmp_path, capsys):
    # Anyone with triage can label an issue `bug`; only the form sets `bug-report`.
    github.add_issue(10, rendered("a", "b"))
    path = write_event(tmp_path, 10, rendered("a", "b"), labels=("bug",))
    assert main(["bugs", "report", "--event", str(path)]) == 0
    captured = capsys.readouterr()
    assert "issue #10: not-a-bug" in captured.out and "'bug-report'" in captured.err
    assert github.requests == [] and github.comments_on(10) == []


# A POST that GitHub carried out and then answered 502; Retry-After 0 keeps the test from sleeping.
POSTED_THEN_502 = {"method": "POST", "after_success": True, "headers": {"Retry-After": "0"}}


def test_report_posts_one_comment_when_a_post_that_worked_answers_502(github, tmp_path, capsys):
    github.add_issue(11, rendered(None, "b"))
    github.add_comment(11, bugs_github.REPORT_MARKER + " pasted by a user")  # never taken for the bot's
    github.fail_next(502, path_contains="/issues/11/comments", **POSTED_THEN_502)
    assert main(["bugs", "report", "--event", str(write_event(tmp_path, 11, rendered(None, "b")))]) == 0
    assert "issue #11: needs-info; comment created" in capsys.readouterr().out
    mine = [c for c in github.comments_on(11) if c["user"]["type"] == "Bot"]
    assert len(mine) == 1 and "**Input** is missing" in mine[0]["body"]
    assert len(github.comments_on(11)) == 2


def test_report_fails_visibly_when_the_model_cannot_be_asked(github, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TOGETHER_API_KEY", "tg_wrong_key_value")
    with FakeTogether(api_key=KEY) as fake:
        (tmp_path / "model.yaml").write_text(
            f"model:\n  local_path: runs/x/model\ntogether:\n  model: m\n  base_url: {fake.url}\n"
            "base_model: tiny\ntrained_at: '2026-11-23T12:00:00Z'\n")
        body = rendered("q", "a", "b")
        github.add_issue(9, body)
        assert main(["bugs", "report", "--event", str(write_event(tmp_path, 9, body))]) == 1
    captured = capsys.readouterr()
    assert "issue #9: failed" in captured.out
    assert "tg_wrong_key_value" not in captured.out + captured.err
    [comment] = github.comments_on(9)
    assert "**Reproduction failed**" in comment["body"] and "tg_wrong_key_value" not in comment["body"]
    assert github.labels_of(9) == ["bug"]


def test_report_with_a_bad_event_file_is_a_clear_error(github, tmp_path, capsys):
    bad = tmp_path / "event.json"
    bad.write_text("{not json")
    assert main(["bugs", "report", "--event", str(bad)]) == 1
    assert "is not JSON" in capsys.readouterr().err
    assert main(["bugs", "report", "--event", str(tmp_path / "missing.json")]) == 1


# --- comment-results: after training -------------------------------------------------------------------------


def write_training_log(tmp_path: Path, records: list[dict]) -> Path:
    log = {"run_id": "run-7", "base_model": "tiny", **bugs.log_section(records)}
    path = tmp_path / "training_log"
    path.write_text(json.dumps(log))  # JSON is YAML
    return path


def test_comment_results_comments_and_labels_the_fixed(github, together, tmp_path, capsys):
    github.add_issue(1, rendered("q1", "bad", "good"))
    github.add_issue(2, rendered("q2", "bad", "good"))
    records = bugs.run_suite([Bug("q1", "bad", "good", number=1), Bug("q2", "bad", "good", number=2),
                              Bug("q3", "bad", "good", number=404), Bug("q4", "bad", "good")],
                             None, lambda text: "good" if text == "q1" else "bad")
    log = write_training_log(tmp_path, records)
    assert main(["bugs", "comment-results", "--training-log", str(log), "--repo", "octo/oig"]) == 0
    out = capsys.readouterr()
    assert "commented on 2 issue(s): #1, #2" in out.out
    assert "labelled fixed-in-0123456: #1" in out.out
    assert "skipped #404" in out.err and "skipped a bug without an issue number" in out.err
    assert github.labels_of(1) == ["bug", "fixed-in-0123456"] and github.labels_of(2) == ["bug"]
    first = github.comments_on(1)[0]["body"]
    assert first.startswith(bugs_github.RESULTS_MARKER) and "**Fixed**" in first and "```text\nbad\n```" in first
    assert "**Still broken**" in github.comments_on(2)[0]["body"]

    # Running it again changes nothing.
    writes = len(github.writes())
    assert main(["bugs", "comment-results", "--training-log", str(log), "--repo", "octo/oig"]) == 0
    assert len(github.writes()) == writes + 1  # adding a label it already has is the one repeated call
    assert len(github.comments_on(1)) == 1


def test_comment_results_posts_one_comment_when_a_post_that_worked_answers_502(github, tmp_path, capsys):
    for n in (1, 2):
        github.add_issue(n, rendered(f"q{n}", "bad", "good"))
        github.fail_next(502, path_contains=f"/issues/{n}/comments", **POSTED_THEN_502)
    github.add_comment(2, bugs_github.RESULTS_MARKER + " pasted by a user")
    records = bugs.run_suite([Bug("q1", "bad", "good", number=1), Bug("q2", "bad", "good", number=2)],
                             None, lambda text: "good")
    log = write_training_log(tmp_path, records)
    assert main(["bugs", "comment-results", "--training-log", str(log), "--repo", "octo/oig"]) == 0
    assert "commented on 2 issue(s): #1, #2" in capsys.readouterr().out
    for n in (1, 2):
        mine = [c for c in github.comments_on(n) if c["user"]["type"] == "Bot"]
        assert len(mine) == 1 and mine[0]["body"].startswith(bugs_github.RESULTS_MARKER), n
    assert len(github.comments_on(2)) == 2
    assert not github.faults  # both POSTs went through and answered 502


def test_comment_results_without_bugs_needs_no_github(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    log = write_training_log(tmp_path, [])
    assert main(["bugs", "comment-results", "--training-log", str(log)]) == 0
    assert "nothing to comment" in capsys.readouterr().out
    assert main(["bugs", "comment-results", "--training-log", str(tmp_path / "nope")]) == 1


# --- claims: PR validation ------------------------------------------------------------------------------------


def test_claims_text_and_github_formats(github, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "fix.yaml").write_text("fixes: [1, 2]\nIOPairs:\n  - input: What is 2+2?\n    output: '4'\n")
    github.add_issue(1, rendered("what is 2+2", "5", "4"), title="Bad sums")
    monkeypatch.setenv("GITHUB_REPOSITORY", github.repo)
    assert main(["bugs", "claims"]) == 0
    out = capsys.readouterr().out
    assert "data/fix.yaml: fixes #1 (Bad sums), #2" in out
    assert "data/fix.yaml:1:12: warning: #2 is not an open bug issue" in out
    assert "data/fix.yaml:3:12: warning: this input is bug #1's exact input" in out

    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert main(["bugs", "claims", "--format", "github"]) == 0
    out = capsys.readouterr().out
    assert "::warning file=data/fix.yaml,line=3,col=12::this input is bug #1's exact input" in out
    assert "| data/fix.yaml | #1, #2 |" in summary.read_text()


def test_claims_warn_on_normalised_and_ngram_overlap_with_a_bug(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_REPOSITORY", raising=False)
    (tmp_path / "data").mkdir()
    bug = "my laptop fan keeps spinning loudly after the latest driver update on windows"
    (tmp_path / "data" / "a.yaml").write_text(
        "IOPairs:\n"
        "  - input: '  My LAPTOP fan keeps spinning loudly after the latest driver update on Windows?!'\n"
        "    output: y\n"
        "  - input: Hi. My laptop fan keeps spinning loudly after the latest driver update on windows 11, help\n"
        "    output: y\n"
        "  - input: my laptop fan keeps spinning loudly after the update\n"
        "    output: y\n")
    (tmp_path / "bugs.json").write_text(json.dumps([{"number": 9, "input": bug}]))
    assert main(["bugs", "claims", "--bugs", "bugs.json"]) == 0
    out = capsys.readouterr().out
    assert "data/a.yaml:2:12: warning: this input is bug #9's exact input" in out  # case, spaces, end punctuation
    # More words around it: all 6 of the bug's 8-word sequences (13 words) are still there.
    assert "data/a.yaml:4:12: warning: this input contains 100% of the 8-word sequences of bug #9's input" in out
    assert ":6:" not in out  # a shorter fragment: 1 of the 6 sequences, under the 50% threshold


def test_claims_offline_from_a_bugs_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_REPOSITORY", raising=False)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.yaml").write_text("fixes: [4]\nIOPairs:\n  - input: x\n    output: y\n")
    (tmp_path / "bugs.json").write_text(json.dumps([{"number": 4, "input": "q"}]))
    assert main(["bugs", "claims", "--bugs", "bugs.json"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "data/a.yaml: fixes #4\n"
    assert main(["bugs", "claims"]) == 0
    assert "not checked" in capsys.readouterr().err


# --- eval ------------------------------------------------------------------------------------------------------


def test_eval_prints_the_table(together, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOGETHER_API_KEY", KEY)
    monkeypatch.delenv("GITHUB_REPOSITORY", raising=False)
    (tmp_path / "bugs.json").write_text(json.dumps([
        {"number": 1, "input": "capital of Germany?", "output": "Paris", "expected": "Berlin"},
        {"number": 2, "input": "capital of France?", "output": "Berlin", "expected": "Paris"},
    ]))
    assert main(["bugs", "eval", "--bugs", "bugs.json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == ["#1", "fixed", "1.00"]
    assert lines[2].split()[:3] == ["#2", "still", "broken"]
    assert lines[-1] == "2 bug(s): 1 fixed, 1 still broken, 0 regressed, 0 passing, 0 unknown"
    assert main(["bugs", "eval", "--bugs", "bugs.json", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["bugs_summary"]["fixed"] == 1
    assert main(["bugs", "eval"]) == 1
    assert "pass --bugs FILE or --repo" in capsys.readouterr().err
    assert main(["bugs", "eval", "--bugs", "bugs.json", "--threshold", "2"]) == 2


def test_light_actions_import_no_heavy_library(github, tmp_path):
    """parse, claims and the bug-report workflow's program run on the core install (no torch, no SDKs)."""
    body = tmp_path / "body.md"
    body.write_text(rendered("a", "b"))
    (tmp_path / "data").mkdir()
    github.add_issue(3, rendered("a", "b"))
    payload = write_event(tmp_path, 3, rendered("a", "b"))
    code = (
        "import sys\n"
        "from oig.cli import main\n"
        f"assert main(['bugs', 'parse', {str(body)!r}]) == 0\n"
        f"assert main(['bugs', 'claims', '--data', {str(tmp_path / 'data')!r}]) == 0\n"
        f"assert main(['bugs', 'report', '--event', {str(payload)!r}]) == 0\n"
        "heavy = {'torch', 'transformers', 'trl', 'datasets', 'huggingface_hub', 'together'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "scripts"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "GITHUB_TOKEN": TOKEN, "GITHUB_API_URL": github.url}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "issue #3: skipped" in result.stdout
    [comment] = github.comments_on(3)
    assert "there is no usable current model" in comment["body"] and "does not exist" in comment["body"]
