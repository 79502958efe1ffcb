"""The engine in its own process, for ``oig serve``: the model and its decode loop (oig.serve.engine)
run in a child Python process, and the server's process keeps the HTTP side, the tokenizer and the
chat templates, as vLLM splits its API server from its engine core.

Why: the decode loop is Python between small torch calls, and holds the interpreter most of a step;
in the server's process every request thread, the event loop and the loop took turns on one GIL,
so that generation slowed while answers went out and requests came in. Here each side has its own
interpreter (and, on a CPU, its own core: torch in the child uses every core but one, unless
OMP_NUM_THREADS says otherwise).

``EngineProcess`` stands in for ``Engine`` (submit, withdraw, close, ``max_batch``, the counters);
``load`` gives a ``LocalModel`` whose engine it is. The two sides speak over a socket pair with
``multiprocessing.connection`` (pickled tuples); a job's settings go over once, its tokens come
back in the hand-overs the engine makes anyway (every ``STREAM_INTERVAL_S`` when streamed, once at
the end otherwise). A cancel set on this side reaches the child within ``CANCEL_POLL_S``; a
deadline is watched there (``time.monotonic`` is the system's clock, the same in both processes).
The child ends when its pipe closes (this process exited, however it exited). If the child dies,
every request waiting on it fails with a ServeError, and so does every later one.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import itertools
import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from types import SimpleNamespace

from oig.errors import OigError
from oig.machine import usable_cores
from oig.serve.engine import Job
from oig.serve.inference import LocalModel, ServeError, load_tokenizer

CANCEL_POLL_S = 0.02  # how late a cancel set on this side reaches the child, at most
_COUNTERS = ("batches", "rows", "steps", "step_rows", "busy_s")


class EngineError(ServeError):
    """The engine's process could not start or has stopped."""


def load(ref, *, revision: str | None = None, name: str | None = None) -> LocalModel:
    """``LocalModel.load``, with the model and its engine in a child process: only the tokenizer (and
    what the server reads of the model: its config and generation config) here."""
    ref = str(ref)
    tokenizer = load_tokenizer(ref, revision)
    engine = EngineProcess(ref, revision=revision)
    return LocalModel(engine.start(), tokenizer, name or ref, engine=engine)


class EngineProcess:
    """The engine, run by ``python -m oig.serve.worker`` in a child process that loads ``ref``."""

    def __init__(self, ref: str, *, revision: str | None = None, max_batch: int = 16):
        self.ref, self.revision = str(ref), revision
        self._max_batch = max(1, int(max_batch))
        self._jobs: dict[int, Job] = {}  # number -> job, from submit until its end arrives (the number in job.state)
        self._cancels_sent: set[int] = set()
        self._withdrawn: dict[int, concurrent.futures.Future] = {}  # number -> the child's answer, True if taken
        self._next_id = itertools.count(1)
        self._send_lock = threading.Lock()
        self.failure: str | None = None  # why the engine's process is gone (None while it runs): /health says it
        self._conn: Connection | None = None
        self._process: subprocess.Popen | None = None
        self.counters = dict.fromkeys(_COUNTERS, 0)

    # --- the counters /metrics reads, as the in-process Engine has them ---------------------------
    batches = property(lambda self: self.counters["batches"])
    rows = property(lambda self: self.counters["rows"])
    steps = property(lambda self: self.counters["steps"])
    step_rows = property(lambda self: self.counters["step_rows"])
    busy_s = property(lambda self: self.counters["busy_s"])

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @max_batch.setter
    def max_batch(self, value: int) -> None:
        self._max_batch = max(1, int(value))
        if self._conn is not None:
            self._send(("max_batch", self._max_batch))

    def start(self) -> SimpleNamespace:
        """Start the child and wait until its model is loaded: the model's config and generation config
        (what the server reads of the model) come back. A model the child cannot load is an EngineError
        with the child's reason."""
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", "oig.serve.worker", "--fd", str(theirs.fileno()), "--model", self.ref,
                   "--max-batch", str(self._max_batch), *(["--revision", self.revision] if self.revision else [])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_package_root(), os.environ.get("PYTHONPATH")]))}
        try:
            self._process = subprocess.Popen(command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        try:
            first = self._recv_ready()
        except BaseException:
            self.close(timeout=5)
            raise
        if first[0] == "failed":
            self.close(timeout=5)
            raise EngineError(first[1])
        facts = SimpleNamespace(config=first[1]["config"], generation_config=first[1]["generation_config"])
        threading.Thread(target=self._read, name="oig-engine-reader", daemon=True).start()
        atexit.register(self.close)
        return facts

    def _recv_ready(self) -> tuple:
        while not self._conn.poll(0.5):
            if self._process.poll() is not None:
                raise EngineError(f"the engine's process exited (code {self._process.returncode}) while loading "
                                  f"{self.ref}")
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            code = self._process.wait(timeout=10)
            raise EngineError(f"the engine's process exited (code {code}) while loading {self.ref}") from None

    # --- the Engine interface --------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        if self.failure:
            job.finish(EngineError(self.failure))
            return
        number = next(self._next_id)
        constraint = job.constraint
        if constraint is not None and getattr(constraint, "schema", None) is None:
            raise TypeError("the engine's process takes JSON-schema constraints only (oig.serve.structured)")
        spec = {"prompt": job.prompt, "max_new": job.max_new, "sampling": job.sampling, "logit_bias": job.logit_bias,
                "seed": job.seed, "top_logprobs": job.top_logprobs, "deadline": job.deadline,
                "stream_interval_s": job.stream_interval_s,
                "constraint": None if constraint is None else (constraint.schema, constraint.param)}
        job.state["number"] = number
        self._jobs[number] = job
        if not self._send(("submit", number, spec)):
            self._end(number, False, self.failure)

    def withdraw(self, job: Job) -> bool:
        """Take a job that has not started out of the child's queue; False once it has started or ended."""
        number = job.state.get("number")
        if number not in self._jobs or job.started.is_set():
            return False
        answer = self._withdrawn[number] = concurrent.futures.Future()
        try:
            taken = self._send(("withdraw", number)) and answer.result(timeout=5.0)
        except concurrent.futures.TimeoutError:
            taken = False
        self._withdrawn.pop(number, None)
        if taken:
            self._forget(number)
        return taken

    def close(self, timeout: float = 10.0) -> None:
        """Stop the child: what still generates or waits there ends as cancelled; killed after ``timeout``."""
        process, self._process = self._process, None
        if process is None:
            return
        self._send(("close",))
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if self._conn is not None:
            self._conn.close()
        self.failure = self.failure or "the engine's process was stopped"

    # --- the two directions ----------------------------------------------------------------------
    def _send(self, message: tuple) -> bool:
        try:
            with self._send_lock:
                self._conn.send(message)
            return True
        except (OSError, ValueError, AttributeError):  # closed (ValueError, AttributeError: after close())
            return False

    def _read(self) -> None:
        """The child's messages, handed to their jobs; the cancels set here sent on the way."""
        conn = self._conn
        try:
            while True:
                if self._jobs:
                    self._send_cancels()
                if not conn.poll(CANCEL_POLL_S if self._jobs else 0.5):
                    continue
                message = conn.recv()
                kind = message[0]
                if kind == "tokens":
                    job = self._jobs.get(message[1])
                    if job is not None:
                        job.logprobs.extend(message[3])
                        job.generated.extend(message[2])
                        job.flush()
                elif kind == "started":
                    job = self._jobs.get(message[1])
                    if job is not None:
                        job.started.set()
                elif kind == "end":
                    _, number, expired, failure, counters = message
                    self.counters = counters
                    self._end(number, expired, failure)
                elif kind == "stats":
                    self.counters = message[1]
                elif kind == "withdrawn":
                    answer = self._withdrawn.get(message[1])
                    if answer is not None:
                        answer.set_result(message[2])
        except (EOFError, OSError, ValueError):
            pass
        process = self._process
        code = None
        if process is not None:  # the pipe closes as the child dies, a moment before its exit status is there
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = process.wait(timeout=5)
        self.failure = self.failure or (f"the engine's process stopped (exit code {code})" if code is not None
                                        else "the engine's process stopped")
        for number in list(self._jobs):
            self._end(number, False, self.failure)
        for answer in list(self._withdrawn.values()):
            if not answer.done():
                answer.set_result(False)

    def _send_cancels(self) -> None:
        for number, job in list(self._jobs.items()):
            if job.cancel.is_set() and number not in self._cancels_sent:
                self._cancels_sent.add(number)
                self._send(("cancel", number))

    def _end(self, number: int, expired: bool, failure: str | None) -> None:
        job = self._forget(number)
        if job is not None:
            job.expired = bool(expired)
            if failure:
                job.finish(EngineError(failure))
            else:
                job.finish()

    def _forget(self, number: int) -> Job | None:
        self._cancels_sent.discard(number)
        return self._jobs.pop(number, None)


def _package_root() -> str:
    """The folder holding the ``oig`` package, for the child's import path (an editable or a source run)."""
    import oig

    return os.path.dirname(os.path.dirname(os.path.abspath(oig.__file__)))


# --- the child ---------------------------------------------------------------------------------------

class _Outbox:
    """Stands in for a child job's token queue: what the engine queues goes to the parent."""

    def __init__(self, send, number: int, job, jobs: dict, engine):
        self.send, self.number, self.job, self.jobs, self.engine = send, number, job, jobs, engine
        self.logprobs_sent = 0

    def put(self, item) -> None:
        if isinstance(item, list):
            new = self.job.logprobs[self.logprobs_sent:]
            self.logprobs_sent += len(new)
            self.send(("tokens", self.number, item, new))
            return
        self.jobs.pop(self.number, None)
        failure = f"{type(item).__name__}: {item}" if isinstance(item, BaseException) else None
        self.send(("end", self.number, self.job.expired, failure, _counters(self.engine)))


class _Started(threading.Event):
    """A child job's ``started``: setting it tells the parent."""

    def __init__(self, send, number: int):
        super().__init__()
        self._tell = lambda: send(("started", number))

    def set(self) -> None:
        super().set()
        self._tell()


def _counters(engine) -> dict:
    return {name: getattr(engine, name) for name in _COUNTERS}


def _torch_threads() -> None:
    """On a CPU, torch takes every core but one (the server's process needs one), unless OMP_NUM_THREADS is set."""
    import torch

    if torch.cuda.is_available() or os.environ.get("OMP_NUM_THREADS"):
        return
    torch.set_num_threads(max(1, usable_cores() - 1))


def child(fd: int, ref: str, revision: str | None, max_batch: int) -> int:
    """The child's main: load the model, say so, then take the parent's messages until the pipe closes."""
    import signal

    from oig.serve.structured import JsonConstraint

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's: it drains, then closes the pipe
    conn = Connection(fd)
    lock = threading.Lock()

    def send(message: tuple) -> None:
        try:
            with lock:
                conn.send(message)
        except OSError:
            pass  # the parent has gone: the loop below sees the pipe closed

    try:
        _torch_threads()
        lm = LocalModel.load(ref, revision=revision)
    except Exception as exc:  # noqa: BLE001 - the parent reports it; nothing here may die unheard
        send(("failed", str(exc) if isinstance(exc, OigError) else f"cannot load model {ref}: {type(exc).__name__}: {exc}"))
        return 1
    engine = lm.engine
    engine.max_batch = max_batch
    engine.on_idle = lambda: send(("stats", _counters(engine)))
    send(("ready", {"config": lm.model.config, "generation_config": lm.model.generation_config}))
    jobs: dict[int, Job] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        kind = message[0]
        if kind == "submit":
            _, number, spec = message
            job = Job(spec["prompt"], spec["max_new"], spec["sampling"], logit_bias=spec["logit_bias"],
                      seed=spec["seed"], top_logprobs=spec["top_logprobs"], deadline=spec["deadline"],
                      stream_interval_s=spec["stream_interval_s"])
            job.tokens = _Outbox(send, number, job, jobs, engine)
            job.started = _Started(send, number)
            jobs[number] = job
            try:
                if spec["constraint"] is not None:
                    job.constraint = JsonConstraint(lm, *spec["constraint"])
            except Exception as exc:  # noqa: BLE001 - the parent built the same one; this should not fail
                job.finish(exc)
                continue
            engine.submit(job)
        elif kind == "cancel":
            job = jobs.get(message[1])
            if job is not None:
                job.cancel.set()
        elif kind == "withdraw":
            job = jobs.get(message[1])
            taken = job is not None and engine.withdraw(job)
            if taken:
                jobs.pop(message[1], None)
            send(("withdrawn", message[1], taken))
        elif kind == "max_batch":
            engine.max_batch = message[1]
        elif kind == "close":
            break
    engine.close()
    conn.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m oig.serve.worker", description="oig serve's engine process "
                                     "(started by oig serve; not a command of its own)")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--revision")
    parser.add_argument("--max-batch", type=int, default=16)
    args = parser.parse_args(argv)
    return child(args.fd, args.model, args.revision, args.max_batch)


if __name__ == "__main__":
    raise SystemExit(main())
