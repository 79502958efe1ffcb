"""oig report training-log: the last training run as Markdown (the job summary) or text."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="report on the last training run",
        description="Reports on what `oig train` left behind.",
    )
    report_sub = p.add_subparsers(dest="report_command", metavar="WHAT")
    report_sub.required = True
    q = report_sub.add_parser(
        "training-log", help="the run in training_log: losses, speed, where the model went, the loss curve",
        description="Print the run that training_log records: run id, base model and steps, the final train "
        "and eval loss, tokens per second, duration, where the model went, and a sample of the loss by step. "
        "--format markdown adds a Mermaid chart of the loss curve, for a GitHub job summary "
        "(the train workflow appends it to $GITHUB_STEP_SUMMARY).",
    )
    q.add_argument("--training-log", type=Path, default=Path("training_log"), metavar="PATH",
                   help="the training_log to read (default: training_log)")
    q.add_argument("--format", choices=["text", "markdown"], default="text",
                   help="text (default), or markdown for a job summary")
    q.set_defaults(run=run_training_log)


def run_training_log(args: argparse.Namespace) -> int:
    from oig import runreport
    from oig.runlog import read_run_log

    log = read_run_log(args.training_log)
    render = runreport.training_markdown if args.format == "markdown" else runreport.training_text
    sys.stdout.write(render(log))
    return 0
