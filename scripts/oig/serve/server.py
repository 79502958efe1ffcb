"""``oig serve``: an OpenAI-compatible chat service for a trained model (FastAPI and uvicorn).

Routes: ``POST /v1/chat/completions`` (plain, and SSE streaming in ``chat.completion.chunk`` format
ending with ``data: [DONE]``), ``GET /v1/models``, ``GET /health`` (readiness), ``GET /metrics``
(Prometheus text). Refusals get OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}``.

Layout, so that later additions have one obvious place each:

- ``oig.serve.inference.LocalModel``: the model and tokenizer, loaded once; ``generate`` yields text pieces
  and is the only code that touches torch. It stops at the next token when its ``cancel`` event is set
  or its ``deadline`` passes. ``oig query`` and the bug suite use it too.
- ``ServeSettings``: the service's limits (API key, max_tokens cap, body size, messages, concurrency,
  connections, timeouts), one command-line flag each.
- ``_TimedH11``: uvicorn's HTTP/1.1 protocol with a deadline for a request's headers; ``server_config``
  gives uvicorn it and the connection cap.
- ``_Gate``: an ASGI middleware that decides before any route runs: API key (401), readiness (503),
  body size (413), the whole body within its deadline (408), and only then concurrency (429); it also
  times every request for ``Metrics``.
- ``create_app``: request models, error handlers and routes. The model loads on a thread when the
  server starts, so ``/health`` can say "loading" meanwhile.

The model generates one request at a time (a lock); admitted requests wait for it, up to
``max_concurrency`` of them, each until its deadline. A client that disconnects, from a stream or
from a plain request, stops its generation (a watcher task polls the connection).
"""

# No `from __future__ import annotations`: FastAPI reads the request model from the route's real
# annotations, and the models are defined inside create_app.
import asyncio
import bisect
import contextlib
import hmac
import json
import math
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from oig.serve.inference import (
    DEFAULT_MAX_TOKENS,
    BadRequest,
    Generation,
    GenerationCancelled,
    GenerationTimeout,
    LocalModel,
    ServeError,
)

# --- the service --------------------------------------------------------------------------------------

CHAT_ROUTE = "/v1/chat/completions"
ROUTES = (CHAT_ROUTE, "/v1/models", "/health", "/metrics")  # metrics label any other path "other"
API_KEY_ENV = "OIG_SERVE_API_KEY"
RETRY_BUSY_S = 1  # Retry-After of a 429: one short answer frees a slot
RETRY_LOADING_S = 5  # Retry-After of a 503 while the model loads
DISCONNECT_POLL_S = 0.1  # how often a watcher asks whether the client is still there
MIN_TEMPERATURE = 1e-3  # below it (0 aside) logits / temperature can overflow to inf and sampling to NaN
SEED_RANGE = (-(2**63), 2**63 - 1)  # OpenAI's (a signed 64-bit integer); torch.manual_seed takes it


@dataclass
class ServeSettings:
    """The service's limits. The defaults are what ``oig serve`` uses; each one is a flag there."""

    default_max_tokens: int = DEFAULT_MAX_TOKENS  # for requests that name no max_tokens
    max_tokens_cap: int | None = 4096  # asking for more is a 400 (as vLLM does); None: the model's context
    max_request_bytes: int = 1 << 20  # 1 MiB; a bigger body is a 413, before it is parsed
    max_messages: int = 500
    max_input_chars: int = 400_000  # characters of all messages together, about 100k tokens of English
    max_concurrency: int = 8  # chat completions in flight (one generating, the rest waiting); more: 429
    max_connections: int = 256  # open connections, idle keep-alive ones included; a request on one more: 503
    body_timeout: float | None = 10.0  # seconds for a request's headers, then again for its body; past it: 408
    request_timeout: float | None = 600.0  # seconds from arrival to the last token; past it: 504
    api_key: str | None = field(default=None, repr=False)  # a secret: kept out of repr() and logs
    public_metrics: bool = False  # /metrics without the key (a scraper on a private network)


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                    600.0)  # seconds: from a /health probe to a long CPU generation


class Metrics:
    """What ``/metrics`` reports, in the Prometheus text format (a few lines; no client library needed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, list[float]] = {}  # route: a count per bucket, then +Inf, sum, count
        self.in_flight = 0
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.rejected = 0
        self.timeouts = 0
        self.cancelled = 0

    def add(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[route, status] = self.requests.get((route, status), 0) + 1
            row = self.latency.setdefault(route, [0.0] * (len(_LATENCY_BUCKETS) + 3))
            row[bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1
            row[-2] += seconds
            row[-1] += 1

    def render(self, model_loaded: bool) -> str:
        lines: list[str] = []

        def family(name: str, kind: str, about: str, samples: list[tuple[str, dict, float]]) -> None:
            lines.extend([f"# HELP {name} {about}", f"# TYPE {name} {kind}"])
            lines.extend(f"{name}{suffix}{_labels(labels)} {_number(value)}" for suffix, labels, value in samples)

        with self._lock:
            family("oig_requests_total", "counter", "HTTP requests answered, by route and status (499: the "
                   "client left first).",
                   [("", {"route": r, "status": str(c)}, n) for (r, c), n in sorted(self.requests.items())])
            histogram = []
            for route, row in sorted(self.latency.items()):
                running = 0.0
                for bound, count in zip([*_LATENCY_BUCKETS, math.inf], row, strict=False):
                    running += count
                    histogram.append(("_bucket", {"route": route, "le": _number(bound)}, running))
                histogram += [("_sum", {"route": route}, row[-2]), ("_count", {"route": route}, row[-1])]
            family("oig_request_duration_seconds", "histogram", "Time from a request's arrival to the end of "
                   "its answer (a stream's last event).", histogram)
            family("oig_requests_in_flight", "gauge", "Chat completions admitted and not yet answered.",
                   [("", {}, self.in_flight)])
            family("oig_prompt_tokens_total", "counter", "Prompt tokens of chat completions.",
                   [("", {}, self.prompt_tokens)])
            family("oig_generated_tokens_total", "counter", "Tokens generated, cancelled and timed-out "
                   "requests included.", [("", {}, self.generated_tokens)])
            family("oig_rejected_requests_total", "counter", "Chat completions refused with 429 because "
                   "max_concurrency were in flight.", [("", {}, self.rejected)])
            family("oig_request_timeouts_total", "counter", "Chat completions stopped at their deadline.",
                   [("", {}, self.timeouts)])
            family("oig_cancelled_requests_total", "counter", "Chat completions whose client left before "
                   "the answer was complete.", [("", {}, self.cancelled)])
        family("oig_model_loaded", "gauge", "1 once the model is loaded and requests are served.",
               [("", {}, 1 if model_loaded else 0)])
        return "\n".join(lines) + "\n"


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    escaped = (str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in labels.values())
    return "{" + ",".join(f'{k}="{v}"' for k, v in zip(labels, escaped, strict=True)) + "}"


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _ModelSlot:
    """The served model, or why there is none yet: it loads on a thread so that /health answers meanwhile."""

    def __init__(self, name: str | None, model: LocalModel | None = None):
        self.name = model.name if model is not None else name
        self.model = model
        self.error: str | None = None
        self._started = False

    @property
    def status(self) -> str:
        return "ok" if self.model is not None else "failed" if self.error else "loading"

    def start(self, load: Callable[[], LocalModel], on_loaded: Callable[[str | None], None] | None) -> None:
        if self._started:
            return
        self._started = True

        def work() -> None:
            try:
                model = load()
            except ServeError as exc:
                self.error = str(exc)
            except Exception as exc:  # a bug or an odd model folder: /health and the caller still hear of it
                self.error = f"cannot load model {self.name}: {type(exc).__name__}: {exc}"
            else:
                self.name = model.name
                self.model = model
            if on_loaded is not None:
                on_loaded(self.error)

        threading.Thread(target=work, name="oig-load", daemon=True).start()


def _error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
           code: str | None = None, headers: dict[str, str] | None = None):
    from fastapi.responses import JSONResponse

    # JSON may carry a lone surrogate ("\ud800"), which UTF-8 cannot encode; a message echoing one
    # (an unknown model's name) would otherwise fail to render and become a 500.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": {"message": message, "type": type_, "param": param, "code": code}})


def _bearer_matches(header: bytes | None, key: str) -> bool:
    scheme, _, token = (header or b"").decode("latin-1").partition(" ")
    # compare_digest takes as long for a near miss as for a far one: the key cannot be guessed by timing
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("utf-8"), key.encode("utf-8"))


class _Gate:
    """ASGI middleware: what is decided before a route runs, in order: API key (401), readiness (503
    on /v1/*), body size (413; Content-Length first, then the bytes as they arrive), the whole body
    within body_timeout (408), concurrency (429 with Retry-After). Every request is timed for /metrics.
    The body is read here, so the route parses one that is known to be small enough, and a client that
    sends it slowly holds only its connection, never one of the max_concurrency slots."""

    def __init__(self, app, *, slot: _ModelSlot, settings: ServeSettings, metrics: Metrics):
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

        public = path == "/health" or (path == "/metrics" and settings.public_metrics)
        if settings.api_key and not public and not _bearer_matches(headers.get(b"authorization"), settings.api_key):
            await refuse(_error(401, "a valid API key is needed: send 'Authorization: Bearer KEY'",
                                code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}))
            return
        if path.startswith("/v1/") and self.slot.model is None:
            if self.slot.error:
                await refuse(_error(503, f"the model could not be loaded: {self.slot.error}", "server_error",
                                    code="model_not_loaded"))
            else:
                await refuse(_error(503, f"the model {self.slot.name or ''} is still loading; try again shortly",
                                    "server_error", code="model_loading",
                                    headers={"Retry-After": str(RETRY_LOADING_S)}))
            return
        length = headers.get(b"content-length")
        if length is not None and not length.isdigit():
            await refuse(_error(400, "the Content-Length header is not a number", code="invalid_content_length"))
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
            await refuse(_error(408, f"the request body did not arrive within {limit:g} s (this server's "
                                f"{which})", code="request_timeout", headers={"Connection": "close"}))
            return
        if body is None:
            return  # the client left while sending
        if isinstance(body, int):
            await refuse(self._too_large(f"at least {body} bytes"))
            return
        # --- only then a slot ------------------------------------------------------------------------
        chat = path == CHAT_ROUTE and scope["method"] == "POST"
        if chat and self.metrics.in_flight >= settings.max_concurrency:
            self.metrics.add(rejected=1)
            await refuse(_error(429, f"the server is busy: {settings.max_concurrency} request(s) are in "
                                "progress; retry shortly", "rate_limit_exceeded", code="too_many_requests",
                                headers={"Retry-After": str(RETRY_BUSY_S)}))
            return
        if chat:
            self.metrics.add(in_flight=1)
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
        return _error(413, f"the request body is {size}; this server accepts at most "
                      f"{self.settings.max_request_bytes} bytes", code="request_too_large")


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


async def _watch_disconnect(request, cancel: threading.Event) -> None:
    """Set ``cancel`` once the client has gone, so that its generation stops at the next token."""
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


def create_app(model: "str | Path | LocalModel | Callable[[], LocalModel]", *, revision: str | None = None,
               name: str | None = None, settings: ServeSettings | None = None,
               on_loaded: Callable[[str | None], None] | None = None):
    """The FastAPI app serving ``model``: a folder or Hub id (loaded on a thread when the server starts),
    a function that loads it (likewise), or an already loaded LocalModel. ``on_loaded`` hears, from the
    loading thread, None once the model is ready or the error that stopped it."""
    from typing import Literal

    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field, field_validator
    from starlette.exceptions import HTTPException as StarletteHTTPException

    settings = settings or ServeSettings()
    metrics = Metrics()
    if isinstance(model, LocalModel):
        slot, load = _ModelSlot(name, model), None
    elif callable(model):
        slot, load = _ModelSlot(name), model
    else:
        ref = str(model)
        slot = _ModelSlot(name or ref)

        def load() -> LocalModel:
            return LocalModel.load(ref, revision=revision, name=name)

    class TextPart(BaseModel):
        model_config = ConfigDict(extra="ignore")
        type: Literal["text"]
        text: str

    class ChatMessage(BaseModel):
        model_config = ConfigDict(extra="ignore")  # `name` and other fields the model has no use for
        role: Literal["system", "user", "assistant"]
        content: str | list[TextPart]

        def text(self) -> str:
            return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    class StreamOptions(BaseModel):
        include_usage: bool = False

    class ChatCompletionRequest(BaseModel):
        # Unknown OpenAI parameters (presence_penalty, user, ...) are accepted and ignored, as vLLM does.
        model_config = ConfigDict(extra="ignore")
        model: str
        messages: list[ChatMessage] = Field(min_length=1)
        max_tokens: int | None = Field(default=None, ge=1)
        max_completion_tokens: int | None = Field(default=None, ge=1)
        temperature: float | None = Field(default=None, ge=0, le=2)
        top_p: float | None = Field(default=None, gt=0, le=1)
        n: int | None = Field(default=None, ge=1, le=1)
        stop: str | list[str] | None = None
        stream: bool | None = False
        stream_options: StreamOptions | None = None
        seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])

        @field_validator("temperature")
        @classmethod
        def _temperature(cls, v):
            if v is not None and 0 < v < MIN_TEMPERATURE:
                raise ValueError(f"temperature {v:g} is too small to sample with: give 0 (greedy decoding) or "
                                 f"at least {MIN_TEMPERATURE:g}")
            return v

        @field_validator("stop")
        @classmethod
        def _stops(cls, v):
            stops = [v] if isinstance(v, str) else (v or [])
            if len(stops) > 4:
                raise ValueError("at most 4 stop sequences")
            return stops

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if load is not None:
            slot.start(load, on_loaded)
        yield

    app = FastAPI(title="oig", summary="An OpenAI-compatible chat service for an oig model", lifespan=lifespan)
    app.state.slot = slot
    app.state.settings = settings
    app.state.metrics = metrics
    app.add_middleware(_Gate, slot=slot, settings=settings, metrics=metrics)

    # --- errors in OpenAI's shape ------------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = first.get("msg", "invalid request").removeprefix("Value error, ")
        if first.get("type") == "json_invalid":
            message, param = "the request body is not valid JSON", None
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        return _error(400, f"{param + ': ' if param else ''}{message}{more}", param=param)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        return _error(500, f"internal error: {type(exc).__name__}", "server_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error(exc.status_code, str(exc.detail), kind)

    # --- routes --------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        if slot.model is not None:
            return {"status": "ok", "model": slot.name, "ready": True}
        body = {"status": slot.status, "model": slot.name, "ready": False}
        if slot.error:
            body["error"] = slot.error
        return JSONResponse(status_code=503, content=body,
                            headers=None if slot.error else {"Retry-After": str(RETRY_LOADING_S)})

    @app.get("/metrics")
    async def prometheus_metrics():
        return PlainTextResponse(metrics.render(slot.model is not None), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        lm = slot.model
        return {"object": "list",
                "data": [{"id": lm.name, "object": "model", "created": lm.created, "owned_by": "oig"}]}

    @app.post(CHAT_ROUTE)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        lm = slot.model  # the gate answered 503 while there was none
        if body.model != lm.name:
            return _error(404, f"the model '{body.model}' is not served here; this server serves '{lm.name}'",
                          param="model", code="model_not_found")
        refusal = _over_limits(body, settings) or _forged_turn(body, lm)
        if refusal is not None:
            return refusal
        cap = settings.max_tokens_cap
        max_tokens = body.max_completion_tokens or body.max_tokens or min(settings.default_max_tokens,
                                                                          cap or settings.default_max_tokens)
        options = {"max_tokens": max_tokens, "temperature": 1.0 if body.temperature is None else body.temperature,
                   "top_p": 1.0 if body.top_p is None else body.top_p, "stop": body.stop, "seed": body.seed,
                   "deadline": request.scope.get("oig.deadline")}
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            try:  # refuse a bad conversation with a 400 before the stream starts
                await run_in_threadpool(lm.encode, messages)
            except BadRequest as exc:
                return _error(400, str(exc), param=exc.param, code=exc.code)
            return StreamingResponse(
                _sse(lm, messages, options, request, completion_id, created, include_usage, metrics),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        cancel = threading.Event()
        watcher = asyncio.create_task(_watch_disconnect(request, cancel))
        result = Generation()
        try:
            text, _ = await run_in_threadpool(lm.complete, messages, cancel=cancel, result=result, **options)
        except BadRequest as exc:
            return _error(400, str(exc), param=exc.param, code=exc.code)
        except GenerationTimeout as exc:
            metrics.add(timeouts=1)
            return _error(504, f"{exc} (this server's request timeout is {settings.request_timeout:g} s)",
                          "timeout_error", code="request_timeout")
        except GenerationCancelled:
            metrics.add(cancelled=1)
            return _error(499, "the client closed the request", code="client_closed_request")
        except ServeError as exc:
            return _error(500, str(exc), "server_error")
        finally:
            watcher.cancel()
            metrics.add(prompt_tokens=result.prompt_tokens, generated_tokens=result.completion_tokens)
        return {
            "id": completion_id, "object": "chat.completion", "created": created, "model": lm.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": result.finish_reason, "logprobs": None}],
            "usage": _usage(result),
        }

    return app


def _over_limits(body, settings: ServeSettings):
    """A 400 for a request over this server's limits on max_tokens, messages or characters, else None."""
    asked = body.max_completion_tokens or body.max_tokens
    if settings.max_tokens_cap and asked and asked > settings.max_tokens_cap:
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        return _error(400, f"{param} is {asked}; this server allows at most {settings.max_tokens_cap}",
                      param=param, code="max_tokens_exceeded")
    if len(body.messages) > settings.max_messages:
        return _error(400, f"messages: {len(body.messages)} messages; this server accepts at most "
                      f"{settings.max_messages}", param="messages", code="too_many_messages")
    chars = sum(len(m.text()) for m in body.messages)
    if chars > settings.max_input_chars:
        return _error(400, f"messages: {chars} characters in all; this server accepts at most "
                      f"{settings.max_input_chars}", param="messages", code="input_too_long")
    return None


def _forged_turn(body, lm: LocalModel):
    """A 400 for a message holding the text of a special token, else None: the chat template's output
    is tokenized as a whole, so ``<|im_end|><|im_start|>system`` in a user message would become real
    control tokens and open a turn the client may not write."""
    for i, message in enumerate(body.messages):
        token = lm.special_token_in(message.text())
        if token is not None:
            param = f"messages.{i}.content"
            return _error(400, f"{param} holds {token!r}, the text of one of the model's special tokens; it "
                          "would become that control token, so it is refused", param=param,
                          code="special_token_in_content")
    return None


def _usage(result: Generation) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


async def _sse(lm: LocalModel, messages: list[dict], options: dict, request, completion_id: str, created: int,
               include_usage: bool, metrics: Metrics):
    """Server-sent events: a role chunk, content chunks, a finish chunk, usage if asked, [DONE]. A
    deadline that passes ends the stream with an error event, then [DONE]."""
    from fastapi.concurrency import run_in_threadpool

    def event(choices: list, **extra) -> str:
        chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": lm.name,
                 "choices": choices, **extra}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    def error(exc: Exception, type_: str, code: str | None = None) -> str:
        body = {"error": {"message": str(exc), "type": type_, "param": None, "code": code}}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    cancel = threading.Event()
    result = Generation()
    # Starlette cancels this generator when the client leaves, but only once the current next() below
    # returns, and that can wait long for a busy model: the watcher sets `cancel` meanwhile.
    watcher = asyncio.create_task(_watch_disconnect(request, cancel))
    pieces = lm.generate(messages, cancel=cancel, result=result, **options)
    done = object()
    ended = False  # the answer, or an error event, went out; otherwise the client left
    try:
        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        while True:
            piece = await run_in_threadpool(next, pieces, done)
            if piece is done:
                break
            if piece:
                yield event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        ended = True
        yield event([{"index": 0, "delta": {}, "finish_reason": result.finish_reason or "stop"}])
        if include_usage:
            yield event([], usage=_usage(result))
    except GenerationTimeout as exc:
        metrics.add(timeouts=1)
        ended = True
        yield error(exc, "timeout_error", "request_timeout")
    except GenerationCancelled:
        return
    except (BadRequest, ServeError) as exc:
        ended = True
        yield error(exc, "server_error")
    finally:
        cancel.set()
        watcher.cancel()
        # close() joins the generation thread, which stops at its next token; a ValueError means the
        # iterator is still inside next() on a worker thread, which sees `cancel` and ends on its own.
        with contextlib.suppress(ValueError):
            pieces.close()
        if not ended:
            metrics.add(cancelled=1)
        metrics.add(prompt_tokens=result.prompt_tokens, generated_tokens=result.completion_tokens)
    yield "data: [DONE]\n\n"


# --- running it ---------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def check_model_ref(ref: str) -> None:
    """Refuse at once a model that is neither a folder here nor a Hub repo id, before a port is taken."""
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ServeError(f"cannot load model {ref}: it is a file; pass the model's folder")
        return
    if not _HUB_ID.fullmatch(ref) or ".." in ref:
        raise ServeError(f"cannot load model {ref}: there is no such folder, and it is not a Hub repo id "
                         "(ORG/NAME)")


def _timed_h11(header_timeout: float | None):
    """uvicorn's h11 protocol with a deadline for each request's headers, which uvicorn lacks: a client
    that connects and sends nothing, or its headers a byte at a time, would hold its connection for
    ever, and max_connections of them would lock everyone out. The deadline runs from the connection,
    or from the first byte after an answer on a kept-alive one; past it the connection closes (with a
    408 if part of a request had come). The body then has its own deadline, in ``_Gate``."""
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
                          http=_timed_h11(settings.body_timeout), limit_concurrency=settings.max_connections + 1,
                          **extra)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve(model: str, *, revision: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          settings: ServeSettings | None = None, log_level: str = "info") -> None:
    """Listen at once, load the model on a thread (/health answers 503 "loading" meanwhile), then serve
    until interrupted. A model that cannot be loaded stops the server with a ServeError."""
    import uvicorn

    check_model_ref(model)
    sock = _listen(host, port)
    bound = sock.getsockname()[1]
    failure: list[str] = []

    def loaded(error: str | None) -> None:
        if error is None:
            print(f"oig serve: {model} is loaded; ready", file=sys.stderr, flush=True)
        else:
            failure.append(error)
            server.should_exit = True

    app = create_app(model, revision=revision, settings=settings, on_loaded=loaded)
    # Streams in progress get 10 s to finish on Ctrl-C; generation threads stop with the process.
    server = uvicorn.Server(server_config(app, host=host, port=bound, log_level=log_level,
                                          timeout_graceful_shutdown=10))
    shown = f"[{host}]" if ":" in host else host
    print(f"oig serve: listening on http://{shown}:{bound}; loading {model}"
          + (f"@{revision}" if revision else ""), file=sys.stderr, flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if failure:
        raise ServeError(failure[0])


def serve_vllm(model: str, *, revision: str | None = None, host: str = "127.0.0.1", port: int = 8000,
               api_key: str | None = None) -> int:
    """Hand serving to vLLM's OpenAI-compatible server (GPU machines with vLLM installed). The API key
    goes to it in VLLM_API_KEY, never on its command line."""
    import importlib.util
    import os
    import subprocess

    if importlib.util.find_spec("vllm") is None:
        raise ServeError("--engine vllm needs vLLM, which is not installed here (it runs on GPU machines: "
                         "pip install vllm); leave out --engine to serve with transformers")
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--served-model-name", model, "--host", host, "--port", str(port)]
    if revision:
        command += ["--revision", revision]
    env = {**os.environ, "VLLM_API_KEY": api_key} if api_key else None
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 130
