"""A small GitHub REST client: the issue, comment and label calls the bug workflows need.

Plain httpx, nothing else. The token comes only from ``GITHUB_TOKEN`` and never appears in messages.
``GITHUB_API_URL`` (set by GitHub Actions, and by tests to a local server) overrides the API root.

- Lists follow the ``Link: rel="next"`` header, up to ``MAX_PAGES`` pages, and only on the API's own
  host: a next link elsewhere would carry the token there.
- Server errors (5xx), 429 and the secondary rate limit (403 with ``Retry-After``, an exhausted
  ``x-ratelimit-remaining`` or "secondary rate limit" in the message) are retried with
  ``oig.files.backoff_delay`` (full jitter under 1, 2, 4, ... s), honouring ``Retry-After`` up to
  ``MAX_WAIT_S``. Every other failure is a :class:`GitHubError` that
  says what was being done and what to check.
- A POST that creates a comment is never simply sent again: when a 502 follows a POST that GitHub
  carried out, a second POST would post the comment twice. :meth:`GitHub.upsert_comment` lists the
  comments again before each retry and updates the one it finds instead.
- Answers are read up to ``MAX_RESPONSE_BYTES``; anything that is not the JSON expected is an error.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from urllib.parse import quote, urlsplit

import httpx

from oig import files
from oig.errors import OigError, redact

DEFAULT_API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
USER_AGENT = "oig-bugs"
PER_PAGE = 100
MAX_PAGES = 50  # 5,000 issues or comments; a bug tracker bigger than that needs another tool
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
MAX_WAIT_S = 60.0  # longest Retry-After honoured; a longer wait fails with the reason instead
REPO = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}")
# Who posts comments with GITHUB_TOKEN in Actions; OIG_BOT_LOGIN names another account (a PAT's user).
DEFAULT_BOT_LOGIN = "github-actions[bot]"


class GitHubError(OigError):
    """A GitHub API call failed; the message says which call and what to check."""

    def __init__(self, message: str, status: int | None = None, *, retryable: bool = False,
                 retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retryable = retryable  # a 5xx, a rate limit or no answer: trying again may work
        self.retry_after = retry_after


def token_from_env() -> str | None:
    return os.environ.get("GITHUB_TOKEN", "").strip() or None


def check_repo(repo: str) -> str:
    if not isinstance(repo, str) or not REPO.fullmatch(repo) or repo.endswith((".", "/..")):
        raise GitHubError(f"{repo!r} is not a repository name; expected OWNER/NAME")
    return repo


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        if response.headers.get("x-ratelimit-remaining") == "0" and response.headers.get("x-ratelimit-reset"):
            try:
                return max(0.0, float(response.headers["x-ratelimit-reset"]) - time.time())
            except ValueError:
                return None
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _message(response: httpx.Response) -> str:
    """GitHub's own explanation from an error answer, cut short."""
    try:
        data = json.loads(response.content[:65536])
        text = str(data.get("message", "")) if isinstance(data, dict) else ""
        errors = data.get("errors") if isinstance(data, dict) else None
        if isinstance(errors, list) and errors:
            details = [str(e.get("message") or e.get("code") or e) if isinstance(e, dict) else str(e) for e in errors[:3]]
            text = f"{text} ({'; '.join(details)})" if text else "; ".join(details)
    except ValueError:
        text = response.text[:200]
    text = " ".join(text.split())
    return text[:300] or response.reason_phrase or "no detail"


def _is_secondary_limit(response: httpx.Response) -> bool:
    if response.status_code == 429:
        return True
    if response.status_code != 403:
        return False
    if "retry-after" in response.headers or response.headers.get("x-ratelimit-remaining") == "0":
        return True
    return "rate limit" in _message(response).lower()


def _next_link(header: str | None) -> str | None:
    """The rel="next" URL of a Link header."""
    if not header:
        return None
    for part in header.split(","):
        m = re.match(r'\s*<([^>]+)>\s*;(.*)', part)
        if m and re.search(r'rel\s*=\s*"?next"?', m.group(2)):
            return m.group(1)
    return None


class GitHub:
    """The REST API of one repository. ``sleep`` and ``rng`` (the jitter) are injectable so tests of the
    retries take no time and know the waits."""

    def __init__(self, repo: str, token: str | None = None, *, api_url: str | None = None,
                 max_retries: int = 4, timeout: float = 30.0, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None, transport: httpx.BaseTransport | None = None):
        self.repo = check_repo(repo)
        self.token = token if token is not None else token_from_env()
        self.api_url = (api_url or os.environ.get("GITHUB_API_URL") or DEFAULT_API_URL).rstrip("/")
        if urlsplit(self.api_url).scheme not in ("http", "https"):
            raise GitHubError(f"GITHUB_API_URL must be an http(s) URL, not {self.api_url!r}")
        self.max_retries = max_retries
        self.sleep = sleep
        self.rng = rng
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION,
                   "User-Agent": USER_AGENT}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._client = httpx.Client(headers=headers, timeout=timeout, transport=transport, follow_redirects=False)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> GitHub:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the transport -------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.api_url}{path}"

    def _same_origin(self, url: str) -> bool:
        a, b = urlsplit(url), urlsplit(self.api_url)
        return (a.scheme, a.netloc) == (b.scheme, b.netloc)

    def request(self, method: str, path: str, what: str, *, json_body: object = None,
                params: dict | None = None, ok_missing: bool = False,
                retry: bool = True) -> tuple[object, httpx.Headers]:
        """One call with retries. Returns (parsed JSON or None, headers); 404 gives None with ok_missing.

        ``retry=False`` sends it once: a failure worth retrying raises a GitHubError with ``retryable``
        set, for a caller that must check what happened before sending it again.
        """
        url = self._url(path)
        if not self._same_origin(url):
            raise GitHubError(f"{what}: refusing to send the token to {urlsplit(url).netloc}, which is not "
                              f"the API host {urlsplit(self.api_url).netloc}")
        retries = self.max_retries if retry else 0
        attempt = 0
        while True:
            try:
                response = self._send(method, url, json_body, params)
            except httpx.HTTPError as exc:
                if attempt < retries:
                    self.sleep(self._backoff(attempt, None))
                    attempt += 1
                    continue
                detail = redact(str(exc) or type(exc).__name__, values=(self.token or '',))
                raise GitHubError(f"{what}: could not reach {urlsplit(self.api_url).netloc} ({detail})",
                                  retryable=True) from None
            status = response.status_code
            retryable = status >= 500 or _is_secondary_limit(response)
            wait = _retry_after(response) if retryable else None
            if wait is not None and wait > MAX_WAIT_S:
                raise GitHubError(f"{what}: GitHub's rate limit asks to wait {wait:.0f} s; try again later", status)
            if retryable and attempt < retries:
                self.sleep(self._backoff(attempt, wait))
                attempt += 1
                continue
            return self._result(response, what, ok_missing, tries=attempt + 1)

    def _send(self, method: str, url: str, json_body: object, params: dict | None) -> httpx.Response:
        with self._client.stream(method, url, json=json_body, params=params) as response:
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise GitHubError(f"GitHub's answer to {method} {urlsplit(url).path} is larger than "
                                      f"{MAX_RESPONSE_BYTES:,} bytes")
                chunks.append(chunk)
            # The chunks are already decoded: a copy without the encoding headers holds them as they are.
            headers = [(k, v) for k, v in response.headers.multi_items()
                       if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
            return httpx.Response(response.status_code, headers=headers, content=b"".join(chunks),
                                  request=response.request)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        return files.backoff_delay(attempt, cap_s=MAX_WAIT_S, retry_after_s=retry_after, rng=self.rng)

    def _result(self, response: httpx.Response, what: str, ok_missing: bool,
                tries: int = 1) -> tuple[object, httpx.Headers]:
        status = response.status_code
        if status == 404 and ok_missing:
            return None, response.headers
        if status >= 400:
            detail = redact(_message(response), values=(self.token or '',))
            hint = {
                401: "GitHub refused the token: check GITHUB_TOKEN",
                403: "the token may not do this: the workflow needs `permissions: issues: write`"
                if self.token else "no GITHUB_TOKEN is set",
                404: f"not found: check the repository {self.repo} and the issue number, and that the token "
                     "can see it",
                410: "issues are disabled in this repository",
                422: "GitHub refused the request",
            }.get(status, "GitHub answered with an error")
            retryable = status >= 500 or _is_secondary_limit(response)
            if retryable:
                hint = f"GitHub kept failing after {tries} tries" if tries > 1 else "GitHub failed"
            raise GitHubError(f"{what}: {hint} (HTTP {status}: {detail})", status, retryable=retryable,
                              retry_after=_retry_after(response) if retryable else None)
        if status == 204 or not response.content:
            return None, response.headers
        try:
            return json.loads(response.content), response.headers
        except ValueError:
            raise GitHubError(f"{what}: GitHub's answer (HTTP {status}) is not JSON") from None

    def paginate(self, path: str, what: str, params: dict | None = None) -> Iterator[dict]:
        """Every item of a list endpoint, page by page."""
        url: str | None = self._url(path)
        query = {"per_page": PER_PAGE, **(params or {})}
        for _ in range(MAX_PAGES):
            if url is None:
                return
            data, headers = self.request("GET", url, what, params=query)
            if not isinstance(data, list):
                raise GitHubError(f"{what}: expected a list from GitHub, got {type(data).__name__}")
            for item in data:
                if isinstance(item, dict):
                    yield item
            url = _next_link(headers.get("link"))
            query = None  # the next link carries the query itself
            if url is not None and not self._same_origin(url):
                raise GitHubError(f"{what}: GitHub's next page points to another host ({urlsplit(url).netloc})")
        if url is not None:
            raise GitHubError(f"{what}: more than {MAX_PAGES * PER_PAGE:,} items; narrow the query")

    # --- issues, comments, labels ----------------------------------------------------------------------

    def _repo_path(self, rest: str) -> str:
        return f"/repos/{self.repo}{rest}"

    def open_issues(self, label: str | None = None) -> list[dict]:
        """Open issues (not pull requests), optionally only those with ``label``."""
        params = {"state": "open"}
        if label:
            params["labels"] = label
        what = f"listing the open issues of {self.repo}"
        return [i for i in self.paginate(self._repo_path("/issues"), what, params) if "pull_request" not in i]

    def issue(self, number: int) -> dict | None:
        data, _ = self.request("GET", self._repo_path(f"/issues/{int(number)}"), f"reading issue #{number}",
                               ok_missing=True)
        return data if isinstance(data, dict) else None

    def comments(self, number: int) -> list[dict]:
        return list(self.paginate(self._repo_path(f"/issues/{int(number)}/comments"),
                                  f"reading the comments of issue #{number}"))

    def create_comment(self, number: int, body: str, *, retry: bool = True) -> dict:
        """Post a comment. With retries a 5xx after GitHub posted it can post it twice: comments that
        must exist once go through :meth:`upsert_comment`."""
        data, _ = self.request("POST", self._repo_path(f"/issues/{int(number)}/comments"),
                               f"commenting on issue #{number}", json_body={"body": body}, retry=retry)
        return data if isinstance(data, dict) else {}

    def update_comment(self, comment_id: int, body: str) -> dict:
        data, _ = self.request("PATCH", self._repo_path(f"/issues/comments/{int(comment_id)}"),
                               f"updating comment {comment_id}", json_body={"body": body})
        return data if isinstance(data, dict) else {}

    def sticky_comment(self, number: int, marker: str, bot_login: str | None = None) -> dict | None:
        """The first comment by the bot that starts with ``marker``. Only the bot's comments count:
        anyone can paste the marker into a comment of their own."""
        login = bot_login or os.environ.get("OIG_BOT_LOGIN") or DEFAULT_BOT_LOGIN
        for comment in self.comments(number):
            author = (comment.get("user") or {}).get("login")
            if author == login and str(comment.get("body", "")).startswith(marker):
                return comment
        return None

    def upsert_comment(self, number: int, marker: str, body: str, bot_login: str | None = None) -> tuple[str, dict]:
        """Update the comment this tool left before (see :meth:`sticky_comment`), or post one.

        Returns ("created" | "updated" | "unchanged", comment). The comments are listed again before
        every post, retries included, so a post that GitHub carried out before answering 502 is
        updated, not posted a second time.
        """
        attempt = 0
        while True:
            comment = self.sticky_comment(number, marker, bot_login)
            if comment is not None:
                done = "created" if attempt else None  # this call's own earlier post went through
                if comment.get("body") == body:
                    return done or "unchanged", comment
                return done or "updated", self.update_comment(comment["id"], body)
            try:
                return "created", self.create_comment(number, body, retry=False)
            except GitHubError as exc:
                if not exc.retryable:
                    raise
                if attempt >= self.max_retries:
                    raise GitHubError(f"{exc} ({attempt + 1} tries)", exc.status) from None
                self.sleep(self._backoff(attempt, exc.retry_after))
                attempt += 1

    def add_labels(self, number: int, labels: list[str]) -> None:
        self.request("POST", self._repo_path(f"/issues/{int(number)}/labels"),
                     f"labelling issue #{number}", json_body={"labels": list(labels)})

    def remove_label(self, number: int, label: str) -> None:
        """Remove a label; a label the issue does not have is not an error."""
        self.request("DELETE", self._repo_path(f"/issues/{int(number)}/labels/{quote(label, safe='')}"),
                     f"removing label {label!r} from issue #{number}", ok_missing=True)

    def ensure_label(self, name: str, color: str, description: str = "") -> bool:
        """Create the label when the repository lacks it. Returns True when it was created."""
        path = self._repo_path(f"/labels/{quote(name, safe='')}")
        found, _ = self.request("GET", path, f"reading label {name!r}", ok_missing=True)
        if found is not None:
            return False
        try:
            self.request("POST", self._repo_path("/labels"), f"creating label {name!r}",
                         json_body={"name": name, "color": color, "description": description[:100]})
        except GitHubError as exc:
            if exc.status == 422:  # created meanwhile by a concurrent run: "already_exists"
                return False
            raise
        return True
