"""Chat completion calls to one provider: the together SDK or any OpenAI-compatible server.

Per provider: a semaphore (calls in flight), a token bucket (calls started per minute), and a shared
pause: a 429 with Retry-After holds every call to that provider, not just the one that got it.
Retries: rate limits (429), 408, 409, 5xx, timeouts and connection failures, up to ``max_attempts``
tries, waiting Retry-After when the server sends it (capped) and otherwise a random time up to
``backoff_s * 2**try`` (``files.backoff_delay``: exponential backoff with full jitter, so many callers
do not retry in step).
A call that fails for good returns a result with its error; nothing raises past ``complete``.

Keys come from the environment only; they go into request headers and nowhere else.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from dataclasses import dataclass, field

from oig.errors import OigError
from oig.files import backoff_delay
from oig.generate.config import Provider, api_key

MAX_BACKOFF_S = 60.0
MAX_RETRY_AFTER_S = 300.0  # a server asking for longer than this gets this: a run must not hang for hours
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 520, 522, 524, 529})
MAX_ERROR_CHARS = 300  # of a server's error body kept in a record
LANE_CONNECTIONS = 8  # connections per HTTP client; a provider gets concurrency / 8 clients


@dataclass
class CallResult:
    text: str | None = None
    finish_reason: str | None = None
    usage: dict | None = None  # prompt_tokens, completion_tokens, total_tokens
    latency_s: float | None = None  # of the try that answered
    attempts: int = 0
    error: str | None = None
    provider_id: str | None = None  # the provider's id of the completion

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return {"text": self.text, "finish_reason": self.finish_reason, "usage": self.usage,
                "latency_s": self.latency_s, "attempts": self.attempts, "error": self.error,
                "provider_id": self.provider_id}


class _Retry(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Fail(Exception):
    pass


@dataclass
class TokenBucket:
    """``rate`` tokens a second, holding at most ``capacity``: calls started per minute, with bursts."""

    rate: float
    capacity: float
    tokens: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    async def take(self) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date. None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."


def _error_message(status: int, body: object) -> str:
    """``HTTP 429: <the server's message>``, from OpenAI's error shape or the raw body."""
    message = None
    if isinstance(body, dict):
        err = body.get("error")
        message = err.get("message") if isinstance(err, dict) else err if isinstance(err, str) else body.get("message")
    return f"HTTP {status}: {_short(message if isinstance(message, str) else str(body))}"


def parse_completion(data: object) -> CallResult:
    """The text, finish reason, usage and id of a chat completion answer. Raises _Fail if it is not one."""
    if not isinstance(data, dict):
        raise _Fail("unexpected answer: not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _Fail("unexpected answer: no choices")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    text = message.get("content")
    finish = choice.get("finish_reason")
    if not isinstance(text, str):
        raise _Fail(f"the answer has no text (finish_reason {finish!r})")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    tokens = {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")
              if isinstance(usage.get(k), int) and not isinstance(usage.get(k), bool)}
    provider_id = data.get("id") if isinstance(data.get("id"), str) else None
    return CallResult(text=text, finish_reason=finish if isinstance(finish, str) else None, usage=tokens or None,
                      provider_id=provider_id)


class ProviderClient:
    """Calls to one provider. Create it inside the running event loop; ``aclose`` when done."""

    def __init__(self, provider: Provider):
        self.provider = provider
        key = api_key(provider)
        if provider.api_key_env and key is None:
            raise OigError(f"provider '{provider.name}' needs an API key: set the environment variable "
                           f"{provider.api_key_env}")
        self.sem = asyncio.Semaphore(provider.concurrency)
        self.bucket = (TokenBucket(provider.requests_per_minute / 60.0, float(provider.concurrency))
                       if provider.requests_per_minute else None)
        self.paused_until = 0.0  # monotonic time before which no call starts (Retry-After)
        self.retries = 0
        self.rate_limited = 0
        # Several small connection pools instead of one large one: httpcore's pool scans every
        # connection for every queued request, which at 64 connections costs more CPU than the calls.
        lanes = max(1, -(-provider.concurrency // LANE_CONNECTIONS))
        per_lane = -(-provider.concurrency // lanes)
        import httpx

        self._tls = httpx.create_ssl_context()  # one, shared: loading the CA bundle takes ~15 ms each time
        self._lanes = [self._client(key, per_lane) for _ in range(lanes)]
        self._busy = [0] * lanes

    def _client(self, key: str | None, connections: int):
        import httpx

        p = self.provider
        if p.kind == "together":
            from together import AsyncTogether, DefaultAsyncHttpxClient

            # Our own retries, not the SDK's: they share the provider's pause and are counted.
            return AsyncTogether(api_key=key, base_url=p.base_url, max_retries=0, timeout=p.timeout_s,
                                 http_client=DefaultAsyncHttpxClient(verify=self._tls, limits=httpx.Limits(
                                     max_connections=connections, max_keepalive_connections=connections)))
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=p.base_url.rstrip("/"), headers=headers, timeout=p.timeout_s,
                                 verify=self._tls, limits=httpx.Limits(max_connections=connections,
                                                     max_keepalive_connections=connections))

    async def aclose(self) -> None:
        for lane in self._lanes:
            if self.provider.kind == "together":
                await lane.close()
            else:
                await lane.aclose()

    async def complete(self, model: str, messages: list[dict], settings: dict,
                       response_format: dict | None = None) -> CallResult:
        """One chat completion, retried as the provider's policy says. Never raises for a failed call."""
        p = self.provider
        last = "no try made"
        for attempt in range(1, p.max_attempts + 1):
            retry_after = None
            async with self.sem:
                # After taking a slot: a 429 seen while this call queued must hold it too.
                await self._wait_turn()
                start = time.monotonic()
                try:
                    result = await self._post(model, messages, settings, response_format)
                    result.latency_s = round(time.monotonic() - start, 4)
                    result.attempts = attempt
                    return result
                except _Retry as exc:
                    last, retry_after = str(exc), exc.retry_after
                except _Fail as exc:
                    return CallResult(error=str(exc), attempts=attempt)
            if attempt == p.max_attempts:
                break
            self.retries += 1
            if retry_after is not None:
                self.paused_until = max(self.paused_until, time.monotonic() + retry_after)
            await asyncio.sleep(backoff_delay(attempt - 1, base_s=p.backoff_s, retry_after_s=retry_after,
                                              cap_s=MAX_BACKOFF_S if retry_after is None else MAX_RETRY_AFTER_S))
        return CallResult(error=f"{last} (gave up after {p.max_attempts} tries)", attempts=p.max_attempts)

    async def _wait_turn(self) -> None:
        while (wait := self.paused_until - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        if self.bucket is not None:
            await self.bucket.take()

    async def _post(self, model: str, messages: list[dict], settings: dict,
                    response_format: dict | None) -> CallResult:
        body = {"model": model, "messages": messages, **settings}
        if response_format is not None:
            body["response_format"] = response_format
        lane = min(range(len(self._lanes)), key=self._busy.__getitem__)
        self._busy[lane] += 1
        try:
            if self.provider.kind == "together":
                return await self._post_together(self._lanes[lane], body)
            return await self._post_openai(self._lanes[lane], body)
        finally:
            self._busy[lane] -= 1

    async def _post_openai(self, http, body: dict) -> CallResult:
        import httpx

        try:
            r = await http.post("/v1/chat/completions", json=body)
        except httpx.TimeoutException:
            raise _Retry(f"timed out after {self.provider.timeout_s:g} s") from None
        except httpx.TransportError as exc:
            raise _Retry(f"connection to {self.provider.base_url} failed: {_short(str(exc)) or type(exc).__name__}") from None
        try:
            data = r.json()
        except ValueError:
            data = r.text
        if r.status_code == 429:
            self.rate_limited += 1
        if r.status_code in RETRY_STATUSES:
            raise _Retry(_error_message(r.status_code, data), retry_after_seconds(r.headers.get("retry-after")))
        if r.status_code != 200:
            raise _Fail(_error_message(r.status_code, data))
        return parse_completion(data)

    async def _post_together(self, client, body: dict) -> CallResult:
        import together

        try:
            # The raw answer: both provider kinds then go through parse_completion, so a malformed answer
            # reads the same whoever sent it.
            raw = await client.chat.completions.with_raw_response.create(**body)
        except together.APITimeoutError:
            raise _Retry(f"timed out after {self.provider.timeout_s:g} s") from None
        except together.APIConnectionError as exc:
            raise _Retry(f"connection to Together failed: {_short(str(exc))}") from None
        except together.APIStatusError as exc:
            try:
                data = exc.response.json()
            except ValueError:
                data = exc.response.text
            if exc.status_code == 429:
                self.rate_limited += 1
            if exc.status_code in RETRY_STATUSES:
                raise _Retry(_error_message(exc.status_code, data),
                             retry_after_seconds(exc.response.headers.get("retry-after"))) from None
            raise _Fail(_error_message(exc.status_code, data)) from None
        except together.APIResponseValidationError as exc:
            raise _Fail(f"unexpected answer from Together: {_short(str(exc))}") from None
        try:
            data = raw.http_response.json()
        except ValueError:
            raise _Fail("unexpected answer from Together: not JSON") from None
        return parse_completion(data)
