"""Decontamination (oig.data.overlap): exact after normalisation and 8-gram containment, as warnings in
`oig validate` at the slice file's line."""

from __future__ import annotations

from oig.cli import main
from oig.data.overlap import NGRAM, THRESHOLD, Index, ngrams
from oig.data.validate import validate

LONG = "explain in two sentences why the sky looks blue on a clear summer afternoon"  # 14 words: 7 8-grams


def test_ngrams_are_words_of_the_normalised_text():
    assert NGRAM == 8 and THRESHOLD == 0.5
    assert ngrams("One, TWO three four five six seven eight!") == {
        ("one", "two", "three", "four", "five", "six", "seven", "eight")}
    assert ngrams("too short to have one") == set()


def test_exact_after_normalisation():
    index = Index([("eval case s/1", "What is the capital of Germany?")])
    m = index.match("  WHAT  is the capital of\tgermany ")
    assert m is not None and m.exact and m.label == "eval case s/1"
    assert index.match("What is the capital of France?") is None
    assert index.match("What is the capital of Germany and why?") is None  # short: the exact rule only
    assert index.match("ｗｈａｔ is the capital of Germany") is not None  # NFKC folds full-width letters


def test_ngram_containment_above_the_threshold():
    index = Index([("bug #3", LONG)])
    inside = index.match(f"Please {LONG}, and keep it simple for a child")
    assert inside is not None and not inside.exact and inside.containment == 1.0
    # Words 5 and 12 of 14 changed: every 8-gram holds one of them, none of the 7 survives.
    changed = LONG.replace("why", "how").replace("clear", "cloudy")
    assert index.match(changed) is None
    half = LONG.replace("afternoon", "evening")  # the last 8-gram breaks: 6 of 7 remain
    m = index.match(half)
    assert m is not None and round(m.containment, 3) == round(6 / 7, 3)
    assert index.match(" ".join(LONG.split()[:11])) is not None  # 4 of 7 8-grams: above half
    assert index.match(" ".join(LONG.split()[:10])) is None  # 3 of 7: below half


def write(tmp_path, slice_text: str, suite: str | None) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.yaml").write_text(slice_text + "license: CC0-1.0\n")
    if suite is not None:
        (tmp_path / "evals").mkdir()
        (tmp_path / "evals" / "quiz.yaml").write_text(suite)


SUITE = ("cases:\n  - id: capital\n    input: What is the capital of Germany?\n    reference: Berlin\n"
         f"  - id: sky\n    messages:\n      - role: system\n        content: Be brief.\n"
         f"      - role: user\n        content: {LONG}\n    reference: blue\n")


def test_validate_warns_at_each_overlapping_input(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "IOPairs:\n"
                    "  - input: what is the capital of germany\n    output: Berlin\n"
                    "  - input: A fresh question\n    output: ok\n"
                    f"  - input: 'Quick one: {LONG}?'\n    output: Rayleigh scattering\n"
                    "  - input: Be brief.\n    output: ok\n", SUITE)
    problems = validate()
    assert [(p.file, p.line, p.col, p.severity) for p in problems] == [
        ("data/a.yaml", 2, 12, "warning"), ("data/a.yaml", 6, 12, "warning")]
    assert "eval case quiz/capital's input (equal after normalisation)" in problems[0].message
    assert "contains 100% of the 8-word sequences of eval case quiz/sky's input" in problems[1].message
    # The system turn of an eval case is no test question: "Be brief." warns nowhere.
    assert main(["validate"]) == 0  # warnings, never errors
    assert "data/a.yaml:2:12: warning: this input is eval case quiz/capital's input" in capsys.readouterr().out


def test_no_evals_folder_or_a_broken_suite_gives_no_overlap_warning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "IOPairs:\n  - input: What is the capital of Germany?\n    output: Berlin\n", None)
    assert validate([tmp_path / "data"]) == []
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "bad.yaml").write_text("cases: 3\n")
    assert validate([tmp_path / "data"]) == []  # the suite's own errors are reported when evals/ is validated
