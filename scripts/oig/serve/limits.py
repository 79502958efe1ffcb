"""The limits of ``oig serve``, enforced before a route runs, and at the connection below it.

- ``ServeSettings``: the limits (API key, max_tokens cap, body size, messages, concurrency, queue,
  connections, timeouts), one ``oig serve`` flag each.
- ``Gate``: an ASGI middleware that decides, in order: API key (401), readiness (503), body size
  (413), the whole body within its deadline (408), and only then a full queue (429); it also times
  every request for ``Metrics``.
- ``Turns``: the queue behind the gate: admitted chat completions take the model in arrival order.
- ``timed_h11``: uvicorn's HTTP/1.1 protocol with a deadline for a request's headers (and TCP_NODELAY
  on every connection); ``server_config``
  gives uvicorn it and the connection cap.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import socket
import time
from dataclasses import dataclass, field

from oig.serve.api import CHAT_ROUTE, ROUTES, error
from oig.serve.inference import DEFAULT_MAX_TOKENS, GenerationCancelled, GenerationTimeout
from oig.serve.metrics import Metrics
from oig.serve.page import ROUTES as PAGE_ROUTES

API_KEY_ENV = "OIG_SERVE_API_KEY"
RETRY_BUSY_S = 1  # Retry-After of a 429: one short answer frees a place in the queue
RETRY_LOADING_S = 5  # Retry-After of a 503 while the model loads


@dataclass
class ServeSettings:
    """The service's limits. The defaults are what ``oig serve`` uses; each one is a flag there."""

    default_max_tokens: int = DEFAULT_MAX_TOKENS  # for requests that name no max_tokens
    max_tokens_cap: int | None = 4096  # asking for more is a 400 (as vLLM does); None: the model's context
    max_request_bytes: int = 1 << 20  # 1 MiB; a bigger body is a 413, before it is parsed
    max_messages: int = 500
    max_input_chars: int = 400_000  # characters of all messages together, about 100k tokens of English
    max_concurrency: int = 16  # chat completions generating at once: the engine's largest batch
    max_queue: int = 64  # chat completions waiting, in arrival order, behind those generating; more: 429
    max_connections: int = 256  # open connections, idle keep-alive ones included; a request on one more: 503
    body_timeout: float | None = 10.0  # seconds for a request's headers, then again for its body; past it: 408
    request_timeout: float | None = 600.0  # seconds from arrival to the last token; past it: 504
    api_key: str | None = field(default=None, repr=False)  # a secret: kept out of repr() and logs
    public_metrics: bool = False  # /metrics without the key (a scraper on a private network)
    ui: bool = True  # the chat page at GET /
    max_model_len: int | None = None  # the context, prompt and answer together; None: the model's own


def _bearer_matches(header: bytes | None, key: str) -> bool:
    scheme, _, token = (header or b"").decode("latin-1").partition(" ")
    # compare_digest takes as long for a near miss as for a far one: the key cannot be guessed by timing
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("utf-8"), key.encode("utf-8"))


class Gate:
    """ASGI middleware: what is decided before a route runs, in order: API key (401), readiness (503
    on /v1/*), body size (413; Content-Length first, then the bytes as they arrive), the whole body
    within body_timeout (408), a full queue (429 with Retry-After: max_concurrency generating and
    max_queue waiting). Every request is timed for /metrics. The body is read here, so the route parses
    one that is known to be small enough, and a client that sends it slowly holds only its connection,
    never a place in the queue."""

    def __init__(self, app, *, slot, settings: ServeSettings, metrics: Metrics):  # slot: server's _ModelSlot
        self.app, self.slot, self.settings, self.metrics = app, slot, settings, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in ROUTES else "other"
        started = time.perf_counter()
        status = [499]  # stays 499 when no answer went out: the client left first

        async def timed_send(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._admit(scope, receive, timed_send)
        except Exception:
            if status[0] == 499:
                status[0] = 500  # the app's error handler answers outside this middleware
            raise
        finally:
            self.metrics.observe(route, status[0], time.perf_counter() - started)

    async def _admit(self, scope, receive, send) -> None:
        settings, path = self.settings, scope["path"]
        headers = dict(scope["headers"])  # names arrive lower-cased; a repeated header keeps its last value
        deadline = time.monotonic() + settings.request_timeout if settings.request_timeout else None
        scope["oig.deadline"] = deadline

        async def refuse(response) -> None:
            await response(scope, receive, send)

        # The chat page is static (no model output, no secrets); its API calls carry the key.
        page = settings.ui and path in PAGE_ROUTES and scope["method"] == "GET"
        public = path == "/health" or page or (path == "/metrics" and settings.public_metrics)
        if settings.api_key and not public and not _bearer_matches(headers.get(b"authorization"), settings.api_key):
            await refuse(error(401, "a valid API key is needed: send 'Authorization: Bearer KEY'",
                               code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}))
            return
        if path.startswith("/v1/") and self.slot.model is None:
            if self.slot.error:
                await refuse(error(503, f"the model could not be loaded: {self.slot.error}", "server_error",
                                   code="model_not_loaded"))
            else:
                await refuse(error(503, f"the model {self.slot.name or ''} is still loading; try again shortly",
                                   "server_error", code="model_loading",
                                   headers={"Retry-After": str(RETRY_LOADING_S)}))
            return
        length = headers.get(b"content-length")
        if length is not None and not length.isdigit():
            await refuse(error(400, "the Content-Length header is not a number", code="invalid_content_length"))
            return
        if length is not None and int(length) > settings.max_request_bytes:
            await refuse(self._too_large(f"{int(length)} bytes"))
            return
        # --- the whole body, within its own short deadline -------------------------------------------
        limit, which = settings.body_timeout, "body timeout"
        if settings.request_timeout and (limit is None or settings.request_timeout < limit):
            limit, which = settings.request_timeout, "request timeout"
        try:
            async with asyncio.timeout(limit):
                body = await self._read_body(receive)
        except TimeoutError:
            # Connection: close, as RFC 9110 asks of a 408: the server will wait no longer.
            await refuse(error(408, f"the request body did not arrive within {limit:g} s (this server's "
                               f"{which})", code="request_timeout", headers={"Connection": "close"}))
            return
        if body is None:
            return  # the client left while sending
        if isinstance(body, int):
            await refuse(self._too_large(f"at least {body} bytes"))
            return
        # --- only then a place in the queue (the route waits there for its turn at the model) ----------
        chat = path == CHAT_ROUTE and scope["method"] == "POST"
        if chat and self.metrics.in_flight >= settings.max_concurrency + settings.max_queue:
            self.metrics.add(rejected=1)
            await refuse(error(429, f"the server is busy: {settings.max_concurrency} request(s) generating "
                               f"and {settings.max_queue} waiting, its queue's size; retry shortly",
                               "rate_limit_exceeded", code="too_many_requests",
                               headers={"Retry-After": str(RETRY_BUSY_S)}))
            return
        if chat:
            self.metrics.add(in_flight=1)
        scope["oig.body_bytes"] = len(body)  # however it came (Content-Length or chunked)
        try:
            await self.app(scope, _replay(body, receive), send)
        finally:
            if chat:
                self.metrics.add(in_flight=-1)

    async def _read_body(self, receive) -> bytes | int | None:
        """The whole body; its size so far once that passes the limit; None if the client left."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.settings.max_request_bytes:
                return size
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self, size: str):
        return error(413, f"the request body is {size}; this server accepts at most "
                     f"{self.settings.max_request_bytes} bytes", code="request_too_large")


class Turns:
    """The model, taken by chat completions in the order they arrive, ``size`` at a time: the others
    wait on a future each, in a FIFO, and a turn that ends hands itself to the first waiter. (A polled
    lock, as before the engine, woke waiters in no order: worst latency about 9x the median at 16
    clients.)"""

    def __init__(self, size: int):
        self.size = size
        self.busy = 0  # turns held
        self.waiting: collections.deque[asyncio.Future] = collections.deque()

    async def take(self, deadline: float | None, gone: asyncio.Event) -> None:
        """Wait for a turn; GenerationTimeout once ``deadline`` passes, GenerationCancelled once the
        client is ``gone``."""
        if self.busy < self.size and not self.waiting:
            self.busy += 1
            return
        turn = asyncio.get_running_loop().create_future()
        self.waiting.append(turn)
        left = asyncio.ensure_future(gone.wait())
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait((turn, left), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the task was cancelled (a stream whose client left): leave the queue
            self._leave(turn)
            raise
        finally:
            left.cancel()
        if not turn.done():
            self._leave(turn)
            if gone.is_set():
                raise GenerationCancelled("cancelled while waiting for the model")
            raise GenerationTimeout("the request ran out of time waiting for the model, which was busy with "
                                    "other requests")

    def _leave(self, turn: asyncio.Future) -> None:
        if turn.done() and not turn.cancelled():
            self.give_back()  # it was handed this turn as it left: pass it on
        else:
            turn.cancel()
            self.waiting.remove(turn)

    def give_back(self) -> None:
        while self.waiting:
            turn = self.waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # the turn passes on: busy stays as it is
                return
        self.busy -= 1



def _replay(body: bytes, receive):
    """A receive() that hands over the body already read, then the connection's own messages (so that
    a disconnect is still seen)."""
    delivered = False

    async def replay():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def timed_h11(header_timeout: float | None):
    """uvicorn's h11 protocol with a deadline for each request's headers, which uvicorn lacks: a client
    that connects and sends nothing, or its headers a byte at a time, would hold its connection for
    ever, and max_connections of them would lock everyone out. The deadline runs from the connection,
    or from the first byte after an answer on a kept-alive one; past it the connection closes (with a
    408 if part of a request had come). The body then has its own deadline, in ``Gate``.

    It also sets TCP_NODELAY on every connection: asyncio sets it only on sockets it creates itself,
    not on the one ``serve`` listens on, and without it Nagle's algorithm and delayed ACKs add about
    40 ms to every request after the first on a kept-alive connection."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    late = json.dumps({"error": {"message": f"the request headers did not arrive within {header_timeout:g} s "
                                 "(this server's body timeout)", "type": "invalid_request_error",
                                 "param": None, "code": "request_timeout"}}).encode() if header_timeout else b""
    reply = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
             b"content-length: %d\r\n\r\n%s" % (len(late), late))

    class _TimedH11(H11Protocol):
        _timer = None
        _partial = False  # some bytes of a request that has not begun have come

        def connection_made(self, transport) -> None:
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            between = self.cycle is None or self.cycle.response_complete  # no request in progress
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:  # a request's headers are in
                self._disarm()
                self._partial = False
            elif between:
                self._partial = True
                if self._timer is None:
                    self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if header_timeout:
                self._timer = self.loop.call_later(header_timeout, self._late)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _late(self) -> None:
            self._timer = None
            if not self.transport.is_closing():
                if self._partial:
                    self.transport.write(reply)
                self.transport.close()

    return _TimedH11


def server_config(app, *, host: str, port: int, log_level: str = "info", **extra):
    """uvicorn's Config for an app from ``create_app``, with its settings' header deadline and
    connection cap."""
    import uvicorn

    settings: ServeSettings = app.state.settings
    # uvicorn counts the connection whose request it is deciding on: +1 serves max_connections of them.
    return uvicorn.Config(app, host=host, port=port, log_level=log_level,
                          http=timed_h11(settings.body_timeout), limit_concurrency=settings.max_connections + 1,
                          **extra)
