"""`oig validate` through the real entry point, in-process, in each output format."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oig.cli import main

ROOT = Path(__file__).resolve().parents[1]
BAD = "IOPairs:\n  - input: a\n    outptu: b\nlicense: CC0-1.0\n"


@pytest.fixture
def repo(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "good.yaml").write_text("IOPairs:\n  - input: a\n    output: b\nlicense: CC0-1.0\n")
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


ROW = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
BAD_AT_21 = ROW * 20 + b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}\n' + ROW * 4


def test_remote_converts_every_row_and_points_at_the_line_of_the_link(repo, capsys, local_server, monkeypatch):
    import hashlib

    summary = repo / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    server = local_server({"/bad.jsonl": BAD_AT_21, "/good.jsonl": ROW * 30})
    (repo / "data" / "remote.yaml").write_text(f"# chat data\nOpenAIJsonl:\n  - link: {server.url}/bad.jsonl\n"
                                               f"  - link: {server.url}/good.jsonl\n")
    assert main(["validate", "--remote", "--allow-local-sources", "--format", "github", "data/remote.yaml"]) == 1
    out = capsys.readouterr().out
    assert (f"::error file=data/remote.yaml,line=3,col=11::OpenAIJsonl[0] {server.url}/bad.jsonl: line 21: "
            "message 1 has no text content (empty)") in out
    pin = hashlib.sha256(ROW * 30).hexdigest()
    assert f"::warning file=data/remote.yaml,line=4,col=11::OpenAIJsonl[1] {server.url}/good.jsonl is not pinned: " \
           f"add `sha256: {pin}`" in out
    assert out.count("not pinned") == 2 and "validate --remote" not in out  # once a link, and no advice to run it
    assert "| data/remote.yaml | 3 |" in summary.read_text()


def test_remote_link_past_the_limits_is_not_fully_checked_never_valid(repo, capsys, local_server, monkeypatch):
    summary = repo / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    server = local_server({"/bad.jsonl": BAD_AT_21})
    (repo / "data" / "remote.yaml").write_text(f"OpenAIJsonl:\n  - link: {server.url}/bad.jsonl\n")
    args = ["validate", "--remote", "--allow-local-sources", "data/remote.yaml", "--remote-max-bytes", str(len(ROW) * 5)]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "data/remote.yaml:2:11: warning: OpenAIJsonl[0]" in out
    assert "not fully checked (5 rows checked of a file larger than --remote-max-bytes" in out
    assert err.startswith("1 link(s) not fully checked: 0 error(s)") and "valid:" not in err
    assert main([*args, "--format", "github"]) == 0
    assert "1 link(s) not fully checked" in summary.read_text()
    assert main(["validate", "--remote", "--allow-local-sources", "data/remote.yaml", "--remote-timeout", "0"]) == 2
    capsys.readouterr()
    assert main(args[:-2]) == 1 and "line 21" in capsys.readouterr().out  # the default limit reads it all


def test_changed_from_fetches_only_the_changed_slices(repo, capsys, local_server):
    server = local_server({"/a.jsonl": ROW, "/b.jsonl": ROW})
    (repo / "data" / "a.yaml").write_text(f"OpenAIJsonl:\n  - link: {server.url}/a.jsonl\n")
    (repo / "data" / "b.yaml").write_text(f"OpenAIJsonl:\n  - link: {server.url}/b.jsonl\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run(["git", "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "base"], check=True)
    (repo / "data" / "b.yaml").write_text(f"# changed\nOpenAIJsonl:\n  - link: {server.url}/b.jsonl\n")
    assert main(["validate", "--remote", "--allow-local-sources", "--changed-from", "HEAD"]) == 0
    assert server.paths() == ["/b.jsonl"]
    out = capsys.readouterr().out
    assert "data/b.yaml:3:11: warning: OpenAIJsonl[0]" in out and "add `sha256:" in out
    assert "data/a.yaml:2:11: warning: file is not pinned" in out  # checked offline, as always
    assert main(["validate", "--remote", "--changed-from", "--output=x"]) == 2
    assert main(["validate", "--remote", "--changed-from", "no-such-ref"]) == 2


def test_remote_skipped_bad_rows_are_counted_in_the_summary(repo, capsys, local_server, monkeypatch):
    summary = repo / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    server = local_server({"/bad.jsonl": BAD_AT_21})
    (repo / "data" / "remote.yaml").write_text(f"OpenAIJsonl:\n  - link: {server.url}/bad.jsonl\n"
                                               "    on_bad_rows: skip\n    max_bad_rows: 1\n")
    assert main(["validate", "--remote", "--allow-local-sources", "--format", "github", "data/remote.yaml"]) == 0
    assert "1 of 25 rows do not convert and are skipped (on_bad_rows: skip, max_bad_rows: 1)" in summary.read_text()
