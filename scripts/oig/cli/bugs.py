"""oig bugs parse|eval|report|comment-results|claims: bug reports as a regression suite."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError("the similarity threshold is a ratio above 0 and at most 1 (default 0.9)")
    return value


def _bug_source(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--bugs", type=Path, metavar="FILE",
                       help="bugs from a file: a JSON, JSONL or YAML list of {input, output, expected, number} "
                       "objects or issue objects (offline)")
    group.add_argument("--repo", metavar="OWNER/NAME",
                       help="the open issues labelled bug in this repository (GitHub API, token from "
                       "GITHUB_TOKEN; default: $GITHUB_REPOSITORY)")


def register(sub) -> None:
    p = sub.add_parser(
        "bugs",
        help="bug reports: parse them, check them against the model, comment on issues",
        description="Bug reports (issues opened with the bug report form) as a regression suite.",
    )
    bugs_sub = p.add_subparsers(dest="bugs_command", metavar="ACTION")
    bugs_sub.required = True

    q = bugs_sub.add_parser("parse", help="read a bug report from an issue body or an issues event payload",
                            description="Read a bug report from SOURCE: an issue body as GitHub renders the "
                            "bug report form, or a GitHub `issues` event payload (JSON). Exit 1 and say what is "
                            "missing when the report cannot be used.")
    q.add_argument("source", type=Path, metavar="SOURCE", help="an issue body file or an event payload")
    q.add_argument("--format", choices=["json", "text"], default="json",
                   help="json (input, output, expected, model_version, number) or text")
    q.set_defaults(run=run_parse)

    q = bugs_sub.add_parser("eval", help="run the bug suite against the current model and print a table",
                            description="Ask the model in model.yaml each bug's input and judge the answer "
                            "against the expected output with the bug's check (by default similar: equal after "
                            "normalisation, else difflib ratio >= --threshold; or exact, contains, regex), else "
                            "the optional judge model. 'Before' is the model in --compare, or the output each "
                            "reporter saw. Exit 1 when a model cannot answer (--compare included).")
    q.add_argument("--model-yaml", type=Path, default=Path("model.yaml"), help="the model to check (default: model.yaml)")
    q.add_argument("--compare", type=Path, metavar="MODEL_YAML",
                   help="a previous model.yaml to ask as 'before' (default: the reported outputs)")
    _bug_source(q)
    q.add_argument("--threshold", type=_threshold, default=0.9, help="similarity that counts as a match (default 0.9)")
    q.add_argument("--judge-model", metavar="MODEL", help="a model asked to judge answers that are not similar enough")
    q.add_argument("--judge-base-url", metavar="URL",
                   help="the judge's OpenAI-compatible API root without /v1 (default: Together)")
    q.add_argument("--base-url", metavar="URL", help="ask the models at this OpenAI-compatible server instead")
    q.add_argument("--format", choices=["text", "json", "markdown"], default="text")
    q.set_defaults(run=run_eval)

    q = bugs_sub.add_parser("report", help="the bug-report workflow: check a reported issue, comment and label it",
                            description="Parse the issue in a GitHub `issues` event payload. A report that "
                            "cannot be used gets a comment saying what to fix and the label needs-info; a good "
                            "one is put to the current model (model.yaml's Together endpoint, with "
                            "TOGETHER_API_KEY) and gets one comment, updated in place on later edits, and the "
                            "label reproduced or not-reproduced. Needs GITHUB_TOKEN.")
    q.add_argument("--event", type=Path, required=True, metavar="PATH", help="the event payload ($GITHUB_EVENT_PATH)")
    q.add_argument("--repo", metavar="OWNER/NAME", help="default: the event's repository")
    q.add_argument("--model-yaml", type=Path, default=Path("model.yaml"))
    q.set_defaults(run=run_report)

    q = bugs_sub.add_parser("comment-results", help="after training: comment before/after on each bug issue",
                            description="Comment the answers before and after training on each bug issue in "
                            "training_log's `bugs` (one comment per issue, updated in place) and label the "
                            "fixed ones fixed-in-<revision>. Needs GITHUB_TOKEN.")
    q.add_argument("--training-log", type=Path, default=Path("training_log"))
    q.add_argument("--repo", metavar="OWNER/NAME", help="default: $GITHUB_REPOSITORY")
    q.add_argument("--model-yaml", type=Path, default=Path("model.yaml"), help="where the revision is read")
    q.set_defaults(run=run_comment_results)

    q = bugs_sub.add_parser("claims", help="list the bugs slices claim to fix; warn on bug inputs in the data",
                            description="List the bugs slices claim to fix (`fixes:`), check each number is an "
                            "open bug issue when the bugs can be read, and warn where a slice's IOPairs input is "
                            "a bug's exact input. Warnings only: exit 0.")
    q.add_argument("--data", type=Path, default=Path("data"))
    _bug_source(q)
    q.add_argument("--format", choices=["text", "github"], default="text",
                   help="text, or github (annotations plus the step summary)")
    q.set_defaults(run=run_claims)


def _default_repo(args: argparse.Namespace) -> str | None:
    import os

    return args.repo or (os.environ.get("GITHUB_REPOSITORY") if args.bugs is None else None)


def run_parse(args: argparse.Namespace) -> int:
    from oig.bugs.report import parse_source

    bug = parse_source(args.source)
    if args.format == "json":
        print(json.dumps(bug.to_dict(), indent=2, ensure_ascii=False))
        return 0
    for key, label in (("number", "Issue"), ("model_version", "Model version")):
        value = getattr(bug, key)
        print(f"{label}: {'#' if key == 'number' and value else ''}{value if value is not None else '-'}")
    for key, label in (("input", "Input"), ("output", "Model output"), ("expected", "Expected output")):
        value = getattr(bug, key)
        print(f"\n{label}:\n{value if value is not None else '(none)'}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from oig.bugs import render
    from oig.bugs import suite as bugs
    from oig.bugs.report import load_bugs
    from oig.errors import OigError

    repo = _default_repo(args)
    if args.bugs is None and not repo:
        raise OigError("no bugs to check: pass --bugs FILE or --repo OWNER/NAME")
    suite = load_bugs(args.bugs, repo)
    judge = bugs.make_judge(args.judge_model, args.judge_base_url) if args.judge_model else None
    records = bugs.evaluate(suite, args.model_yaml, compare=args.compare, judge=judge, threshold=args.threshold,
                            base_url=args.base_url)
    if args.format == "json":
        print(json.dumps(bugs.log_section(records), indent=2, ensure_ascii=False))
    elif args.format == "markdown":
        sys.stdout.write(render.render_markdown(records))
    else:
        sys.stdout.write(render.render_text(records))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from oig.bugs.github import report

    outcome = report(args.event, repo=args.repo, model_yaml=args.model_yaml)
    changes = [f"+{x}" for x in outcome.labels_added] + [f"-{x}" for x in outcome.labels_removed]
    parts = [f"issue #{outcome.number}: {outcome.status}"]
    if outcome.comment:
        parts.append(f"comment {outcome.comment}")
    if changes:
        parts.append(f"labels {' '.join(changes)}")
    print("; ".join(parts))
    if outcome.detail:
        print(outcome.detail, file=sys.stderr)
    return outcome.exit_code


def run_comment_results(args: argparse.Namespace) -> int:
    from oig.bugs.github import comment_results

    outcome = comment_results(args.training_log, repo=args.repo, model_yaml=args.model_yaml)
    if not outcome.commented and not outcome.skipped:
        print("no bugs in the training log: nothing to comment")
        return 0
    print(f"commented on {len(outcome.commented)} issue(s): {', '.join(f'#{n}' for n in outcome.commented) or '-'}")
    if outcome.labelled:
        print(f"labelled {outcome.label}: {', '.join(f'#{n}' for n in outcome.labelled)}")
    for why in outcome.skipped:
        print(f"skipped {why}", file=sys.stderr)
    return 0


def run_claims(args: argparse.Namespace) -> int:
    from oig import annotations as report
    from oig.bugs import claims

    result = claims.check_claims(args.data, bugs_file=args.bugs, repo=_default_repo(args))
    sys.stdout.write(claims.claims_text(result))
    if args.format == "github":
        sys.stdout.write(report.github(result.problems))
        report.append_step_summary(claims.claims_markdown(result))
    else:
        sys.stdout.write(report.text(result.problems))
    if not result.checked:
        print("note: the claimed numbers were not checked (pass --bugs FILE or --repo OWNER/NAME)", file=sys.stderr)
    return 0
