"""Eval suites: ``evals/<name>.yaml``, each a list of cases a model is asked and checked on (``oig eval``).

A case is a question (``input``, one user message, or ``messages``, a conversation ending with a user
turn), an optional ``reference`` and a ``check`` (``oig.checks``: exact, contains, regex, choice,
similar, judge). The suite may set a default ``check`` and the ``judge`` model for its judged cases.
Files are read like slices (``oig.yamlsafe``) and every problem is reported at once with its line
(``oig validate evals/`` or ``oig validate evals/x.yaml``); :data:`EVAL_SCHEMA` is shipped as
``schemas/eval.schema.json`` (``python -m oig.data.schemas``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from oig import checks, yamlsafe
from oig.data import messages
from oig.errors import InvalidInput, Problem

EVALS_DIR = "evals"
SUITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
ROLES = ("system", "user", "assistant")
CASE_ID = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$"

_text = {"type": "string", "minLength": 1}
_check = {"enum": list(checks.KINDS),
          "description": "How the answer is checked (oig.checks; README: Evaluation): exact, contains, regex "
          "(reference is a Python regular expression), choice (reference is the letter of the right choice), "
          "similar (equal, else difflib ratio >= 0.9) or judge (a judge model grades it against the rubric)."}
_judge = {
    "type": "object", "additionalProperties": False, "required": ["model"],
    "description": "The judge model for this suite's judge cases: an OpenAI-compatible server's model "
    "(`oig eval --judge-model/--judge-base-url` override it).",
    "properties": {
        "model": {**_text, "description": "The model name the judge server is asked for."},
        "base_url": {**_text, "description": "The judge's OpenAI-compatible API root (default: Together, "
                     "with TOGETHER_API_KEY)."},
        "pass_score": {"type": "number", "minimum": 1, "maximum": 10,
                       "description": "A judge replying with a score (1-10) passes the answer at this score "
                       f"or above (default {checks.DEFAULT_PASS_SCORE})."},
    },
}
EVAL_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:oig:schema:eval",
    "title": "oig eval suite",
    "description": "Cases `oig eval` asks the model and checks. Each case's score counts once: a suite's score "
    "is passed / (cases - unreadable), where unreadable cases are judged ones whose judge reply had no verdict.",
    "type": "object",
    "additionalProperties": False,
    "required": ["cases"],
    "properties": {
        "description": {**_text, "description": "What the suite measures."},
        "check": {**_check, "description": "The default check of cases that name none (default: contains)."},
        "judge": _judge,
        "cases": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object", "additionalProperties": False,
                "properties": {
                    "id": {"type": "string", "pattern": CASE_ID,
                           "description": "A stable name for the case (default: its position, 1, 2, ...)."},
                    "input": {**_text, "description": "The question, sent as one user message."},
                    "messages": {
                        "type": "array", "minItems": 1,
                        "description": "The conversation to send instead of input; it ends with a user turn.",
                        "items": {"type": "object", "additionalProperties": False, "required": ["role", "content"],
                                  "properties": {"role": {"enum": list(ROLES)}, "content": {"type": "string"}}},
                    },
                    "reference": {"type": "string", "description": "The right answer (exact, contains, similar), "
                                  "the pattern (regex), the letter (choice) or a model answer for the judge."},
                    "check": _check,
                    "choices": {"type": "array", "minItems": 2, "maxItems": checks.MAX_CHOICES, "items": _text,
                                "description": "choice: the options, lettered A, B, ... in this order."},
                    "rubric": {**_text, "description": "judge: what a passing answer does."},
                },
            },
        },
    },
}


@dataclass(frozen=True)
class Judge:
    model: str
    base_url: str | None = None
    pass_score: float = checks.DEFAULT_PASS_SCORE


@dataclass(frozen=True)
class Case:
    id: str
    messages: tuple[dict, ...]  # as the model is asked it (choices already in the last user turn)
    check: str
    reference: str | None = None
    choices: tuple[str, ...] = ()
    rubric: str | None = None

    @property
    def question(self) -> str:
        return self.messages[-1]["content"]


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    cases: tuple[Case, ...]
    judge: Judge | None = None
    description: str | None = None
    needs_judge: bool = field(default=False)


@cache
def _validator():
    import jsonschema_rs

    return jsonschema_rs.validator_for(EVAL_SCHEMA)


def _schema_message(err, doc: object) -> tuple[tuple, bool, str]:
    common = messages.schema_problem(err, doc, EVAL_SCHEMA, "the suite")
    if common is not None:
        return common
    path = tuple(err.instance_path)
    where = messages.path_text(path, "the suite")
    name = type(err.kind).__name__
    if name == "Type":
        return path, False, messages.must_be(where, messages.type_words(getattr(err.kind, "types", None)),
                                             messages.value_at(doc, path), show_value=False)
    if name == "Enum":
        field_ = path[-1] if path else ""
        valid = checks.KINDS if field_ == "check" else ROLES
        return path, False, f"{where} must be one of {', '.join(valid)}{messages.did_you_mean(str(messages.value_at(doc, path)), valid)}"
    if name == "MinLength":
        return path, False, f"{where} is empty; write the text or remove the key"
    if name in ("MinItems", "MaxItems"):
        return path, False, f"{where}: {err.message}"
    if name == "Pattern":
        return path, False, f"{where} must be letters, digits, '_', '.', ':' or '-', starting with a letter or digit"
    return path, False, f"{where}: {err.message}"


def _case_problems(doc: dict) -> list[tuple[tuple, bool, str]]:
    """What the schema cannot say: input or messages, what each check needs, unique ids."""
    found = []
    default = doc.get("check") if isinstance(doc.get("check"), str) else "contains"
    seen: dict[str, int] = {}
    cases = doc.get("cases") if isinstance(doc.get("cases"), list) else []
    for i, case in enumerate(cases):
        if not isinstance(case, dict):
            continue
        at = ("cases", i)
        if ("input" in case) == ("messages" in case):
            found.append((at, False, f"cases[{i}] needs exactly one of input (a question) or messages (a conversation)"))
        turns = case.get("messages")
        if isinstance(turns, list) and turns and isinstance(turns[-1], dict) and turns[-1].get("role") != "user":
            found.append((at + ("messages", len(turns) - 1), False, "the conversation must end with a user turn"))
        kind = case.get("check", default)
        ref = case.get("reference")
        if kind in ("exact", "contains", "regex", "choice", "similar") and ref is None:
            found.append((at, False, f"cases[{i}] is checked with {kind} and needs a reference"))
        if kind == "regex" and isinstance(ref, str):
            try:
                re.compile(ref)
            except re.error as exc:
                found.append((at + ("reference",), False, f"not a valid regular expression: {exc}"))
        if kind == "choice":
            options = case.get("choices")
            if not isinstance(options, list):
                found.append((at, False, f"cases[{i}] is checked with choice and needs choices (a list of options)"))
            elif isinstance(ref, str) and ref.strip().upper() not in checks.LETTERS[:len(options)]:
                found.append((at + ("reference",), False, f"reference must be the letter of a choice "
                              f"(A-{checks.LETTERS[max(len(options), 1) - 1]}), not {ref!r}"))
        elif "choices" in case:
            found.append((at + ("choices",), True, "choices are used only by the choice check; add `check: choice`"))
        if kind == "judge" and not case.get("rubric") and ref is None:
            found.append((at, False, f"cases[{i}] is judged and needs a rubric (or a reference)"))
        if "id" in case and isinstance(case["id"], str):
            first = seen.setdefault(case["id"], i)
            if first != i:
                found.append((at + ("id",), False, f"id {case['id']!r} is also cases[{first}]'s; ids are unique"))
    return found


def check_suite(data: bytes, path: Path, display: str) -> tuple[Suite | None, list[Problem]]:
    """One suite file's bytes -> the Suite (None when it has errors) and every problem, with lines."""
    problems: list[Problem] = []
    if not SUITE_NAME.fullmatch(path.stem) or path.suffix != ".yaml":
        problems.append(Problem(display, 0, 0, "error", "suites are named evals/<name>.yaml (letters, digits, "
                                "'_', '-', '.')"))
    try:
        text = yamlsafe.decode(data)
        doc = yamlsafe.load(text)
    except yamlsafe.YamlError as exc:
        return None, problems + [Problem(display, exc.line, exc.col, "error", exc.message)]
    if not isinstance(doc, dict):
        return None, problems + [Problem(display, 1, 1, "error", "a suite is a mapping with a `cases:` list")]

    def at(ypath: tuple, key: bool, message: str) -> Problem:
        line, col = yamlsafe.locate(text, ypath, key=key)
        return Problem(display, line, col, "error", message)

    validator = _validator()
    if not validator.is_valid(doc):
        problems += [at(*_schema_message(err, doc)) for err in validator.iter_errors(doc)]
    problems += [at(*p) for p in _case_problems(doc)]
    if problems:
        return None, problems
    return suite_from_document(path, doc), []


def suite_from_document(path: Path, doc: dict) -> Suite:
    default = doc.get("check", "contains")
    cases = []
    for n, c in enumerate(doc["cases"], 1):
        kind = c.get("check", default)
        turns = [dict(m) for m in c["messages"]] if "messages" in c else [{"role": "user", "content": c["input"]}]
        if kind == "choice":
            turns[-1] = {"role": "user", "content": checks.choices_prompt(turns[-1]["content"], c["choices"])}
        cases.append(Case(id=c.get("id", str(n)), messages=tuple(turns), check=kind, reference=c.get("reference"),
                          choices=tuple(c.get("choices") or ()), rubric=c.get("rubric")))
    j = doc.get("judge")
    judge = Judge(j["model"], j.get("base_url"), j.get("pass_score", checks.DEFAULT_PASS_SCORE)) if j else None
    return Suite(name=path.stem, path=path, cases=tuple(cases), judge=judge, description=doc.get("description"),
                 needs_judge=any(c.check == "judge" for c in cases))


def suite_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith("."))


def is_suite_path(path: Path) -> bool:
    """Whether ``oig validate PATH`` should read PATH as eval suites: the evals/ folder or a file in it."""
    path = Path(path)
    return path.name == EVALS_DIR if path.is_dir() else path.parent.name == EVALS_DIR


def _display(path: Path) -> str:
    try:
        return os.path.relpath(path) if Path(path).is_absolute() else str(path)
    except ValueError:
        return str(path)


def read_suite(path: Path, display: str | None = None) -> tuple[Suite | None, list[Problem]]:
    display = display or _display(path)
    try:
        data = Path(path).read_bytes() if Path(path).is_file() and not Path(path).is_symlink() else None
    except OSError as exc:
        return None, [Problem(display, 0, 0, "error", f"cannot read file: {exc.strerror}")]
    if data is None:
        return None, [Problem(display, 0, 0, "error", "not a regular file (symbolic links are refused)")]
    if len(data) > yamlsafe.MAX_BYTES:
        return None, [Problem(display, 0, 0, "error", f"file is larger than {yamlsafe.MAX_BYTES:,} bytes")]
    return check_suite(data, Path(path), display)


def validate_suites(paths: list[Path]) -> list[Problem]:
    """Problems of suite files and folders (``oig validate``)."""
    problems: list[Problem] = []
    for path in paths:
        for file in suite_files(path) if Path(path).is_dir() else [Path(path)]:
            problems += read_suite(file)[1]
    return problems


def load_suites(source: Path, names: list[str] | None = None) -> list[Suite]:
    """Every suite in a folder (or the one file), sorted by name. Raises InvalidInput listing every error."""
    source = Path(source)
    if not source.exists():
        raise InvalidInput([Problem(str(source), 0, 0, "error", "no such eval suite folder or file")])
    files = suite_files(source) if source.is_dir() else [source]
    suites, problems = [], []
    for file in files:
        suite, found = read_suite(file)
        problems += found
        if suite is not None and (not names or suite.name in names):
            suites.append(suite)
    if problems:
        raise InvalidInput(problems)
    if not suites:
        raise InvalidInput([Problem(str(source), 0, 0, "error", "no eval suites here (evals/<name>.yaml)")])
    return sorted(suites, key=lambda s: s.name)
