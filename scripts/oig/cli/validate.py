"""oig validate [PATH ...]: check slice files and training.yaml."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from oig.cli.args import add_allow_local_sources, positive_int
from oig.errors import UsageError


def register(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="check data slices and training.yaml",
        description="Check slice files (data/*.yaml) and training.yaml, reporting every problem at once "
        "with its line and a fix. With no PATH: data/ and training.yaml in the current folder. "
        "Exit 0 when valid (warnings allowed), 1 when anything is invalid, 2 on a usage error.",
    )
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="slice files, data folders or training.yaml")
    p.add_argument("--format", choices=["text", "github", "json"], default="text",
                   help="text (file:line:col: severity: message), github (workflow annotations plus the "
                   "step summary), json (a list of objects)")
    p.add_argument("--remote", action="store_true",
                   help="also fetch every link and convert every row of it (needs network); a link past the "
                   "limits below is a warning 'not fully checked', never valid")
    p.add_argument("--remote-max-bytes", type=positive_int, default=256 * 1024**2, metavar="N",
                   help="with --remote: read at most N bytes of each link (default 268435456, 256 MiB)")
    p.add_argument("--remote-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="with --remote: spend at most this long on each link, download and rows (default 300)")
    p.add_argument("--changed-from", metavar="REF",
                   help="with --remote: fetch only the links of slice files changed since the git commit REF "
                   "(git diff REF); everything else is still checked offline")
    add_allow_local_sources(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from oig import annotations as report
    from oig.data.validate import ValidateOptions, validate

    if args.remote_timeout <= 0:
        raise UsageError("--remote-timeout must be a positive number of seconds")
    changed = _changed_slices(args.changed_from) if args.changed_from else None
    opts = ValidateOptions(remote=args.remote, allow_local=args.allow_local_sources,
                           remote_max_bytes=args.remote_max_bytes, remote_timeout_s=args.remote_timeout,
                           remote_only=changed)
    problems = validate(args.paths, opts)
    errors = sum(p.severity == "error" for p in problems)
    partial = report.not_fully_checked(problems)
    if args.format == "json":
        sys.stdout.write(report.as_json(problems))
    elif args.format == "github":
        sys.stdout.write(report.github(problems))
        report.append_step_summary(report.markdown(problems))
    else:
        sys.stdout.write(report.text(problems))
        warnings = len(problems) - errors
        verdict = "invalid" if errors else f"{partial} link(s) {report.NOT_FULLY_CHECKED}" if partial else "valid"
        print(f"{verdict}: {errors} error(s), {warnings} warning(s)", file=sys.stderr)
    return 1 if errors else 0


def _changed_slices(ref: str) -> frozenset[Path]:
    """The files changed between ``ref`` and the working tree, as paths under the current folder."""
    if ref.startswith("-"):
        raise UsageError(f"--changed-from takes a git commit, not {ref!r}")
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
        out = subprocess.run(["git", "diff", "--name-only", "--no-renames", "-z", ref, "--"],
                             capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        why = getattr(exc, "stderr", "") or str(exc)
        raise UsageError(f"--changed-from {ref}: git diff failed: {why.strip()}") from None
    root = Path(top.stdout.strip())
    return frozenset(Path(os.path.relpath(root / name)) for name in out.stdout.split("\0") if name)
