"""Bug reports: reading issue bodies as GitHub renders the bug report form, event payloads, and the
lists of bugs the suite checks (a --bugs file, or the open issues labelled ``bug``).

A bug report is an issue opened with ``.github/ISSUE_TEMPLATE/bug.yml``. GitHub renders each field as
``### <label>``, a blank line and the value (``_No response_`` when empty; fenced for ``render:``
textareas), sometimes with CRLF line ends. :func:`parse_body` reads that, and bodies people edited by
hand, into a :class:`Bug`. Issue text is hostile: fields are bounded (``FIELD_LIMIT``) and nothing in
it is run.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from oig import checks, yamlsafe
from oig.bugs.render import plain, short
from oig.errors import OigError

BUG_LABEL = "bug"  # the open issues with it are the suite (`oig bugs eval --repo`, `oig train --bugs-repo`)
FIELD_LIMIT = 64 * 1024  # bytes of UTF-8 per field
BODY_LIMIT = 1024 * 1024  # characters of an issue body (GitHub's own limit is 65,536)
SOURCE_LIMIT = 32 * 1024 * 1024  # bytes of an event payload or --bugs file
VERSION_LIMIT = 200  # characters of the model version field

# (key, label in the form, required)
FIELDS = (
    ("input", "Input", True),
    ("output", "Model output", True),
    ("expected", "Expected output", False),
    ("model_version", "Model version", False),
    ("check", "Check", False),  # the form's optional dropdown: how the answer is checked (oig.checks)
)
_LABEL_KEYS = {label.casefold(): key for key, label, _ in FIELDS}
_HEADING = re.compile(r" {0,3}#{1,6}[ \t]*(.+?)[ \t]*#*[ \t]*")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")
NO_RESPONSE = "_No response_"


class BugReportError(OigError):
    """A bug report that cannot be used; ``problems`` says what to fix, one sentence each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("the bug report cannot be used: " + " ".join(p.replace("**", "") for p in problems))


@dataclass(frozen=True)
class Bug:
    input: str
    output: str | None = None  # the answer the reporter saw
    expected: str | None = None
    model_version: str | None = None
    number: int | None = None
    title: str | None = None
    check: str | None = None  # one of checks.BUG_KINDS; None: similar, the default

    def to_dict(self) -> dict:
        out = {"input": self.input, "output": self.output, "expected": self.expected,
               "model_version": self.model_version, "number": self.number}
        return out | ({"check": self.check} if self.check else {})


def check_problem(check: object, expected: str | None, where: str) -> str | None:
    """Why a bug's check cannot be used, or None. ``where`` names the field for the message."""
    if check is None:
        return None
    if check not in checks.BUG_KINDS:
        return f"{where} must be one of {', '.join(checks.BUG_KINDS)}, not {str(check)[:40]!r}"
    if check == "regex" and expected is not None:
        try:
            re.compile(expected)
        except re.error as exc:
            return f"the expected output is checked as a regular expression but is not one ({exc})"
    return None


# --- parsing reports -----------------------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _headings(lines: list[str]) -> list[tuple[int, str]]:
    """(line index, field key) of the form's section headings, in order.

    Only the form's own labels count, so a ``### Step 1`` inside a value stays in the value. Headings
    inside fenced code count too (a value with an unbalanced fence must not hide the next section),
    but when a label appears more than once, one outside fences wins, then the first.
    """
    candidates: dict[str, list[tuple[bool, int]]] = {}
    fence: tuple[str, int] | None = None
    for i, line in enumerate(lines):
        m = _FENCE.fullmatch(line)
        if m:
            mark, info = m.group(1), m.group(2)
            if fence is None:
                if not (mark[0] == "`" and "`" in info):  # a backtick fence's info has no backticks
                    fence = (mark[0], len(mark))
            elif mark[0] == fence[0] and len(mark) >= fence[1] and not info.strip():
                fence = None
            continue
        h = _HEADING.fullmatch(line)
        key = _LABEL_KEYS.get(h.group(1).casefold()) if h else None
        if key is not None:
            candidates.setdefault(key, []).append((fence is not None, i))
    return sorted((min(found)[1], key) for key, found in candidates.items())


def _value(lines: list[str]) -> str | None:
    """A section's value: the text itself, unfenced; None for ``_No response_`` or nothing."""
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    if not lines:
        return None
    if len(lines) == 1 and lines[0].strip() == NO_RESPONSE:
        return None
    opening = _FENCE.fullmatch(lines[0])
    if opening and len(lines) >= 2:
        mark = opening.group(1)
        closing = lines[-1].strip()
        if closing and set(closing) == {mark[0]} and len(closing) >= len(mark):
            # GitHub fences `render:` textareas without escaping the text, so everything between the
            # first and the last line is the value, inner fences included.
            inner = "\n".join(lines[1:-1])
            return inner if inner.strip() else None
    text = "\n".join(lines).strip()
    return text or None


def parse_body(body: str, *, number: int | None = None, title: str | None = None) -> Bug:
    """A Bug from an issue body written by the bug report form. Raises BugReportError saying what to fix."""
    if not isinstance(body, str) or not body.strip():
        raise BugReportError(["The issue has no text: fill in the bug report form (**Input** and **Model output**)."])
    if len(body) > BODY_LIMIT:
        raise BugReportError([f"The issue text is {len(body):,} characters; the limit is {BODY_LIMIT:,}."])
    lines = _lines(body)
    heads = _headings(lines)
    if not heads:
        raise BugReportError([
            "The issue does not follow the bug report form: it has no `### Input` or `### Model output` "
            "section. Open the issue with the *Bug report* template, or edit it to have the sections "
            "`### Input`, `### Model output` and, optionally, `### Expected output` and `### Model version`."
        ])
    values: dict[str, str | None] = {}
    for n, (start, key) in enumerate(heads):
        end = heads[n + 1][0] if n + 1 < len(heads) else len(lines)
        values[key] = _value(lines[start + 1:end])
    problems = []
    for key, label, required in FIELDS:
        value = values.get(key)
        if value is None:
            if required:
                what = "the exact message you sent the model" if key == "input" else "the answer the model gave"
                problems.append(f"**{label}** is missing: add {what} under `### {label}`.")
            continue
        size = len(value.encode("utf-8"))
        if size > FIELD_LIMIT:
            problems.append(f"**{label}** is {size:,} bytes; the limit is {FIELD_LIMIT:,} (64 KB): shorten it.")
    version = values.get("model_version")
    if version is not None:
        version = version.strip()
        if "\n" in version or len(version) > VERSION_LIMIT:
            problems.append(f"**Model version** should be one line of at most {VERSION_LIMIT} characters: the "
                            "`revision` from model.yaml.")
    check = values.get("check")
    if check is not None:
        check = check.split(":", 1)[0].strip().casefold()  # the dropdown's option: "contains: ..."
    if why := check_problem(check, values.get("expected"), "**Check**"):
        problems.append(f"{why}.")
    if problems:
        raise BugReportError(problems)
    return Bug(input=values["input"], output=values["output"], expected=values.get("expected"),  # type: ignore[arg-type]
               model_version=version, number=number, title=short(title, 256) if title else None, check=check)


def parse_event(payload: object) -> Bug:
    """A Bug from a GitHub ``issues`` event payload (or an issue object from the REST API)."""
    issue = payload.get("issue") if isinstance(payload, dict) else None
    if issue is None and isinstance(payload, dict) and "body" in payload and "number" in payload:
        issue = payload
    if not isinstance(issue, dict):
        raise BugReportError(["This is not a GitHub `issues` event payload: it has no `issue` object."])
    number = issue.get("number")
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise BugReportError(["The event's issue has no valid `number`."])
    body = issue.get("body")
    if body is None or (isinstance(body, str) and not body.strip()):
        raise BugReportError([f"Issue #{number} has no body: fill in the bug report form "
                              "(**Input** and **Model output**)."])
    if not isinstance(body, str):
        raise BugReportError([f"Issue #{number}'s body is not text."])
    title = issue.get("title")
    return parse_body(body, number=number, title=title if isinstance(title, str) else None)


def _read_bounded(path: Path, what: str) -> bytes:
    path = Path(path)
    try:
        if not path.is_file():
            raise OigError(f"{path}: no such file ({what})")
        with path.open("rb") as f:
            data = f.read(SOURCE_LIMIT + 1)
    except OSError as exc:
        raise OigError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > SOURCE_LIMIT:
        raise OigError(f"{path} is larger than {SOURCE_LIMIT:,} bytes; it is not a bug report or event payload")
    return data


def _text_of(data: bytes, path: Path) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise OigError(f"{path} is not UTF-8 text") from None


def read_event(path: Path) -> dict:
    """The JSON payload of a GitHub event file ($GITHUB_EVENT_PATH)."""
    text = _text_of(_read_bounded(path, "the event payload"), path)
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise OigError(f"{path} is not JSON ({exc.msg} at line {exc.lineno}); expected a GitHub event payload") from None
    if not isinstance(payload, dict):
        raise OigError(f"{path} is not a GitHub event payload (expected a JSON object)")
    return payload


def parse_source(path: Path) -> Bug:
    """A Bug from a file: an issue body as GitHub renders it, or an ``issues`` event payload (JSON)."""
    text = _text_of(_read_bounded(path, "an issue body or event payload"), path)
    if text.lstrip().startswith("{"):
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None  # a body that happens to start with "{"
        if payload is not None:
            return parse_event(payload)
    return parse_body(text)


# --- lists of bugs ---------------------------------------------------------------------------------------


def warn(message: str) -> None:
    print(f"oig: warning: {message}", file=sys.stderr)


def bug_from_dict(item: object) -> Bug:
    """A Bug from one entry of a --bugs file: ``{input, output?, expected?, model_version?, number?,
    title?, check?}`` (check: similar, exact, contains or regex; ``oig.checks``), or an issue object (``{number, body, ...}``) parsed like a report."""
    if not isinstance(item, dict):
        raise BugReportError(["an entry is not an object"])
    if "body" in item and "input" not in item:
        return parse_event({"issue": item})
    problems = []
    text = item.get("input")
    if not isinstance(text, str) or not text.strip():
        problems.append("`input` is missing or empty")
    values = {}
    for key in ("output", "expected", "model_version", "title"):
        value = item.get(key)
        if value is not None and not isinstance(value, str):
            problems.append(f"`{key}` must be text")
            value = None
        values[key] = value
    for key in ("input", "output", "expected"):
        value = item.get(key)
        if isinstance(value, str) and len(value.encode("utf-8")) > FIELD_LIMIT:
            problems.append(f"`{key}` is longer than {FIELD_LIMIT:,} bytes")
    number = item.get("number")
    if number is not None and (not isinstance(number, int) or isinstance(number, bool) or number < 1):
        problems.append("`number` must be a positive issue number")
    if why := check_problem(item.get("check"), values["expected"], "`check`"):
        problems.append(why)
    unknown = sorted(set(item) - {"input", "output", "expected", "model_version", "number", "title", "check"})
    if unknown:
        problems.append(f"unknown key(s) {', '.join(map(str, unknown))} (valid: input, output, expected, "
                        "model_version, number, title, check)")
    if problems:
        raise BugReportError(problems)
    return Bug(input=text, output=values["output"], expected=values["expected"],  # type: ignore[arg-type]
               model_version=values["model_version"], number=number, title=values["title"],
               check=item.get("check"))


def _file_entries(path: Path) -> list:
    text = _text_of(_read_bounded(path, "a --bugs file"), path)
    if path.suffix == ".jsonl":
        entries = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except ValueError as exc:
                    raise OigError(f"{path}:{n}: not JSON ({exc.msg})") from None
        return entries
    if path.suffix == ".json":
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise OigError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    else:
        try:
            doc = yamlsafe.load(text)
        except yamlsafe.YamlError as exc:
            raise OigError(f"{path}:{exc.line}:{exc.col}: {exc.message}") from None
    if isinstance(doc, dict) and isinstance(doc.get("bugs"), list):
        return doc["bugs"]
    if isinstance(doc, dict):
        return [doc]  # one bug, as `oig bugs parse` prints it
    if isinstance(doc, list):
        return doc
    raise OigError(f"{path} holds no bugs: expected a list of bug objects (input, output, expected, number)")


def load_bugs(source: Path | None, repo: str | None, *, gh=None,
              on_skip: Callable[[str], None] | None = None) -> list[Bug]:
    """The bugs to check: a --bugs file (JSON, JSONL or YAML list of bug objects or issue objects), or
    the open issues labelled ``bug`` in ``repo`` (GitHub REST API, token from GITHUB_TOKEN).

    Entries that cannot be used are reported through ``on_skip`` (default: a warning on stderr) and
    skipped. Neither source gives no bugs. A bug number seen twice keeps its first entry.
    """
    skip = on_skip or warn
    found: list[Bug] = []
    if source is not None:
        for n, entry in enumerate(_file_entries(Path(source)), 1):
            try:
                found.append(bug_from_dict(entry))
            except BugReportError as exc:
                skip(f"{source}: entry {n} skipped: {' '.join(exc.problems)}")
    elif repo:
        from oig.bugs.github_api import GitHub

        client = gh or GitHub(repo)
        try:
            issues = client.open_issues(label=BUG_LABEL)
        finally:
            if gh is None:
                client.close()
        for issue in issues:
            try:
                found.append(parse_event({"issue": issue}))
            except BugReportError as exc:
                skip(f"issue #{issue.get('number')} skipped: {' '.join(plain(p) for p in exc.problems)}")
    seen: set[int] = set()
    unique = []
    for bug in found:
        if bug.number is not None:
            if bug.number in seen:
                continue
            seen.add(bug.number)
        unique.append(bug)
    return unique
