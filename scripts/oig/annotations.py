"""Rendering validation problems: text for people, GitHub annotations for PRs, JSON for programs."""

from __future__ import annotations

import json
import os
from pathlib import Path

from oig.errors import Problem

GITHUB_ANNOTATION_LIMIT = 10  # GitHub shows at most 10 error annotations per step; the summary has all
# The words of a warning about a link too large to check within `oig validate --remote`'s limits: such a
# link is never reported as valid.
NOT_FULLY_CHECKED = "not fully checked"


def not_fully_checked(problems: list[Problem]) -> int:
    return sum(p.severity == "warning" and NOT_FULLY_CHECKED in p.message for p in problems)


def text(problems: list[Problem]) -> str:
    return "".join(f"{p.file}:{p.line}:{p.col}: {p.severity}: {p.message}\n" for p in problems)


def _escape_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(s: str) -> str:
    return _escape_data(s).replace(":", "%3A").replace(",", "%2C")


def github(problems: list[Problem]) -> str:
    """Workflow commands that GitHub shows on the lines of the PR's diff."""
    out = []
    for p in problems:
        props = [f"file={_escape_property(p.file)}"]
        if p.line:
            props.append(f"line={p.line}")
            if p.col:
                props.append(f"col={p.col}")
        out.append(f"::{p.severity} {','.join(props)}::{_escape_data(p.message)}\n")
    return "".join(out)


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ").replace("`", "'")


def markdown(problems: list[Problem]) -> str:
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    if not problems:
        return "### oig validate\n\nAll data files are valid.\n"
    lines = [f"### oig validate: {errors} error(s), {warnings} warning(s)\n"]
    if partial := not_fully_checked(problems):
        lines.append(f"⚠️ **{partial} link(s) {NOT_FULLY_CHECKED}**: only part of their rows were read, so this "
                     "check does not show they are valid; see the warnings below.\n")
    lines += ["| | file | line | message |", "|---|---|---|---|"]
    for p in problems:
        icon = "❌" if p.severity == "error" else "⚠️"
        lines.append(f"| {icon} | {_md(p.file)} | {p.line or ''} | {_md(p.message)} |")
    return "\n".join(lines) + "\n"


def as_json(problems: list[Problem]) -> str:
    return json.dumps([p.to_dict() for p in problems], indent=2, ensure_ascii=False) + "\n"


def append_step_summary(markdown_text: str) -> None:
    """Add to the GitHub job summary when running in Actions ($GITHUB_STEP_SUMMARY)."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with Path(target).open("a", encoding="utf-8") as f:
            f.write(markdown_text + "\n")
