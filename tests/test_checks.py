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
