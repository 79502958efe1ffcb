"""Generating answers with a local or Hub model (transformers): loaded once, greedy or sampled, with
stop strings, a cancel event and a deadline checked after every token. ``oig serve``, ``oig query``,
``oig eval`` and the bug suite all answer through ``LocalModel``, whose engine (oig.serve.engine, the
only code here that runs the model) batches the requests that wait; torch is imported lazily.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from oig.errors import OigError
from oig.records import special_token_texts
from oig.serve.engine import STREAM_INTERVAL_S, Engine, Job, Sampling, end_tokens
from oig.serve.text import AnswerText

DEFAULT_MAX_TOKENS = 512
WAIT_POLL_S = 0.05  # how late a cancel or a deadline is noticed while a request waits for the engine


class ServeError(OigError):
    """The model cannot be loaded or served."""


class GenerationTimeout(ServeError):
    """The request's deadline passed before its answer was complete (answered with HTTP 504)."""


class GenerationCancelled(ServeError):
    """Generation was stopped from outside (the client went away) before its answer was complete."""


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
    # With logprobs asked for: one OpenAI-shaped entry per generated token, {token, logprob, bytes,
    # top_logprobs}, appended as each token arrives (a stream can send the new ones with each piece).
    logprobs: list[dict] = field(default_factory=list)


class LocalModel:
    """A causal LM and its tokenizer with a chat template, loaded once; requests are answered by its
    engine, ``max_batch`` at a time."""

    def __init__(self, model, tokenizer, name: str, *, max_batch: int = 16, engine=None):
        # model: the model, or (with the engine in its own process) what the server reads of it, its
        # config and generation_config.
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.engine = engine if engine is not None else Engine(model, tokenizer, max_batch=max_batch)
        self._shipped_for: tuple | None = None  # (generation_config, its to_diff_dict())
        self.created = int(time.time())
        config = getattr(model, "config", None)
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or 0) or None
        self.special_tokens = frozenset(special_token_texts(tokenizer))
        # Longest first: a token that begins another (<s>, <start>) must not hide it from the match.
        longest_first = sorted(self.special_tokens, key=len, reverse=True)
        self._special = re.compile("|".join(map(re.escape, longest_first))) if longest_first else None

    @classmethod
    def load(cls, ref: str | Path, *, revision: str | None = None, name: str | None = None) -> LocalModel:
        """Load a local folder or a Hub repo (at ``revision``); bf16 on a GPU, fp32 on a CPU. (For the
        model in a child process of its own, as ``oig serve`` runs it: ``oig.serve.worker.load``.)"""
        ref = str(ref)
        import torch
        from transformers import AutoModelForCausalLM

        tokenizer = load_tokenizer(ref, revision)
        try:
            cuda = torch.cuda.is_available()
            dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
            model = AutoModelForCausalLM.from_pretrained(ref, revision=revision, dtype=dtype,
                                                         trust_remote_code=False)
        except (OSError, ValueError, KeyError) as exc:
            raise _load_error(ref, revision, exc) from None
        if cuda:
            model = model.to("cuda")
        model.eval()
        return cls(model, tokenizer, name or ref)

    def special_token_in(self, text: str) -> str | None:
        """The first special token whose text ``text`` holds, else None. The tokenizer turns that text
        into the real control token, so a message holding ``<|im_start|>system`` could forge a turn.
        About 15 ms for 400k characters against 260 tokens."""
        found = self._special.search(text) if self._special is not None else None
        return found.group() if found else None

    def template_variables(self) -> frozenset[str]:
        """The names the chat template reads from outside (jinja's undeclared variables): ``messages``,
        ``tools``, ``enable_thinking``, ...; empty when it is not one template string."""
        template = getattr(self.tokenizer, "chat_template", None)
        return _template_variables(template) if isinstance(template, str) else frozenset()

    def renders_tools(self) -> bool:
        """Whether the chat template renders tool definitions, assistant tool calls and tool results
        (it reads ``tools`` and mentions ``tool_calls``); a template that does not would drop them."""
        return "tools" in self.template_variables() and "tool_calls" in str(self.tokenizer.chat_template)

    def encode(self, messages: list[dict], chat_template_kwargs: dict | None = None,
               tools: list[dict] | None = None) -> list[int]:
        """The prompt's token ids: the chat template with the assistant turn opened (and ``tools``, in
        OpenAI's format, rendered the template's way). Each key of ``chat_template_kwargs`` must be a
        variable the template reads (not one transformers sets)."""
        extra = dict(chat_template_kwargs or {})
        readable = self.template_variables() - _TEMPLATE_OWN
        unread = sorted(set(extra) - readable)
        if unread:
            raise BadRequest(f"chat_template_kwargs: the model's chat template does not read {', '.join(unread)}"
                             f" (it reads {', '.join(sorted(readable)) or 'no other variables'})",
                             "chat_template_kwargs")
        try:
            enc = self.tokenizer.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True,
                                                     return_dict=True, **extra)
        except Exception as exc:  # jinja raises its own errors for conversations the template refuses
            raise BadRequest(f"the model's chat template refused these messages: {exc}", "messages") from None
        ids = enc["input_ids"]
        return list(ids[0] if ids and isinstance(ids[0], list) else ids)

    def generate(self, messages: list[dict], **options) -> Iterator[str]:
        """Yield the answer's text as it is generated, on this thread (``job`` tells the options)."""
        job, stops, result = self.job(messages, **options)
        yield from self._stream(job, stops, result)

    async def agenerate(self, messages: list[dict], **options) -> AsyncIterator[str]:
        """The same on an event loop: the engine's hand-overs wake the loop (no thread waits for them)."""
        job, stops, result = self.job(messages, **options)
        async for piece in self._astream(job, stops, result):
            yield piece

    def job(self, messages: list[dict], *, max_tokens: int | None = None, temperature: float | None = None,
            top_p: float | None = None, top_k: int | None = None, min_p: float | None = None,
            repetition_penalty: float | None = None, presence_penalty: float = 0.0,
            frequency_penalty: float = 0.0, logit_bias: dict[int, float] | None = None,
            stop: list[str] | None = None, seed: int | None = None, logprobs: int | None = None,
            constraint=None, tools: list[dict] | None = None, chat_template_kwargs: dict | None = None,
            cancel: threading.Event | None = None, deadline: float | None = None,
            result: Generation | None = None, prompt_ids: list[int] | None = None,
            whole: bool = False) -> tuple[Job, list[str], Generation]:
        """One request's Job for the engine, its stop strings, and the ``result`` that its token counts
        and finish reason go to.

        temperature 0 is greedy decoding. A sampling setting left None (temperature, top_p, top_k,
        min_p, repetition_penalty) comes from the model's generation_config.json where that file sets
        it, as transformers and vLLM do, else temperature 1 and no top-p, top-k, min-p or repetition
        penalty. presence_penalty and frequency_penalty follow OpenAI's formula; logit_bias maps token
        ids to a bias added to their logits; ``constraint`` (see oig.serve.structured) limits each next
        token to the ones its grammar allows. ``logprobs`` (0 to 20 alternatives) fills
        ``result.logprobs``: log-probabilities after the penalties, bias and constraint, before
        temperature, top-k and top-p. Text stops before the first ``stop`` string. The request waits
        its turn in the engine (oig.serve.engine), which generates for several requests at once.
        Setting ``cancel`` stops generation at the next token and raises GenerationCancelled; passing
        ``deadline`` (a ``time.monotonic()`` value, counting the wait for the model too) does the same
        and raises GenerationTimeout. Closing the iterator stops generation quietly. A BadRequest says
        what the model cannot do (a prompt longer than its context, an unknown token in logit_bias).
        """
        result = result if result is not None else Generation()
        cancel = cancel or threading.Event()
        sampling = self.sampling(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                                 repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                                 frequency_penalty=frequency_penalty)
        bias = self._bias(logit_bias)
        # prompt_ids: ``encode``'s result for these messages, tools and kwargs, when the caller has it.
        prompt = prompt_ids if prompt_ids is not None else self.encode(messages, chat_template_kwargs, tools=tools)
        result.prompt_tokens = len(prompt)
        room = (self.context_length - len(prompt)) if self.context_length else None
        if room is not None and room < 1:
            raise BadRequest(f"the prompt is {len(prompt)} tokens; the model's context is {self.context_length}",
                             "messages", "context_length_exceeded")
        max_new = max_tokens or DEFAULT_MAX_TOKENS
        if room is not None:
            max_new = min(max_new, room)
        stops = [s for s in stop or [] if s]
        # ``whole``: the caller joins the pieces anyway, so the engine hands the tokens over once, at the
        # end, unless stop strings must be watched as the text grows.
        job = Job(prompt, max_new, sampling, logit_bias=bias, seed=seed, top_logprobs=logprobs,
                  constraint=constraint, cancel=cancel, deadline=deadline,
                  stream_interval_s=None if whole and not stops else STREAM_INTERVAL_S)
        return job, stops, result

    def sampling(self, *, temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
                 min_p: float | None = None, repetition_penalty: float | None = None, presence_penalty: float = 0.0,
                 frequency_penalty: float = 0.0) -> Sampling:
        """The settings a request samples with: its own, else the ones the model's generation_config.json
        sets (only those it sets: ``to_diff_dict``, as vLLM reads it), else temperature 1 and nothing else."""
        shipped = self._shipped()
        if temperature is None:
            # do_sample: false in the model's file is greedy decoding, as generate() would do by default.
            temperature = 0.0 if shipped.get("do_sample") is False else float(shipped.get("temperature", 1.0) or 0.0)

        def pick(value, key: str, off):
            value = value if value is not None else shipped.get(key)
            return off if value is None else value

        # top_k 0 (and vLLM's -1): no top-k; generate() would otherwise default to 50.
        return Sampling(temperature=float(temperature), top_p=float(pick(top_p, "top_p", 1.0)),
                        top_k=max(int(pick(top_k, "top_k", 0)), 0), min_p=float(pick(min_p, "min_p", 0.0)),
                        repetition_penalty=float(pick(repetition_penalty, "repetition_penalty", 1.0)),
                        presence_penalty=float(presence_penalty or 0.0),
                        frequency_penalty=float(frequency_penalty or 0.0))

    def _shipped(self) -> dict:
        """What the model's generation config sets, read once per config object (``to_diff_dict``
        deep-copies the whole config: about 2 ms, on every request's thread)."""
        config = getattr(self.model, "generation_config", None)
        if config is None:
            return {}
        if self._shipped_for is None or self._shipped_for[0] is not config:
            self._shipped_for = (config, config.to_diff_dict())
        return self._shipped_for[1]

    def _bias(self, logit_bias: dict[int, float] | None) -> dict[int, float] | None:
        """logit_bias with every token id checked against the vocabulary (a BadRequest otherwise)."""
        if not logit_bias:
            return None
        # A token the tokenizer has and the model's logits cover (the two can differ in size).
        vocab = min(len(self.tokenizer), int(getattr(self.model.config, "vocab_size", 0) or len(self.tokenizer)))
        unknown = [t for t in logit_bias if not 0 <= int(t) < vocab]
        if unknown:
            raise BadRequest(f"logit_bias: token id(s) {unknown} are not in the model's vocabulary of {vocab}",
                             "logit_bias")
        return {int(t): float(b) for t, b in logit_bias.items()}

    def _next(self, job: Job):
        """The job's next queue item; while it waits for the engine, a cancel or a passed deadline takes
        it out of the queue (GenerationCancelled / GenerationTimeout)."""
        while True:
            try:
                # Once started, the engine watches cancel and deadline, and this thread need not wake.
                return job.tokens.get(timeout=1.0 if job.started.is_set() else WAIT_POLL_S)
            except queue.Empty:
                if self._leaving(job) and self.engine.withdraw(job):
                    raise self._unserved(job) from None

    async def _anext(self, job: Job, inbox: _LoopInbox):
        """``_next`` on an event loop (the engine's process answers a withdrawal over its pipe: that wait
        is on a thread)."""
        import asyncio

        while True:
            try:
                async with asyncio.timeout(None if job.started.is_set() else WAIT_POLL_S):
                    return await inbox.queue.get()
            except TimeoutError:
                if self._leaving(job) and await asyncio.to_thread(self.engine.withdraw, job):
                    raise self._unserved(job) from None

    @staticmethod
    def _leaving(job: Job) -> bool:
        """A job still waiting for the engine that was cancelled or ran out of time."""
        return not job.started.is_set() and (_late(job) or job.cancel.is_set())

    @staticmethod
    def _unserved(job: Job) -> ServeError:
        """Why a job that left the engine's queue was not answered."""
        if _late(job):
            return GenerationTimeout("the request ran out of time waiting for the model, which was busy with "
                                     "other requests")
        return GenerationCancelled("cancelled while waiting for the model")

    def eos_ids(self) -> set[int]:
        """The tokens that end an answer: the model's generation_config.json's and the tokenizer's."""
        return end_tokens(self.model, self.tokenizer)

    def _add(self, text: AnswerText, job: Job, chunk, result: Generation) -> str:
        """One hand-over from the engine: its logprob entries kept, the text it lets out returned."""
        if isinstance(chunk, BaseException):
            raise ServeError(f"generation failed: {chunk}")
        if job.top_logprobs is not None:
            done = len(text.ids)
            result.logprobs.extend(self._logprob_entries(job.logprobs[done:done + len(chunk)]))
        return text.add(chunk)

    @staticmethod
    def _end(text: AnswerText, job: Job) -> str:
        """The rest of the text once the tokens have ended; a deadline or a cancel that ended them raises."""
        if job.expired:
            raise GenerationTimeout(f"the request ran out of time after {len(text.ids)} generated token(s)")
        if job.cancel.is_set():  # only the caller sets it before this point
            raise GenerationCancelled(f"cancelled after {len(text.ids)} generated token(s)")
        return text.end(job.max_new)

    def _stream(self, job: Job, stops: list[str], result: Generation) -> Iterator[str]:
        text = AnswerText(self.tokenizer, stops, self.eos_ids(), result)
        self.engine.submit(job)
        try:
            while not text.stopped and (chunk := self._next(job)) is not None:
                if piece := self._add(text, job, chunk, result):
                    yield piece
            if not text.stopped and (piece := self._end(text, job)):
                yield piece
        finally:
            job.cancel.set()  # the engine ends this row at its next step
            self.engine.withdraw(job)

    async def _astream(self, job: Job, stops: list[str], result: Generation) -> AsyncIterator[str]:
        import asyncio

        loop = asyncio.get_running_loop()
        inbox = job.tokens = _LoopInbox(loop)
        text = AnswerText(self.tokenizer, stops, self.eos_ids(), result)
        self.engine.submit(job)
        try:
            while not text.stopped and (chunk := await self._anext(job, inbox)) is not None:
                if piece := self._add(text, job, chunk, result):
                    yield piece
            if not text.stopped and (piece := self._end(text, job)):
                yield piece
        finally:
            job.cancel.set()  # the engine ends this row at its next step, or drops it from its queue
            # Still waiting: out of the queue now, on a thread (no await here). RuntimeError: the loop is
            # shutting down, and the engine drops a cancelled job when it comes to it.
            if not job.started.is_set():
                with contextlib.suppress(RuntimeError):
                    loop.run_in_executor(None, self.engine.withdraw, job)

    def _logprob_entries(self, captured: list[tuple]) -> list[dict]:
        """OpenAI's ``logprobs.content`` entries for the engine's (token, logprob, top) tuples."""
        def one(token_id: int, logprob: float) -> dict:
            text = self.tokenizer.decode([token_id])
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8", "backslashreplace"))}

        return [{**one(token, logprob), "top_logprobs": [one(i, v) for i, v in top]}
                for token, logprob, top in captured]

    def complete(self, messages: list[dict], *, result: Generation | None = None, **options) -> tuple[str, Generation]:
        """The whole answer at once (``result``, if given, has the counts even when generation fails)."""
        result = result if result is not None else Generation()
        text = "".join(self.generate(messages, result=result, whole=True, **options))
        return text, result

    async def acomplete(self, messages: list[dict], *, result: Generation | None = None,
                        **options) -> tuple[str, Generation]:
        """``complete`` on an event loop."""
        result = result if result is not None else Generation()
        pieces = self.agenerate(messages, result=result, whole=True, **options)
        try:
            text = "".join([piece async for piece in pieces])
        finally:
            await pieces.aclose()
        return text, result


def _late(job: Job) -> bool:
    return job.deadline is not None and time.monotonic() >= job.deadline


class _LoopInbox:
    """A job's token queue for a caller on an event loop: the engine's thread (or the engine process's
    reader thread) puts, and the loop wakes to get."""

    def __init__(self, loop):
        import asyncio

        self.loop, self.queue = loop, asyncio.Queue()

    def put(self, item) -> None:
        # RuntimeError: the loop has closed (the server stopped), and nobody waits for these tokens.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def load_tokenizer(ref: str, revision: str | None = None):
    """The model's tokenizer, with a chat template (a ServeError otherwise) and a pad token (its end
    token when it has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, revision=revision, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(ref, revision, exc) from None
    if not getattr(tokenizer, "chat_template", None):
        raise ServeError(f"model {ref} has no chat template; oig serves chat models only")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_error(ref: str, revision: str | None, exc: Exception) -> ServeError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ServeError(f"cannot load model {ref}" + (f"@{revision}" if revision else "") + f": {first}")


# Variables apply_chat_template sets itself: not a client's to pass through chat_template_kwargs.
_TEMPLATE_OWN = frozenset({"messages", "tools", "documents", "add_generation_prompt", "continue_final_message",
                           "bos_token", "eos_token", "pad_token", "unk_token", "raise_exception", "strftime_now"})


@functools.lru_cache(maxsize=8)
def _template_variables(template: str) -> frozenset[str]:
    """Parsed once per template (about 40 ms each time otherwise, on every request)."""
    from jinja2 import meta
    from transformers.utils.chat_template_utils import _compile_jinja_template

    # transformers' own environment: its {% generation %} tag and loop controls parse there.
    environment = _compile_jinja_template(template).environment
    return frozenset(meta.find_undeclared_variables(environment.parse(template)))
