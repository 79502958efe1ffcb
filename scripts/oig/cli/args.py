"""Argument types shared by subcommands: argparse turns their errors into usage errors (exit 2)."""

from __future__ import annotations

import argparse
from pathlib import Path


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None


def positive_int(text: str) -> int:
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {value}")
    return value


def add_allow_local_sources(parser: argparse.ArgumentParser) -> None:
    """The one switch that lifts the link policy: local paths and loopback http (tests, private mirrors)."""
    parser.add_argument("--allow-local-sources", action="store_true",
                        help="accept local paths and loopback http links in slices (tests and private mirrors)")


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=Path("data"), metavar="DIR", help="slice folder (default: data)")
