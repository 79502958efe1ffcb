"""oig.publish.gitops and `oig commit-results` against real git repositories in tmp_path.

Each test has a bare "origin", a "runner" clone that produces results, and an "other" clone that pushes
meanwhile (as a maintainer or another run would). No test touches the network or the user's git config.
"""

from __future__ import annotations

import base64
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from servers import LocalServer, Response

from oig.cli import main
from oig.publish import gitops
from oig.publish.gitops import BOT_EMAIL, BOT_NAME, GitError, commit_results

TOKEN = "ghs_testtoken0123456789abcdef"
NEW_LOG = "# The record of the last training run\nrun_id: new-run\ntrain_loss: 0.5\neval_loss: 0.6\n"


@pytest.fixture(autouse=True)
def _hermetic_git(monkeypatch, tmp_path):
    """No global or system git config: the bot identity fallback is what a bare runner sees."""
    empty = tmp_path / "empty.gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "GIT_DIR",
                 "GIT_WORK_TREE", "GIT_CONFIG_COUNT", "GITHUB_TOKEN", "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(name, raising=False)


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "LC_ALL": "C"}
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"git {args}: {proc.stderr}"
    return proc.stdout.strip()


def identify(repo: Path, name: str) -> None:
    git(repo, "config", "user.name", name)
    git(repo, "config", "user.email", f"{name}@example.org")


def commit_file(repo: Path, path: str, text: str, message: str) -> str:
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    (repo / path).write_text(text)
    git(repo, "add", path)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def origin_file(origin: Path, path: str, branch: str = "main") -> str:
    return git(origin, "show", f"{branch}:{path}") + "\n"


@pytest.fixture
def repos(tmp_path):
    """origin (bare, branch main with a first commit), runner and other (clones of it)."""
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    seed = tmp_path / "seed"
    git(tmp_path, "clone", "-q", str(origin), str(seed))
    identify(seed, "seed")
    (seed / "data").mkdir()
    (seed / "data" / "greetings.yaml").write_text("IOPairs:\n  - input: hi\n    output: hello\n")
    (seed / "training.yaml").write_text("Training:\n  - lr: 0.00002\n")
    (seed / "training_log").write_text("run_id: old-run\ntrain_loss: 1.0\neval_loss: 1.1\n")
    (seed / ".gitignore").write_text("/runs/\n")
    git(seed, "add", ".")
    git(seed, "commit", "-q", "-m", "first")
    git(seed, "push", "-q", "origin", "main")
    runner, other = tmp_path / "runner", tmp_path / "other"
    git(tmp_path, "clone", "-q", str(origin), str(runner))
    git(tmp_path, "clone", "-q", str(origin), str(other))
    identify(other, "other")
    return origin, runner, other


def write_results(runner: Path, log: str = NEW_LOG) -> None:
    (runner / "training_log").write_text(log)
    (runner / "model.yaml").write_text("base_model: tiny\ntrained_at: '2026-11-23T00:00:00Z'\n")


def pre_push_hook(runner: Path, other: Path, times: int) -> Path:
    """A pre-push hook that, the first ``times`` pushes, has ``other`` push a commit first: the race of a
    branch that moves between our fetch and our push."""
    counter = runner.parent / "hook-count"
    hook = runner / ".git" / "hooks" / "pre-push"
    hook.write_text(f"""#!/bin/sh
unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE
n=$(cat '{counter}' 2>/dev/null || echo 0)
[ "$n" -ge {times} ] && exit 0
echo $((n + 1)) > '{counter}'
cd '{other}' && git pull -q --rebase origin main && echo "edit $n" >> README && git add README \\
  && git commit -q -m "meanwhile $n" && git push -q origin main
exit 0
""")
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    return counter


def no_sleep(delays: list[float]):
    return delays.append


# --- the happy path ------------------------------------------------------------------------------------


def test_commit_and_push_results(repos):
    origin, runner, _ = repos
    write_results(runner)
    result = commit_results(["training_log", "model.yaml"], message="Training results", cwd=runner,
                            sleep=no_sleep([]))
    assert result.pushed and result.committed and result.attempts == 1 and result.resolved == []
    assert git(origin, "rev-parse", "main") == result.commit == git(runner, "rev-parse", "HEAD")
    assert origin_file(origin, "training_log") == NEW_LOG
    assert git(origin, "log", "-1", "--format=%s|%an|%ae|%cn", "main") == f"Training results|{BOT_NAME}|{BOT_EMAIL}|{BOT_NAME}"
    assert git(origin, "show", "--name-only", "--format=", "main").split() == ["model.yaml", "training_log"]


def test_commits_only_the_given_files(repos):
    origin, runner, _ = repos
    identify(runner, "maintainer")
    write_results(runner)
    (runner / "training.yaml").write_text("Training:\n  - lr: 0.1\n")  # staged, but not a result
    git(runner, "add", "training.yaml")
    commit_results(["training_log"], cwd=runner, sleep=no_sleep([]))
    assert git(origin, "show", "--name-only", "--format=%an", "main").split() == ["maintainer", "training_log"]
    assert "training.yaml" in git(runner, "diff", "--cached", "--name-only")  # still staged, untouched


def test_nothing_changed_pushes_nothing(repos):
    origin, runner, _ = repos
    write_results(runner)
    first = commit_results(["training_log", "model.yaml"], cwd=runner, sleep=no_sleep([]))
    again = commit_results(["training_log", "model.yaml"], cwd=runner, sleep=no_sleep([]))
    assert first.pushed and not again.pushed and not again.committed
    assert again.commit == first.commit == git(origin, "rev-parse", "main")


def test_pushes_a_new_branch(repos):
    origin, runner, _ = repos
    write_results(runner)
    result = commit_results(["training_log"], branch="results/run-1", cwd=runner, sleep=no_sleep([]))
    assert result.pushed
    assert origin_file(origin, "training_log", "results/run-1") == NEW_LOG
    assert origin_file(origin, "training_log", "main") != NEW_LOG


def test_works_from_a_shallow_detached_checkout(repos, tmp_path):
    # actions/checkout makes a depth-1 clone; a tag or sha checkout leaves HEAD detached.
    origin, _, other = repos
    shallow = tmp_path / "shallow"
    git(tmp_path, "clone", "-q", "--depth", "1", origin.as_uri(), str(shallow))
    git(shallow, "checkout", "-q", "--detach")
    commit_file(other, "README", "moved\n", "meanwhile")
    git(other, "push", "-q", "origin", "main")
    write_results(shallow)
    with pytest.raises(GitError, match="detached.*--branch"):
        commit_results(["training_log"], cwd=shallow, sleep=no_sleep([]))
    result = commit_results(["training_log"], branch="main", cwd=shallow, sleep=no_sleep([]))
    assert result.pushed
    assert git(origin, "log", "--format=%s", "main").splitlines()[:2] == ["Update training results", "meanwhile"]


# --- a branch that moves -------------------------------------------------------------------------------


def test_origin_moves_between_fetch_and_push(repos):
    origin, runner, other = repos
    counter = pre_push_hook(runner, other, times=1)
    write_results(runner)
    delays: list[float] = []
    result = commit_results(["training_log", "model.yaml"], cwd=runner, sleep=no_sleep(delays))
    assert counter.read_text().strip() == "1"  # the race happened
    assert result.pushed and result.attempts == 2 and len(delays) == 1
    subjects = git(origin, "log", "--format=%s", "main").splitlines()
    assert subjects == ["Update training results", "meanwhile 0", "first"]  # ours on top, nothing lost
    assert origin_file(origin, "README") == "edit 0\n"
    assert origin_file(origin, "training_log") == NEW_LOG


def test_gives_up_when_the_branch_keeps_moving(repos):
    origin, runner, other = repos
    pre_push_hook(runner, other, times=99)
    write_results(runner)
    delays: list[float] = []
    with pytest.raises(GitError, match=r"still rejected after 3 attempt\(s\).*committed locally as [0-9a-f]{12} on "
                       r"branch main.*nothing was pushed or lost"):
        commit_results(["training_log"], retries=2, cwd=runner, sleep=no_sleep(delays))
    assert len(delays) == 2 and delays[1] > delays[0]  # backoff
    assert git(runner, "log", "-1", "--format=%s") == "Update training results"
    assert (runner / "training_log").read_text() == NEW_LOG
    assert "Update training results" not in git(origin, "log", "--format=%s", "main")


def test_conflict_on_training_log_keeps_the_new_results(repos):
    origin, runner, other = repos
    commit_file(other, "training_log", "run_id: another-run\ntrain_loss: 0.9\neval_loss: 0.95\n", "another run")
    git(other, "push", "-q", "origin", "main")
    write_results(runner)
    result = commit_results(["training_log", "model.yaml"], cwd=runner, sleep=no_sleep([]))
    assert result.pushed and result.resolved == ["training_log"]
    assert origin_file(origin, "training_log") == NEW_LOG
    assert git(origin, "log", "--format=%s", "main").splitlines() == ["Update training results", "another run", "first"]


def test_clean_merge_of_training_log_still_keeps_exactly_the_new_results(repos):
    # Upstream changed one line, we another: git would merge them silently into neither run's record.
    origin, runner, other = repos
    lines = [f"key{i}: {i}" for i in range(10)]
    commit_file(other, "training_log", "\n".join(lines) + "\n", "a longer log")
    git(other, "push", "-q", "origin", "main")
    git(runner, "pull", "-q", "--ff-only", "origin", "main")
    commit_file(other, "training_log", "\n".join(["# edited upstream", *lines[1:]]) + "\n", "edit the log")
    git(other, "push", "-q", "origin", "main")
    ours = "\n".join([*lines[:-1], "key9: new"]) + "\n"
    write_results(runner, ours)
    result = commit_results(["training_log"], cwd=runner, sleep=no_sleep([]))
    assert result.pushed and result.resolved == []  # no conflict to resolve, and still ours
    assert origin_file(origin, "training_log") == ours
    assert git(origin, "log", "--format=%s", "main").splitlines()[:2] == ["Update training results", "edit the log"]


def test_conflict_on_another_file_stops_cleanly(repos):
    origin, runner, other = repos
    identify(runner, "runner")
    commit_file(runner, "training.yaml", "Training:\n  - lr: 0.5\n", "local tuning, not pushed")
    commit_file(other, "training.yaml", "Training:\n  - lr: 0.9\n", "upstream tuning")
    git(other, "push", "-q", "origin", "main")
    before = git(origin, "rev-parse", "main")
    write_results(runner)
    (runner / "notes.txt").write_text("unrelated work in progress\n")
    with pytest.raises(GitError, match=r"conflict in training.yaml, which is not among the result files.*aborted.*"
                       r"committed locally as [0-9a-f]{12} on branch main"):
        commit_results(["training_log", "model.yaml"], cwd=runner, sleep=no_sleep([]))
    assert git(origin, "rev-parse", "main") == before  # nothing pushed
    assert not (runner / ".git" / "rebase-merge").exists() and not (runner / ".git" / "rebase-apply").exists()
    assert git(runner, "log", "--format=%s").splitlines()[:2] == ["Update training results", "local tuning, not pushed"]
    assert (runner / "training_log").read_text() == NEW_LOG
    assert (runner / "training.yaml").read_text() == "Training:\n  - lr: 0.5\n"
    assert (runner / "notes.txt").read_text() == "unrelated work in progress\n"
    assert git(runner, "status", "--porcelain") == "?? notes.txt"


def test_a_refused_push_is_not_retried_and_a_detached_commit_gets_a_branch(repos):
    origin, runner, _ = repos
    hook = origin / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'protected branch: pushes need a review' >&2\nexit 1\n")
    hook.chmod(0o755)
    git(runner, "checkout", "-q", "--detach")
    write_results(runner)
    delays: list[float] = []
    with pytest.raises(GitError, match=r"origin refused the push to main: .*protected branch.*"
                       r"on branch oig-results-[0-9a-f]{12}") as info:
        commit_results(["training_log"], branch="main", cwd=runner, sleep=no_sleep(delays))
    assert delays == []
    rescue = re.search(r"oig-results-[0-9a-f]{12}", str(info.value)).group(0)
    assert git(runner, "rev-parse", rescue) == git(runner, "rev-parse", "HEAD")
    assert git(runner, "log", "-1", "--format=%s", rescue) == "Update training results"


def test_unrelated_edits_in_the_work_tree_survive_the_rebase(repos):
    origin, runner, other = repos
    commit_file(other, "README", "upstream\n", "meanwhile")
    git(other, "push", "-q", "origin", "main")
    write_results(runner)
    (runner / "data" / "greetings.yaml").write_text("IOPairs: []\n")  # a run may leave edits behind
    result = commit_results(["training_log", "model.yaml"], cwd=runner, sleep=no_sleep([]))
    assert result.pushed
    assert (runner / "data" / "greetings.yaml").read_text() == "IOPairs: []\n"
    assert "IOPairs: []" not in origin_file(origin, "data/greetings.yaml")


def test_never_force_pushes(repos, monkeypatch):
    _, runner, other = repos
    pre_push_hook(runner, other, times=1)
    calls: list[tuple[str, ...]] = []
    original = gitops._Git.__call__

    def spy(self, *args, **kw):
        calls.append(args)
        return original(self, *args, **kw)

    monkeypatch.setattr(gitops._Git, "__call__", spy)
    write_results(runner)
    commit_results(["training_log"], cwd=runner, sleep=no_sleep([]))
    pushes = [c for c in calls if c[0] == "push"]
    assert len(pushes) == 2
    for push in pushes:
        assert not any(a.startswith(("--force", "-f", "+")) or a == "--mirror" for a in push[1:])


# --- credentials ---------------------------------------------------------------------------------------


def test_github_token_is_sent_in_a_header_and_never_shown(repos, monkeypatch):
    _, runner, _ = repos
    calls: list[tuple[str, ...]] = []
    original = gitops._Git.__call__

    def spy(self, *args, **kw):
        calls.append(args)
        return original(self, *args, **kw)

    monkeypatch.setattr(gitops._Git, "__call__", spy)
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    with LocalServer({"/org/repo.git/info/refs": Response(403, b"denied " + TOKEN.encode())}) as server:
        git(runner, "remote", "set-url", "origin", f"{server.url}/org/repo.git")
        write_results(runner)
        with pytest.raises(GitError) as info:
            commit_results(["training_log"], cwd=runner, sleep=no_sleep([]))
        seen = [r.headers.get("authorization", "") for r in server.requests]
    message = str(info.value)
    assert "403" in message and "could not fetch" in message
    assert TOKEN not in message and base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode() not in message
    assert seen and seen[0].lower() == "basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode().lower()
    assert not any(TOKEN in a for c in calls for a in c)  # never on a command line
    assert TOKEN not in (runner / ".git" / "config").read_text()  # never in a config file


def test_no_token_for_plain_http_to_another_host(repos, monkeypatch):
    _, runner, _ = repos
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    g = gitops._open(runner)
    assert gitops._auth_env(g, "http://example.org/org/repo.git") == {}
    assert gitops._auth_env(g, "/srv/git/repo.git") == {}
    env = gitops._auth_env(g, "https://github.com/org/repo.git")
    assert env["GIT_CONFIG_COUNT"] == "1" and env["GIT_CONFIG_KEY_0"] == "http.https://github.com/.extraheader"
    git(runner, "config", "http.https://github.com/.extraheader", "AUTHORIZATION: basic kept")
    assert gitops._auth_env(g, "https://github.com/org/repo.git") == {}  # the checkout's own credentials


# --- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("setup", "kwargs", "match"), [
    (None, {"paths": ["missing_file"]}, "missing_file: no such file"),
    (None, {"paths": []}, "no files to commit"),
    (None, {"paths": ["../outside.txt"]}, "outside the repository"),
    ("ignored", {"paths": ["runs/log.txt"]}, "ignored by .gitignore"),
    (None, {"paths": ["training_log"], "remote": "upstream"}, "no remote named 'upstream'"),
    (None, {"paths": ["training_log"], "remote": "--upload-pack=x"}, "not a remote name"),
    (None, {"paths": ["training_log"], "branch": "bad..name"}, "not a valid branch name"),
    (None, {"paths": ["training_log"], "retries": -1}, "0 or more"),
    (None, {"paths": ["training_log"], "message": "  "}, "message is empty"),
])
def test_bad_input_gives_a_clear_error(repos, setup, kwargs, match):
    _, runner, _ = repos
    (runner.parent / "outside.txt").write_text("x\n")
    if setup == "ignored":
        (runner / "runs").mkdir()
        (runner / "runs" / "log.txt").write_text("x\n")
    write_results(runner)
    with pytest.raises(GitError, match=match):
        commit_results(cwd=runner, sleep=no_sleep([]), **kwargs)


def test_not_a_repository(tmp_path):
    (tmp_path / "training_log").write_text("x\n")
    with pytest.raises(GitError, match="not inside a git repository"):
        commit_results(["training_log"], cwd=tmp_path)


def test_refuses_to_start_during_a_rebase(repos):
    _, runner, _ = repos
    (runner / ".git" / "rebase-merge").mkdir()
    write_results(runner)
    with pytest.raises(GitError, match="rebase is already in progress"):
        commit_results(["training_log"], cwd=runner)


# --- the command ---------------------------------------------------------------------------------------


def test_cli_commits_and_pushes(repos, monkeypatch, capsys, tmp_path):
    origin, runner, other = repos
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.chdir(runner)
    monkeypatch.setattr(gitops, "BASE_DELAY_S", 0.01)
    pre_push_hook(runner, other, times=1)
    write_results(runner)
    code = main(["commit-results", "--message", "Results of run 7", "--retries", "2", "training_log", "model.yaml"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "pushed" in err and "origin/main" in err and "after 2 attempts" in err
    assert git(origin, "log", "-1", "--format=%s", "main") == "Results of run 7"
    assert git(origin, "rev-parse", "main") in summary.read_text()
    assert main(["commit-results", "training_log", "model.yaml"]) == 0
    assert "nothing to push" in capsys.readouterr().err


def test_cli_errors_and_usage(repos, monkeypatch, capsys):
    _, runner, _ = repos
    monkeypatch.chdir(runner)
    assert main(["commit-results", "nope.yaml"]) == 1
    assert "oig commit-results: error: nope.yaml: no such file" in capsys.readouterr().err
    assert main(["commit-results"]) == 2
    assert main(["commit-results", "--retries", "many", "training_log"]) == 2
    assert main(["commit-results", "--help"]) == 0
    assert "--retries" in capsys.readouterr().out
