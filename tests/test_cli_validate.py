"""`oig validate` through the real entry point, in-process, in each output format."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oig.cli import main

ROOT = Path(__file__).resolve().parents[1]
BAD = "IOPairs:\n  - input: a\n    outptu: b\n"


@pytest.fixture
def repo(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "good.yaml").write_text("IOPairs:\n  - input: a\n    output: b\n")
    (tmp_path / "training.yaml").write_text("Mixture:\n  good: 0.5\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    return tmp_path


def test_help_exits_zero(capsys):
    assert main(["validate", "--help"]) == 0
    assert "--format" in capsys.readouterr().out
    assert main(["--help"]) == 0


def test_valid_repository_exits_zero(repo, capsys):
    assert main(["validate"]) == 0
    assert "valid: 0 error(s)" in capsys.readouterr().err


def test_text_format(repo, capsys):
    (repo / "data" / "bad.yaml").write_text(BAD)
    assert main(["validate"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("data/bad.yaml:3:5: error: unknown key 'outptu' at IOPairs[0]; did you mean 'output'?")


def test_github_format_annotates_and_writes_the_summary(repo, capsys, monkeypatch):
    summary = repo / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    (repo / "data" / "bad.yaml").write_text(BAD)
    assert main(["validate", "--format", "github"]) == 1
    out = capsys.readouterr().out
    assert "::error file=data/bad.yaml,line=3,col=5::unknown key 'outptu'" in out
    text = summary.read_text()
    assert "1 error(s)" in text and "| data/bad.yaml | 3 |" in text


def test_github_format_escapes_messages():
    from oig import annotations as report
    from oig.errors import Problem

    line = report.github([Problem("data/a,b:c.yaml", 1, 2, "error", "100% bad\nnext")])
    assert line == "::error file=data/a%2Cb%3Ac.yaml,line=1,col=2::100%25 bad%0Anext\n"


def test_json_format(repo, capsys):
    (repo / "data" / "bad.yaml").write_text(BAD)
    assert main(["validate", "--format", "json"]) == 1
    [item] = json.loads(capsys.readouterr().out)
    assert item == {"file": "data/bad.yaml", "line": 3, "column": 5, "severity": "error",
                    "message": item["message"]}


def test_usage_errors_exit_two(repo):
    assert main(["validate", "--format", "xml"]) == 2
    assert main(["validate", "--no-such-flag"]) == 2


def test_missing_path_is_an_error(repo, capsys):
    assert main(["validate", "nope.yaml"]) == 1
    assert "nope.yaml:0:0: error: no such file or folder" in capsys.readouterr().out


def test_validate_stays_light_and_fast():
    """oig validate must not import the training stack: data-PR CI does not install it."""
    code = ("import sys; from oig.cli import main; rc = main(['validate']);"
            "heavy = [m for m in ('torch', 'trl', 'transformers', 'datasets', 'huggingface_hub', 'together')"
            " if m in sys.modules]; print(heavy); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "scripts")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_remote_resolves_links_and_prints_the_exact_pin(repo, capsys, local_server):
    import hashlib

    good = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
    bad = b'{"messages": [{"role": "user", "content": "q"}]}\n'
    server = local_server({"/good.jsonl": good, "/bad.jsonl": bad})
    (repo / "data" / "remote.yaml").write_text(
        f"OpenAIJsonl:\n  - link: {server.url}/good.jsonl\n  - link: {server.url}/bad.jsonl\n"
        f"  - link: {server.url}/missing.jsonl\n")
    assert main(["validate", "--remote", "--allow-local-sources", "data/remote.yaml"]) == 1
    out = capsys.readouterr().out
    assert f"add `sha256: {hashlib.sha256(good).hexdigest()}`" in out  # the exact line to add
    assert "must end with an assistant message" in out  # a sample row that does not convert
    assert "404" in out or "not found" in out.lower()
    capsys.readouterr()
    assert main(["validate", "data/remote.yaml", "--allow-local-sources"]) == 0  # offline: no fetch, warnings only
    assert len(server.requests) == 3
