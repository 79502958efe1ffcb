"""oig history: a static site of every training run, from the repository's git history."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "history",
        help="build a static site of every training run from the git history",
        description="Read every commit that changed training_log or model.yaml on the current branch (and on "
        "--branches), and write a static site: an index of runs with charts of eval scores, bug-suite counts "
        "and loss, one page a run (mixture, hyperparameters, loss curve, eval deltas, bug answers), and pages "
        "of bugs and slices. Plain HTML and inline SVG: no script, nothing fetched when viewed. A historic "
        "file that cannot be read is a warning naming the commit, and is skipped.",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="the folder to write (replaced whole; refused when it has other files in it)")
    p.add_argument("--repo", type=Path, default=Path("."), metavar="DIR",
                   help="the git repository to read (default: the current folder)")
    p.add_argument("--branches", nargs="+", default=[], metavar="NAME",
                   help="specialisation branches whose runs to show too (local branch names)")
    p.add_argument("--repo-url", default=None, metavar="URL",
                   help="https://github.com/OWNER/NAME, for links to commits, workflow runs, issues and pull "
                   "requests (default: the origin remote, when it is on GitHub; else no links)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from oig.history.build import build_site

    history = build_site(args.repo, args.out, branches=args.branches, repo_url=args.repo_url)
    for warning in history.warnings:
        print(f"oig history: warning: {warning}", file=sys.stderr)
    print(f"wrote {args.out}/index.html: {len(history.runs)} run(s) on "
          f"{', '.join(b.name for b in history.branches)}")
    return 0
