"""A local HTTP server for tests: routes from a dict, every request recorded, redirects, streaming.

    from servers import LocalServer, Response, redirect

    with LocalServer({"/a.jsonl": b'{"x": 1}\\n', "/old": redirect("/a.jsonl"),
                      "POST /api/x": lambda req: Response(201, {"ok": True})}) as srv:
        httpx.get(srv.url + "/a.jsonl")
        assert srv.paths() == ["/a.jsonl"]

A route key is a path (any method) or "METHOD /path"; the path matches the request path without the
query string. A value is bytes or str (200, that body), a dict or list (200, JSON), a Response, or a
callable taking the Request and returning any of these. Unknown paths answer 404. Routes may be
changed while the server runs (``srv.routes[...] = ...``). The server listens on 127.0.0.1, port 0
(a free port), in a daemon thread; leaving the ``with`` block (or ``close()``) stops it.
``tls=(certfile, keyfile)`` serves https instead of http.

``hub_routes`` builds the routes of a Hugging Face Hub serving one dataset repository (the subset of
the Hub API that ``oig.data.hf`` uses).
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, urlsplit


@dataclass
class Request:
    method: str
    path: str  # without the query string
    query: str
    headers: dict[str, str]  # header names in lower case
    body: bytes


@dataclass
class Response:
    status: int = 200
    body: bytes | str | dict | list | Iterable[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)
    # An iterable body is sent chunked (no Content-Length) unless headers give one.


def redirect(location: str, status: int = 302) -> Response:
    return Response(status, b"", {"Location": location})


Route = bytes | str | dict | list | Response | Callable[[Request], object]


class LocalServer:
    def __init__(self, routes: dict[str, Route] | None = None, tls: tuple[str, str] | None = None):
        self.routes: dict[str, Route] = dict(routes or {})
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _handle(self):
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                req = Request(self.command, parts.path, parts.query,
                              {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length))
                with server._lock:
                    server.requests.append(req)
                self._send(server._answer(req))

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle

            def _send(self, resp: Response):
                body = resp.body
                if isinstance(body, dict | list):
                    body = json.dumps(body).encode()
                    resp.headers.setdefault("Content-Type", "application/json")
                elif isinstance(body, str):
                    body = body.encode()
                self.send_response(resp.status)
                for k, v in resp.headers.items():
                    self.send_header(k, v)
                if isinstance(body, bytes):
                    if "Content-Length" not in resp.headers:
                        self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body)
                    return
                chunked = "Content-Length" not in resp.headers
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for chunk in body:
                        if chunked:
                            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                        else:
                            self.wfile.write(chunk)
                    if chunked:
                        self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client stopped reading, as it may

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        # A short poll interval: shutdown() waits up to one interval.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def _answer(self, req: Request) -> Response:
        route = self.routes.get(f"{req.method} {req.path}", self.routes.get(req.path))
        if route is None:
            return Response(404, b"not found")
        if callable(route) and not isinstance(route, Response):
            route = route(req)
        return route if isinstance(route, Response) else Response(200, route)  # type: ignore[arg-type]

    def paths(self) -> list[str]:
        """The paths requested so far, in order."""
        with self._lock:
            return [r.path for r in self.requests]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def hub_routes(repo: str, sha: str, files: dict[str, bytes], branches: tuple[str, ...] = ("main",),
               kind: str = "datasets") -> dict[str, Route]:
    """Routes of a Hub serving one repository at one commit: the revision API (for the commit and
    each branch) and file downloads at the commit. ``kind`` is "datasets" or "models"."""
    info = {"id": repo, "sha": sha, "siblings": [{"rfilename": name} for name in files]}
    routes: dict[str, Route] = {f"GET /api/{kind}/{repo}/revision/{rev}": info for rev in (sha, *branches)}
    files_at = f"/datasets/{repo}" if kind == "datasets" else f"/{repo}"  # model files have no prefix
    for name, data in files.items():
        routes[f"GET {files_at}/resolve/{sha}/{quote(name)}"] = data
    return routes


class ThreadedFake:
    """Base of the stateful API fakes (Hub, Together): a ThreadingHTTPServer on 127.0.0.1:0 in a daemon
    thread, used as a context manager. A subclass returns its request handler class from ``handler()``
    (a class that can reach the fake, e.g. through a class attribute)."""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def __enter__(self):
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"
