"""``oig serve``: an OpenAI-compatible chat service for a trained model (FastAPI and uvicorn).

Routes: ``POST /v1/chat/completions`` (plain, and SSE streaming in ``chat.completion.chunk`` format
ending with ``data: [DONE]``), ``GET /v1/models``, ``GET /health``. Bad requests get a 4xx answer in
OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}``.

Layout, so that later additions have one obvious place each:

- ``LocalModel``: the model and tokenizer, loaded once; ``generate`` yields text pieces and is the
  only code that touches torch. ``oig query`` uses it too.
- ``ServeSettings``: the service's knobs (default and maximum max_tokens today; API keys,
  concurrency limits and timeouts belong here).
- ``create_app``: request models, error handlers and routes. Admission (API keys, 429 when busy)
  belongs at the top of ``chat_completions``, before any model work.

The model is served one request at a time (a lock around generation); a client that disconnects
from a stream stops its generation.
"""

# No `from __future__ import annotations`: FastAPI reads the request model from the route's real
# annotations, and the models are defined inside create_app.
import contextlib
import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from oig.errors import OigError

DEFAULT_MAX_TOKENS = 512


class ServeError(OigError):
    """The model cannot be loaded or served."""


class BadRequest(ValueError):
    """A request the model cannot answer as asked (answered with HTTP 400)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass
class Generation:
    """What one request produced, filled in while its text is generated."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    text: list[str] = field(default_factory=list)


# --- the model ----------------------------------------------------------------------------------------


class _IdStreamer:
    """Receives token ids from ``generate`` (on its thread) and hands them to the consumer."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first pushes the prompt itself
            self._prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.queue.put(None)


class LocalModel:
    """A causal LM and its tokenizer with a chat template, loaded once and served one request at a time."""

    def __init__(self, model, tokenizer, name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.lock = threading.Lock()
        self.created = int(time.time())
        config = getattr(model, "config", None)
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or 0) or None

    @classmethod
    def load(cls, ref: str | Path, *, revision: str | None = None, name: str | None = None) -> "LocalModel":
        """Load a local folder or a Hub repo (at ``revision``); bf16 on a GPU, fp32 on a CPU."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        ref = str(ref)
        try:
            tokenizer = AutoTokenizer.from_pretrained(ref, revision=revision)
            cuda = torch.cuda.is_available()
            dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
            model = AutoModelForCausalLM.from_pretrained(ref, revision=revision, dtype=dtype)
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ServeError(f"cannot load model {ref}" + (f"@{revision}" if revision else "") + f": {first}") from None
        if not getattr(tokenizer, "chat_template", None):
            raise ServeError(f"model {ref} has no chat template; oig serves chat models only")
        if cuda:
            model = model.to("cuda")
        model.eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return cls(model, tokenizer, name or ref)

    def encode(self, messages: list[dict]) -> list[int]:
        """The prompt's token ids: the chat template with the assistant turn opened."""
        try:
            enc = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
        except Exception as exc:  # jinja raises its own errors for conversations the template refuses
            raise BadRequest(f"the model's chat template refused these messages: {exc}", "messages") from None
        ids = enc["input_ids"]
        return list(ids[0] if ids and isinstance(ids[0], list) else ids)

    def generate(self, messages: list[dict], *, max_tokens: int | None = None, temperature: float = 1.0,
                 top_p: float = 1.0, stop: list[str] | None = None, seed: int | None = None,
                 cancel: threading.Event | None = None, result: Generation | None = None) -> Iterator[str]:
        """Yield the answer's text as it is generated; ``result`` gets token counts and finish reason.

        temperature 0 is greedy decoding. Text stops before the first ``stop`` string. Setting
        ``cancel`` (or closing the iterator) stops generation at the next token.
        """
        result = result if result is not None else Generation()
        cancel = cancel or threading.Event()
        prompt = self.encode(messages)
        result.prompt_tokens = len(prompt)
        room = (self.context_length - len(prompt)) if self.context_length else None
        if room is not None and room < 1:
            raise BadRequest(f"the prompt is {len(prompt)} tokens; the model's context is {self.context_length}",
                             "messages", "context_length_exceeded")
        max_new = max_tokens or DEFAULT_MAX_TOKENS
        if room is not None:
            max_new = min(max_new, room)
        stops = [s for s in stop or [] if s]
        yield from self._stream(prompt, max_new, temperature, top_p, stops, seed, cancel, result)

    def _stream(self, prompt: list[int], max_new: int, temperature: float, top_p: float, stops: list[str],
                seed: int | None, cancel: threading.Event, result: Generation) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        streamer = _IdStreamer()
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([prompt], device=device)
        kwargs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "max_new_tokens": max_new,
                  "streamer": streamer, "stopping_criteria": StoppingCriteriaList([Cancelled()]),
                  "pad_token_id": self.tokenizer.pad_token_id}
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        failure: list[BaseException] = []

        def work() -> None:
            try:
                with torch.inference_mode():
                    if seed is not None:
                        torch.manual_seed(seed)
                    self.model.generate(**kwargs)
            except BaseException as exc:  # handed to the consumer, which raises it on its thread
                failure.append(exc)
                streamer.end()
            finally:
                self.lock.release()

        self.lock.acquire()
        thread = threading.Thread(target=work, name="oig-generate", daemon=True)
        try:
            thread.start()
        except BaseException:
            self.lock.release()
            raise
        eos = set(_as_list(getattr(self.model.generation_config, "eos_token_id", None))) | set(
            _as_list(self.tokenizer.eos_token_id))
        ids: list[int] = []
        # Decoding all ids after every token costs O(n^2); text up to a finished line is kept as it
        # was decoded and only the tokens after it are decoded again (as TextStreamer does).
        committed, anchor = "", 0

        def decoded() -> str:
            return committed + self.tokenizer.decode(ids[anchor:], skip_special_tokens=True)

        sent = 0  # characters of the decoded text already yielded
        hold = max((len(s) for s in stops), default=1) - 1  # a stop string may be forming at the end
        ended_on_eos = False
        try:
            while True:
                chunk = streamer.queue.get()
                if chunk is None:
                    break
                ids.extend(chunk)
                result.completion_tokens = len(ids)
                ended_on_eos = bool(chunk) and chunk[-1] in eos
                text = decoded()
                if text.endswith("\ufffd"):
                    continue  # half of a multi-byte character: wait for the rest
                if text.endswith("\n"):
                    committed, anchor = text, len(ids)
                cut = _first_stop(text, stops, sent)
                if cut is not None:
                    if cut > sent:
                        yield text[sent:cut]
                    result.text.append(text[:cut])
                    result.finish_reason = "stop"
                    cancel.set()
                    return
                safe = len(text) - hold
                if safe > sent:
                    yield text[sent:safe]
                    sent = safe
            if failure:
                raise ServeError(f"generation failed: {failure[0]}")
            text = decoded()
            cut = _first_stop(text, stops, 0)
            final = text if cut is None else text[:cut]
            if len(final) > sent:
                yield final[sent:]
            result.text.append(final)
            result.finish_reason = "stop" if (ended_on_eos or cut is not None or len(ids) < max_new) else "length"
        finally:
            cancel.set()
            thread.join()

    def complete(self, messages: list[dict], **options) -> tuple[str, Generation]:
        """The whole answer at once."""
        result = Generation()
        text = "".join(self.generate(messages, result=result, **options))
        return text, result


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _first_stop(text: str, stops: list[str], start: int) -> int | None:
    """Where the earliest stop string begins, searching from just before ``start``."""
    best = None
    for s in stops:
        i = text.find(s, max(0, start - len(s) + 1))
        if i >= 0 and (best is None or i < best):
            best = i
    return best


# --- the service --------------------------------------------------------------------------------------


@dataclass
class ServeSettings:
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    max_tokens_cap: int | None = None  # refuse requests asking for more (None: the model's context)


def _error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
           code: str | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": type_, "param": param, "code": code}})


def create_app(model: "str | Path | LocalModel", *, revision: str | None = None, name: str | None = None,
               settings: ServeSettings | None = None):
    """The FastAPI app serving ``model`` (a folder, a Hub id, or an already loaded LocalModel)."""
    from typing import Literal

    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field, field_validator
    from starlette.exceptions import HTTPException as StarletteHTTPException

    settings = settings or ServeSettings()
    lm = model if isinstance(model, LocalModel) else LocalModel.load(model, revision=revision, name=name)
    served = lm.name

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
        seed: int | None = None

        @field_validator("stop")
        @classmethod
        def _stops(cls, v):
            stops = [v] if isinstance(v, str) else (v or [])
            if len(stops) > 4:
                raise ValueError("at most 4 stop sequences")
            return stops

    app = FastAPI(title="oig", summary="An OpenAI-compatible chat service for an oig model")
    app.state.model = lm
    app.state.settings = settings

    # --- errors in OpenAI's shape ------------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = first.get("msg", "invalid request")
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
        return {"status": "ok", "model": served}

    @app.get("/v1/models")
    async def models():
        return {"object": "list",
                "data": [{"id": served, "object": "model", "created": lm.created, "owned_by": "oig"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        if body.model != served:
            return _error(404, f"the model '{body.model}' is not served here; this server serves '{served}'",
                          param="model", code="model_not_found")
        max_tokens = body.max_completion_tokens or body.max_tokens or settings.default_max_tokens
        if settings.max_tokens_cap and max_tokens > settings.max_tokens_cap:
            return _error(400, f"max_tokens is {max_tokens}; this server allows at most {settings.max_tokens_cap}",
                          param="max_tokens")
        options = {"max_tokens": max_tokens, "temperature": 1.0 if body.temperature is None else body.temperature,
                   "top_p": 1.0 if body.top_p is None else body.top_p, "stop": body.stop, "seed": body.seed}
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            try:
                lm.encode(messages)  # refuse a bad conversation with a 400 before the stream starts
            except BadRequest as exc:
                return _error(400, str(exc), param=exc.param, code=exc.code)
            return StreamingResponse(
                _sse(lm, messages, options, request, completion_id, created, include_usage, run_in_threadpool),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            text, result = await run_in_threadpool(lm.complete, messages, **options)
        except BadRequest as exc:
            return _error(400, str(exc), param=exc.param, code=exc.code)
        except ServeError as exc:
            return _error(500, str(exc), "server_error")
        return {
            "id": completion_id, "object": "chat.completion", "created": created, "model": served,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": result.finish_reason, "logprobs": None}],
            "usage": _usage(result),
        }

    return app


def _usage(result: Generation) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


async def _sse(lm: LocalModel, messages: list[dict], options: dict, request, completion_id: str, created: int,
               include_usage: bool, run_in_threadpool):
    """Server-sent events: a role chunk, content chunks, a finish chunk, usage if asked, [DONE]."""

    def event(choices: list, **extra) -> str:
        chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": lm.name,
                 "choices": choices, **extra}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    cancel = threading.Event()
    result = Generation()
    pieces = lm.generate(messages, cancel=cancel, result=result, **options)
    done = object()
    try:
        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        while True:
            piece = await run_in_threadpool(next, pieces, done)
            if piece is done:
                break
            if await request.is_disconnected():
                return  # the finally below stops generation
            if piece:
                yield event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        yield event([{"index": 0, "delta": {}, "finish_reason": result.finish_reason or "stop"}])
        if include_usage:
            yield event([], usage=_usage(result))
    except (BadRequest, ServeError) as exc:
        yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'server_error', 'param': None, 'code': None}})}\n\n"
    finally:
        cancel.set()
        # close() joins the generation thread, which stops at its next token; a ValueError means the
        # iterator is still inside next() on a worker thread, which sees `cancel` and ends on its own.
        with contextlib.suppress(ValueError):
            pieces.close()
    yield "data: [DONE]\n\n"


# --- running it ---------------------------------------------------------------------------------------


def serve(model: str, *, revision: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info") -> None:
    """Load the model, then serve it with uvicorn until interrupted."""
    import uvicorn

    app = create_app(model, revision=revision)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def serve_vllm(model: str, *, revision: str | None = None, host: str = "127.0.0.1", port: int = 8000) -> int:
    """Hand serving to vLLM's OpenAI-compatible server (GPU machines with vLLM installed)."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("vllm") is None:
        raise ServeError("--engine vllm needs vLLM, which is not installed here (it runs on GPU machines: "
                         "pip install vllm); leave out --engine to serve with transformers")
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--served-model-name", model, "--host", host, "--port", str(port)]
    if revision:
        command += ["--revision", revision]
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130
