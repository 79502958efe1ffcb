"""oig commit-results PATH...: commit generated result files and push them, rebasing and retrying."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _retries(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if not 0 <= value <= 20:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 20, not {value}")
    return value


def register(sub) -> None:
    from oig.publish.gitops import DEFAULT_MESSAGE, DEFAULT_RETRIES

    p = sub.add_parser(
        "commit-results",
        help="commit result files (training_log, model.yaml) and push them to the branch",
        description="Commit the given files, and only them, then push to the remote branch. When the branch "
        "moved meanwhile, fetch it, rebase onto it and push again, with backoff, up to --retries more times. "
        "A rebase conflict on the given files is resolved in favour of the new results (they are generated); "
        "a conflict on any other file stops with an error and leaves the results committed locally. Never "
        "force-pushes. Uses the configured git identity, else github-actions[bot]; GITHUB_TOKEN, when set, "
        "authenticates https pushes. Exit 0 when pushed (or nothing changed), 1 on an error, 2 on a usage error.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="result files to commit")
    p.add_argument("--message", "-m", default=DEFAULT_MESSAGE, metavar="MSG",
                   help=f"commit message (default: {DEFAULT_MESSAGE!r})")
    p.add_argument("--remote", default="origin", metavar="NAME", help="remote to push to (default: origin)")
    p.add_argument("--branch", default=None, metavar="B",
                   help="branch to push to (default: the checked-out branch; needed on a detached HEAD)")
    p.add_argument("--retries", type=_retries, default=DEFAULT_RETRIES, metavar="N",
                   help=f"push attempts after the first when the branch keeps moving (default: {DEFAULT_RETRIES})")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from oig import annotations as report
    from oig.publish.gitops import commit_results

    result = commit_results(args.paths, message=args.message, remote=args.remote, branch=args.branch,
                            retries=args.retries)
    target = f"{result.remote}/{result.branch}"
    if not result.pushed:
        print(f"oig commit-results: nothing to push: {target} already has these results", file=sys.stderr)
        return 0
    notes = []
    if result.attempts > 1:
        notes.append(f"after {result.attempts} attempts")
    if result.resolved:
        notes.append(f"conflicts in {', '.join(result.resolved)} resolved in favour of the new results")
    extra = f" ({'; '.join(notes)})" if notes else ""
    print(f"oig commit-results: pushed {result.commit[:12]} to {target}{extra}", file=sys.stderr)
    report.append_step_summary(f"Results committed as `{result.commit}` on `{result.branch}`{extra}.\n")
    return 0
