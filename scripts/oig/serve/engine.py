"""The batching engine behind ``LocalModel``: one thread owns the model and answers every waiting
request together, in one ``model.generate`` call over a left-padded batch (a dynamic batcher over
``generate``).

A batch is formed from the requests waiting when the model comes free, up to ``max_batch``; it waits
up to ``GATHER_S`` for as many as the load seen over the last ``PEAK_S`` (requests waiting plus rows
generating), so that clients that send their next request as soon as an answer ends are served
together rather than as a batch and its stragglers, each taking a whole batch's time. Each row keeps its own
settings: ``RowSampler``, the one logits processor given to ``generate`` (which runs greedy), applies
each request's penalties, bias and constraint, then chooses that row's token with transformers'
warpers (temperature, top-k, top-p, min-p) and the row's own seeded generator, and leaves only that
token possible. Rows that share settings are processed as one sub-batch. Tokens go to their
request's queue as they are chosen, at most every ``STREAM_INTERVAL_S`` (the first at once); a
request that is cancelled, runs past its deadline or reaches its length stops there (the other rows
go on).

torch and transformers are imported lazily, inside the engine's thread and the processors' calls.
"""

from __future__ import annotations

import atexit
import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

GATHER_S = 0.03  # how long a batch waits for the requests the last batch's clients send again
PEAK_S = 1.0  # how long a peak of load is remembered
# Tokens go to their request at most this often (the first at once): waking every request's thread at
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
    """The model's one thread: takes waiting jobs in arrival order, ``max_batch`` at a time."""

    def __init__(self, model, tokenizer, *, max_batch: int = 16):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max(1, int(max_batch))
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        # The load seen lately: requests waiting plus rows generating, at its peak over PEAK_S. A batch
        # waits (up to GATHER_S) for that many, so that clients that come back at slightly different
        # times are not split into a batch and its stragglers, each taking a whole batch's time.
        self._running_rows = 0
        self._peak, self._peak_at = 0, 0.0
        self._batch: list[Job] = []  # the batch generating now
        self._closing = False
        # Held while a batch generates: ``lock.locked()`` says the model is busy, and holding it from
        # outside keeps every request waiting in the queue.
        self.lock = threading.Lock()
        self.batches = 0  # batches run, and the rows they held (for /metrics and the benchmark)
        self.rows = 0
        self.busy_s = 0.0

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="oig-engine", daemon=True)
                self._thread.start()
                atexit.register(self.close)
            self._pending.append(job)
            self._note_load()
            self._cond.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the engine's thread: every request still generating or waiting ends (as if cancelled) and
        the thread leaves, within ``timeout``. Run at exit: a process that ended while the thread was
        still inside ``generate`` (the last step of an answer already returned) aborts in torch's C++."""
        with self._cond:
            self._closing = True
            for job in [*self._pending, *self._batch]:
                job.cancel.set()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def withdraw(self, job: Job) -> bool:
        """Take a job that has not started out of the queue; False when it has already started."""
        with self._cond:
            try:
                self._pending.remove(job)
            except ValueError:
                return False
            return True

    def _note_load(self) -> None:
        now = time.monotonic()
        load = len(self._pending) + self._running_rows
        if load >= self._peak or now - self._peak_at > PEAK_S:
            self._peak, self._peak_at = load, now

    def _take(self) -> list[Job]:
        with self._cond:
            if not self._pending:  # withdrawn meanwhile
                return []
            self._note_load()
            want = min(self.max_batch, max(self._peak, 1))
            until = time.monotonic() + GATHER_S
            while len(self._pending) < want:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = []
            while self._pending and len(batch) < self.max_batch:
                job = self._pending.popleft()
                if job.cancel.is_set():
                    job.finish()
                    continue
                job.started.set()
                batch.append(job)
            self._running_rows = len(batch)
            self._batch = batch
            return batch

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
                batch = self._take()
                started = time.monotonic()
                try:
                    if batch:
                        self._generate(batch)
                except BaseException as exc:  # handed to every request of the batch
                    for job in batch:
                        job.finish(exc)
                finally:
                    for job in batch:
                        job.finish()
                    with self._cond:
                        self._running_rows, self._batch = 0, []
                    self.busy_s += time.monotonic() - started

    def _generate(self, jobs: list[Job]) -> None:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        tokenizer, model = self.tokenizer, self.model
        self.batches += 1
        self.rows += len(jobs)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = end_tokens(model, tokenizer)
        width = max(len(j.prompt) for j in jobs)
        pads = [width - len(j.prompt) for j in jobs]
        device = next(model.parameters()).device
        input_ids = torch.tensor([[pad] * p + j.prompt for p, j in zip(pads, jobs, strict=True)], device=device)
        attention = torch.tensor([[0] * p + [1] * len(j.prompt) for p, j in zip(pads, jobs, strict=True)],
                                 device=device)
        vocab = int(getattr(model.config, "vocab_size", 0) or len(tokenizer))  # the logits' width
        sampler = RowSampler(jobs, pads, width, pad, vocab)

        class Rows(StoppingCriteria):
            """A row ends when its request did: cancelled, out of time, at its length or its end token."""

            def __call__(self, ids, scores, **kwargs):
                now = time.monotonic()
                for job in jobs:
                    if not job.ended and job.deadline is not None and now >= job.deadline:
                        job.expired = True
                        job.finish()
                    elif not job.ended and job.cancel.is_set():
                        job.finish()
                return torch.tensor([job.ended for job in jobs], dtype=torch.bool, device=ids.device)

        class Streamer:
            """Hands each step's tokens to their requests; the first call is the prompt itself."""

            prompt_seen = False

            def put(self, value):
                if not self.prompt_seen:
                    self.prompt_seen = True
                    return
                now = time.monotonic()
                for job, token in zip(jobs, value.reshape(-1).tolist(), strict=True):
                    if job.ended:
                        continue
                    job.generated.append(token)
                    if token in eos or len(job.generated) >= job.max_new:
                        job.finish()
                    elif job.sent == 0 or now - job.last_put >= STREAM_INTERVAL_S:
                        job.flush()

            def end(self):
                pass

        config = GenerationConfig(max_new_tokens=max(j.max_new for j in jobs), do_sample=False, num_beams=1,
                                  repetition_penalty=1.0, no_repeat_ngram_size=0,
                                  eos_token_id=sorted(eos) or None, pad_token_id=pad)
        with torch.inference_mode():
            model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config,
                           logits_processor=LogitsProcessorList([sampler]),
                           stopping_criteria=StoppingCriteriaList([Rows()]), streamer=Streamer())


class RowSampler:
    """The logits processor that makes every row's choice with that row's settings, then leaves only
    the chosen token open, so that ``generate`` (greedy) takes it. Rows that share a ``Sampling`` are
    processed together; logit_bias, constraints, repetition penalty and seeds are per row."""

    def __init__(self, jobs: list[Job], pads: list[int], width: int, pad: int, vocab: int):
        import torch
        from transformers import (
            MinPLogitsWarper,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        from oig.serve.processors import OpenAIPenalties

        self.jobs, self.pads, self.width, self.pad = jobs, pads, width, pad
        groups: dict[Sampling, list[int]] = collections.defaultdict(list)
        for i, job in enumerate(jobs):
            groups[job.sampling].append(i)
        self.groups = dict(groups)
        # Built once a batch, not once a token: each group's processors and warpers, in transformers'
        # order, and each row's logit_bias as a vector to add (what SequenceBiasLogitsProcessor adds
        # for one-token sequences, without rebuilding it every step).
        self.penalties, self.warpers = {}, {}
        for sampling in self.groups:
            self.penalties[sampling] = (
                [OpenAIPenalties(sampling.presence_penalty, sampling.frequency_penalty, prompt_length=width)]
                if sampling.presence_penalty or sampling.frequency_penalty else [])
            self.warpers[sampling] = [] if sampling.greedy else [
                TemperatureLogitsWarper(sampling.temperature),
                *([TopKLogitsWarper(sampling.top_k)] if sampling.top_k > 0 else []),
                *([TopPLogitsWarper(sampling.top_p)] if sampling.top_p < 1.0 else []),
                *([MinPLogitsWarper(sampling.min_p)] if sampling.min_p > 0 else [])]
        self.repetition = {s: RepetitionPenaltyLogitsProcessor(s.repetition_penalty) for s in self.groups
                           if s.repetition_penalty != 1.0}
        self.bias: dict[int, Any] = {}
        self.generators: dict[int, Any] = {}
        for i, job in enumerate(jobs):
            if job.logit_bias:
                vector = torch.zeros(vocab)
                vector[torch.tensor(list(job.logit_bias), dtype=torch.long)] = torch.tensor(
                    list(job.logit_bias.values()), dtype=torch.float)
                self.bias[i] = vector
            if job.seed is not None and not job.sampling.greedy:
                self.generators[i] = torch.Generator().manual_seed(job.seed % (2**64))

    def __call__(self, input_ids, scores):
        import torch

        chosen = torch.full((scores.shape[0],), self.pad, dtype=torch.long)
        for sampling, rows in self.groups.items():
            live = [r for r in rows if not self.jobs[r].ended]
            if live:
                index = torch.tensor(live, dtype=torch.long, device=scores.device)
                picks = self._choose(sampling, live, input_ids.index_select(0, index),
                                     scores.index_select(0, index))
                chosen[torch.tensor(live, dtype=torch.long)] = picks.cpu()
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen.to(scores.device)[:, None], 0.0)
        return out

    def _choose(self, sampling: Sampling, rows: list[int], ids, scores):
        import torch

        scores = scores.float()
        for processor in self.penalties[sampling]:
            scores = processor(ids, scores)
        repetition = self.repetition.get(sampling)
        for k, r in enumerate(rows):
            job = self.jobs[r]
            if repetition is None and r not in self.bias and job.constraint is None:
                continue
            row = scores[k:k + 1]
            if repetition is not None:  # the row's own tokens: not the padding before its prompt
                row = repetition(ids[k:k + 1, self.pads[r]:], row)
            if r in self.bias:
                row = row + self.bias[r].to(row.device)
            if job.constraint is not None:
                allowed = job.constraint.allowed(job.prompt, job.generated)
                if allowed is not None:
                    mask = torch.full_like(row, float("-inf"))
                    mask[0, torch.tensor(allowed, dtype=torch.long, device=row.device)] = 0.0
                    row = row + mask
            scores[k:k + 1] = row
        wants = [k for k, r in enumerate(rows) if self.jobs[r].top_logprobs is not None]
        logprobs = torch.log_softmax(scores[wants], dim=-1) if wants else None
        if sampling.greedy:
            picks = scores.argmax(dim=-1)
        else:
            warped = scores
            for warper in self.warpers[sampling]:
                warped = warper(ids, warped)
            probs = torch.softmax(warped, dim=-1)
            picks = torch.multinomial(probs, 1).squeeze(1)
            for k, r in enumerate(rows):  # a seeded row draws from its own generator: reproducible in any batch
                generator = self.generators.get(r)
                if generator is not None:
                    picks[k] = torch.multinomial(probs[k].cpu(), 1, generator=generator)[0]
        for n, k in enumerate(wants):
            job = self.jobs[rows[k]]
            token = int(picks[k])
            top = []
            if job.top_logprobs:
                best = torch.topk(logprobs[n], job.top_logprobs)
                top = [(int(i), float(v)) for v, i in zip(best.values, best.indices, strict=True)]
            job.logprobs.append((token, float(logprobs[n, token]), top))
        return picks


def end_tokens(model, tokenizer) -> set[int]:
    """The tokens that end an answer: the model's generation_config.json's and the tokenizer's."""
    return set(_as_list(getattr(model.generation_config, "eos_token_id", None))) | set(
        _as_list(tokenizer.eos_token_id))


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
