"""The GitHub side of bug reports: the report check on each issue (the bug-report workflow), and the
before/after comments and labels after training (the train workflow). Each comment starts with a
marker and is updated in place. Reading reports is ``oig.bugs.report``, judging ``oig.bugs.suite``,
what is safe to post ``oig.bugs.render``, what data PRs claim to fix ``oig.bugs.claims``."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from oig.bugs.render import ERROR_LIMIT, cell, fenced, inline, neutralize, plain, short
from oig.bugs.report import Bug, BugReportError, parse_event, read_event
from oig.bugs.suite import (
    DEFAULT_THRESHOLD,
    FIXED_COLOR,
    FIXED_PREFIX,
    LABELS,
    NEEDS_INFO,
    NOT_REPRODUCED,
    REPORT_LABEL,
    REPRODUCED,
    is_reproduced,
    model_asker,
)
from oig.errors import OigError, redact
from oig.runlog import ModelRef, RunLog, RunLogError, read_model_ref, read_run_log

REPORT_MARKER = "<!-- oig-bug-report -->"  # the report check's comment, updated in place on edits
RESULTS_MARKER = "<!-- oig-bug-results -->"  # the training results comment, updated by each run


# --- the report check (the bug-report workflow) ------------------------------------------------------------


@dataclass
class ReportOutcome:
    number: int | None
    status: str  # not-a-bug | needs-info | reproduced | not-reproduced | skipped | failed
    comment: str = ""  # created | updated | unchanged | "" (none)
    detail: str = ""
    labels_added: list[str] = field(default_factory=list)
    labels_removed: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.status == "failed" else 0


def _model_label(model: ModelRef) -> str:
    where = model.hub_repo or model.local_path or model.base_model
    rev = model.revision
    text = f"{inline(where)} at revision {inline(rev)}" if rev else inline(where)
    if model.together is not None:
        text += f" (Together model {inline(model.together.model)})"
    return text


def needs_info_comment(problems: list[str]) -> str:
    lines = [REPORT_MARKER, "### This bug report needs more information", ""]
    lines += [f"- {neutralize(p)}" for p in problems]
    lines += ["", "Edit the issue to fix this; this comment updates itself when you do. The form's fields are "
              "`### Input` (required), `### Model output` (required), `### Expected output` and "
              "`### Model version`."]
    return "\n".join(lines) + "\n"


def report_comment(bug: Bug, status: str, *, answer: str | None = None, reason: str = "",
                   error: str | None = None, model: ModelRef | None = None,
                   threshold: float = DEFAULT_THRESHOLD) -> str:
    """The report check's comment. ``reason`` is this tool's own Markdown; ``error`` (a model provider's
    error text) is untrusted like the issue's fields, so it is only shown fenced."""
    headline = {
        REPRODUCED: "**Reproduced**: the current model still gives a wrong answer.",
        NOT_REPRODUCED: ("**Not reproduced**: the current model's answer matches the expected output."
                         if bug.expected is not None else
                         "**Not reproduced**: the current model no longer gives the reported answer."),
        "skipped": f"**Reproduction skipped**: {reason}",
        "failed": f"**Reproduction failed**: {reason}",
    }[status]
    lines = [REPORT_MARKER, "### Bug report check", "", headline, ""]
    if error is not None:
        lines += ["**Error**", "", fenced(short(error, ERROR_LIMIT)), ""]
    if model is not None:
        lines += [f"Current model: {_model_label(model)}."]
        current = model.revision
        # People give short commit hashes: a prefix of the revision is the same model.
        if bug.model_version and current and not current.startswith(bug.model_version) \
                and not bug.model_version.startswith(current):
            lines += [f"The report names model version {inline(bug.model_version)}; the current one differs."]
        lines += [""]
    lines += ["**Input**", "", fenced(bug.input), "", "**Reported output**", "", fenced(bug.output), ""]
    if bug.expected is not None:
        lines += ["**Expected output**", "", fenced(bug.expected), ""]
    if answer is not None:
        lines += ["**Current answer**", "", fenced(answer), ""]
    lines += ["<sub>Checked by `oig bugs report` when the issue is opened or edited. Reproduced means the "
              "current answer does not match the expected output (equal after normalisation or at least "
              f"{threshold:.0%} similar), or, without an expected output, equals the reported output."
              "</sub>"]
    return "\n".join(lines) + "\n"


def _label_names(issue: dict) -> list[str]:
    names = []
    for label in issue.get("labels") or []:
        name = label.get("name") if isinstance(label, dict) else label
        if isinstance(name, str):
            names.append(name)
    return names


def _set_labels(gh, number: int, current: list[str], add: list[str], remove: list[str],
                outcome: ReportOutcome) -> None:
    missing = [x for x in add if x not in current]
    if missing:
        gh.add_labels(number, missing)
        outcome.labels_added += missing
    for name in remove:
        if name in current:
            gh.remove_label(number, name)
            outcome.labels_removed.append(name)


def _repo_of(payload: dict, repo: str | None) -> str:
    if repo:
        return repo
    full = (payload.get("repository") or {}).get("full_name") if isinstance(payload, dict) else None
    full = full or os.environ.get("GITHUB_REPOSITORY")
    if not full:
        raise OigError("no repository: pass --repo OWNER/NAME (or set GITHUB_REPOSITORY)")
    return full


def ensure_labels(gh, names: Iterable[str]) -> None:
    for name in names:
        color, description = LABELS.get(name, (FIXED_COLOR, ""))
        gh.ensure_label(name, color, description)


def report(event_path: Path, *, repo: str | None = None, model_yaml: Path = Path("model.yaml"), gh=None,
           ask: Callable[[str], str] | None = None, threshold: float = DEFAULT_THRESHOLD) -> ReportOutcome:
    """The bug-report workflow: check the reported issue, comment once (updated in place), label it.

    ``gh`` and ``ask`` default to the GitHub API (GITHUB_TOKEN) and model.yaml's Together endpoint
    through ``oig query``; tests pass their own.
    """
    payload = read_event(event_path)
    issue = payload.get("issue")
    if not isinstance(issue, dict) or not isinstance(issue.get("number"), int):
        raise OigError(f"{event_path} is not an `issues` event payload: it has no issue number")
    number = issue["number"]
    current = _label_names(issue)
    # Only issues opened with the form: a plain issue someone labelled `bug` is not a report to check.
    if REPORT_LABEL not in current or "pull_request" in issue:
        return ReportOutcome(number, "not-a-bug", detail=f"issue #{number} is not labelled {REPORT_LABEL!r}: "
                             "only issues opened with the bug report form are checked")

    from oig.bugs.github_api import GitHub

    client = gh or GitHub(_repo_of(payload, repo))
    try:
        ensure_labels(client, LABELS)
        # --- a report that cannot be used: say what to fix ---
        try:
            bug = parse_event(payload)
        except BugReportError as exc:
            outcome = ReportOutcome(number, NEEDS_INFO, detail=plain(" ".join(exc.problems)))
            outcome.comment, _ = client.upsert_comment(number, REPORT_MARKER, needs_info_comment(exc.problems))
            _set_labels(client, number, current, [NEEDS_INFO], [REPRODUCED, NOT_REPRODUCED], outcome)
            return outcome
        # --- put it to the current model ---
        status, answer, reason, error, model = _reproduce(bug, model_yaml, ask, threshold)
        # One line: the log must not take a provider's text for a workflow command (`::...`).
        detail = " ".join(f"{reason} {short(error, ERROR_LIMIT)}".split()) if error else reason
        outcome = ReportOutcome(number, status, detail=detail)
        body = report_comment(bug, status, answer=answer, reason=reason, error=error, model=model,
                              threshold=threshold)
        outcome.comment, _ = client.upsert_comment(number, REPORT_MARKER, body)
        if status in (REPRODUCED, NOT_REPRODUCED):
            other = NOT_REPRODUCED if status == REPRODUCED else REPRODUCED
            _set_labels(client, number, current, [status], [NEEDS_INFO, other], outcome)
        else:
            _set_labels(client, number, current, [], [NEEDS_INFO], outcome)
        return outcome
    finally:
        if gh is None:
            client.close()


def _reproduce(bug: Bug, model_yaml: Path, ask: Callable[[str], str] | None,
               threshold: float) -> tuple[str, str | None, str, str | None, ModelRef | None]:
    """(status, answer, reason, error, model) of putting the bug to the current model; ``error`` is the
    model call's own error text, untrusted."""
    try:
        model = read_model_ref(Path(model_yaml))
    except RunLogError as exc:
        return "skipped", None, f"there is no usable current model ({plain(str(exc))}).", None, None
    if ask is None:
        if model.together is None:
            return "skipped", None, "the current model is not deployed on Together (model.yaml has no " \
                                    "`together` section), so this workflow cannot ask it.", None, model
        if not os.environ.get("TOGETHER_API_KEY", "").strip():
            return "skipped", None, "no Together API key is configured (the `TOGETHER_API_KEY` secret).", None, model
        ask = model_asker(Path(model_yaml))
    try:
        answer = ask(bug.input)
    except Exception as exc:  # any failure of the model call is reported on the issue and fails the run
        detail = str(exc) if isinstance(exc, OigError) else f"{type(exc).__name__}: {exc}"
        return "failed", None, "the model could not be asked.", redact(detail), model
    if not isinstance(answer, str):
        return "failed", None, "the model returned no text.", None, model
    status = REPRODUCED if is_reproduced(bug, answer, threshold=threshold) else NOT_REPRODUCED
    return status, answer, "", None, model


# --- results after training (the train workflow) -------------------------------------------------------------


def fixed_label(revision: str) -> str:
    """``fixed-in-<revision>``: a 40-hex commit is shortened to 7 characters; at most 50 characters."""
    rev = revision.strip()
    if re.fullmatch(r"[0-9a-f]{40}", rev):
        rev = rev[:7]
    rev = re.sub(r"[^A-Za-z0-9._-]+", "-", rev).strip("-") or "unknown"
    return (FIXED_PREFIX + rev)[:50]


def _revision(log: RunLog, model_yaml: Path | None) -> str:
    """model.yaml's revision when it has one, else the run's (training_log), else the run id."""
    if model_yaml is not None and Path(model_yaml).exists():
        try:
            rev = read_model_ref(Path(model_yaml)).revision
        except RunLogError:
            rev = None
        if rev:
            return str(rev)
    return str((log.model.revision if log.model else None) or log.run_id)


def results_comment(record: dict, run_id: str, revision: str) -> str:
    verdict = record.get("verdict", "unknown")
    headline = {
        "fixed": "**Fixed**: the new model answers correctly; the previous one did not.",
        "still broken": "**Still broken**: neither the previous nor the new model answers correctly.",
        "regressed": "**Regressed**: the previous model answered correctly; the new one does not.",
        "passing": "**Passing**: both the previous and the new model answer correctly.",
        "unknown": "**Unknown**: the answers could not be judged (no expected output, or a model did not "
                   "answer).",
    }.get(verdict, "**Unknown**")
    before_name = "Before (the output reported)" if record.get("before_source") == "reported" else \
        "Before (the previous model)"
    lines = [RESULTS_MARKER, f"### Training run {inline(str(run_id))}: {verdict}", "", headline, "",
             f"New model revision: {inline(revision)}.", ""]
    if record.get("expected") is not None:
        lines += ["**Expected output**", "", fenced(record["expected"]), ""]
    lines += [f"**{before_name}**", "", fenced(record.get("before")), "",
              "**After (the new model)**", "", fenced(record.get("after")), ""]
    if record.get("score") is not None:
        lines += [f"Similarity of the new answer to the expected output: {float(record['score']):.2f}.", ""]
    if record.get("error"):
        lines += ["A model failed to answer:", "", fenced(str(record["error"])), ""]
    lines += ["<sub>Posted by `oig bugs comment-results` after training and updated by each run. Closing "
              "the issue stays with the maintainers.</sub>"]
    return "\n".join(lines) + "\n"


@dataclass
class ResultsOutcome:
    commented: list[int] = field(default_factory=list)
    labelled: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    label: str = ""


def comment_results(training_log: Path, *, repo: str | None = None, model_yaml: Path | None = Path("model.yaml"),
                    gh=None) -> ResultsOutcome:
    """Comment before/after on each bug issue in training_log's ``bugs`` and label the fixed ones
    ``fixed-in-<revision>``. Running it again for the same run changes nothing."""
    log = read_run_log(Path(training_log))
    records = log.bugs or []
    if not isinstance(records, list):
        raise RunLogError(f"{training_log}: `bugs` is not a list")
    revision = _revision(log, model_yaml)
    outcome = ResultsOutcome(label=fixed_label(revision))
    records = [r for r in records if isinstance(r, dict)]
    if not records:
        return outcome
    repo = repo or os.environ.get("GITHUB_REPOSITORY")
    if not repo:
        raise OigError("no repository: pass --repo OWNER/NAME (or set GITHUB_REPOSITORY)")
    from oig.bugs.github_api import GitHub, GitHubError

    client = gh or GitHub(repo)
    try:
        label_ready = False
        for record in records:
            number = record.get("number")
            if not isinstance(number, int) or isinstance(number, bool):
                outcome.skipped.append(f"a bug without an issue number ({cell(record.get('input'), 40)})")
                continue
            try:
                client.upsert_comment(number, RESULTS_MARKER, results_comment(record, log.run_id, revision))
                outcome.commented.append(number)
                if record.get("verdict") == "fixed":
                    if not label_ready:
                        ensure_labels(client, [outcome.label])
                        label_ready = True
                    client.add_labels(number, [outcome.label])
                    outcome.labelled.append(number)
            except GitHubError as exc:
                if exc.status not in (404, 410):
                    raise
                outcome.skipped.append(f"#{number}: {exc}")
    finally:
        if gh is None:
            client.close()
    return outcome
