"""oig history: a real git repository with three training runs (training_log and model.yaml committed by
hand, in the shape `oig train` writes them), one malformed commit, and the site built from it."""

from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from oig import runlog
from oig.cli import main
from oig.history import build, charts, pages, render, site

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_history  # noqa: E402

SCRIPT = "<script>alert(1)</script>"
REPO_URL = "https://github.com/org/oig"
CAPITALS = "license: CC0-1.0\nsource: Written by hand.\ndescription: Capitals <b>of</b> countries.\n" \
           "IOPairs:\n  - input: What is the capital of Spain?\n    output: Madrid.\n"
ITALY = "fixes: [21]\nlicense: CC-BY-4.0\nsource: https://example.com/italy\ndescription: Italy.\n" \
        "IOPairs:\n  - input: What is the capital of Italy?\n    output: Rome.\n"


def git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "PATH": "/usr/bin:/bin", "HOME": str(repo)}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, message: str, files: dict[str, str]) -> str:
    """Write ``files`` and commit them with whatever training_log and model.yaml the test wrote."""
    for name, content in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(content)
    git(repo, "add", *files, *[n for n in (runlog.TRAINING_LOG, runlog.MODEL_YAML) if (repo / n).exists()])
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def bug(number: int, verdict: str, before: str, after: str) -> dict:
    return {"number": number, "title": f"Bug {number} <i>title</i>", "input": f"Question {number}?",
            "expected": "Rome.", "reported": before, "before": before, "before_source": "previous model",
            "after": after, "before_pass": verdict in ("regressed", "passing"),
            "after_pass": verdict in ("fixed", "passing"), "verdict": verdict, "score": 0.5, "judged": "similar"}


def results(repo: Path, i: int, trained_from: str, bugs: list[dict], slices: list[str], *, score: float,
            gate: bool = True, run: int | None = None) -> str:
    log, model = bench_history.synthetic_log(i, commit=trained_from, steps=30, bugs=bugs, slices=len(slices), gate=gate)
    for s, name in zip(log["mixture"]["slices"], slices, strict=True):
        s["name"] = name
    log["evals"]["suites"] = {"capitals": {**log["evals"]["suites"]["capitals"], "score": score}}
    log["evals"]["lm_eval"] = {"tasks": {"arc_easy": {"acc": score / 2, "acc_stderr": 0.01}}, "samples": {"arc_easy": 50}}
    runlog.write_run_files(repo, log, model)
    message = f"Training results of run {run} (hub)" if run else f"Results {i}"
    return commit(repo, message, {})


@pytest.fixture
def history_repo(tmp_path) -> Path:
    """Three runs on main: bug #21 still broken, then fixed by the Italy slice (pull request #7), then a
    failed gate where bug #22's answer is a script. One malformed training_log between them."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "remote", "add", "origin", "git@github.com:org/oig.git")
    data = commit(repo, "Add capitals", {"data/capitals.yaml": CAPITALS})
    results(repo, 1, data, [bug(21, "still broken", "Berlin.", "Berlin.")], ["capitals"], score=0.25, run=9001)
    italy = commit(repo, "Add the Italy slice (#7)", {"data/italy.yaml": ITALY})
    results(repo, 2, italy, [bug(21, "fixed", "Berlin.", "Rome.")], ["capitals", "italy"], score=0.5, run=9002)
    commit(repo, "A hand edit gone wrong", {"training_log": "run_id: [unclosed\n", "model.yaml": "model: 3\n"})
    results(repo, 3, italy, [bug(21, "passing", "Rome.", "Rome."), bug(22, "regressed", "Rome.", SCRIPT)],
            ["capitals", "italy"], score=0.375, gate=False)
    return repo


def html_ok(text: str) -> None:
    """Parses as HTML with no script element and the strict CSP first in the head."""
    class Check(HTMLParser):
        tags: list[str] = []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            if tag == "meta" and ("http-equiv", "Content-Security-Policy") in attrs:
                self.csp = dict(attrs)["content"]

    p = Check()
    p.feed(text)
    assert "script" not in p.tags
    assert p.csp.startswith("default-src 'none'; style-src 'sha256-") and "script-src" not in p.csp
    assert "img-src 'self' data:" in p.csp


def test_the_site_of_three_runs(history_repo, tmp_path, capsys):
    out = tmp_path / "site"
    assert main(["history", "--repo", str(history_repo), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "3 run(s) on main" in captured.out
    bad = git(history_repo, "log", "--format=%h", "--abbrev=12", "-1", "--grep", "gone wrong")
    assert captured.err.splitlines() == [
        f"oig history: warning: skipped commit {bad}: model.yaml is not a valid model.yaml: the top level: "
        "\"base_model\" is a required property",
        f"oig history: warning: skipped commit {bad}: training_log:2:1: YAML syntax error: while parsing a flow "
        "sequence: did not find expected ',' or ']'"]
    pages = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html"))
    assert pages[:3] == ["bugs.html", "index.html", "runs/" + pages[2][5:]] and len(pages) == 6
    assert (out / build.MARKER).is_file()
    for page in out.rglob("*.html"):
        html_ok(page.read_text())

    index = (out / "index.html").read_text()
    rows = re.findall(r"<tr><td class=\"num\">(\d)</td>(.*?)</tr>", index)
    assert [n for n, _ in rows] == ["3", "2", "1"]  # newest first
    first = rows[2][1]
    assert "run-000000000001" in first and "capitals: 0.250" in first and ">passed<" in first
    assert f'href="{REPO_URL}/actions/runs/9001"' in first and f'href="{REPO_URL}/commit/' in first
    assert ">failed<" in rows[0][1] and "/actions/runs/" not in rows[0][1]  # no run id in that commit's message
    assert "<td class=\"num\">200</td>" in rows[1][1]  # mixture size
    assert index.count("<svg") == 3 and "<polyline" in index
    assert "Hub <a href=\"https://huggingface.co/org/model/tree/" in index  # the live model, from model.yaml at HEAD

    run2 = (out / "runs" / (git(history_repo, "rev-parse", "HEAD~2")[:12] + ".html")).read_text()
    assert "run-000000000002" in run2 and "+0.250" in run2  # capitals 0.25 -> 0.5
    assert "<td>arc_easy</td><td>acc</td><td class=\"num\">0.25</td><td class=\"num\">0.125</td>" \
           "<td class=\"num\">+0.125</td>" in run2
    assert '<a href="../slices.html#slice-italy">italy</a>' in run2 and "CC-BY-4.0" in run2
    assert "README.md on the Hub" in run2 and "learning_rate" in run2 and "<polyline" in run2
    run3 = (out / "runs" / (git(history_repo, "rev-parse", "HEAD")[:12] + ".html")).read_text()
    assert SCRIPT not in run3 and "&lt;script&gt;alert(1)&lt;/script&gt;" in run3
    assert "Bug 22 &lt;i&gt;title&lt;/i&gt;" in run3 and "the score fell by 0.2" in run3

    bugs = (out / "bugs.html").read_text()
    row21 = bugs.split(f'href="{REPO_URL}/issues/21"', 1)[1].split("</tr>", 1)[0]
    assert row21.count('class="v ') == 3 and "run-000000000002" in row21
    assert f'<a href="{REPO_URL}/pull/7">pull request #7</a>' in row21
    slices = (out / "slices.html").read_text()
    assert "Capitals &lt;b&gt;of&lt;/b&gt; countries." in slices and "https://example.com/italy" in slices
    italy = slices.split('id="slice-italy"', 1)[1].split("</tr>", 1)[0]
    assert "run-000000000002" in italy and f"{REPO_URL}/issues/21" in italy and f"{REPO_URL}/pull/7" in italy


def test_out_is_refused_unless_it_is_new_empty_or_a_previous_site(history_repo, tmp_path, capsys):
    assert main(["history", "--repo", str(history_repo), "--out", str(history_repo)]) == 1
    assert "is the repository" in capsys.readouterr().err
    assert main(["history", "--repo", str(history_repo), "--out", str(tmp_path)]) == 1  # holds the repository
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["history", "--repo", str(history_repo), "--out", str(other)]) == 1
    assert "not a previous history site" in capsys.readouterr().err and (other / "keep.txt").read_text() == "mine"
    out = tmp_path / "site"
    for _ in range(2):  # a previous site is replaced whole
        assert main(["history", "--repo", str(history_repo), "--out", str(out)]) == 0
    assert not list(tmp_path.glob("site.*"))  # no temp or old folder left beside it


def test_bad_input_is_a_message(history_repo, tmp_path, capsys):
    out = str(tmp_path / "site")
    assert main(["history", "--repo", str(history_repo), "--out", out, "--branches", "nope"]) == 1
    assert "no local branch 'nope'" in capsys.readouterr().err
    assert main(["history", "--repo", str(history_repo), "--out", out, "--repo-url", "https://evil.example/x"]) == 1
    assert "not a GitHub repository URL" in capsys.readouterr().err
    assert main(["history", "--repo", str(tmp_path / "nowhere"), "--out", out]) == 1
    assert "not a folder" in capsys.readouterr().err
    assert main(["history", "--help"]) == 0


def test_branches_and_links(history_repo, tmp_path):
    git(history_repo, "checkout", "-q", "-b", "text2sql")
    data = commit(history_repo, "A text2sql slice", {"data/sql.yaml": CAPITALS})
    results(history_repo, 4, data, [], ["capitals", "sql"], score=0.1)
    git(history_repo, "checkout", "-q", "main")
    h = site.read_history(history_repo, branches=["text2sql"], repo_url="https://github.com/Org/Name.git")
    assert h.repo_url == "https://github.com/Org/Name"
    assert [b.name for b in h.branches] == ["main", "text2sql"] and [len(b.runs) for b in h.branches] == [3, 4]
    assert len(h.runs) == 4 and h.runs[-1].branch == "text2sql"  # the shared runs once
    assert h.branches[1].runs[-1].previous is h.branches[1].runs[2]
    out = tmp_path / "site"
    build.build_site(history_repo, out, branches=["text2sql"])
    index = (out / "index.html").read_text()
    assert "<th>branch</th>" in index and "<dt>text2sql</dt>" in index
    assert site.github_url("https://github.com/a/b/") == "https://github.com/a/b"
    for url in ("http://github.com/a/b", "https://github.com/a", "https://github.com.evil/a/b",
                "https://github.com/a/b/../c", "ssh://git@github.com/a/b", None):
        assert site.github_url(url) is None, url


def test_no_remote_means_no_links_and_hostile_values_read_as_missing(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    log, model = bench_history.synthetic_log(1, bugs=[{"number": "x", "verdict": 3, "after": ["a"]}])
    log.update(train_loss="low", metrics={"not": "a list"}, mixture=[1, 2], gate="yes")
    log["model"] = {"hub_repo": 'org/m" onclick="x', "revision": "r"}
    runlog.write_training_log(repo, log)
    commit(repo, "Results", {})
    h = site.read_history(repo)
    [run] = h.runs
    assert h.repo_url is None and run.train_loss is None and run.curve == [] and run.slices == []
    assert run.bugs[0]["number"] is None and run.bugs[0]["verdict"] is None and run.gate is None
    assert render.hub_url(run.model) is None
    page = pages.run_page(h, run)
    assert "onclick=\"x" not in page and "href=\"https://github.com" not in page


HOSTILE = (5, -1.5, True, None, [1, "<x>"], {"<k>": "<v>"}, "<img src=x onerror=alert(1)>", float("nan"), float("-inf"),
           10**400)


def test_any_value_anywhere_is_a_page_or_a_warning_never_a_crash():
    log, _ = bench_history.synthetic_log(1, commit="a" * 40, steps=3)
    log["evals"]["lm_eval"] = {"tasks": {"arc": {"acc": 0.5}}}
    places = [(log, k) for k in log] + [(d, k) for d in (log["bugs"][0], log["mixture"]["slices"][0], log["evals"],
                                                          log["evals"]["lm_eval"], log["evals"]["lm_eval"]["tasks"]["arc"],
                                                          log["evals"]["suites"]["capitals"], log["gate"], log["model"],
                                                          log["mixture"], log["metrics"][0]) for k in d]
    built = refused = 0
    for where, key in places:
        for value in HOSTILE:
            before, where[key] = where[key], value
            try:
                run = site.make_run(runlog.RunLog.from_dict(log), ("b" * 40, "2026-01-01T00:00:00Z", "x"), "main")
            except runlog.RunLogError:
                refused += 1  # the reader's own message: a warning naming the commit in read_history
            else:
                h = site.History([site.Branch("main", [run], run.model)], [run], REPO_URL)
                for html in (pages.index_page(h), pages.run_page(h, run), pages.bugs_page(h), pages.slices_page(h)):
                    assert "<img" not in html and "<x>" not in html and "<k>" not in html
                built += 1
            where[key] = before
    assert built > 500 and refused > 0


def test_charts_escape_and_break_on_missing_values():
    svg = charts.line_chart([("<b>", [(1.0, 0.5), (2.0, None), (3.0, 0.7), (4.0, 0.8)])], title="t<", x_label="x",
                            y_label="y", x_names={1.0: "<run>"})
    assert "<b>" not in svg and "&lt;b&gt;" in svg and "&lt;run&gt;" in svg and svg.count("<polyline") == 1
    assert "nothing recorded" in charts.line_chart([("a", [(1.0, None)])], title="t", x_label="x", y_label="y")
    assert charts.nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0] and charts.nice_ticks(3, 3)[0] == 3
    assert charts.nice_ticks(1, 3, 8, integer=True) == [1, 2, 3] and charts.nice_ticks(0, 2, integer=True) == [0, 1, 2]


def test_history_never_imports_the_training_stack(history_repo, tmp_path):
    # The pages job installs oig without the train extra: the light dependencies must do.
    from test_layout import HEAVY

    code = ("import sys\nfrom oig.cli import main\n"
            f"assert main(['history', '--repo', {str(history_repo)!r}, '--out', {str(tmp_path / 'site')!r}]) == 0\n"
            f"print([m for m in {(*HEAVY, 'jinja2')!r} if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "[]", out.stdout + out.stderr


def test_benchmark_smoke():
    result = bench_history.bench(runs=20, repeat=1, steps=50)
    assert result["runs"] == 20 and result["median_s"] < 5 and result["index_bytes"] < 1_000_000
