"""Argument types shared by subcommands: argparse turns their errors into usage errors (exit 2)."""

from __future__ import annotations

import argparse


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
