"""The ``oig`` command: a thin layer that parses arguments and calls one function per stage.

Each subcommand lives in its own module here with two functions, ``register(subparsers)`` and
``run(args) -> int``. Modules import their stage lazily inside ``run`` so that light commands
(validate, mix) never import torch or TRL.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from oig import __version__
from oig.errors import InvalidInput, OigError

# Subcommand modules, in the order `oig --help` lists them.
COMMANDS = [
    "validate",
    "mix",
    "train",
    "history",
    "report",
    "query",
    "eval",
    "serve",
    "commit",
    "pr-data",
    "bugs",
    "generate",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oig", description="Improve an open chat model with community data slices."
    )
    parser.add_argument("--version", action="version", version=f"oig {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"oig.cli.{name.replace('-', '_')}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 on --help
        return int(exc.code or 0)
    try:
        return int(args.run(args) or 0)
    except InvalidInput as exc:
        for p in exc.problems:
            print(f"{p.file}:{p.line}:{p.col}: {p.severity}: {p.message}", file=sys.stderr)
        return exc.exit_code
    except OigError as exc:
        print(f"oig {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("oig: interrupted", file=sys.stderr)
        return 130
