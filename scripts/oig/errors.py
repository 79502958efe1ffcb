"""The few exception types the library raises. Only the CLI turns them into messages and exit codes."""

from __future__ import annotations

import os
from dataclasses import dataclass

# The secrets oig reads, from the environment only; their values never reach a message, a log or a file.
SECRET_ENV = ("HF_TOKEN", "TOGETHER_API_KEY", "GITHUB_TOKEN")


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


class PublishError(OigError):
    """The model could not be published (the Hub, Together) or the request to publish was wrong."""


class TogetherError(PublishError):
    """A Together call failed or a job did not finish (publishing or hosted training)."""


def redact(text: str, *names: str, values: tuple[str, ...] = ()) -> str:
    """``text`` with the values of the named environment secrets (default: all of oig's) and any extra
    ``values`` replaced by ``***``. Values shorter than 4 characters are left alone (they would mask
    ordinary text)."""
    secrets = [os.environ.get(name) for name in (names or SECRET_ENV)] + list(values)
    for value in secrets:
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def secret(name: str, error: type[OigError], needs: str) -> str:
    """The secret ``name`` from the environment, or ``error`` saying that ``needs`` (who needs what) it."""
    value = os.environ.get(name, "").strip()
    if not value:
        raise error(f"{name} is not set: {needs} in the {name} environment variable (a repository secret in "
                    "GitHub Actions)")
    return value
