"""``oig serve``: an OpenAI-compatible chat service for a trained model (FastAPI and uvicorn).

Routes: ``POST /v1/chat/completions`` (plain, and SSE streaming in ``chat.completion.chunk`` format
ending with ``data: [DONE]``), ``GET /v1/models``, ``GET /health`` (readiness), ``GET /metrics``
(Prometheus text). Refusals get OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}``.

Layout, one obvious place each:

- ``inference.LocalModel``: the model and tokenizer, loaded once; ``generate`` yields text pieces on a
  thread (``oig query`` and the bug suite), ``agenerate`` on the event loop (here); ``text``: one
  answer's text as its tokens arrive. ``engine``: the one thread that owns the model and
  generates for every request at once (continuous batching, oig.serve.decode), each row with its own settings;
  ``worker``: that engine in a child process of its own, as ``oig serve`` runs it.
- ``api``: the wire format (request models, the error shape, this server's limits); ``chat``: from a
  request to what the model is asked (tools, constraints) and from its text back to a message;
  ``structured``: response_format and forced tool calls as grammars (lm-format-enforcer).
- ``limits``: ``ServeSettings`` (one flag each), the ``Gate`` middleware (401, 503, 413, 408, 429),
  the FIFO of turns, uvicorn's protocol with a header deadline and the connection cap; ``metrics``.
- here, ``create_app``: error handlers and routes; the model loads on a thread so that ``/health``
  can say "loading" meanwhile; ``serve`` listens at once.

Admitted chat completions take turns in arrival order (``limits.Turns``, a FIFO), ``max_concurrency``
at a time (the engine's largest batch); up to ``max_queue`` more wait, each until its deadline, and
the gate refuses the rest with 429. A client that disconnects, waiting or generating, leaves the
queue or ends its row of the batch (a watcher task polls the connection).
"""

# No `from __future__ import annotations`: FastAPI reads the request model from the route's real
# annotations.
import asyncio
import contextlib
import json
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from oig.serve import chat, page, worker
from oig.serve.api import CHAT_ROUTE, ChatCompletionRequest, error, over_limits, sampling_options, usage
from oig.serve.inference import (
    BadRequest,
    Generation,
    GenerationCancelled,
    GenerationTimeout,
    LocalModel,
    ServeError,
)
from oig.serve.limits import RETRY_LOADING_S, Gate, ServeSettings, Turns, server_config
from oig.serve.metrics import Metrics

DISCONNECT_POLL_S = 0.1  # how often a watcher asks whether the client is still there
INLINE_PREPARE_BYTES = 8192  # a request body up to this size is templated and tokenized on the event loop


class _ModelSlot:
    """The served model, or why there is none yet: it loads on a thread so that /health answers meanwhile."""

    def __init__(self, name: str | None, settings: ServeSettings, model: LocalModel | None = None):
        self.name = model.name if model is not None else name
        self.settings = settings
        self.model = self.configure(model) if model is not None else None
        self.error: str | None = None
        self._started = False

    def configure(self, model: LocalModel) -> LocalModel:
        """Apply the settings that belong to the model: the engine's batch, the context length."""
        model.engine.max_batch = self.settings.max_concurrency
        wanted = self.settings.max_model_len
        if wanted is not None:
            if model.context_length and wanted > model.context_length:
                raise ServeError(f"--max-model-len {wanted} is longer than the model's context of "
                                 f"{model.context_length} tokens")
            model.context_length = wanted
        return model

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
                try:
                    self.model = self.configure(model)
                    self.name = model.name
                except ServeError as exc:
                    self.error = str(exc)
            if on_loaded is not None:
                on_loaded(self.error)

        threading.Thread(target=work, name="oig-load", daemon=True).start()


async def _watch_disconnect(request, cancel: threading.Event, gone: asyncio.Event | None = None) -> None:
    """Set ``cancel`` (and ``gone``) once the client has gone, so that its generation stops at the next
    token, or its wait for the model ends. The first look comes after one interval: starlette's check
    costs a cancel scope (and the repr of the task it cancels), and short answers are out by then."""
    while not cancel.is_set():
        await asyncio.sleep(DISCONNECT_POLL_S)
        if not cancel.is_set() and await request.is_disconnected():
            cancel.set()
            if gone is not None:
                gone.set()
            return


def create_app(model: "str | Path | LocalModel | Callable[[], LocalModel]", *, revision: str | None = None,
               name: str | None = None, aliases: tuple[str, ...] = (), settings: ServeSettings | None = None,
               on_loaded: Callable[[str | None], None] | None = None):
    """The FastAPI app serving ``model``: a folder or Hub id (loaded on a thread when the server starts),
    a function that loads it (likewise), or an already loaded LocalModel. It is served as ``name`` (the
    one /v1/models lists), and a request naming one of ``aliases`` (the model's path) is served too.
    ``on_loaded`` hears, from the loading thread, None once the model is ready or the error that
    stopped it."""
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    settings = settings or ServeSettings()
    metrics = Metrics()
    turns = Turns(settings.max_concurrency)
    if isinstance(model, LocalModel):
        slot, load = _ModelSlot(name, settings, model), None
    elif callable(model):
        slot, load = _ModelSlot(name, settings), model
    else:
        ref = str(model)
        slot = _ModelSlot(name or ref, settings)

        def load() -> LocalModel:
            return worker.load(ref, revision=revision, name=name)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if load is not None:
            slot.start(load, on_loaded)
        yield

    app = FastAPI(title="oig", summary="An OpenAI-compatible chat service for an oig model", lifespan=lifespan)
    app.state.slot = slot
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.turns = turns
    app.add_middleware(Gate, slot=slot, settings=settings, metrics=metrics)

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
        return error(400, f"{param + ': ' if param else ''}{message}{more}", param=param)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        return error(500, f"internal error: {type(exc).__name__}", "server_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error(exc.status_code, str(exc.detail), kind)

    # --- routes --------------------------------------------------------------------------------------
    if settings.ui:
        page.add_routes(app)

    @app.get("/health")
    async def health():
        stopped = slot.model.engine.failure if slot.model is not None else None
        if stopped:  # the engine's process died (oig.serve.worker): requests fail, so say so
            return JSONResponse(status_code=503, content={"status": "failed", "model": slot.name, "ready": False,
                                                          "error": stopped})
        if slot.model is not None:
            return {"status": "ok", "model": slot.name, "ready": True}
        body = {"status": slot.status, "model": slot.name, "ready": False}
        if slot.error:
            body["error"] = slot.error
        return JSONResponse(status_code=503, content=body,
                            headers=None if slot.error else {"Retry-After": str(RETRY_LOADING_S)})

    @app.get("/metrics")
    async def prometheus_metrics():
        engine = slot.model.engine if slot.model is not None else None
        return PlainTextResponse(metrics.render(slot.model is not None, engine), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        lm = slot.model
        return {"object": "list",
                "data": [{"id": lm.name, "object": "model", "created": lm.created, "owned_by": "oig"}]}

    @app.post(CHAT_ROUTE)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        lm = slot.model  # the gate answered 503 while there was none
        if body.model != lm.name and body.model not in aliases:
            return error(404, f"the model '{body.model}' is not served here; this server serves '{lm.name}'",
                         param="model", code="model_not_found")
        refusal = over_limits(body, settings)
        if refusal is not None:
            return refusal
        cap = settings.max_tokens_cap
        max_tokens = body.max_completion_tokens or body.max_tokens or min(settings.default_max_tokens,
                                                                          cap or settings.default_max_tokens)
        base = {"max_tokens": max_tokens, "stop": body.stop, "seed": body.seed,
                "deadline": request.scope.get("oig.deadline"), **sampling_options(body)}
        try:  # refuse what the model cannot do with a 400 before anything is generated or streamed
            # A small request's template and tokenizer take about 0.1 ms: here, not a thread's round trip.
            small = request.scope.get("oig.body_bytes", INLINE_PREPARE_BYTES + 1) <= INLINE_PREPARE_BYTES
            p = chat.prepare(body, lm, base) if small else await run_in_threadpool(chat.prepare, body, lm, base)
        except BadRequest as exc:
            return error(400, str(exc), param=exc.param, code=exc.code)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _sse(lm, p, request, completion_id, created, include_usage, metrics, turns, bool(body.logprobs)),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        cancel, gone = threading.Event(), asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(request, cancel, gone))
        result = Generation()
        turn = False
        try:
            await turns.take(base["deadline"], gone)
            turn = True
            text, _ = await lm.acomplete(p.messages, cancel=cancel, result=result, **p.options)
        except BadRequest as exc:
            return error(400, str(exc), param=exc.param, code=exc.code)
        except GenerationTimeout as exc:
            metrics.add(timeouts=1)
            return error(504, f"{exc} (this server's request timeout is {settings.request_timeout:g} s)",
                         "timeout_error", code="request_timeout")
        except GenerationCancelled:
            metrics.add(cancelled=1)
            return error(499, "the client closed the request", code="client_closed_request")
        except ServeError as exc:
            return error(500, str(exc), "server_error")
        finally:
            if turn:
                turns.give_back()
            watcher.cancel()
            metrics.add(prompt_tokens=result.prompt_tokens, generated_tokens=result.completion_tokens)
        message, finish_reason = chat.answer(p, text, result.finish_reason)
        # A JSONResponse as it is: FastAPI would walk a returned dict through jsonable_encoder first.
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": created, "model": lm.name,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason,
                         "logprobs": {"content": result.logprobs} if body.logprobs else None}],
            "usage": usage(result),
        })

    return app


async def _sse(lm: LocalModel, p: chat.Plan, request, completion_id: str, created: int, include_usage: bool,
               metrics: Metrics, turns: Turns, logprobs: bool):
    """Server-sent events: a role chunk, then (once the model is this request's turn) content chunks
    (with their tokens' logprobs when asked), a finish chunk, usage if asked, [DONE]. With tools in
    play the answer is sent whole when it is complete, as content or as tool_calls, since a call is
    known only at its end. A deadline that passes, waiting or generating, ends the stream with an
    error event, then [DONE]."""
    def event(choices: list, **extra) -> str:
        chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": lm.name,
                 "choices": choices, **extra}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    def error_event(exc: Exception, type_: str, code: str | None = None) -> str:
        body = {"error": {"message": str(exc), "type": type_, "param": None, "code": code}}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def piece_event(delta: dict, sent_logprobs: int) -> tuple[str, int]:
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        if logprobs:
            choice["logprobs"] = {"content": result.logprobs[sent_logprobs:]}
            sent_logprobs = len(result.logprobs)
        return event([choice]), sent_logprobs

    cancel, gone = threading.Event(), asyncio.Event()
    result = Generation()
    # The watcher ends the wait for a turn (and the generation) of a client that has left.
    watcher = asyncio.create_task(_watch_disconnect(request, cancel, gone))
    pieces = lm.agenerate(p.messages, cancel=cancel, result=result, **p.options)
    ended = False  # the answer, or an error event, went out; otherwise the client left
    turn = False
    whole = p.tool_mode is not None
    text: list[str] = []
    sent_logprobs = 0
    try:
        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        await turns.take(p.options["deadline"], gone)
        turn = True
        async for piece in pieces:
            if whole:
                text.append(piece)
            elif piece:
                chunk, sent_logprobs = piece_event({"content": piece}, sent_logprobs)
                yield chunk
        finish_reason = result.finish_reason or "stop"
        if whole:
            message, finish_reason = chat.answer(p, "".join(text), finish_reason)
            delta = {k: v for k, v in message.items() if k != "role" and v is not None}
            if "tool_calls" in delta:
                delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(delta["tool_calls"])]
            chunk, sent_logprobs = piece_event(delta, sent_logprobs)
            yield chunk
        ended = True
        last = {"index": 0, "delta": {}, "finish_reason": finish_reason}
        if logprobs:  # the end token's entry: it has no text, so no piece carried it
            last["logprobs"] = {"content": result.logprobs[sent_logprobs:]}
        yield event([last])
        if include_usage:
            yield event([], usage=usage(result))
    except GenerationTimeout as exc:
        metrics.add(timeouts=1)
        ended = True
        yield error_event(exc, "timeout_error", "request_timeout")
    except GenerationCancelled:
        return
    except (BadRequest, ServeError) as exc:
        ended = True
        yield error_event(exc, "server_error")
    finally:
        cancel.set()
        watcher.cancel()
        await pieces.aclose()  # the request's row in the engine ends at its next step
        if turn:
            turns.give_back()
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


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve(model: str, *, revision: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          settings: ServeSettings | None = None, log_level: str = "info", name: str | None = None) -> None:
    """Listen at once, load the model on a thread (/health answers 503 "loading" meanwhile), then serve
    until interrupted, as ``name`` (default: ``model``), with ``model`` itself as an alias. A model that
    cannot be loaded stops the server with a ServeError."""
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

    app = create_app(model, revision=revision, name=name, aliases=(model,), settings=settings, on_loaded=loaded)
    # Streams in progress get 10 s to finish on Ctrl-C; generation threads stop with the process.
    server = uvicorn.Server(server_config(app, host=host, port=bound, log_level=log_level,
                                          timeout_graceful_shutdown=10))
    shown = f"[{host}]" if ":" in host else host
    print(f"oig serve: listening on http://{shown}:{bound}; loading {model}"
          + (f"@{revision}" if revision else "") + (f" as {name}" if name and name != model else ""),
          file=sys.stderr, flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if failure:
        raise ServeError(failure[0])
