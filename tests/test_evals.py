"""Eval suites (oig.data.evals): parsing, every problem with its line, `oig validate` over evals/."""

from pathlib import Path

from oig.cli import main
from oig.data import evals
from oig.data.validate import validate

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
check: exact
judge:
  model: judge-model
  pass_score: 8
cases:
  - id: a
    input: What is 2 + 2?
    reference: "4"
  - input: Capital of France?
    check: contains
    reference: Paris
  - id: mc
    input: Largest planet?
    check: choice
    choices: [Mars, Jupiter]
    reference: b
  - id: chat
    messages:
      - {role: system, content: Be brief.}
      - {role: user, content: Hi}
    check: judge
    rubric: A friendly greeting.
"""

BAD = """\
check: exakt
cases:
  - id: a
    input: Hi
    reference: hello
    outptu: x
  - id: a
    messages:
      - {role: user, content: Hi}
      - {role: assistant, content: Hello}
    reference: x
  - input: Capital?
    check: choice
    choices: [Paris, Lyon]
    reference: C
  - input: Sum?
    check: regex
    reference: "(12"
  - input: Judge me
    check: judge
  - reference: no question
"""


def write(tmp_path, text, name="x.yaml"):
    folder = tmp_path / "evals"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_a_suite_parses_into_cases(tmp_path):
    suite = evals.load_suites(write(tmp_path, GOOD).parent)[0]
    assert suite.name == "x" and suite.judge == evals.Judge("judge-model", None, 8) and suite.needs_judge
    a, second, mc, chat = suite.cases
    assert (a.id, a.check, a.messages) == ("a", "exact", ({"role": "user", "content": "What is 2 + 2?"},))
    assert (second.id, second.check) == ("2", "contains")  # default id: the position
    assert mc.choices == ("Mars", "Jupiter") and "A. Mars\nB. Jupiter" in mc.question
    assert chat.messages[0]["role"] == "system" and chat.question == "Hi" and chat.rubric == "A friendly greeting."


def test_every_problem_has_its_line(tmp_path):
    path = write(tmp_path, BAD)
    _, problems = evals.read_suite(path)
    found = {(p.line, p.message.split(";")[0][:60]) for p in problems}
    lines = {p.line for p in problems}
    messages = " | ".join(p.message for p in problems)
    assert 1 in lines and "must be one of exact, contains" in messages and "did you mean 'exact'" in messages
    assert any(p.line == 6 and "unknown key 'outptu'" in p.message and "did you mean 'output'" not in p.message
               for p in problems), found
    assert any(p.line == 7 and "ids are unique" in p.message for p in problems), found
    assert any(p.line == 10 and "end with a user turn" in p.message for p in problems), found
    assert any(p.line == 15 and "letter of a choice (A-B)" in p.message for p in problems), found
    assert any(p.line == 18 and "not a valid regular expression" in p.message for p in problems), found
    assert any(p.line == 19 and "needs a rubric" in p.message for p in problems), found
    assert any(p.line == 21 and "exactly one of input" in p.message for p in problems), found
    assert all(p.severity == "error" for p in problems)


def test_yaml_errors_and_wrong_shapes(tmp_path):
    _, problems = evals.read_suite(write(tmp_path, "cases: [\n"))
    assert problems and problems[0].line >= 1
    _, problems = evals.read_suite(write(tmp_path, "- input: hi\n"))
    assert "mapping with a `cases:` list" in problems[0].message
    _, problems = evals.read_suite(write(tmp_path, "cases:\n  - input: hi\n    reference: 3\n"))
    assert problems[0].line == 3 and "must be text" in problems[0].message


def test_oig_validate_reads_evals(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.yaml").write_text("license: CC0-1.0\nIOPairs:\n  - input: hi\n    output: hello\n")
    write(tmp_path, GOOD, "good.yaml")
    assert main(["validate"]) == 0
    assert main(["validate", "evals/good.yaml"]) == 0
    write(tmp_path, BAD, "bad.yaml")
    assert main(["validate"]) == 1
    out = capsys.readouterr().out
    assert "evals/bad.yaml:6:" in out and "evals/good.yaml" not in out
    assert main(["validate", "evals/bad.yaml"]) == 1
    assert main(["validate", "evals/good.yaml", "data"]) == 0


def test_shipped_suites_are_valid_and_open_with_the_schema_line():
    suites = evals.load_suites(ROOT / "evals")
    assert suites
    for suite in suites:
        lines = suite.path.read_text().splitlines()
        assert lines[0] == "# yaml-language-server: $schema=../schemas/eval.schema.json", suite.path
        assert lines[1].startswith("# "), suite.path
    assert [p for p in validate([ROOT / "evals"]) if p.severity == "error"] == []
