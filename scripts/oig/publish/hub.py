"""The Hugging Face Hub: the repo, a branch per git branch, the upload, retries with backoff.

Plain functions over ``huggingface_hub.HfApi``. The endpoint is ``HF_ENDPOINT`` when set (tests point
it at a local server), the token is ``HF_TOKEN`` and nothing else: never a cached login, never a file.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from oig.errors import PublishError, redact, secret
from oig.files import backoff_delay

DEFAULT_ENDPOINT = "https://huggingface.co"
# Left behind on the runner: checkpoints for resuming, optimizer state, the trainer's own logs.
IGNORE_PATTERNS = ["checkpoint-*", "runs/*", "*.pt", "*.pth", "training_args.bin", ".*"]
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
MAX_DELAY_S = 60.0

T = TypeVar("T")


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def token() -> str:
    return secret("HF_TOKEN", PublishError, "publishing to the Hub needs a write token")


def check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or not _REPO_ID.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id:
        raise PublishError(f"hub_repo {repo_id!r} is not a Hub repo id; write it as ORG/NAME "
                           "(letters, digits, '-', '_', '.')")


def current_git_branch(cwd: Path | None = None) -> str | None:
    """The checked-out branch; None when HEAD is detached or this is not a git repository.

    ``symbolic-ref`` rather than ``rev-parse --abbrev-ref``: it also names the branch of a repository
    with no commit yet, and fails (instead of answering "HEAD") when detached.
    """
    try:
        out = subprocess.run(["git", "symbolic-ref", "--short", "-q", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    name = out.stdout.strip()
    return name if out.returncode == 0 and name and name != "HEAD" else None


def branch_name(git_branch: str | None = None) -> str:
    """The Hub branch for this run: the git branch, sanitised; ``main`` for main or when unknown.

    ``OIG_HUB_BRANCH`` wins when set (the train workflow sets ``pr-N`` for a run on a pull request's
    data, so it never replaces the branch's own model). A pull request's checkout is a detached merge
    commit, so GitHub's ``GITHUB_HEAD_REF`` (the PR's branch) comes next; ``GITHUB_REF_NAME`` is the
    branch of a push or a manual run.
    """
    candidates = [os.environ.get("OIG_HUB_BRANCH"), os.environ.get("GITHUB_HEAD_REF"), git_branch,
                  os.environ.get("GITHUB_REF_NAME")]
    name = next((c for c in candidates if c and c != "HEAD"), None) or current_git_branch() or "main"
    return sanitize_branch(name)


def sanitize_branch(name: str) -> str:
    """A name the Hub accepts as a branch and that reads the same in a URL.

    Slashes become '-' too: a revision with '/' is ambiguous in the Hub's file URLs
    (``/resolve/{revision}/{path}``), and ``refs/...`` names are reserved for the Hub's own refs.
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip())
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    cleaned = re.sub(r"-{2,}", "-", cleaned).strip(".-_")
    if cleaned.endswith(".lock"):
        cleaned = cleaned[: -len(".lock")] + "-lock"
    return cleaned[:100] or "main"


# --- errors and retries --------------------------------------------------------------------------


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying: a 5xx or 429 answer, or no answer at all (connection, timeout)."""
    import httpx2
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return False
    code = _status(exc)
    if code is not None:
        return code == 429 or code >= 500
    return isinstance(exc, httpx2.TransportError | ConnectionError | TimeoutError)


def describe(exc: BaseException, repo_id: str) -> str:
    """A one-line reason for a failed Hub call, with the fix when there is a known one."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set, so no Hub call can be made; unset it to publish"
    code = _status(exc)
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if code in (401, 403):
        return (f"the Hub refused the token (HTTP {code}): check that HF_TOKEN is a write token with access "
                f"to {repo_id}")
    if code == 404:
        return f"the Hub answered 404 for {repo_id}: check hub_repo in training.yaml and the token's namespace"
    if code is not None:
        return f"the Hub answered HTTP {code}: {first_line}"
    return f"could not reach the Hub at {endpoint()}: {first_line}"


def with_retries(fn: Callable[[], T], *, what: str, repo_id: str, retries: int = 4, base_delay: float = 2.0,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> T:
    """Call ``fn``; on a transient failure wait and try again, ``retries`` extra attempts at most.

    The wait is ``files.backoff_delay``: exponential backoff with full jitter (a random wait up to
    ``base_delay * 2**attempt``, at most a minute), which keeps several runners that failed together
    from retrying together. ``rng`` (tests) picks the random part.
    """
    attempt = 0
    while True:
        try:
            return fn()
        except PublishError:
            raise
        except Exception as exc:
            if not is_transient(exc) or attempt >= retries:
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise PublishError(redact(f"{what} failed{tries}: {describe(exc, repo_id)}")) from None
            sleep(backoff_delay(attempt, base_s=base_delay, cap_s=MAX_DELAY_S, rng=rng))
            attempt += 1


# --- the upload ---------------------------------------------------------------------------------


def upload_model(model_dir: Path, repo_id: str, *, branch: str, token: str, endpoint: str, commit_message: str,
                 retries: int = 4, base_delay: float = 2.0, sleep: Callable[[float], None] = time.sleep,
                 private: bool | None = None, rng: random.Random | None = None) -> str:
    """Create the repo (and branch), upload the folder to the branch, return the commit sha."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)

    def attempt() -> str:
        # Every step is idempotent, so a retry starts from the top.
        api.create_repo(repo_id, private=private, exist_ok=True)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(model_dir), revision=branch,
                                 commit_message=commit_message, ignore_patterns=IGNORE_PATTERNS)
        oid = getattr(info, "oid", None)
        if not isinstance(oid, str) or not re.fullmatch(r"[0-9a-f]{40}", oid):
            raise PublishError(f"the Hub accepted the upload to {repo_id} but returned no commit sha ({oid!r})")
        return oid

    return with_retries(attempt, what=f"uploading {model_dir} to {repo_id} (branch {branch})", repo_id=repo_id,
                        retries=retries, base_delay=base_delay, sleep=sleep, rng=rng)


# --- before training: the token, the repo and the branch -----------------------------------------------

WRITE_ROLES = ("admin", "write", "contributor")  # roles in an organisation that may push to its repos


def check_access(repo_id: str, *, branch: str, token: str, endpoint: str, retries: int = 2,
                 sleep: Callable[[float], None] = time.sleep) -> None:
    """Fail now, not after hours of training, when the upload would be refused: the token must be valid
    and able to write (a write token, or a fine-grained one with ``repo.write`` on the repo or its
    namespace), the namespace must be the token's user or an organisation where it may write, and the
    repo, when it exists, must be readable with the token (the branch is created from main if new)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    who = with_retries(lambda: api.whoami(), what="checking HF_TOKEN", repo_id=repo_id, retries=retries,
                       sleep=sleep)
    user = who.get("name") or "?"
    access = (who.get("auth") or {}).get("accessToken") or {}
    role = access.get("role")
    namespace = repo_id.split("/")[0]
    if role == "read":
        raise PublishError(f"HF_TOKEN is a read-only token (user {user}); publishing to {repo_id} needs a write "
                           "token (huggingface.co/settings/tokens)")
    if role == "fineGrained":
        scoped = ((access.get("fineGrained") or {}).get("scoped")) or []
        allowed = any("repo.write" in (s.get("permissions") or [])
                      and (s.get("entity") or {}).get("name") in (namespace, repo_id) for s in scoped)
        if not allowed:
            raise PublishError(f"HF_TOKEN is a fine-grained token without `repo.write` on {repo_id} or {namespace}; "
                               "give it write access to the repo or its namespace")
    writable = {user} | {o.get("name") for o in who.get("orgs") or [] if o.get("roleInOrg", "write") in WRITE_ROLES}
    if namespace not in writable:
        raise PublishError(f"HF_TOKEN (user {user}) cannot write to {repo_id}: {namespace} is neither the token's "
                           "user nor an organisation where it has write access; fix hub_repo in training.yaml or "
                           "the token")

    def repo_state() -> None:
        try:
            api.repo_info(repo_id, revision=branch)
        except Exception as exc:
            # 404: a new repo (created in a namespace the token may write) or a new branch (made from main).
            if _status(exc) != 404:
                raise

    with_retries(repo_state, what=f"checking {repo_id} (branch {branch})", repo_id=repo_id, retries=retries,
                 sleep=sleep)

