"""The few exception types the library raises. Only the CLI turns them into messages and exit codes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One finding about one place in one file. line and col count from 1; 0 means unknown."""

    file: str
    line: int
    col: int
    severity: str  # "error" | "warning"
    message: str

    def to_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "column": self.col, "severity": self.severity,
                "message": self.message}


class OigError(Exception):
    """Bad input or a failed external call: a message for the user, exit status 1."""

    exit_code = 1


class UsageError(OigError):
    """The command line itself is wrong: exit status 2."""

    exit_code = 2


class InvalidInput(OigError):
    """Input files have problems; every problem is listed at once."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        errors = [p for p in problems if p.severity == "error"]
        super().__init__(f"{len(errors)} error(s) in input files")


class FetchError(OigError):
    """A remote source could not be fetched, was refused by policy, or did not match its pin."""
