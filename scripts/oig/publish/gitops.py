"""Committing generated results (training_log, model.yaml) back to the branch a run was started on.

``commit_results`` commits the given files and pushes them with a fetch, rebase, push loop: the branch
may move while a model trains for hours, so a rejected push is retried with backoff on top of the new
tip. The result files are generated, so a rebase conflict on them is resolved in favour of the new
results; a conflict on any other file aborts the rebase and raises ``GitError``, leaving the results
commit on a local branch and the files in the work tree. It never force-pushes.

Git runs as a subprocess with explicit argument lists, in the C locale (its messages are parsed),
never prompting for a password. ``GITHUB_TOKEN``, when set, reaches git through the environment
(``GIT_CONFIG_*``), never the command line or a config file, and is masked in every message.
"""

from __future__ import annotations

import base64
import os
import random
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from oig.errors import OigError, redact

# The identity GitHub shows for commits made with GITHUB_TOKEN; used only when git has none configured.
BOT_NAME = "github-actions[bot]"
BOT_EMAIL = "41898282+github-actions[bot]@users.noreply.github.com"
DEFAULT_MESSAGE = "Update training results"
DEFAULT_RETRIES = 5
BASE_DELAY_S = 2.0
MAX_DELAY_S = 60.0
LOCAL_TIMEOUT_S = 120  # commit, rebase: local work
NETWORK_TIMEOUT_S = 600  # fetch, push: a large repository over a slow link
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}

# A push that lost a race: the branch moved between our fetch and our push. Worth a fetch and a rebase.
_RACE = re.compile(r"\[rejected\]|cannot lock ref|failed to update ref|incorrect old value", re.I)
# The network or the server failed for a moment: worth trying again as it is.
_TRANSIENT = re.compile(
    r"could not resolve host|failed to connect|connection (timed out|reset|refused)|timed out|"
    r"the remote end hung up|rpc failed|early eof|returned error: 5\d\d|temporary failure|"
    r"unable to access .*: (recv|send) failure", re.I)


class GitError(OigError):
    """A git command failed, the push was refused, or a rebase met a conflict that is not ours to resolve."""


@dataclass
class CommitResult:
    branch: str
    remote: str
    commit: str | None  # the commit now at the tip of the remote branch; None when nothing was pushed
    committed: bool  # a new commit was made from the given files
    pushed: bool
    attempts: int = 0  # push attempts
    resolved: list[str] = field(default_factory=list)  # result files taken from the new results on rebase


@dataclass
class _Git:
    """Runs git in one repository with one environment; every message it raises is secret-free."""

    root: Path
    env: dict[str, str]
    secrets: list[str]

    def __call__(self, *args: str, check: bool = True, timeout: float = LOCAL_TIMEOUT_S) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run(["git", *args], cwd=self.root, env=self.env, capture_output=True, text=True,
                            timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise GitError("git is not installed (or not on PATH)") from None
        except subprocess.TimeoutExpired:
            raise GitError(f"`git {args[0]}` took longer than {timeout:g} s and was stopped") from None
        if check and proc.returncode != 0:
            raise GitError(f"`git {' '.join(_shown(args))}` failed: {self.clean(proc.stderr or proc.stdout)}")
        return proc

    def out(self, *args: str, **kw) -> str:
        return self(*args, **kw).stdout.strip()

    def ok(self, *args: str, **kw) -> bool:
        return self(*args, check=False, **kw).returncode == 0

    def clean(self, text: str) -> str:
        """The last lines of git's output, with tokens and credentials in URLs masked."""
        text = redact(text, values=tuple(self.secrets))
        text = re.sub(r"(://)[^/@\s]+@", r"\1***@", text)
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        return " / ".join(lines[-4:]) or "no message"


def _shown(args: tuple[str, ...]) -> tuple[str, ...]:
    # A commit message can be long; the command's shape is what helps.
    return tuple(a if len(a) <= 60 else a[:57] + "..." for a in args)


def commit_results(paths: list[str | Path], *, message: str = DEFAULT_MESSAGE, remote: str = "origin",
                   branch: str | None = None, retries: int = DEFAULT_RETRIES, cwd: str | Path = ".",
                   sleep: Callable[[float], None] = time.sleep) -> CommitResult:
    """Commit ``paths`` (generated result files) and push them to ``remote``/``branch``.

    ``branch`` defaults to the checked-out branch. The push is tried up to ``retries + 1`` times; before
    each, the remote branch is fetched and the local commits are rebased onto it.
    """
    if retries < 0:
        raise GitError(f"--retries must be 0 or more, not {retries}")
    if not message.strip():
        raise GitError("the commit message is empty")
    git = _open(Path(cwd))

    # --- what to commit, where to push ----------------------------------------------------------------
    files = _repo_paths(git, paths, Path(cwd))
    if _rebase_in_progress(git):
        raise GitError("a rebase is already in progress in this repository; finish it (`git rebase --continue`) "
                       "or abort it (`git rebase --abort`) first")
    url = _remote_url(git, remote)
    git.env.update(_auth_env(git, url))
    branch = branch or _current_branch(git)
    if not git.ok("check-ref-format", "--branch", branch):
        raise GitError(f"{branch!r} is not a valid branch name")

    # --- the commit: only these files, whatever else is staged ----------------------------------------
    git("add", "--", *files)
    committed = not git.ok("diff", "--cached", "--quiet", "HEAD", "--", *files) if _has_head(git) else True
    if committed:
        git("commit", "--quiet", "--only", "-m", message, "--", *files)
    if not _has_head(git):
        raise GitError("there is nothing to push: the repository has no commit")
    results_commit = git.out("rev-parse", "HEAD")

    # --- fetch, rebase, push; again with backoff while the branch keeps moving ------------------------
    result = CommitResult(branch=branch, remote=remote, commit=None, committed=committed, pushed=False)
    try:
        _sync_and_push(git, files, results_commit, result, retries, sleep)
    except GitError as exc:
        raise GitError(f"{exc}. {_where_results_are(git, committed)}") from None
    return result


def _sync_and_push(git: _Git, files: list[str], results_commit: str, result: CommitResult, retries: int,
                   sleep: Callable[[float], None]) -> None:
    remote, branch = result.remote, result.branch
    tracking = f"refs/remotes/{remote}/{branch}"
    for attempt in range(1, retries + 2):
        last = attempt == retries + 1
        proc = git("fetch", "--quiet", "--no-tags", remote, f"+refs/heads/{branch}:{tracking}", check=False,
                   timeout=NETWORK_TIMEOUT_S)
        if proc.returncode == 0:
            upstream: str | None = git.out("rev-parse", tracking)
        elif "couldn't find remote ref" in proc.stderr.lower():
            upstream = None  # a new branch: the push creates it
        elif _TRANSIENT.search(proc.stderr) and not last:
            sleep(_delay(attempt))
            continue
        else:
            raise GitError(f"could not fetch {branch} from {remote}: {git.clean(proc.stderr)}")

        head = git.out("rev-parse", "HEAD")
        if upstream is not None:
            if git.ok("merge-base", "--is-ancestor", head, upstream):
                result.commit = upstream  # everything here is already there: nothing to push
                return
            if not git.ok("merge-base", "--is-ancestor", upstream, head):
                result.resolved = sorted(set(result.resolved) | set(_rebase(git, upstream, files)))
                _pin_results(git, files, results_commit, upstream)
        head = git.out("rev-parse", "HEAD")

        result.attempts = attempt
        proc = git("push", "--porcelain", remote, f"HEAD:refs/heads/{branch}", check=False,
                   timeout=NETWORK_TIMEOUT_S)
        if proc.returncode == 0:
            result.commit, result.pushed = head, True
            return
        output = f"{proc.stdout}\n{proc.stderr}"
        retryable = _RACE.search(output) or _TRANSIENT.search(output)
        if not retryable:
            raise GitError(f"{remote} refused the push to {branch}: {git.clean(output)}")
        if last:
            raise GitError(f"the push to {remote}/{branch} was still rejected after {attempt} attempt(s): "
                           f"{git.clean(output)}")
        sleep(_delay(attempt))


def _delay(attempt: int) -> float:
    # Jitter keeps two runners that lost the same race from retrying in step.
    return min(BASE_DELAY_S * 2 ** (attempt - 1), MAX_DELAY_S) + random.uniform(0, 1)


def _rebase(git: _Git, upstream: str, files: list[str]) -> list[str]:
    """Rebase the local commits onto ``upstream``; returns the result files whose conflicts were resolved.

    Autostash keeps unrelated edits in the work tree (a run may leave some) out of the way and puts
    them back afterwards.
    """
    resolved: list[str] = []
    replayed = int(git.out("rev-list", "--count", f"{upstream}..HEAD"))
    proc = git("rebase", "--autostash", upstream, check=False)
    for _ in range(replayed + 1):  # at most one stop per replayed commit
        if not _rebase_in_progress(git):
            break
        conflicted = [p for p in git.out("diff", "--name-only", "--diff-filter=U", "-z").split("\0") if p]
        others = [p for p in conflicted if p not in files]
        if others or not conflicted:
            why = (f"a conflict in {', '.join(others)}, which {'is' if len(others) == 1 else 'are'} not "
                   "among the result files" if others else git.clean(proc.stderr or proc.stdout))
            git("rebase", "--abort", check=False)
            raise GitError(f"could not rebase onto the remote branch: {why}; the rebase was aborted")
        for path in conflicted:
            # Stage 3 is the commit being replayed: the new results. Absent there means it deleted them.
            stages = [s.split()[2] for s in git.out("ls-files", "-u", "-z", "--", path).split("\0") if s]
            if "3" in stages:
                git("checkout", "--theirs", "--", path)
                git("add", "--", path)
            else:
                git("rm", "--quiet", "--", path)
            resolved.append(path)
        proc = git("rebase", "--continue", check=False)
        if proc.returncode and _rebase_in_progress(git) and not git.out("diff", "--name-only", "--diff-filter=U"):
            # The resolution left the commit empty (the remote already had these exact results).
            proc = git("rebase", "--skip", check=False)
    if _rebase_in_progress(git):
        git("rebase", "--abort", check=False)
        raise GitError("could not rebase onto the remote branch: it kept stopping; the rebase was aborted")
    if not git.ok("merge-base", "--is-ancestor", upstream, "HEAD"):
        raise GitError(f"could not rebase onto the remote branch: {git.clean(proc.stderr or proc.stdout)}")
    return resolved


def _pin_results(git: _Git, files: list[str], results_commit: str, upstream: str) -> None:
    """Make the tip hold exactly the new results, even where the rebase merged them without a conflict.

    A text merge of two generated files is neither run's record, so the results commit's version wins.
    """
    stale = [f for f in files if _blob(git, "HEAD", f) != _blob(git, results_commit, f)]
    if not stale:
        return
    present = [f for f in stale if _blob(git, results_commit, f)]
    if present:
        git("checkout", results_commit, "--", *present)
    gone = [f for f in stale if f not in present]
    if gone:
        git("rm", "--quiet", "--ignore-unmatch", "--", *gone)
    # Amend our own commit; the remote's tip is never rewritten (that push would need a force).
    if git.out("rev-parse", "HEAD") == upstream:
        git("commit", "--quiet", "-C", results_commit)
    else:
        git("commit", "--quiet", "--amend", "--no-edit")


def _blob(git: _Git, commit: str, path: str) -> str | None:
    proc = git("rev-parse", "--verify", "--quiet", f"{commit}:{path}", check=False)
    return proc.stdout.strip() or None


def _where_results_are(git: _Git, committed: bool) -> str:
    """Say where the results are after a failure, giving a detached HEAD's commit a branch to live on.

    HEAD, not the first results commit: after a rebase that later failed to push, HEAD is its newer copy.
    """
    commit = git.out("rev-parse", "HEAD")
    branch = git.out("symbolic-ref", "--short", "-q", "HEAD", check=False)
    if not branch:
        branch = f"oig-results-{commit[:12]}"
        git("branch", "--force", branch, commit, check=False)
    what = "The results are committed" if committed else "The commit to push is"
    return (f"{what} locally as {commit[:12]} on branch {branch}, and the files are in the work tree; "
            "nothing was pushed or lost")


# --- the repository ------------------------------------------------------------------------------------


def _open(cwd: Path) -> _Git:
    env = dict(os.environ)
    env.update({"LC_ALL": "C", "LANGUAGE": "C", "GIT_TERMINAL_PROMPT": "0", "GIT_EDITOR": "true",
                "GIT_SEQUENCE_EDITOR": "true", "GIT_ASKPASS": "", "SSH_ASKPASS": "",
                "GIT_SSH_COMMAND": env.get("GIT_SSH_COMMAND") or "ssh -o BatchMode=yes"})
    token = os.environ.get("GITHUB_TOKEN", "").strip()
    secrets = [token, _basic_auth(token)] if len(token) >= 4 else []
    probe = _Git(cwd, env, secrets)
    if not cwd.is_dir():
        raise GitError(f"{cwd} is not a folder")
    proc = probe("rev-parse", "--show-toplevel", check=False)
    if proc.returncode != 0:
        raise GitError(f"{cwd.resolve()} is not inside a git repository")
    root = Path(proc.stdout.strip())
    git = _Git(root, env, secrets)
    for key, fallback in (("user.name", BOT_NAME), ("user.email", BOT_EMAIL)):
        if not git.out("config", "--get", key, check=False):
            kind = key.split(".")[1].upper()
            env[f"GIT_AUTHOR_{kind}"] = env[f"GIT_COMMITTER_{kind}"] = fallback
    return git


def _repo_paths(git: _Git, paths: list[str | Path], base: Path) -> list[str]:
    """The given files (relative to ``base``) as paths from the repository root; each must be a file in it."""
    if not paths:
        raise GitError("no files to commit: name the result files (training_log, model.yaml, ...)")
    root = git.root.resolve()
    out: list[str] = []
    for p in paths:
        given = Path(p)
        full = (given if given.is_absolute() else base / given).resolve()
        try:
            rel = full.relative_to(root).as_posix()
        except ValueError:
            raise GitError(f"{p} is outside the repository at {root}") from None
        if not full.is_file():
            raise GitError(f"{p}: no such file (did the run write it?)")
        if rel.startswith(".git/"):
            raise GitError(f"{p} is inside .git")
        if git.ok("check-ignore", "-q", "--", rel):
            raise GitError(f"{p} is ignored by .gitignore, so it cannot be committed")
        if rel not in out:
            out.append(rel)
    return out


def _current_branch(git: _Git) -> str:
    name = git.out("symbolic-ref", "--short", "-q", "HEAD", check=False)
    if not name:
        raise GitError("HEAD is detached: name the branch to push to with --branch")
    return name


def _remote_url(git: _Git, remote: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", remote):
        raise GitError(f"{remote!r} is not a remote name")
    proc = git("remote", "get-url", remote, check=False)
    if proc.returncode != 0:
        raise GitError(f"this repository has no remote named {remote!r} (see `git remote -v`)")
    return proc.stdout.strip()


def _has_head(git: _Git) -> bool:
    return git.ok("rev-parse", "--verify", "--quiet", "HEAD")


def _rebase_in_progress(git: _Git) -> bool:
    for name in ("rebase-merge", "rebase-apply"):
        where = git.out("rev-parse", "--git-path", name)
        if (git.root / where).exists():
            return True
    return False


# --- credentials ---------------------------------------------------------------------------------------


def _basic_auth(token: str) -> str:
    return base64.b64encode(f"x-access-token:{token}".encode()).decode()


def _auth_env(git: _Git, url: str) -> dict[str, str]:
    """GIT_CONFIG_* variables that send GITHUB_TOKEN to the remote's host, the way actions/checkout does.

    Only over https (or plain http to this machine), and not when the repository already has an auth
    header configured (a checkout that kept its credentials): two headers would be refused.
    """
    token = os.environ.get("GITHUB_TOKEN", "").strip()
    parts = urlsplit(url)
    if not token or not parts.hostname:
        return {}
    if not (parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK)):
        return {}
    if git.ok("config", "--get-regexp", r"^http\..*extraheader$"):
        return {}
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    prefix = f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}/"
    try:
        n = int(git.env.get("GIT_CONFIG_COUNT") or 0)
    except ValueError:
        n = 0
    return {"GIT_CONFIG_COUNT": str(n + 1), f"GIT_CONFIG_KEY_{n}": f"http.{prefix}.extraheader",
            f"GIT_CONFIG_VALUE_{n}": f"AUTHORIZATION: basic {_basic_auth(token)}"}
