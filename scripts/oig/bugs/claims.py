"""What data pull requests claim to fix (PR validation): the bugs each slice names in ``fixes:``,
checked against the open bug issues when they can be read, and a warning for every IOPairs input that
overlaps an open bug's input (``oig.data.overlap``: equal after normalisation, or containing half of its
8-word sequences): the regression check would then test memory, not the fix."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from oig import yamlsafe
from oig.bugs.render import cell, md_cell
from oig.bugs.report import Bug, load_bugs
from oig.data.overlap import Index, Match, pair_warnings
from oig.errors import OigError, Problem


@dataclass
class Claims:
    claims: list[tuple[str, list[int]]] = field(default_factory=list)  # (slice file, issue numbers)
    problems: list[Problem] = field(default_factory=list)
    checked: bool = False  # the numbers were checked against the open bugs
    bugs: dict[int, Bug] = field(default_factory=dict)


def _slice_documents(data_dir: Path) -> Iterable[tuple[str, str, object]]:
    """(display path, text, Slice) of every valid slice in ``data_dir``; validation reports the rest."""
    from oig.data.validate import ValidateOptions, check_slice

    opts = ValidateOptions()
    for path in sorted(Path(data_dir).glob("*.yaml")):
        if path.is_symlink() or not path.is_file() or path.stat().st_size > yamlsafe.MAX_BYTES:
            continue
        display = os.path.relpath(path) if path.is_absolute() else str(path)
        data = path.read_bytes()
        s, _ = check_slice(data, path, display, opts)
        if s is not None:
            yield display, yamlsafe.decode(data), s


def check_claims(data_dir: Path, *, bugs_file: Path | None = None, repo: str | None = None, gh=None) -> Claims:
    """The bugs slices claim to fix (``fixes:``), each checked against the open bug issues when they can
    be had, and a warning for every IOPairs input that overlaps an open bug's input."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise OigError(f"{data_dir}: no such data folder")
    result = Claims()
    known: list[Bug] = []
    try:
        if bugs_file is not None or repo:
            known = load_bugs(bugs_file, repo, gh=gh)
            result.checked = True
    except OigError as exc:
        result.problems.append(Problem(str(data_dir), 0, 0, "warning",
                                       f"could not read the open bug issues, so claimed numbers are unchecked: {exc}"))
    result.bugs = {b.number: b for b in known if b.number is not None}
    bug_inputs = Index((f"bug #{b.number}" if b.number else "an open bug", b.input) for b in known if b.input)
    for display, text, s in _slice_documents(data_dir):
        if s.fixes:
            result.claims.append((display, list(s.fixes)))
            if result.checked:
                for i, number in enumerate(s.fixes):
                    if number not in result.bugs:
                        line, col = yamlsafe.locate(text, ("fixes", i))
                        result.problems.append(Problem(display, line, col, "warning",
                                                       f"#{number} is not an open bug issue; check the number"))
        result.problems += pair_warnings(text, display, s.io_pairs, bug_inputs, _bug_message)
    return result


def _bug_message(m: Match) -> str:
    what = f"is {m.label}'s exact input" if m.exact else m.describe()
    return (f"this input {what}: the regression check would only test memory. "
            "Rephrase it (a paraphrase teaches the fix and keeps the bug a real test)")


def claims_text(result: Claims) -> str:
    lines = []
    for display, numbers in result.claims:
        names = []
        for n in numbers:
            bug = result.bugs.get(n)
            names.append(f"#{n}" + (f" ({cell(bug.title, 60)})" if bug and bug.title else ""))
        lines.append(f"{display}: fixes {', '.join(names)}")
    if not result.claims:
        lines.append("no slice claims to fix a bug (add `fixes: [N]` to a slice that fixes issue #N)")
    return "\n".join(lines) + "\n"


def claims_markdown(result: Claims) -> str:
    out = ["### Bugs this pull request's data claims to fix", ""]
    if result.claims:
        out += ["| slice | fixes |", "|---|---|"]
        for display, numbers in result.claims:
            out.append(f"| {md_cell(display)} | {', '.join(f'#{n}' for n in numbers)} |")
    else:
        out.append("No slice claims to fix a bug.")
    if result.problems:
        out += ["", f"{len(result.problems)} warning(s):", ""]
        out += [f"- {md_cell(p.file)}:{p.line}: {md_cell(p.message, 300)}" for p in result.problems]
    return "\n".join(out) + "\n"
