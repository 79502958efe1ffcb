"""A local stand-in for the Hugging Face Hub's upload API, for offline tests of huggingface_hub 2.4.

It answers what ``HfApi.whoami``, ``create_repo``, ``create_branch``, ``upload_folder`` (preupload, then an NDJSON
commit) and ``repo_info`` send, stores the committed files per repo and branch so tests can read
them back, and records every request so tests can assert what the SDK sent. Dataset repositories
(``repo_type="dataset"``: ``/api/datasets/...``) are served too, with the reading side oig's data
loader uses: ``GET /api/datasets/{repo}/revision/{rev}`` and ``GET /datasets/{repo}/resolve/{rev}/{path}``,
where rev is a branch or any commit sha the fake made (each commit's files are kept). ``fail_commits`` makes
the first N commit requests fail with ``fail_status`` (a flaky Hub).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

from servers import ThreadedFake


@dataclass
class Branch:
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)  # {"oid", "summary", "paths"}
    snapshots: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit oid -> the files at it

    @property
    def head(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40


class FakeHub(ThreadedFake):
    def __init__(self, token: str = "hf_test_token", fail_commits: int = 0, fail_status: int = 503,
                 user: str = "org", orgs: dict[str, str] | None = None, role: str = "write",
                 scoped: list[dict] | None = None):
        self.token = token
        # What GET /api/whoami-v2 says of the token: its user, {org: roleInOrg}, its role (read, write,
        # fineGrained) and, for fineGrained, its scoped permissions ([{"entity": {...}, "permissions": [...]}]).
        self.user, self.orgs, self.role, self.scoped = user, orgs or {}, role, scoped or []
        self.fail_commits = fail_commits
        self.fail_status = fail_status
        self.repos: dict[str, dict[str, Branch]] = {}
        self.repo_types: dict[str, str] = {}  # repo id -> "model" or "dataset", as created
        self.private: set[str] = set()  # repo ids created private
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        return type("Handler", (_Handler,), {"fake": self})

    # --- what tests read --------------------------------------------------------------------------------
    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return dict(self.repos[repo_id][branch].files)

    def commits(self, repo_id: str, branch: str = "main") -> list[dict]:
        return list(self.repos[repo_id][branch].commits)

    def paths(self, method: str | None = None) -> list[str]:
        return [r["path"] for r in self.requests if method is None or r["method"] == method]


def _oid(*parts: object) -> str:
    return hashlib.sha1("\0".join(str(p) for p in parts).encode()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep test output clean
        pass

    def _reply(self, status: int, body: object = None, headers: dict | None = None) -> None:
        data = json.dumps(body if body is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        self._reply(status, {"error": message}, {"X-Error-Code": code} if code else None)

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        path = unquote(split.path)
        record = {"method": method, "path": path, "query": parse_qs(split.query),
                  "headers": {k.lower(): v for k, v in self.headers.items()}, "body": raw}
        fake = self.fake
        with fake.lock:
            fake.requests.append(record)
        parts = path.strip("/").split("/")
        if self.headers.get("Authorization") != f"Bearer {fake.token}" and not self._public_read(method, parts):
            return self._error(401, "Invalid credentials in Authorization header")
        with fake.lock:
            if method == "POST" and path == "/api/repos/create":
                return self._create_repo(json.loads(raw or b"{}"))
            if method == "GET" and path == "/api/whoami-v2":
                return self._whoami()
            if method == "POST" and path == "/api/validate-yaml":
                return self._reply(200, {"errors": [], "warnings": []})
            if method == "GET" and len(parts) >= 6 and parts[0] == "datasets" and parts[3] == "resolve":
                return self._resolve(f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:]))
            if len(parts) >= 4 and parts[:2] == ["api", "datasets"] and fake.repo_types.get(
                    f"{parts[2]}/{parts[3]}") != "dataset":
                return self._error(404, f"Dataset Not Found for url: {path}", "RepoNotFound")
            if len(parts) >= 4 and parts[:2] in (["api", "models"], ["api", "datasets"]):
                repo_id = f"{parts[2]}/{parts[3]}"
                rest = parts[4:]
                if repo_id not in fake.repos:
                    return self._error(404, f"Repository Not Found for url: {path}", "RepoNotFound")
                branches = fake.repos[repo_id]
                if method == "POST" and len(rest) == 2 and rest[0] == "branch":
                    return self._create_branch(branches, rest[1])
                if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                    if rest[1] not in branches:
                        return self._error(404, f"Invalid rev id: {rest[1]}", "RevisionNotFound")
                    return self._preupload(json.loads(raw))
                if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                    return self._commit(repo_id, branches, rest[1], raw)
                if method == "GET" and len(rest) == 2 and rest[0] == "revision" and parts[1] == "datasets":
                    files = self._at(repo_id, rest[1])
                    if files is None:
                        return self._error(404, "Invalid rev id", "RevisionNotFound")
                    sha = branches[rest[1]].head if rest[1] in branches else rest[1]
                    return self._reply(200, {"id": repo_id, "sha": sha, "private": False,
                                             "siblings": [{"rfilename": p} for p in sorted(files)]})
                if method == "GET" and (not rest or (len(rest) == 2 and rest[0] == "revision")):
                    branch = branches.get(rest[1] if rest else "main")
                    if branch is None:
                        return self._error(404, "Invalid rev id", "RevisionNotFound")
                    return self._reply(200, {"id": repo_id, "modelId": repo_id, "sha": branch.head, "private": False,
                                             "siblings": [{"rfilename": p} for p in sorted(branch.files)]})
        self._error(404, f"no route for {method} {path} in the fake Hub")

    def _public_read(self, method: str, parts: list[str]) -> bool:
        """Reading a public dataset repo needs no token, as on the Hub (model repos here always do)."""
        if method != "GET" or len(parts) < 4:
            return False
        repo_id = f"{parts[2]}/{parts[3]}" if parts[:2] == ["api", "datasets"] else (
            f"{parts[1]}/{parts[2]}" if parts[0] == "datasets" else None)
        with self.fake.lock:
            return (repo_id is not None and self.fake.repo_types.get(repo_id) == "dataset"
                    and repo_id not in self.fake.private)

    def _at(self, repo_id: str, rev: str) -> dict[str, bytes] | None:
        """A dataset repo's files at a branch or a commit sha; None when neither."""
        branches = self.fake.repos.get(repo_id, {})
        if rev in branches:
            return branches[rev].files
        return next((b.snapshots[rev] for b in branches.values() if rev in b.snapshots), None)

    def _resolve(self, repo_id: str, rev: str, name: str) -> None:
        files = self._at(repo_id, rev) if self.fake.repo_types.get(repo_id) == "dataset" else None
        if files is None or name not in files:
            return self._error(404, f"Entry Not Found: {name} at {rev}", "EntryNotFound")
        data = files[name]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _whoami(self) -> None:
        fake = self.fake
        token = {"displayName": "oig", "role": fake.role}
        if fake.role == "fineGrained":
            token["fineGrained"] = {"canReadGatedRepos": False, "global": [], "scoped": fake.scoped}
        self._reply(200, {"type": "user", "name": fake.user, "fullname": fake.user,
                          "orgs": [{"name": n, "roleInOrg": r} for n, r in fake.orgs.items()],
                          "auth": {"type": "access_token", "accessToken": token}})

    def _create_repo(self, payload: dict) -> None:
        repo_id = f"{payload.get('organization')}/{payload.get('name')}"
        if repo_id in self.fake.repos:
            return self._reply(409, {"error": "You already created this model repo", "url": f"{self.fake.url}/{repo_id}"})
        self.fake.repos[repo_id] = {"main": Branch()}
        self.fake.repo_types[repo_id] = "dataset" if payload.get("type") == "dataset" else "model"
        if payload.get("private") or payload.get("visibility") == "private":  # huggingface_hub 2.4: visibility
            self.fake.private.add(repo_id)
        self._reply(200, {"url": f"{self.fake.url}/{repo_id}", "name": repo_id})

    def _create_branch(self, branches: dict[str, Branch], name: str) -> None:
        if name in branches:
            return self._error(409, "Reference already exists")
        start = branches["main"]
        branches[name] = Branch(files=dict(start.files), commits=list(start.commits))
        self._reply(200, {})

    def _preupload(self, payload: dict) -> None:
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                 for f in payload.get("files", [])]
        self._reply(200, {"files": files, "commitOid": None})

    def _commit(self, repo_id: str, branches: dict[str, Branch], rev: str, raw: bytes) -> None:
        fake = self.fake
        if fake.fail_commits > 0:
            fake.fail_commits -= 1
            return self._error(fake.fail_status, "Service temporarily unavailable")
        if rev not in branches:
            return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x.get("key") == "header"), {})
        branch = branches[rev]
        paths = []
        for item in lines:
            value = item.get("value", {})
            if item.get("key") == "file":
                branch.files[value["path"]] = base64.b64decode(value["content"])
                paths.append(value["path"])
            elif item.get("key") == "deletedFile":
                branch.files.pop(value["path"], None)
        oid = _oid(repo_id, rev, len(branch.commits), *sorted(paths))
        branch.commits.append({"oid": oid, "summary": header.get("summary"), "paths": paths})
        branch.snapshots[oid] = dict(branch.files)
        self._reply(200, {"commitUrl": f"{fake.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                          "pullRequestUrl": None})

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")
