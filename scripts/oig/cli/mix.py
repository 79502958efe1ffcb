"""oig mix: build the weighted training mixture from data/ and training.yaml, and print its table."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from oig.cli.args import add_allow_local_sources, add_data_dir, positive_int, whole_number

DEFAULT_CONFIG = Path("training.yaml")


def register(sub) -> None:
    p = sub.add_parser(
        "mix",
        help="build the weighted training mixture and print its table",
        description="Mix the slices in data/ by the Mixture weights of training.yaml into OUT/mixture.jsonl "
        "(one {\"slice\", \"messages\"} per line) and OUT/manifest.json (counts, checksums, pins), then print "
        "the mixture table. Weights are shares of the final mixture; slices not listed share what is left "
        "in proportion to their size. Exit 0 when done, 1 on invalid input, 2 on a usage error.",
    )
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="training configuration (default: training.yaml; when that is missing, all defaults)")
    add_data_dir(p)
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="folder for mixture.jsonl and manifest.json (required unless --plan)")
    p.add_argument("--total", type=positive_int, default=None, metavar="N",
                   help="examples in the mixture (default: MixtureTotal, else every example available)")
    p.add_argument("--seed", type=whole_number, default=None, metavar="N",
                   help="random seed for sampling and shuffling (default: Training seed, else 42)")
    add_allow_local_sources(p)
    p.add_argument("--format", choices=["text", "markdown", "json"], default="text",
                   help="text (an aligned table), markdown (a GitHub table, for PR summaries), json (the manifest)")
    p.add_argument("--plan", action="store_true", help="print the table only; write no mixture")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from oig.data.mix import mix, render_markdown, render_text
    from oig.errors import InvalidInput, Problem, UsageError

    if args.out is None and not args.plan:
        raise UsageError("--out DIR is required (or --plan to print the table without writing the mixture)")
    if args.config is not None and not args.config.is_file():
        raise InvalidInput([Problem(str(args.config), 0, 0, "error", "no such file")])
    result = mix(args.data, args.config or DEFAULT_CONFIG, None if args.plan else args.out, total=args.total,
                 seed=args.seed, allow_local=args.allow_local_sources, plan_only=args.plan)
    for warning in result.allocation.warnings:
        print(f"oig mix: warning: {warning}", file=sys.stderr)
    if args.format == "json":
        sys.stdout.write(json.dumps(result.manifest, indent=2, ensure_ascii=False) + "\n")
    elif args.format == "markdown":
        sys.stdout.write(render_markdown(result.allocation))
    else:
        sys.stdout.write(render_text(result.allocation))
    if result.out_dir is not None:
        print(f"oig mix: wrote {result.allocation.total:,} examples to {result.out_dir}", file=sys.stderr)
    return 0
