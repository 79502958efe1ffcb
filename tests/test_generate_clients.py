"""Calls to one provider: retries, Retry-After, backoff, concurrency, rate limits, errors as results."""

from __future__ import annotations

import asyncio
import email.utils
import time

import pytest
from fake_openai import FakeOpenAI

from oig.errors import OigError
from oig.generate.clients import ProviderClient, TokenBucket, parse_completion, retry_after_seconds
from oig.generate.config import Provider

MESSAGES = [{"role": "user", "content": "Hi"}]


def provider(base_url: str, **kwargs) -> Provider:
    kwargs.setdefault("backoff_s", 0.01)
    return Provider(name="local", kind="openai", base_url=base_url, **kwargs)


def call_many(p: Provider, n: int, model: str = "m"):
    async def main():
        client = ProviderClient(p)
        try:
            results = await asyncio.gather(*(client.complete(model, MESSAGES, {"max_tokens": 8}) for _ in range(n)))
        finally:
            await client.aclose()
        return results, client

    return asyncio.run(main())


def test_an_answer_has_text_usage_latency_and_the_providers_id():
    with FakeOpenAI(latency=0.02) as srv:
        [result], _ = call_many(provider(srv.base_url), 1)
    assert result.ok and result.text == "[m] Hi" and result.finish_reason == "stop"
    assert result.usage["total_tokens"] > 0 and result.latency_s >= 0.02 and result.attempts == 1
    assert result.provider_id.startswith("chatcmpl-")


def test_429_is_retried_after_the_wait_the_server_asks_for():
    with FakeOpenAI(rate_limit_first=1, retry_after="0.3") as srv:
        start = time.monotonic()
        [result], client = call_many(provider(srv.base_url), 1)
        elapsed = time.monotonic() - start
    assert result.ok and result.attempts == 2 and elapsed >= 0.3
    assert client.rate_limited == 1 and client.retries == 1


def test_a_429_pauses_every_call_to_the_provider():
    with FakeOpenAI(rate_limit_first=1, retry_after="0.3", latency=0.01) as srv:
        start = time.monotonic()
        results, _ = call_many(provider(srv.base_url, concurrency=1), 3)
        elapsed = time.monotonic() - start
        assert all(r.ok for r in results)
        reqs = srv.chat_requests()
    # The first call got the 429; the calls queued behind it waited out the same pause.
    assert len(reqs) == 4 and elapsed >= 0.3
    assert all(r.at - reqs[0].at >= 0.28 for r in reqs[1:])


def test_without_retry_after_the_backoff_is_jittered_and_bounded():
    with FakeOpenAI(rate_limit_first=2, retry_after=None) as srv:
        start = time.monotonic()
        [result], _ = call_many(provider(srv.base_url, backoff_s=0.05), 1)
        elapsed = time.monotonic() - start
    assert result.ok and result.attempts == 3
    assert elapsed < 0.05 + 0.1 + 1.0  # at most backoff_s * (1 + 2), plus slack for a loaded machine


def test_a_call_gives_up_after_max_attempts_with_the_last_error():
    with FakeOpenAI(rate_limit_first=10, retry_after="0") as srv:
        [result], _ = call_many(provider(srv.base_url, max_attempts=3), 1)
        assert len(srv.chat_requests()) == 3
    assert not result.ok and result.text is None and result.attempts == 3
    assert result.error == "HTTP 429: rate limit reached, slow down (gave up after 3 tries)"


def test_client_errors_are_not_retried():
    with FakeOpenAI(status={"m": 404}) as srv:
        [result], _ = call_many(provider(srv.base_url), 1)
        assert len(srv.chat_requests()) == 1
    assert result.error == "HTTP 404: the model m cannot answer this" and result.attempts == 1


def test_a_dead_server_is_an_error_not_an_exception():
    srv = FakeOpenAI()
    url = srv.base_url
    srv.close()
    [result], _ = call_many(provider(url, max_attempts=2), 1)
    assert not result.ok and "connection to http://127.0.0.1:" in result.error and "gave up after 2 tries" in result.error


def test_a_slow_server_times_out():
    with FakeOpenAI(latency=2.0) as srv:
        [result], _ = call_many(provider(srv.base_url, timeout_s=0.2, max_attempts=1), 1)
    assert result.error == "timed out after 0.2 s (gave up after 1 tries)"


def test_concurrency_is_capped_per_provider():
    with FakeOpenAI(latency=0.05) as srv:
        results, _ = call_many(provider(srv.base_url, concurrency=3), 12)
        assert all(r.ok for r in results) and srv.max_in_flight == 3


def test_requests_per_minute_are_limited_after_a_burst():
    with FakeOpenAI() as srv:
        start = time.monotonic()
        # 600/minute = 10/s with a burst of 2: 6 calls need about (6 - 2) / 10 = 0.4 s
        results, _ = call_many(provider(srv.base_url, concurrency=2, requests_per_minute=600), 6)
        elapsed = time.monotonic() - start
    assert all(r.ok for r in results) and elapsed >= 0.35


def test_token_bucket_allows_a_burst_then_the_rate():
    async def main() -> float:
        bucket = TokenBucket(rate=20.0, capacity=5.0)
        start = time.monotonic()
        for _ in range(9):
            await bucket.take()
        return time.monotonic() - start

    assert 0.15 <= asyncio.run(main()) < 1.0  # 5 at once, then 4 at 20/s


def test_retry_after_reads_seconds_and_dates_and_caps_them():
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("99999") == 300.0 and retry_after_seconds("-5") == 0.0
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_after_seconds(later) <= 31


def test_unexpected_answers_are_errors_with_a_reason():
    from oig.generate.clients import _Fail

    for body, why in (([], "not a JSON object"), ({"choices": []}, "no choices"),
                      ({"choices": [{"message": {"content": None}, "finish_reason": "content_filter"}]},
                       "no text (finish_reason 'content_filter')")):
        with pytest.raises(_Fail, match=why.replace("(", r"\(").replace(")", r"\)")):
            parse_completion(body)
    ok = parse_completion({"choices": [{"message": {"content": "x"}, "finish_reason": "length"}],
                           "usage": {"prompt_tokens": True, "completion_tokens": 2}})
    assert ok.text == "x" and ok.usage == {"completion_tokens": 2}


def test_a_missing_key_is_named():
    async def main():
        ProviderClient(Provider(name="t", kind="together", api_key_env="OIG_TEST_NO_SUCH_KEY"))

    with pytest.raises(OigError, match="set the environment variable OIG_TEST_NO_SUCH_KEY"):
        asyncio.run(main())
