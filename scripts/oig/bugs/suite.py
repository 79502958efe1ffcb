"""Bug reports as a regression suite: parsing reports, asking models, judging answers, running the
suite. The GitHub side (the report check on each issue, results after training, what data PRs claim
to fix) is in ``oig.bugs.github``.

A bug report is an issue opened with ``.github/ISSUE_TEMPLATE/bug.yml``. GitHub renders each field as
``### <label>``, a blank line and the value (``_No response_`` when empty; fenced for ``render:``
textareas), sometimes with CRLF line ends. :func:`parse_body` reads that, and bodies people edited by
hand, into a :class:`Bug`.

Judging an answer against a bug's expected output, in order:

1. **equal** after normalisation: Unicode NFKC, case folded, runs of whitespace made one space,
   whitespace and punctuation stripped from both ends ("Paris." == "paris");
2. else **similar**: difflib's ratio of the normalised texts is at least ``threshold`` (default 0.9).
   Texts over ``RATIO_CHARS`` characters score the smaller of ``quick_ratio`` over the whole texts
   and ``ratio`` over their first ``RATIO_CHARS`` characters, which bounds a comparison to ~0.4 s;
3. else the optional **judge model** decides (an OpenAI-compatible endpoint asked for
   ``{"pass": bool}``); an answer it does not give in that form is unknown, never a crash;
4. else the answer fails.

A bug without an expected output fails when the answer equals the reported bad output after
normalisation, and is otherwise unknown unless the judge model decides.

Verdicts, from the judgments of the answer before (the previous model's; without one, the output the
reporter saw) and after (the new model's):

======================  ===============  ===============
verdict                 before           after
======================  ===============  ===============
``fixed``               fails            passes
``regressed``           passes           fails
``still broken``        fails            fails
``passing``             passes           passes
``unknown``             either is unknown (no expected output, a model that did not answer, ...)
======================  ===============  ===============

Issue text is hostile: fields are bounded (``FIELD_LIMIT``), nothing in it is run, and everything
this module posts neutralises @mentions and is fenced with more backticks than the text contains.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from oig import yamlsafe
from oig.errors import OigError, redact

# --- constants -----------------------------------------------------------------------------------------

BUG_LABEL = "bug"
# Set only by the bug report form (bug.yml's `labels:`): the bug-report workflow acts on issues with it,
# not on every issue someone labels `bug`. The label must exist for the form to set it.
REPORT_LABEL = "bug-report"
NEEDS_INFO = "needs-info"
REPRODUCED = "reproduced"
NOT_REPRODUCED = "not-reproduced"
FIXED_PREFIX = "fixed-in-"
LABELS = {  # name -> (colour, description) for labels created when missing
    BUG_LABEL: ("d73a4a", "The model gives a wrong answer"),
    REPORT_LABEL: ("c5def5", "Opened with the bug report form; checked by the bug bot"),
    NEEDS_INFO: ("fbca04", "The bug report is missing something; see the bot's comment"),
    REPRODUCED: ("b60205", "The current model still gives a wrong answer"),
    NOT_REPRODUCED: ("0e8a16", "The current model no longer gives the reported answer"),
}
FIXED_COLOR = "1d76db"

REPORT_MARKER = "<!-- oig-bug-report -->"  # the report check's comment, updated in place on edits
RESULTS_MARKER = "<!-- oig-bug-results -->"  # the training results comment, updated by each run

FIELD_LIMIT = 64 * 1024  # bytes of UTF-8 per field
BODY_LIMIT = 1024 * 1024  # characters of an issue body (GitHub's own limit is 65,536)
SOURCE_LIMIT = 32 * 1024 * 1024  # bytes of an event payload or --bugs file
VERSION_LIMIT = 200  # characters of the model version field
SHOWN_LIMIT = 4000  # characters of one text in a comment or training_log (comments max 65,536)
ERROR_LIMIT = 500  # characters of a model's error text kept in a record or a comment
DEFAULT_THRESHOLD = 0.9
RATIO_CHARS = 2000

VERDICTS = ("fixed", "still broken", "regressed", "passing", "unknown")

# (key, label in the form, required)
FIELDS = (
    ("input", "Input", True),
    ("output", "Model output", True),
    ("expected", "Expected output", False),
    ("model_version", "Model version", False),
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

    def to_dict(self) -> dict:
        return {"input": self.input, "output": self.output, "expected": self.expected,
                "model_version": self.model_version, "number": self.number}


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
    if problems:
        raise BugReportError(problems)
    return Bug(input=values["input"], output=values["output"], expected=values.get("expected"),  # type: ignore[arg-type]
               model_version=version, number=number, title=short(title, 256) if title else None)


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


# --- loading the suite -----------------------------------------------------------------------------------


def _warn(message: str) -> None:
    print(f"oig: warning: {message}", file=sys.stderr)


def bug_from_dict(item: object) -> Bug:
    """A Bug from one entry of a --bugs file: ``{input, output?, expected?, model_version?, number?,
    title?}``, or an issue object (``{number, body, ...}``) parsed like a report."""
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
    unknown = sorted(set(item) - {"input", "output", "expected", "model_version", "number", "title"})
    if unknown:
        problems.append(f"unknown key(s) {', '.join(map(str, unknown))} (valid: input, output, expected, "
                        "model_version, number, title)")
    if problems:
        raise BugReportError(problems)
    return Bug(input=text, output=values["output"], expected=values["expected"],  # type: ignore[arg-type]
               model_version=values["model_version"], number=number, title=values["title"])


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
    skip = on_skip or _warn
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


# --- judging ---------------------------------------------------------------------------------------------


def _strip_ends(text: str) -> str:
    start, end = 0, len(text)
    while start < end and (text[start].isspace() or unicodedata.category(text[start]).startswith("P")):
        start += 1
    while end > start and (text[end - 1].isspace() or unicodedata.category(text[end - 1]).startswith("P")):
        end -= 1
    return text[start:end]


def normalize(text: str) -> str:
    """NFKC, case folded, whitespace runs as one space, whitespace and punctuation off both ends."""
    return _strip_ends(" ".join(unicodedata.normalize("NFKC", text).casefold().split()))


def similarity(a: str, b: str) -> float:
    """difflib's ratio of two normalised texts (bounded in time for long texts; see the module doc)."""
    if a == b:
        return 1.0
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    if max(len(a), len(b)) <= RATIO_CHARS:
        return matcher.ratio()
    bound = matcher.quick_ratio()
    head = difflib.SequenceMatcher(None, a[:RATIO_CHARS], b[:RATIO_CHARS], autojunk=False).ratio()
    return min(bound, head)


Judge = Callable[..., "bool | None"]  # judge(input, answer, expected, reported) -> pass, or None


@dataclass(frozen=True)
class Judgment:
    passed: bool | None  # None: unknown
    score: float | None  # similarity to the expected output, when there is one
    how: str  # equal | similar | different | judge | judge gave no verdict | same as reported | ...


def judge_answer(answer: str | None, bug: Bug, *, threshold: float = DEFAULT_THRESHOLD,
                 judge: Judge | None = None) -> Judgment:
    """Whether ``answer`` is right for ``bug`` (see the module doc for the rule)."""
    if answer is None:
        return Judgment(None, None, "no answer")
    if bug.expected is not None:
        got, want = normalize(answer), normalize(bug.expected)
        if got == want:
            return Judgment(True, 1.0, "equal")
        score = round(similarity(got, want), 4)
        if score >= threshold:
            return Judgment(True, score, "similar")
        if judge is not None:
            verdict = _ask_judge(judge, bug, answer)
            return Judgment(verdict, score, "judge" if verdict is not None else "judge gave no verdict")
        return Judgment(False, score, "different")
    if judge is not None:
        verdict = _ask_judge(judge, bug, answer)
        if verdict is not None:
            return Judgment(verdict, None, "judge")
    if bug.output is not None and normalize(answer) == normalize(bug.output):
        return Judgment(False, None, "same as reported")
    return Judgment(None, None, "no expected output")


def _ask_judge(judge: Judge, bug: Bug, answer: str) -> bool | None:
    try:
        verdict = judge(bug.input, answer, bug.expected, bug.output)
    except Exception as exc:  # a judge is advisory: its failure makes the verdict unknown, not the run fail
        _warn(f"the judge model failed on bug #{bug.number}: {redact(str(exc))[:200]}")
        return None
    return verdict if isinstance(verdict, bool) else None


def verdict_of(before: bool | None, after: bool | None) -> str:
    if before is None or after is None:
        return "unknown"
    return {(False, True): "fixed", (True, False): "regressed", (False, False): "still broken",
            (True, True): "passing"}[(before, after)]


JUDGE_SYSTEM = (
    "You grade one answer of a chat model. Reply with JSON only, no other text: {\"pass\": true} when the "
    "answer is correct and acceptable for the user's message, otherwise {\"pass\": false}."
)


def judge_prompt(text: str, answer: str, expected: str | None, reported: str | None) -> str:
    parts = [f"User's message:\n<<<\n{text}\n>>>"]
    if expected is not None:
        parts.append(f"A correct answer (the wording may differ):\n<<<\n{expected}\n>>>")
    elif reported is not None:
        parts.append(f"A user reported this earlier answer as wrong:\n<<<\n{reported}\n>>>")
    parts.append(f"Answer to grade:\n<<<\n{answer}\n>>>")
    parts.append('Reply with {"pass": true} or {"pass": false}.')
    return "\n\n".join(parts)


def parse_judge_reply(reply: object) -> bool | None:
    """The ``pass`` of the first JSON object in the reply that has a boolean one; else None."""
    if not isinstance(reply, str):
        return None
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", reply[:20000]):
        try:
            obj, _ = decoder.raw_decode(reply, m.start())
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("pass"), bool):
            return obj["pass"]
    return None


def make_judge(model: str, base_url: str | None = None, *, timeout: float = 60.0) -> Judge:
    """A judge asking ``model`` through the together SDK (Together, or any OpenAI-compatible server at
    ``base_url``, such as ``oig serve``). The key is TOGETHER_API_KEY; a local server needs none."""
    from oig import together_client as together_api

    key = os.environ.get("TOGETHER_API_KEY", "").strip() or ("unused" if base_url else None)
    client = together_api.make_client(base_url, key=key, max_retries=1, timeout=timeout)

    def judge(text: str, answer: str, expected: str | None, reported: str | None) -> bool | None:
        response = together_api.call("asking the judge model", lambda: client.chat.completions.create(
            model=model, max_tokens=32, temperature=0,
            messages=[{"role": "system", "content": JUDGE_SYSTEM},
                      {"role": "user", "content": judge_prompt(text, answer, expected, reported)}]))
        try:
            reply = response.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            return None
        return parse_judge_reply(reply)

    return judge


# --- the suite -------------------------------------------------------------------------------------------


def short(text: str | None, limit: int = SHOWN_LIMIT) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"… ({len(text) - limit:,} more characters)"


def _ask(ask: Callable[[str], str], bug: Bug) -> tuple[str | None, str | None]:
    """(answer, error): one model call; a failure is recorded, not raised, so one bug cannot stop the suite."""
    try:
        answer = ask(bug.input)
    except Exception as exc:
        return None, redact(f"{type(exc).__name__}: {exc}")[:ERROR_LIMIT]
    if not isinstance(answer, str):
        return None, f"the model returned {type(answer).__name__}, not text"
    return answer, None


def run_suite(bugs: Iterable[Bug], ask_before: Callable[[str], str] | None, ask_after: Callable[[str], str],
              judge: Judge | None = None, *, threshold: float = DEFAULT_THRESHOLD) -> list[dict]:
    """Ask each bug's input of the previous and the new model, judge both answers, give a verdict.

    Without ``ask_before`` (no previous model), the answer before is the output the reporter saw.
    Returns one record per bug: number, title, input, expected, reported, before, before_source, after,
    before_pass, after_pass, verdict, score (the new answer's similarity to the expected output) and,
    when a model failed, error. Texts are cut to SHOWN_LIMIT characters; judging uses them whole.
    """
    records = []
    for bug in bugs:
        errors = []
        if ask_before is not None:
            before, error = _ask(ask_before, bug)
            source = "previous model"
            if error:
                errors.append(f"previous model: {error}")
        else:
            before, source = bug.output, "reported"
        after, error = _ask(ask_after, bug)
        if error:
            errors.append(f"new model: {error}")
        was = judge_answer(before, bug, threshold=threshold, judge=judge)
        now = judge_answer(after, bug, threshold=threshold, judge=judge)
        record = {
            "number": bug.number,
            "title": bug.title,
            "input": short(bug.input),
            "expected": short(bug.expected),
            "reported": short(bug.output),
            "before": short(before),
            "before_source": source,
            "after": short(after),
            "before_pass": was.passed,
            "after_pass": now.passed,
            "verdict": verdict_of(was.passed, now.passed),
            "score": now.score,
            "judged": now.how,
        }
        if errors:
            record["error"] = "; ".join(errors)
        records.append(record)
    return records


def summarize(records: list[dict]) -> dict:
    counts = {v: 0 for v in VERDICTS}
    for r in records:
        counts[r.get("verdict", "unknown") if r.get("verdict") in counts else "unknown"] += 1
    return {"total": len(records), **counts}


def log_section(records: list[dict]) -> dict:
    """What ``oig train`` merges into training_log: ``bugs`` (the records) and ``bugs_summary``."""
    return {"bugs": records, "bugs_summary": summarize(records)}


def cell(text: str | None, width: int) -> str:
    if text is None:
        return "-"
    one = " ".join(text.split())
    return one if len(one) <= width else one[: width - 1] + "…"


def render_text(records: list[dict]) -> str:
    rows = [("bug", "verdict", "score", "input", "before", "after")]
    for r in records:
        score = "-" if r.get("score") is None else f"{r['score']:.2f}"
        rows.append((f"#{r['number']}" if r.get("number") else "-", r["verdict"], score,
                     cell(r.get("input"), 30), cell(r.get("before"), 30), cell(r.get("after"), 30)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    s = summarize(records)
    lines.append(f"{s['total']} bug(s): " + ", ".join(f"{s[v]} {v}" for v in VERDICTS))
    return "\n".join(lines) + "\n"


def md_cell(text: str | None, width: int = 80) -> str:
    return neutralize(cell(text, width)).replace("|", "\\|").replace("`", "'").replace("<", "&lt;")


def render_markdown(records: list[dict], title: str = "Bug regression suite") -> str:
    s = summarize(records)
    out = [f"### {title}\n", f"{s['total']} bug(s): " + ", ".join(f"{s[v]} {v}" for v in VERDICTS) + "\n"]
    if records:
        out += ["| bug | verdict | score | input | before | after |", "|---|---|---|---|---|---|"]
        for r in records:
            score = "" if r.get("score") is None else f"{r['score']:.2f}"
            number = f"#{r['number']}" if r.get("number") else ""
            out.append(f"| {number} | {r['verdict']} | {score} | {md_cell(r.get('input'))} | "
                       f"{md_cell(r.get('before'))} | {md_cell(r.get('after'))} |")
    return "\n".join(out) + "\n"


# --- asking models ---------------------------------------------------------------------------------------


def model_asker(model_yaml: Path, base_url: str | None = None, *, max_tokens: int = 256) -> Callable[[str], str]:
    """Ask the model that ``model_yaml`` names, through ``oig query``'s code, greedily.

    model.yaml is read now, so an asker made before ``oig train`` rewrites it keeps asking the previous
    model. A local or Hub model is loaded once, at the first question, not once per bug.
    """
    from oig.serve import query as q

    if base_url:
        return lambda text: q.query(text, model_yaml=Path(model_yaml), base_url=base_url, max_tokens=max_tokens)
    return section_asker(q.read_model_yaml(Path(model_yaml)), Path(model_yaml).parent, max_tokens=max_tokens)


def section_asker(section: dict, base_dir: Path = Path("."), *, max_tokens: int = 256) -> Callable[[str], str]:
    """Ask the model of a model.yaml ``model`` section (with ``together`` inside, as ``oig.serve.query`` reads
    it): its Together endpoint, else its local folder (relative to ``base_dir``) or Hub repo.
    ``section_asker({"local_path": str(model_dir)})`` asks a model that was just saved."""
    from oig.serve import query as q

    together = section.get("together") or {}
    name = together.get("endpoint") or together.get("model")
    if name:
        from oig import together_client as together_api

        url = together_api.base_url(together.get("base_url"))
        return lambda text: q.ask_openai_compatible(url, name, [{"role": "user", "content": text}],
                                                    max_tokens=max_tokens, key=together_api.api_key())
    loaded: list = []

    def ask(text: str) -> str:
        from oig.serve.inference import BadRequest, ServeError

        try:
            if not loaded:
                loaded.append(_load_local(section, Path(base_dir)))
            answer, _ = loaded[0].complete([{"role": "user", "content": text}], max_tokens=max_tokens,
                                           temperature=0)
        except (ServeError, BadRequest) as exc:
            raise q.QueryError(str(exc)) from None
        return answer

    return ask


def _load_local(section: dict, base_dir: Path):
    """The LocalModel of model.yaml's local folder, else of its Hub repo at the recorded revision."""
    from oig.serve.inference import LocalModel
    from oig.serve.query import QueryError

    local = section.get("local_path")
    folder = (Path(local) if Path(local).is_absolute() else base_dir / local) if local else None
    if folder is not None and folder.is_dir():
        return LocalModel.load(folder)
    if section.get("hub_repo"):
        return LocalModel.load(section["hub_repo"], revision=section.get("revision") or section.get("branch"))
    raise QueryError(f"model.yaml names the local model {local}, but {folder} does not exist here")


def evaluate(bugs: list[Bug], model_yaml: Path, *, compare: Path | None = None, judge: Judge | None = None,
             threshold: float = DEFAULT_THRESHOLD, base_url: str | None = None) -> list[dict]:
    """``oig bugs eval``: the suite against the model in ``model_yaml``; before is the model in
    ``compare`` when given, else the output each reporter saw."""
    after = model_asker(model_yaml, base_url)
    before = model_asker(compare, base_url) if compare is not None else None
    return run_suite(bugs, before, after, judge, threshold=threshold)


# --- what is safe to post --------------------------------------------------------------------------------

_MENTION = re.compile(r"@(?=[A-Za-z0-9_-])")


def neutralize(text: str) -> str:
    """No @mentions: a zero-width space after each @ keeps the text and pings nobody."""
    return _MENTION.sub("@\u200b", text)


def fenced(text: str | None, info: str = "text") -> str:
    """Text in a code block whose fence is longer than any backtick run in it, so it cannot break out."""
    if text is None:
        return "_(none)_"
    text = neutralize(short(text) or "")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def inline(text: str | None) -> str:
    """A short value (revision, model name) as inline code, or a placeholder when it is odd."""
    if not text:
        return "_unknown_"
    if re.fullmatch(r"[\w.:/@+-]{1,120}", text):
        return f"`{neutralize(text)}`"
    return "_(not shown)_"


def plain(markdown: str) -> str:
    return markdown.replace("**", "").replace("`", "'")
