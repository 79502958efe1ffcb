"""oig validate [PATH ...]: check slice files and training.yaml."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from oig.cli.args import add_allow_local_sources


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
                   help="also resolve links: existence, pins and a sample of rows converted (needs network)")
    add_allow_local_sources(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from oig import annotations as report
    from oig.data.validate import ValidateOptions, validate

    opts = ValidateOptions(remote=args.remote, allow_local=args.allow_local_sources)
    problems = validate(args.paths, opts)
    errors = sum(p.severity == "error" for p in problems)
    if args.format == "json":
        sys.stdout.write(report.as_json(problems))
    elif args.format == "github":
        sys.stdout.write(report.github(problems))
        report.append_step_summary(report.markdown(problems))
    else:
        sys.stdout.write(report.text(problems))
        warnings = len(problems) - errors
        print(f"{'invalid' if errors else 'valid'}: {errors} error(s), {warnings} warning(s)", file=sys.stderr)
    return 1 if errors else 0
