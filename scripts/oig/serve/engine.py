"""The batching engine behind ``LocalModel``: one thread owns the model and generates for every
request at once, continuously: a request that arrives while others generate joins them at the next
step, and one that ends leaves at once (oig.serve.decode: the decode loop over the model's own
forward pass and KV cache).

Requests wait in arrival order; up to ``max_batch`` generate together. Each row keeps its own
settings (``decode.Sampler``: penalties, bias, constraint, seed, log-probabilities). Tokens go to
their request's queue as they are chosen, at most every ``STREAM_INTERVAL_S`` (the first at once); a
request that is cancelled, runs past its deadline or reaches its length stops there (the other rows
go on).

torch and transformers are imported lazily, inside the engine's thread.
"""

from __future__ import annotations

import atexit
import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

# Tokens go to their request at most this often (the first at once): waking every request's waiter at
# every token costs the engine's thread the GIL about a millisecond a step at 16 rows.
STREAM_INTERVAL_S = 0.02
_END = None  # on a job's queue: no more tokens


@dataclass(frozen=True)
class Sampling:
    """One request's sampling settings, resolved (the request's, else the model's file, else off)."""

    temperature: float = 1.0  # 0: greedy decoding
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass(eq=False)
class Job:
    """One request inside the engine: its prompt and settings, and the queue its tokens arrive on.

    The queue receives lists of token ids, then None; an exception instead if generation failed.
    ``logprobs`` entries (token id, logprob, [(id, logprob), ...]) are appended before the token
    they describe is queued."""

    prompt: list[int]
    max_new: int
    sampling: Sampling = field(default_factory=Sampling)
    logit_bias: dict[int, float] | None = None
    seed: int | None = None
    top_logprobs: int | None = None  # None: no logprobs; 0..20 alternatives
    constraint: Any = None  # has allowed(prompt, generated) -> list[int] | None (lm-format-enforcer)
    cancel: threading.Event = field(default_factory=threading.Event)
    deadline: float | None = None
    tokens: queue.Queue = field(default_factory=queue.Queue)
    logprobs: list[tuple] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    expired: bool = False  # the deadline, not the caller, ended it
    ended: bool = False  # no more tokens will be queued

    sent: int = 0  # tokens of `generated` already queued
    last_put: float = 0.0
    stream_interval_s: float | None = STREAM_INTERVAL_S  # None: every token at the end, in one hand-over
    state: dict = field(default_factory=dict)  # the sampler's per-row things (bias vector, seeded generator)

    def flush(self) -> None:
        """Queue the tokens generated since the last hand-over."""
        if len(self.generated) > self.sent:
            self.tokens.put(self.generated[self.sent:])
            self.sent = len(self.generated)
            self.last_put = time.monotonic()

    def finish(self, item=_END) -> None:
        if not self.ended:
            self.ended = True
            if not isinstance(item, BaseException):
                self.flush()
            self.tokens.put(item)


class Engine:
    """The model's one thread: takes waiting jobs in arrival order, up to ``max_batch`` generating at once."""

    def __init__(self, model, tokenizer, *, max_batch: int = 16):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max(1, int(max_batch))
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._rows = None  # the decode.Rows generating now
        self._closing = False
        # Held while rows generate: ``lock.locked()`` says the model is busy, and holding it from
        # outside keeps every request waiting in the queue.
        self.lock = threading.Lock()
        # For /metrics and the benchmark: prefills (groups of requests that joined together) and the
        # requests they admitted; decode steps and the rows they held (step_rows / steps: the mean batch).
        self.batches = 0
        self.rows = 0
        self.steps = 0
        self.step_rows = 0
        self.busy_s = 0.0
        self.on_idle = None  # called on the engine's thread each time the last row has ended (oig.serve.worker)
        self.failure: str | None = None  # a thread of this process cannot die apart from it (worker.EngineProcess can)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="oig-engine", daemon=True)
                self._thread.start()
                atexit.register(self.close)
            self._pending.append(job)
            self._cond.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the engine's thread: every request still generating or waiting ends (as if cancelled) and
        the thread leaves, within ``timeout``. Run at exit: a process that ended while the thread was
        still inside a forward pass (the last step of an answer already returned) aborts in torch's C++."""
        with self._cond:
            self._closing = True
            running = self._rows.jobs if self._rows is not None else []
            for job in [*self._pending, *running]:
                job.cancel.set()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def withdraw(self, job: Job) -> bool:
        """Take a job that has not started out of the queue; False when it has already started."""
        with self._cond:
            # Not deque.remove's ValueError: its message is the job's repr (tensors and all), at the end of
            # every request.
            if job.started.is_set() or job not in self._pending:
                return False
            self._pending.remove(job)
            return True

    def _take(self, room: int) -> list[Job]:
        """Up to ``room`` waiting jobs, in arrival order (cancelled ones end here)."""
        with self._cond:
            taken: list[Job] = []
            while self._pending and len(taken) < room and not self._closing:
                job = self._pending.popleft()
                if job.cancel.is_set():
                    job.finish()
                    continue
                job.started.set()
                taken.append(job)
            return taken

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if self._closing:
                    for job in self._pending:
                        job.finish()
                    return
            with self.lock:
                started = time.monotonic()
                try:
                    self._run()
                finally:
                    self.busy_s += time.monotonic() - started
            if self.on_idle is not None:
                self.on_idle()

    def _run(self) -> None:
        """Generate until no row is left: new jobs join between steps, ended ones leave."""
        from oig.serve.decode import Rows, Sampler

        tokenizer, model = self.tokenizer, self.model
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        vocab = int(getattr(model.config, "vocab_size", 0) or len(tokenizer))  # the logits' width
        rows = Rows(model, Sampler(vocab), end_tokens(model, tokenizer), pad)
        self._rows = rows
        new: list[Job] = []
        try:
            import torch

            with torch.inference_mode():
                while True:
                    new = self._take(self.max_batch - len(rows.jobs)) if rows.joinable or not rows.jobs else []
                    if new:
                        self.batches += 1
                        self.rows += len(new)
                        rows.admit(new)
                        new = []
                        rows.prune()
                    if self._closing:  # close() may have come while these rows were being taken
                        for job in rows.jobs:
                            job.cancel.set()
                        rows.prune()
                    if not rows.jobs:
                        return
                    self.steps += 1
                    self.step_rows += len(rows.jobs)
                    rows.step()
                    rows.prune()
        except BaseException as exc:  # handed to every request generating
            for job in [*rows.jobs, *new]:
                job.finish(exc)
        finally:
            for job in rows.jobs:
                job.finish()
            self._rows = None


def end_tokens(model, tokenizer) -> set[int]:
    """The tokens that end an answer: the model's generation_config.json's and the tokenizer's."""
    return set(_as_list(getattr(model.generation_config, "eos_token_id", None))) | set(
        _as_list(tokenizer.eos_token_id))


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
