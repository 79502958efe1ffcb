"""Every `oig` command the README shows parses with the real CLI, and the Makefile targets it names exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from oig.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def shown_commands() -> list[str]:
    """`oig ...` command lines from the README's code blocks, continuations joined. (Inline mentions such
    as `oig mix --total` name a flag, not a whole command, so they are not checked.)"""
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", README, re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        commands += [line.split("#", 1)[0].strip() for line in text.splitlines() if line.strip().startswith("oig ")]
    return sorted(set(commands))


COMMANDS = shown_commands()


def test_the_readme_shows_commands():
    assert len(COMMANDS) >= 8
    assert "make demo" in README and "make test" in README


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command):
    argv = shlex.split(command)[1:]
    args = build_parser().parse_args(argv)  # argparse exits (fails the test) on an unknown flag or command
    assert callable(args.run)


def test_makefile_has_the_targets_the_readme_names():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in set(re.findall(r"make ([a-z][a-z-]+)", README)):
        assert re.search(rf"^{target}:", makefile, re.M), f"README names `make {target}`, the Makefile lacks it"
