"""A local HTTP server speaking the subset of GitHub's REST API that oig uses.

It keeps issues, comments and labels in memory so tests can assert the state a command left, records
every request, paginates with ``Link`` headers as GitHub does, enforces GitHub's 65,536-character
comment limit and 50-character label names, and can be told to fail the next requests (5xx, the
secondary rate limit) to exercise retries, or to carry a request out and then answer with an error (the
502 after a POST that worked, which makes a blind retry post twice). Start it with ``with FakeGitHub() as gh:``; ``gh.url`` is
the API root to put in ``GITHUB_API_URL``.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

BOT = {"login": "github-actions[bot]", "type": "Bot", "id": 41898282}
COMMENT_LIMIT = 65536


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: object
    headers: dict[str, str]


@dataclass
class Fault:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: object = None
    path_contains: str = ""
    method: str = ""  # only requests with this method ("" = any)
    after_success: bool = False  # carry the request out, then answer with the error


class FakeGitHub:
    def __init__(self, repo: str = "octo/oig", token: str | None = "ghs_test_token", per_page_cap: int = 100):
        self.repo = repo
        self.token = token
        self.per_page_cap = per_page_cap
        self.issues: dict[int, dict] = {}
        self.comments: dict[int, dict] = {}
        self.labels: dict[str, dict] = {}
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self._next_comment = 9000
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # --- lifecycle -----------------------------------------------------------------------------------

    def __enter__(self) -> FakeGitHub:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                fake._handle(self)

            do_GET = do_POST = do_PATCH = do_DELETE = _serve

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # --- state helpers for tests ------------------------------------------------------------------------

    def add_issue(self, number: int, body: str | None, *, title: str = "A bug", labels=("bug",),
                  state: str = "open", pull_request: bool = False) -> dict:
        for name in labels:
            self.labels.setdefault(name, {"name": name, "color": "ededed", "description": ""})
        issue = {"number": number, "title": title, "body": body, "state": state,
                 "labels": [{"name": n} for n in labels], "user": {"login": "reporter", "type": "User"},
                 "html_url": f"https://github.com/{self.repo}/issues/{number}"}
        if pull_request:
            issue["pull_request"] = {"url": f"{self.url}/repos/{self.repo}/pulls/{number}"}
        self.issues[number] = issue
        return issue

    def add_comment(self, number: int, body: str, user: dict | None = None) -> dict:
        with self._lock:
            self._next_comment += 1
            comment = {"id": self._next_comment, "issue_number": number, "body": body,
                       "user": user or {"login": "someone", "type": "User"}}
            self.comments[comment["id"]] = comment
            return comment

    def comments_on(self, number: int) -> list[dict]:
        return [c for c in sorted(self.comments.values(), key=lambda c: c["id"]) if c["issue_number"] == number]

    def labels_of(self, number: int) -> list[str]:
        return [label["name"] for label in self.issues[number]["labels"]]

    def fail_next(self, status: int, *, times: int = 1, headers: dict | None = None, body: object = None,
                  path_contains: str = "", method: str = "", after_success: bool = False) -> None:
        for _ in range(times):
            self.faults.append(Fault(status, dict(headers or {}), body, path_contains, method, after_success))

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method != "GET"]

    # --- the API ------------------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in h.headers.items()}
        with self._lock:
            self.requests.append(Request(h.command, parts.path, query, body, headers))
            fault = next((f for f in self.faults
                          if f.path_contains in parts.path and f.method in ("", h.command)), None)
            if fault is not None:
                self.faults.remove(fault)
        if fault is not None and not fault.after_success:
            self._fail(h, fault)
            return
        auth = headers.get("authorization")
        if auth is not None and self.token is not None and auth not in (f"Bearer {self.token}", f"token {self.token}"):
            self._reply(h, 401, {"message": "Bad credentials"})
            return
        if h.command != "GET" and auth is None:
            self._reply(h, 401, {"message": "Requires authentication"})
            return
        prefix = f"/repos/{self.repo}"
        if not parts.path.startswith(prefix + "/"):
            self._reply(h, 404, {"message": "Not Found"})
            return
        with self._lock:
            status, data, extra = self._route(h.command, unquote(parts.path[len(prefix):]), query, body, parts.path)
        if fault is not None:  # after_success: the change is made, the client hears an error
            self._fail(h, fault)
            return
        self._reply(h, status, data, extra)

    def _fail(self, h: BaseHTTPRequestHandler, fault: Fault) -> None:
        self._reply(h, fault.status, fault.body if fault.body is not None else {"message": "Server Error"},
                    fault.headers)

    def _reply(self, h: BaseHTTPRequestHandler, status: int, data: object, headers: dict | None = None) -> None:
        payload = b"" if status == 204 else json.dumps(data).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(payload)

    def _page(self, items: list, query: dict, path: str) -> tuple[int, object, dict]:
        per_page = min(int(query.get("per_page", 30)), self.per_page_cap)
        page = int(query.get("page", 1))
        chunk = items[(page - 1) * per_page: page * per_page]
        headers = {}
        if page * per_page < len(items):
            rest = {k: v for k, v in query.items() if k != "page"}
            qs = "&".join(f"{k}={v}" for k, v in {**rest, "page": page + 1}.items())
            headers["Link"] = f'<{self.url}{path}?{qs}>; rel="next", <{self.url}{path}?page=999>; rel="last"'
        return 200, chunk, headers

    def _route(self, method: str, path: str, query: dict, body: object, raw_path: str) -> tuple[int, object, dict]:
        not_found = (404, {"message": "Not Found"}, {})
        if method == "GET" and path == "/issues":
            wanted = [x for x in query.get("labels", "").split(",") if x]
            items = [i for n, i in sorted(self.issues.items())
                     if (query.get("state", "open") in ("all", i["state"]))
                     and all(w in [lb["name"] for lb in i["labels"]] for w in wanted)]
            return self._page(items, query, raw_path)
        m = re.fullmatch(r"/issues/(\d+)", path)
        if m and method == "GET":
            issue = self.issues.get(int(m.group(1)))
            return (200, issue, {}) if issue else not_found
        m = re.fullmatch(r"/issues/(\d+)/comments", path)
        if m:
            number = int(m.group(1))
            if number not in self.issues:
                return not_found
            if method == "GET":
                return self._page(self.comments_on(number), query, raw_path)
            if method == "POST":
                text = body.get("body") if isinstance(body, dict) else None
                if not isinstance(text, str) or not text:
                    return 422, {"message": "Validation Failed", "errors": [{"code": "missing_field"}]}, {}
                if len(text) > COMMENT_LIMIT:
                    return 422, {"message": "Validation Failed",
                                 "errors": [{"message": "Body is too long (maximum is 65536 characters)"}]}, {}
                self._next_comment += 1
                comment = {"id": self._next_comment, "issue_number": number, "body": text, "user": dict(BOT)}
                self.comments[comment["id"]] = comment
                return 201, comment, {}
        m = re.fullmatch(r"/issues/comments/(\d+)", path)
        if m and method == "PATCH":
            comment = self.comments.get(int(m.group(1)))
            if comment is None:
                return not_found
            text = body.get("body") if isinstance(body, dict) else None
            if not isinstance(text, str) or not text or len(text) > COMMENT_LIMIT:
                return 422, {"message": "Validation Failed"}, {}
            comment["body"] = text
            return 200, comment, {}
        m = re.fullmatch(r"/issues/(\d+)/labels", path)
        if m and method == "POST":
            issue = self.issues.get(int(m.group(1)))
            names = body.get("labels") if isinstance(body, dict) else None
            if issue is None:
                return not_found
            if not isinstance(names, list) or not all(isinstance(n, str) and 0 < len(n) <= 50 for n in names):
                return 422, {"message": "Validation Failed"}, {}
            for name in names:
                # GitHub creates a missing label with a default colour when it is added to an issue.
                self.labels.setdefault(name, {"name": name, "color": "ededed", "description": ""})
                if name not in [lb["name"] for lb in issue["labels"]]:
                    issue["labels"].append({"name": name})
            return 200, issue["labels"], {}
        m = re.fullmatch(r"/issues/(\d+)/labels/(.+)", path)
        if m and method == "DELETE":
            issue = self.issues.get(int(m.group(1)))
            if issue is None or m.group(2) not in [lb["name"] for lb in issue["labels"]]:
                return 404, {"message": "Label does not exist"}, {}
            issue["labels"] = [lb for lb in issue["labels"] if lb["name"] != m.group(2)]
            return 200, issue["labels"], {}
        m = re.fullmatch(r"/labels/(.+)", path)
        if m and method == "GET":
            label = self.labels.get(m.group(1))
            return (200, label, {}) if label else not_found
        if path == "/labels" and method == "POST":
            name = body.get("name") if isinstance(body, dict) else None
            if not isinstance(name, str) or not 0 < len(name) <= 50:
                return 422, {"message": "Validation Failed", "errors": [{"code": "invalid", "field": "name"}]}, {}
            if name in self.labels:
                return 422, {"message": "Validation Failed", "errors": [{"code": "already_exists"}]}, {}
            self.labels[name] = {"name": name, "color": body.get("color", "ededed"),
                                 "description": body.get("description", "")}
            return 201, self.labels[name], {}
        return not_found
