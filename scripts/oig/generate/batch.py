"""A provider in ``mode: batch``: calls go to its batch API instead of one HTTP request each.

``BatchClient.complete`` has the online client's shape (``oig.generate.clients``), so the pipeline
does not change: each call waits on a future. Calls gather in a queue, submitted as one batch when it
holds ``batch_size`` of them or when no call has come for ``flush_s`` seconds (every record in flight
is then waiting on the batch API). A batch is one JSONL file of requests, each with its store key as
``custom_id`` (64 hex digits: Together's limit), uploaded, then started; its id and its calls are
recorded in the call store at once (``CallStore.put_batch``), before any wait. Then it is polled every
``poll_s`` seconds until it ends; each answered line is stored as a finished call, and the calls'
futures are resolved (a failed line, a missing one or a batch that failed, expired or was cancelled
resolves its calls with an error, and a rerun submits them again).

After an interruption a rerun finds each call it needs either in the store (answered) or in a batch
still live (``CallStore.live_batch``): it polls that batch again instead of resubmitting.

Two backends with one interface (upload, create, status, download): OpenAI's API over httpx
(``POST /v1/files`` with ``purpose=batch``, ``POST /v1/batches``, ``GET /v1/batches/{id}``,
``GET /v1/files/{id}/content``) and Together's through the together SDK (``files.upload(purpose=
"batch-api")``, ``batches.create``, ``batches.retrieve``, ``files.content``).
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from oig.errors import OigError
from oig.generate.clients import CallResult, _error_message, _Fail, _short, parse_completion
from oig.generate.config import Provider, api_key
from oig.generate.store import CallStore

DONE = "completed"
DEAD = frozenset({"failed", "expired", "cancelled", "canceled"})  # a rerun submits these calls again
# A completed batch is not waited on again either: its answers are in the store, and a call it did not
# answer is submitted again.
ENDED = DEAD | {DONE}
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")  # batch and file ids go into URL paths
MAX_OUTPUT_BYTES = 2 * 1024**3  # of one batch's output file


@dataclass
class BatchStatus:
    status: str  # lower case: validating, in_progress, finalizing, completed, failed, expired, cancelled...
    output_file_id: str | None = None
    error_file_id: str | None = None
    error: str | None = None


class BatchClient:
    """Calls to one provider's batch API. Create it inside the running event loop; ``aclose`` when done."""

    def __init__(self, provider: Provider, store: CallStore, backend=None):
        key = api_key(provider)
        if provider.api_key_env and key is None:
            raise OigError(f"provider '{provider.name}' needs an API key: set the environment variable "
                           f"{provider.api_key_env}")
        self.provider, self.store = provider, store
        self.backend = backend or (TogetherBatches(provider, key) if provider.kind == "together"
                                   else OpenAIBatches(provider, key))
        self.queue: list[tuple[str, dict, str]] = []  # (key, request body, kind)
        self.waiters: dict[str, list[asyncio.Future]] = {}
        self.polling: dict[str, asyncio.Task] = {}  # batch id -> its poll task
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()
        self.submitted = 0  # batches this run submitted
        self.resumed = 0  # batches of an earlier run polled again

    async def complete(self, model: str, messages: list[dict], settings: dict, response_format: dict | None = None,
                       *, key: str | None = None, kind: str = "chat") -> CallResult:
        if key is None:
            raise ValueError("a batch call needs its store key (the batch line's custom_id)")
        future = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(key, []).append(future)
        live = self.store.live_batch(key, self.provider.name, ENDED)
        if live is not None:
            self._poll(live, resumed=True)
        elif len(self.waiters[key]) == 1:  # the same call asked twice at once is queued once
            body = {"model": model, "messages": messages, **settings}
            if response_format is not None:
                body["response_format"] = response_format
            self.queue.append((key, body, kind))
            if len(self.queue) >= self.provider.batch_size:
                self._spawn(self._submit())
            else:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = asyncio.get_running_loop().call_later(
                    self.provider.flush_s, lambda: self._spawn(self._submit()))
        return await future

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _poll(self, batch_id: str, resumed: bool = False) -> None:
        if batch_id not in self.polling:
            self.resumed += resumed
            self.polling[batch_id] = asyncio.ensure_future(self._wait(batch_id))

    def _resolve(self, key: str, result: CallResult) -> None:
        for future in self.waiters.pop(key, []):
            if not future.done():
                future.set_result(result)

    # --- submitting ------------------------------------------------------------------------------------
    async def _submit(self) -> None:
        batch, self.queue = self.queue[:self.provider.batch_size], self.queue[self.provider.batch_size:]
        if self.queue:  # more than one batch's worth came at once: the rest goes next
            self._spawn(self._submit())
        if not batch:
            return
        try:
            with tempfile.TemporaryDirectory(prefix="oig-batch-") as tmp:
                path = Path(tmp) / "requests.jsonl"
                with open(path, "w", encoding="utf-8") as f:
                    for key, body, _ in batch:
                        f.write(json.dumps(self.backend.line(key, body), ensure_ascii=False) + "\n")
                batch_id, status = await self.backend.submit(path)
        except Exception as exc:  # never leave a call waiting; a rerun submits these again
            why = str(exc) if isinstance(exc, _Fail) else f"{type(exc).__name__}: {_short(str(exc))}"
            for key, _, _ in batch:
                self._resolve(key, CallResult(error=f"the batch was not submitted: {why}", attempts=1))
            return
        # Recorded before any wait: an interruption from here on polls this batch again, never resubmits.
        self.store.put_batch(batch_id, self.provider.name, status,
                             [(key, kind, body["model"]) for key, body, kind in batch])
        self.submitted += 1
        self._poll(batch_id)

    # --- waiting ---------------------------------------------------------------------------------------
    async def _wait(self, batch_id: str) -> None:
        calls = self.store.batch_calls(batch_id)
        try:
            await self._follow(batch_id, calls)
        except Exception as exc:  # never leave a call waiting: an unexpected failure is every call's error
            for key in calls:
                self._resolve(key, CallResult(error=f"batch {batch_id}: {type(exc).__name__}: {_short(str(exc))}",
                                              attempts=1))
            raise

    async def _follow(self, batch_id: str, calls: dict[str, tuple[str, str]]) -> None:
        while True:
            try:
                state = await self.backend.status(batch_id)
            except _Fail as exc:
                state = BatchStatus("unreadable", error=str(exc))
            self.store.set_batch_status(batch_id, state.status)
            if state.status == DONE or state.status in DEAD or state.status == "unreadable":
                break
            await asyncio.sleep(self.provider.poll_s)
        answered: dict[str, CallResult] = {}
        if state.status == DONE:
            try:
                for file_id in (state.output_file_id, state.error_file_id):
                    if file_id:
                        answered.update(parse_output(await self.backend.download(file_id), calls))
            except _Fail as exc:
                state = BatchStatus("unreadable", error=f"its output could not be read: {exc}")
        for key, result in answered.items():
            if result.ok:
                kind, model = calls[key]
                self.store.put(key, kind, model, result.to_dict())
        why = (f"batch {batch_id} ended {state.status}" + (f": {state.error}" if state.error else "")
               if state.status != DONE else f"batch {batch_id} completed without an answer for this call")
        if state.status == "unreadable":
            self.store.set_batch_status(batch_id, "failed")  # a rerun submits these calls again
        for key in calls:
            self._resolve(key, answered.get(key) or CallResult(error=why, attempts=1))

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in [*self._tasks, *self.polling.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self.polling.values(), return_exceptions=True)
        await self.backend.aclose()


def parse_output(data: bytes, calls: dict[str, object]) -> dict[str, CallResult]:
    """custom_id -> result, from a batch output or error file (JSONL: custom_id, response {status_code,
    body} or error). Lines for calls not in the batch, and unreadable lines, are skipped."""
    out: dict[str, CallResult] = {}
    for raw in data.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        key = line.get("custom_id") if isinstance(line, dict) else None
        if not isinstance(key, str) or key not in calls:
            continue
        response = line.get("response") if isinstance(line.get("response"), dict) else None
        error = line.get("error")
        if response is not None and response.get("status_code", 200) == 200 and not error:
            try:
                out[key] = parse_completion(response.get("body"))
                out[key].attempts = 1
            except _Fail as exc:
                out[key] = CallResult(error=str(exc), attempts=1)
        else:
            status = (response or {}).get("status_code") or 0
            body = (response or {}).get("body") if response else {"error": error}
            out[key] = CallResult(error=_error_message(status, body) if status else
                                  f"the batch line failed: {_short(json.dumps(error))}", attempts=1)
    return out


# --- the two batch APIs --------------------------------------------------------------------------------


class OpenAIBatches:
    """OpenAI's batch API (and servers with its shape) over httpx."""

    def __init__(self, provider: Provider, key: str | None):
        import httpx

        self.provider = provider
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.AsyncClient(base_url=provider.base_url.rstrip("/"), headers=headers,
                                      timeout=provider.timeout_s)

    @staticmethod
    def line(key: str, body: dict) -> dict:
        return {"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body}

    async def _call(self, method: str, path: str, **kwargs):
        import httpx

        try:
            r = await self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise _Fail(f"{method} {path}: {_short(str(exc)) or type(exc).__name__}") from None
        if r.status_code != 200:
            try:
                body = r.json()
            except ValueError:
                body = r.text
            raise _Fail(f"{method} {path}: {_error_message(r.status_code, body)}")
        return r

    async def _json(self, method: str, path: str, **kwargs) -> dict:
        r = await self._call(method, path, **kwargs)
        try:
            data = r.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise _Fail(f"{method} {path}: the answer is not a JSON object")
        return data

    async def submit(self, path: Path) -> tuple[str, str]:
        with open(path, "rb") as f:
            uploaded = await self._json("POST", "/v1/files", data={"purpose": "batch"},
                                        files={"file": ("requests.jsonl", f, "application/jsonl")})
        file_id = _text_field(uploaded, "id", "the uploaded file")
        batch = await self._json("POST", "/v1/batches", json={"input_file_id": file_id,
                                                              "endpoint": "/v1/chat/completions",
                                                              "completion_window": "24h"})
        return _text_field(batch, "id", "the batch"), str(batch.get("status") or "validating").lower()

    async def status(self, batch_id: str) -> BatchStatus:
        data = await self._json("GET", f"/v1/batches/{batch_id}")
        errors = data.get("errors")
        error = _short(json.dumps(errors)) if errors else None
        return BatchStatus(str(data.get("status") or "").lower(), _id(data.get("output_file_id")),
                           _id(data.get("error_file_id")), error)

    async def download(self, file_id: str) -> bytes:
        r = await self._call("GET", f"/v1/files/{file_id}/content")
        if len(r.content) > MAX_OUTPUT_BYTES:
            raise _Fail(f"the output file {file_id} is over {MAX_OUTPUT_BYTES} bytes")
        return r.content

    async def aclose(self) -> None:
        await self.http.aclose()


class TogetherBatches:
    """Together's batch API through the together SDK (its files and batches resources)."""

    def __init__(self, provider: Provider, key: str | None):
        from together import AsyncTogether

        self.client = AsyncTogether(api_key=key, base_url=provider.base_url, max_retries=2,
                                    timeout=provider.timeout_s)

    @staticmethod
    def line(key: str, body: dict) -> dict:
        return {"custom_id": key, "body": body}

    async def _sdk(self, what: str, coro):
        import together

        try:
            return await coro
        except together.APIStatusError as exc:
            try:
                body = exc.response.json()
            except ValueError:
                body = exc.response.text
            raise _Fail(f"{what}: {_error_message(exc.status_code, body)}") from None
        except (together.APIError, ValueError) as exc:
            raise _Fail(f"{what}: {_short(str(exc)) or type(exc).__name__}") from None

    async def submit(self, path: Path) -> tuple[str, str]:
        # check=False: the SDK's checker is for fine-tuning files; its own batch CLI skips it too.
        uploaded = await self._sdk("uploading the batch file", self.client.files.upload(
            path, purpose="batch-api", check=False))
        if _id(uploaded.id) is None:
            raise _Fail(f"Together gave the uploaded batch file no usable id ({_short(repr(uploaded.id))})")
        created = await self._sdk("creating the batch", self.client.batches.create(
            endpoint="/v1/chat/completions", input_file_id=uploaded.id, completion_window="24h"))
        job = created.job
        if job is None or _id(job.id) is None:
            raise _Fail(f"Together created no batch ({_short(created.warning or 'no reason given')})")
        return job.id, str(job.status or "validating").lower()

    async def status(self, batch_id: str) -> BatchStatus:
        job = await self._sdk(f"checking batch {batch_id}", self.client.batches.retrieve(batch_id))
        return BatchStatus(str(job.status or "").lower(), _id(job.output_file_id), _id(job.error_file_id),
                           job.error or None)

    async def download(self, file_id: str) -> bytes:
        response = await self._sdk(f"downloading {file_id}", self.client.files.content(file_id))
        return await response.read()  # AsyncBinaryAPIResponse: the whole body

    async def aclose(self) -> None:
        await self.client.close()


def _text_field(data: dict, name: str, what: str) -> str:
    value = _id(data.get(name))
    if value is None:
        raise _Fail(f"{what} has no usable `{name}` in the answer ({_short(repr(data.get(name)))})")
    return value


def _id(value: object) -> str | None:
    """An id from the provider, or None when it is absent or not an id (it would go into a URL path)."""
    return value if isinstance(value, str) and _ID.fullmatch(value) else None
