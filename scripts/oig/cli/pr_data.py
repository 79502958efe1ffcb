"""oig pr-data DIR: take a pull request's slices and mixture into this checkout, and nothing else."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "pr-data",
        help="take a pull request's data/ and mixture for a training run (the train workflow's pr input)",
        description="DIR holds a pull request's data/ and training.yaml, fetched as files. Takes its slices "
        "(regular data/<name>.yaml files only: nothing hidden, no folders, no links) and the Mixture and "
        "MixtureTotal of its training.yaml into this checkout; every other training.yaml setting stays the "
        "branch's. A pull request that changes any other setting, or brings anything else, is refused "
        "with every problem listed, and nothing here changes. Exit 0 when taken, 1 when refused.",
    )
    p.add_argument("source", type=Path, metavar="DIR", help="folder with the pull request's data/ (and training.yaml)")
    p.add_argument("--root", type=Path, default=Path("."), metavar="DIR",
                   help="the checkout whose data/ and training.yaml are replaced (default: here)")
    p.add_argument("--format", choices=["text", "github"], default="text",
                   help="text (file:line:col: severity: message) or github (workflow annotations and summary)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from oig import annotations as report
    from oig.data.prdata import apply_pull_request
    from oig.errors import InvalidInput

    try:
        problems = apply_pull_request(args.source, args.root)
        ok = True
    except InvalidInput as exc:
        problems, ok = exc.problems, False
    if args.format == "github":
        sys.stdout.write(report.github(problems))
        if not ok:
            report.append_step_summary(report.markdown(problems))
    else:
        sys.stderr.write(report.text(problems))
    if ok:
        print(f"took the pull request's data/ ({sum(1 for _ in Path(args.root, 'data').glob('*.yaml'))} slices) "
              "and mixture; every other setting is the branch's", file=sys.stderr)
    return 0 if ok else 1
