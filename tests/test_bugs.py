"""oig.bugs: reading bug reports as GitHub renders them (report), judging answers and the suite (suite),
what is posted (render), the comments (github), the claims of data PRs (claims)."""

from __future__ import annotations

import json
import time

import pytest
from fake_github import FakeGitHub
from fake_together import FakeTogether

from oig.bugs import claims, render
from oig.bugs import github as bugs_github
from oig.bugs import report as bug_report
from oig.bugs import suite as bugs
from oig.bugs.github_api import GitHub
from oig.bugs.report import Bug, BugReportError, parse_body, parse_event
from oig.bugs.suite import judge_answer, normalize, verdict_of
from oig.errors import OigError
from oig.runlog import ModelRef

TOKEN = "ghs_test_token"


def rendered(input_: str | None, output: str | None, expected: str | None = None, version: str | None = None,
             *, crlf: bool = False) -> str:
    """An issue body exactly as GitHub renders bug.yml: fenced textareas (render: text), an input."""

    def area(value: str | None) -> str:
        return f"```text\n{value}\n```" if value else "_No response_"

    body = (f"### Input\n\n{area(input_)}\n\n### Model output\n\n{area(output)}\n\n"
            f"### Expected output\n\n{area(expected)}\n\n### Model version\n\n{version or '_No response_'}")
    return body.replace("\n", "\r\n") if crlf else body


def event(number: int, body: str | None, labels=("bug", "bug-report"), action: str = "opened") -> dict:
    """An `issues` event payload, trimmed to the fields GitHub always sends; the labels default to the
    ones the bug report form sets."""
    return {
        "action": action,
        "issue": {"number": number, "title": "Wrong capital", "body": body, "state": "open",
                  "labels": [{"name": n, "color": "d73a4a"} for n in labels],
                  "user": {"login": "reporter", "type": "User"}, "author_association": "NONE",
                  "html_url": f"https://github.com/octo/oig/issues/{number}"},
        "repository": {"full_name": "octo/oig", "name": "oig", "owner": {"login": "octo"}},
        "sender": {"login": "reporter", "type": "User"},
    }


# --- parsing ----------------------------------------------------------------------------------------------


def test_parses_the_rendered_form():
    bug = parse_body(rendered("What is the capital of France?", "Berlin", "Paris", "3f2a9c1"))
    assert bug == Bug(input="What is the capital of France?", output="Berlin", expected="Paris",
                      model_version="3f2a9c1")


def test_crlf_and_no_response():
    bug = parse_body(rendered("2+2?", "5", crlf=True), number=7)
    assert (bug.input, bug.output, bug.expected, bug.model_version, bug.number) == ("2+2?", "5", None, None, 7)


def test_multiline_values_keep_their_lines():
    bug = parse_body(rendered("line one\n\n  indented\nline three", "a\nb"))
    assert bug.input == "line one\n\n  indented\nline three"
    assert bug.output == "a\nb"


def test_headings_inside_values_stay_in_the_values():
    output = "### Step 1\nBerlin\n## Summary\n### Model output\nstill the output"
    body = rendered("### Input\nWhat is the capital?", output, "### Expected output\nParis")
    bug = parse_body(body)
    assert bug.input == "### Input\nWhat is the capital?"
    assert bug.output == output
    assert bug.expected == "### Expected output\nParis"


def test_an_unbalanced_fence_inside_a_value_hides_no_section():
    # GitHub fences the textarea without escaping it: a ``` line in the text closes the fence early.
    body = rendered("show code:\n```\nprint(1)", "Berlin", "Paris")
    bug = parse_body(body)
    assert bug.input == "show code:\n```\nprint(1)"
    assert (bug.output, bug.expected) == ("Berlin", "Paris")


def test_hand_edited_body_without_fences():
    body = "## input  \r\nWhat is 2+2?\r\n\r\n### Model Output ###\r\n5\r\n### Expected output\r\n4\r\n"
    bug = parse_body(body)
    assert (bug.input, bug.output, bug.expected) == ("What is 2+2?", "5", "4")


def test_tilde_fences_and_longer_backtick_fences():
    body = "### Input\n\n~~~\nhi ``` there\n~~~\n\n### Model output\n\n````text\n```\nx\n```\n````\n"
    bug = parse_body(body)
    assert bug.input == "hi ``` there"
    assert bug.output == "```\nx\n```"


def test_missing_required_fields_are_all_named():
    with pytest.raises(BugReportError) as err:
        parse_body(rendered(None, None, "Paris"))
    problems = " ".join(err.value.problems)
    assert "**Input** is missing" in problems and "**Model output** is missing" in problems
    assert "Input is missing" in str(err.value)  # the CLI message has no markdown


def test_a_body_that_is_not_the_form():
    with pytest.raises(BugReportError, match="does not follow the bug report form"):
        parse_body("The model is bad.\nPlease fix.")
    with pytest.raises(BugReportError, match="has no text"):
        parse_body("  \r\n ")


def test_fields_are_bounded():
    with pytest.raises(BugReportError, match=r"Input is 65,537 bytes; the limit is 65,536"):
        parse_body(rendered("x" * 65537, "y"))
    with pytest.raises(BugReportError, match="Model version"):
        parse_body(rendered("a", "b", version="v" * 300))
    with pytest.raises(BugReportError, match="limit is"):
        parse_body("### Input\n\n" + "x" * (bug_report.BODY_LIMIT + 1))


def test_event_payloads():
    bug = parse_event(event(12, rendered("hi", "bye", "hello")))
    assert (bug.number, bug.title, bug.input) == (12, "Wrong capital", "hi")
    with pytest.raises(BugReportError, match="Issue #12 has no body"):
        parse_event(event(12, None))
    with pytest.raises(BugReportError, match="no `issue` object"):
        parse_event({"action": "opened", "pull_request": {}})
    with pytest.raises(BugReportError, match="no valid `number`"):
        parse_event({"issue": {"number": "12", "body": "x"}})
    # An issue object from the REST API reads the same.
    assert parse_event({"number": 3, "body": rendered("a", "b")}).number == 3


def test_parse_source_reads_bodies_and_payloads(tmp_path):
    body = tmp_path / "body.md"
    body.write_bytes(b"\xef\xbb\xbf" + rendered("a", "b", crlf=True).encode())
    assert bug_report.parse_source(body).input == "a"
    payload = tmp_path / "event.json"
    payload.write_text(json.dumps(event(5, rendered("q", "wrong"))))
    assert bug_report.parse_source(payload).number == 5
    braces = tmp_path / "braces.md"
    braces.write_text("{not json}\n" + rendered("a", "b"))
    assert bug_report.parse_source(braces).output == "b"
    binary = tmp_path / "bin.md"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(OigError, match="not UTF-8"):
        bug_report.parse_source(binary)
    with pytest.raises(OigError, match="no such file"):
        bug_report.parse_source(tmp_path / "missing.md")


def test_oversized_sources_are_refused_before_parsing(tmp_path, monkeypatch):
    monkeypatch.setattr(bug_report, "SOURCE_LIMIT", 100)
    big = tmp_path / "big.json"
    big.write_text("{" + " " * 200 + "}")
    with pytest.raises(OigError, match="larger than 100 bytes"):
        bug_report.parse_source(big)


# --- judging ----------------------------------------------------------------------------------------------


def test_normalisation():
    assert normalize("  The capital is\n PARIS.  ") == "the capital is paris"
    assert normalize("«Paris»!") == "paris"
    assert normalize("Ｐａｒｉｓ") == "paris"  # NFKC: full-width letters
    assert normalize("a, b") == "a, b"  # punctuation inside stays
    assert normalize("...") == ""


def test_similarity_is_bounded_in_time_for_hostile_texts():
    long_a, long_b = "the " * 16000, "the " * 15999 + "then"
    start = time.perf_counter()
    score = bugs.similarity(long_a, long_b)
    assert time.perf_counter() - start < 3.0
    assert score > 0.99
    assert bugs.similarity("paris", "berlin") < 0.5


def test_judging_against_an_expected_output():
    bug = Bug(input="capital of France?", output="Berlin", expected="Paris is the capital of France.")
    assert judge_answer("paris is the capital of france", bug) == bugs.Judgment(True, 1.0, "equal")
    similar = judge_answer("Paris is the capital of France!!", bug)
    assert similar.passed is True and similar.how == "equal"
    close = judge_answer("Paris is the capitol of France.", bug)
    assert close.passed is True and close.how == "similar" and 0.9 <= close.score < 1
    wrong = judge_answer("Berlin.", bug)
    assert wrong.passed is False and wrong.how == "different"
    assert judge_answer("Paris is the capitol of France.", bug, threshold=0.99).passed is False
    assert judge_answer(None, bug).passed is None


def test_the_judge_model_decides_only_below_the_threshold():
    bug = Bug(input="capital of France?", output="Berlin", expected="Paris")
    calls = []

    def judge(text, answer, expected, reported):
        calls.append((text, answer, expected, reported))
        return True

    assert judge_answer("paris", bug, judge=judge).how == "equal" and calls == []
    verdict = judge_answer("It is Paris, of course.", bug, judge=judge)
    assert verdict.passed is True and verdict.how == "judge"
    assert calls == [("capital of France?", "It is Paris, of course.", "Paris", "Berlin")]
    unsure = judge_answer("Lyon", bug, judge=lambda *a: "maybe")
    assert unsure.passed is None and unsure.how == "judge gave no verdict"


def test_a_failing_judge_makes_the_answer_unknown(capsys):
    def judge(*args):
        raise RuntimeError("boom")

    assert judge_answer("Lyon", Bug("q", "a", "Paris", number=4), judge=judge).passed is None
    assert "judge model failed on bug #4" in capsys.readouterr().err


def test_without_an_expected_output():
    bug = Bug(input="Tell a joke", output="I cannot.")
    assert judge_answer("i cannot", bug) == bugs.Judgment(False, None, "same as reported")
    assert judge_answer("Why did the chicken...", bug).passed is None
    assert judge_answer("Why did the chicken...", bug, judge=lambda *a: True).passed is True


def test_verdicts():
    assert verdict_of(False, True) == "fixed"
    assert verdict_of(True, False) == "regressed"
    assert verdict_of(False, False) == "still broken"
    assert verdict_of(True, True) == "passing"
    for before, after in ((None, True), (True, None), (None, None)):
        assert verdict_of(before, after) == "unknown"


def test_judge_replies():
    assert bugs.parse_judge_reply('{"pass": true}') is True
    assert bugs.parse_judge_reply('Sure! {"reason": "x"} then {"pass": false} done') is False
    for reply in ("yes", '{"pass": "yes"}', "{broken", None, 3):
        assert bugs.parse_judge_reply(reply) is None


def test_judge_model_through_the_together_sdk(monkeypatch):
    monkeypatch.setenv("TOGETHER_API_KEY", "tg_test_key")
    with FakeTogether(answer='{"pass": true}') as together:
        judge = bugs.make_judge("judge-model", together.url)
        assert judge("q", "answer", "expected", None) is True
        together.answer = "I think it passes"
        assert judge("q", "answer", "expected", None) is None
        sent = together.find("POST", "/v1/chat/completions")[0]["json"]
    assert sent["model"] == "judge-model" and sent["temperature"] == 0
    assert "A correct answer" in sent["messages"][1]["content"]


# --- the suite ----------------------------------------------------------------------------------------------


def answers(mapping: dict[str, str]):
    return lambda text: mapping[text]


def test_run_suite_gives_each_verdict():
    suite = [
        Bug("fix me", "wrong", "right", number=1),
        Bug("keep me", "wrong", "fine", number=2),
        Bug("broken", "wrong", "right", number=3),
        Bug("passing", "x", "ok", number=4),
        Bug("no expectation", "bad", None, number=5),
    ]
    before = answers({"fix me": "wrong", "keep me": "fine", "broken": "nope", "passing": "ok", "no expectation": "bad"})
    after = answers({"fix me": "Right.", "keep me": "oops", "broken": "still nope", "passing": "OK",
                     "no expectation": "good"})
    records = bugs.run_suite(suite, before, after)
    assert [r["verdict"] for r in records] == ["fixed", "regressed", "still broken", "passing", "unknown"]
    first = records[0]
    assert first["before"] == "wrong" and first["after"] == "Right." and first["score"] == 1.0
    assert first["before_source"] == "previous model" and first["before_pass"] is False
    assert set(first) >= {"number", "input", "expected", "before", "after", "verdict", "score"}
    section = bugs.log_section(records)
    assert section["bugs_summary"] == {"total": 5, "fixed": 1, "still broken": 1, "regressed": 1, "passing": 1,
                                       "unknown": 1}


def test_without_a_previous_model_before_is_the_reported_output():
    records = bugs.run_suite([Bug("q", "Berlin", "Paris", number=9)], None, lambda t: "Paris")
    assert records[0]["before"] == "Berlin" and records[0]["before_source"] == "reported"
    assert records[0]["verdict"] == "fixed"


def test_a_model_that_fails_makes_the_bug_unknown_not_the_run(monkeypatch):
    monkeypatch.setenv("TOGETHER_API_KEY", "tg_secret_value")

    def broken(text):
        raise RuntimeError("endpoint down, key tg_secret_value")

    records = bugs.run_suite([Bug("q", "a", "b", number=1)], broken, lambda t: 42)  # type: ignore[arg-type]
    assert records[0]["verdict"] == "unknown"
    assert "previous model: RuntimeError: endpoint down" in records[0]["error"]
    assert "new model: the model returned int" in records[0]["error"]
    assert "tg_secret_value" not in records[0]["error"]


def test_long_texts_are_cut_in_records_but_judged_whole():
    long_expected = "word " * 2000
    records = bugs.run_suite([Bug("q", "bad", long_expected)], None, lambda t: long_expected)
    assert records[0]["verdict"] == "fixed"
    assert len(records[0]["after"]) < 4100 and records[0]["after"].endswith("more characters)")


def test_tables():
    records = bugs.run_suite([Bug("What | is `x`?", "bad", "good", number=3)], None, lambda t: "good @admin")
    text = render.render_text(records)
    assert text.splitlines()[0].split() == ["bug", "verdict", "score", "input", "before", "after"]
    assert "#3" in text and "1 bug(s): 0 fixed, 1 still broken" in text
    md = render.render_markdown(records)
    assert "What \\| is 'x'?" in md and "@\u200badmin" in md


# --- loading bugs -----------------------------------------------------------------------------------------------


def test_load_bugs_from_files(tmp_path, capsys):
    items = [{"number": 1, "input": "a", "output": "b", "expected": "c"},
             {"number": 2, "input": ""},
             {"number": 3, "inptu": "x"},
             {"number": 1, "input": "duplicate"},
             {"number": 4, "title": "T", "body": rendered("from", "an issue")}]
    as_json = tmp_path / "bugs.json"
    as_json.write_text(json.dumps(items))
    loaded = bug_report.load_bugs(as_json, None)
    assert [(b.number, b.input) for b in loaded] == [(1, "a"), (4, "from")]
    err = capsys.readouterr().err
    assert "entry 2 skipped: `input` is missing or empty" in err
    assert "entry 3 skipped" in err and "unknown key(s) inptu" in err

    jsonl = tmp_path / "bugs.jsonl"
    jsonl.write_text("\n".join(json.dumps(i) for i in items[:1]) + "\n\n")
    assert bug_report.load_bugs(jsonl, None)[0].expected == "c"
    yaml_file = tmp_path / "bugs.yaml"
    yaml_file.write_text("bugs:\n  - number: 8\n    input: 'no'\n    expected: 'yes'\n")
    assert bug_report.load_bugs(yaml_file, None) == [Bug(input="no", expected="yes", number=8)]
    single = tmp_path / "one.json"
    single.write_text(json.dumps({"input": "q", "output": "a", "expected": None, "model_version": None,
                                  "number": None}))
    assert bug_report.load_bugs(single, None) == [Bug(input="q", output="a")]
    assert bug_report.load_bugs(None, None) == []


def test_bad_bug_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bugs.json"
    bad.write_text("[1, 2")
    with pytest.raises(OigError, match=r"bugs.json:1: not JSON"):
        bug_report.load_bugs(bad, None)
    scalar = tmp_path / "bugs.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(OigError, match="holds no bugs"):
        bug_report.load_bugs(scalar, None)


def test_load_bugs_from_github_skips_and_reports_bad_issues():
    skipped = []
    with FakeGitHub(token=TOKEN) as fake:
        fake.add_issue(1, rendered("q1", "a1", "e1"))
        fake.add_issue(2, None)
        fake.add_issue(3, "just words")
        fake.add_issue(4, rendered("pr", "x"), pull_request=True)
        with GitHub(fake.repo, TOKEN, api_url=fake.url) as gh:
            loaded = bug_report.load_bugs(None, fake.repo, gh=gh, on_skip=skipped.append)
    assert [(b.number, b.input, b.expected) for b in loaded] == [(1, "q1", "e1")]
    assert skipped[0].startswith("issue #2 skipped: Issue #2 has no body")
    assert skipped[1].startswith("issue #3 skipped: The issue does not follow")


# --- what is posted ----------------------------------------------------------------------------------------------


def test_mentions_are_neutralised_and_fences_cannot_be_escaped():
    assert render.neutralize("ping @octocat and @org/team, mail a@b") == \
        "ping @\u200boctocat and @\u200borg/team, mail a@\u200bb"
    text = "x\n`````\n@admin"
    block = render.fenced(text)
    assert block.startswith("``````text\n") and block.endswith("\n``````")
    assert "@admin" not in block


def test_report_comment_stays_under_githubs_limit():
    big = ("@user ```` " * 6000)[:65000]
    bug = Bug(input=big, output=big, expected=big, model_version="abc")
    body = bugs_github.report_comment(bug, bugs.REPRODUCED, answer=big, model=None)
    assert len(body) < 65536 and "@user" not in body
    assert body.startswith(bugs_github.REPORT_MARKER)


HOSTILE_ERROR = ("upstream said: ping @octocat ![x](https://evil/img.png) <img src=x> "
                 "[click me](https://evil.example/login) ```` then raw text")


def test_a_providers_error_text_is_neutralised_like_the_issue_text(tmp_path):
    (tmp_path / "model.yaml").write_text(
        "model:\n  hub_repo: octo/oig-model\n  revision: abc1234\ntogether:\n  model: oig-lab/m\n"
        "base_model: tiny\nrun_id: run-1\ntrained_at: '2026-11-23T12:00:00Z'\n")
    payload = tmp_path / "event.json"
    payload.write_text(json.dumps(event(3, rendered("q", "a", "b"))))

    def ask(text):
        raise RuntimeError(HOSTILE_ERROR + " " + "x" * 5000)

    with FakeGitHub(token=TOKEN) as fake:
        fake.add_issue(3, rendered("q", "a", "b"))
        with GitHub(fake.repo, TOKEN, api_url=fake.url) as gh:
            outcome = bugs_github.report(payload, model_yaml=tmp_path / "model.yaml", gh=gh, ask=ask)
        [comment] = fake.comments_on(3)
    text = comment["body"]
    assert outcome.status == "failed" and "**Reproduction failed**: the model could not be asked." in text
    # The error is shown only inside a fence longer than any backtick run in it, where Markdown
    # (images, links, HTML) is inert, with its mentions broken, and cut to ERROR_LIMIT characters.
    block = text.split("**Error**\n\n", 1)[1].split("\n\n", 1)[0]
    assert block.startswith("`````text\n") and block.endswith("\n`````")
    assert "@octocat" not in text and "@\u200boctocat" in block
    outside = text.replace(block, "")
    for live in ("![x]", "<img", "](https://evil", "````"):
        assert live not in outside, live
    assert len(block) < render.ERROR_LIMIT + 100 and "more characters)" in block
    assert "\n" not in outcome.detail  # one log line: no text of the provider's starts a line


def test_report_comment_notes_a_different_model_version():
    model = ModelRef.from_dict({"model": {"hub_repo": "octo/m", "revision": "0123456789abcdef0123456789abcdef01234567"}})
    same = bugs_github.report_comment(Bug("q", "a", model_version="0123456"), bugs.NOT_REPRODUCED, answer="b", model=model)
    other = bugs_github.report_comment(Bug("q", "a", model_version="fedcba9"), bugs.NOT_REPRODUCED, answer="b", model=model)
    assert "differs" not in same and "model version `fedcba9`; the current one differs" in other
    odd = bugs_github.report_comment(Bug("q", "a", model_version="`rm -rf` @x"), "skipped", reason="r.", model=model)
    assert "rm -rf" not in odd and "_(not shown)_" in odd


def test_fixed_labels():
    assert bugs_github.fixed_label("0123456789abcdef0123456789abcdef01234567") == "fixed-in-0123456"
    assert bugs_github.fixed_label("v1.2 final") == "fixed-in-v1.2-final"
    assert len(bugs_github.fixed_label("r" * 80)) == 50


# --- claims in data PRs ---------------------------------------------------------------------------------------------


def test_claims_list_fixes_and_warn_on_bug_inputs(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "capitals.yaml").write_text(
        "fixes: [12, 99]\nIOPairs:\n  - input: Which city is the capital of France?\n    output: Paris.\n"
        "  - input: '  what is the capital of FRANCE?'\n    output: Paris.\n")
    (data / "plain.yaml").write_text("IOPairs:\n  - input: hi\n    output: hello\n")
    (data / "broken.yaml").write_text("IOPairs: [")  # validation reports it; claims skip it
    bugs_file = tmp_path / "bugs.json"
    bugs_file.write_text(json.dumps([{"number": 12, "title": "Wrong capital",
                                      "input": "What is the capital of France?", "expected": "Paris"}]))
    result = claims.check_claims(data, bugs_file=bugs_file)
    assert result.checked
    assert [(f.rsplit("/", 1)[-1], n) for f, n in result.claims] == [("capitals.yaml", [12, 99])]
    warnings = [(p.line, p.col, p.message) for p in result.problems]
    assert warnings[0][:2] == (1, 13) and warnings[0][2].startswith("#99 is not an open bug issue")
    assert warnings[1][:2] == (5, 12) and "bug #12's exact input" in warnings[1][2]
    assert len(warnings) == 2
    assert "fixes #12 (Wrong capital), #99" in claims.claims_text(result)
    assert "| #12, #99 |" in claims.claims_markdown(result)


def test_claims_warn_when_the_bugs_cannot_be_read(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "fix.yaml").write_text("fixes: [3]\nIOPairs:\n  - input: a\n    output: b\n")
    result = claims.check_claims(data, repo="octo/oig", gh=GitHub("octo/oig", TOKEN, api_url="http://127.0.0.1:9",
                                                                   sleep=lambda s: None, max_retries=0))
    assert not result.checked and result.claims[0][1] == [3]
    assert "could not read the open bug issues" in result.problems[0].message
    unchecked = claims.check_claims(data)
    assert not unchecked.checked and unchecked.problems == []
    with pytest.raises(OigError, match="no such data folder"):
        claims.check_claims(tmp_path / "nope")


# --- asking the current model -------------------------------------------------------------------------------------


def test_model_asker_asks_the_together_endpoint_of_model_yaml(tmp_path, monkeypatch):
    monkeypatch.setenv("TOGETHER_API_KEY", "tg_test_key")
    with FakeTogether(answer="Lyon") as together:
        model_yaml = tmp_path / "model.yaml"
        model_yaml.write_text(
            "model:\n  hub_repo: octo/oig-model\n  revision: 0123456789abcdef0123456789abcdef01234567\n"
            f"together:\n  model: oig-lab/oig-model\n  endpoint: oig-endpoint\n  base_url: {together.url}\n"
            "base_model: tiny\ntrained_at: '2026-11-23T12:00:00Z'\n")
        ask = bugs.model_asker(model_yaml)
        model_yaml.write_text("rewritten by a later run: the asker read it already\n")
        assert ask("capital of France?") == "Lyon"
        sent = together.find("POST", "/v1/chat/completions")[0]["json"]
    assert sent["model"] == "oig-endpoint" and sent["temperature"] == 0
    assert sent["messages"] == [{"role": "user", "content": "capital of France?"}]
