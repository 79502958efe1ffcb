"""oig.checks: every check kind, the normalisation, and the judge's verdicts (unreadable is None)."""

import pytest

from oig import checks


def test_normalisation_folds_case_space_width_and_end_punctuation():
    assert checks.normalize("  Ｐａｒｉｓ.  ") == "paris"
    assert checks.normalize("New\n  York!") == "new york"


@pytest.mark.parametrize(("kind", "answer", "reference", "passed"), [
    ("exact", "Paris.", "paris", True),
    ("exact", "It is Paris.", "Paris", False),
    ("contains", "The capital of France is Paris.", "Paris", True),
    ("contains", "The capital of France is Lyon.", "Paris", False),
    ("regex", "It costs 42 euros", r"\b42\b", True),
    ("regex", "It costs 420 euros", r"\b42\b", False),
    ("regex", "PARIS", r"paris", False),
    ("regex", "PARIS", r"(?i)paris", True),
    ("similar", "The capital is Paris", "The capital is Paris!", True),
    ("similar", "Berlin", "Paris", False),
])
def test_pure_checks(kind, answer, reference, passed):
    assert checks.check(kind, answer, reference).passed is passed


def test_choice_takes_the_first_standalone_letter_among_the_choices():
    options = ["Paris", "Lyon", "Nice", "Lille"]
    assert checks.check("choice", "B", "B", choices=options).passed is True
    assert checks.check("choice", "(B) Lyon", "b", choices=options).passed is True
    assert checks.check("choice", "I think the answer is A.", "A", choices=options).passed is True  # "I" is no choice
    assert checks.check("choice", "A or B? Say B", "B", choices=options).passed is False  # the first letter counts
    assert checks.check("choice", "Both are fine", "A", choices=options).passed is False
    assert checks.check("choice", "E", "A", choices=options).detail.startswith("no choice letter")
    assert checks.chosen_letter("ABC", 4) is None  # not standalone


def test_similar_keeps_the_bug_rule_and_reports_the_ratio():
    v = checks.similar("The capital of France is Paris", "The capital of France is Paris.")
    assert v.passed and v.detail == "equal" and v.score == 1.0
    v = checks.similar("The capital of France is Paris", "The capital of France is Pariss")
    assert v.passed and 0.9 <= v.score < 1
    assert checks.similar("abc", "abd", threshold=0.5).passed


@pytest.mark.parametrize(("reply", "passed"), [
    ('{"pass": true}', True),
    ('Sure. {"pass": false} done', False),
    ('{"score": 8}', True),
    ('{"score": 6.5}', False),
    ('```json\n{"score": 7}\n```', True),
    ('{"score": 11}', None),
    ('{"pass": "yes"}', None),
    ("It is a good answer.", None),
    ("", None),
])
def test_judge_verdicts(reply, passed):
    seen = []

    def ask(messages):
        seen.append(messages)
        return reply

    v = checks.check("judge", "Paris", "Paris", question="Capital of France?", rubric="names the city", judge_ask=ask)
    assert v.passed is passed
    assert (v.detail.startswith("unreadable")) is (passed is None)
    system, user = seen[0]
    assert system["role"] == "system" and "names the city" in user["content"] and "Capital of France?" in user["content"]


def test_judge_pass_score_and_missing_pieces():
    assert checks.check("judge", "x", None, judge_ask=lambda m: '{"score": 5}', pass_score=5).passed is True
    with pytest.raises(ValueError, match="judge model"):
        checks.check("judge", "x", None)
    with pytest.raises(ValueError, match="reference"):
        checks.check("contains", "x", None)
    with pytest.raises(ValueError, match="unknown check"):
        checks.check("fuzzy", "x", "y")


# --- bug reports use the same checker ---------------------------------------------------------------------


def test_a_bug_with_a_contains_check_passes_a_longer_right_answer():
    from oig.bugs.report import Bug
    from oig.bugs.suite import is_reproduced, judge_answer

    answer = "The capital of France is Paris."
    bug = Bug(input="What is the capital of France?", output="Berlin", expected="Paris", check="contains")
    assert judge_answer(answer, bug).passed is True and judge_answer(answer, bug).how == "contains"
    assert is_reproduced(bug, answer) is False
    assert judge_answer("Berlin", bug).passed is False
    default = Bug(input="What is the capital of France?", output="Berlin", expected="Paris")  # similar
    assert judge_answer(answer, default).passed is False and is_reproduced(default, answer) is True
    regex = Bug(input="2+2?", output="5", expected=r"(?<!\d)4(?!\d)", check="regex")
    assert judge_answer("It is 4.", regex).passed is True and judge_answer("It is 42.", regex).passed is False


def test_the_check_comes_from_a_bug_list_or_the_form(tmp_path):
    import json

    from oig.bugs import report

    path = tmp_path / "bugs.json"
    path.write_text(json.dumps([{"input": "q", "expected": "Paris", "check": "contains"},
                                {"input": "q", "expected": "x", "check": "fuzzy"},
                                {"input": "q", "expected": "(", "check": "regex"}]))
    skipped = []
    bugs = report.load_bugs(path, None, on_skip=skipped.append)
    assert [b.check for b in bugs] == ["contains"] and bugs[0].to_dict()["check"] == "contains"
    assert "`check` must be one of similar, exact, contains, regex" in skipped[0]
    assert "is checked as a regular expression but is not one" in skipped[1]
    body = ("### Input\n\n```text\nq\n```\n\n### Model output\n\n```text\nBerlin\n```\n\n### Expected output\n\n"
            "```text\nParis\n```\n\n### Model version\n\n_No response_\n\n### Check\n\n"
            "contains: the expected output appears in the answer")
    assert report.parse_body(body).check == "contains"
    assert report.parse_body(body.replace("contains: the expected output appears in the answer",
                                          "_No response_")).check is None
    assert "check" not in report.parse_body(body.split("\n\n### Check")[0]).to_dict()  # a form without the field


def test_the_bug_form_offers_the_bug_checks():
    from pathlib import Path

    import yaml

    form = yaml.safe_load((Path(__file__).resolve().parents[1] / ".github/ISSUE_TEMPLATE/bug.yml").read_text())
    [field] = [f for f in form["body"] if f.get("id") == "check"]
    assert field["type"] == "dropdown" and field["validations"]["required"] is False
    assert [o.split(":")[0] for o in field["attributes"]["options"]] == list(checks.BUG_KINDS)


def test_bugs_eval_compare_with_a_model_that_cannot_be_loaded_exits_1(tmp_path, capsys, monkeypatch):
    import json

    from fake_openai import FakeOpenAI

    from oig.cli import main

    tail = "base_model: tiny\nrun_id: r1\ntrained_at: '2026-11-23T12:00:00Z'\n"
    bugs = tmp_path / "bugs.json"
    bugs.write_text(json.dumps([{"number": 1, "input": "Say Paris", "expected": "Paris", "check": "contains"}]))
    gone = tmp_path / "old.yaml"
    gone.write_text("model:\n  local_path: nothing-here\n" + tail)
    now = tmp_path / "model.yaml"
    with FakeOpenAI() as srv:
        now.write_text(f"together:\n  model: m\n  base_url: {srv.base_url}\n" + tail)
        monkeypatch.setenv("TOGETHER_API_KEY", "test-key")
        assert main(["bugs", "eval", "--bugs", str(bugs), "--model-yaml", str(now), "--format", "json"]) == 0
        [record] = json.loads(capsys.readouterr().out)["bugs"]
        assert record["after_pass"] is True and record["judged"] == "contains"
        assert main(["bugs", "eval", "--bugs", str(bugs), "--model-yaml", str(now), "--compare", str(gone)]) == 1
        err = capsys.readouterr().err
    assert f"the model in {gone} cannot be asked" in err
