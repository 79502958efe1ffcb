"""oig serve: the OpenAI-compatible service, exercised through the together SDK and raw HTTP."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from oig.cli import main

REPO = Path(__file__).resolve().parents[1]
PAIRS = [("What is the capital of France?", "Paris"), ("Say hello", "Hello there!")]
QUESTION, ANSWER = PAIRS[0]


def train_tiny(out_dir: Path) -> Path:
    """The tiny offline model (oig.train.tiny), taught PAIRS in about a second so greedy answers are known."""
    import torch

    from oig.train.tiny import build_tiny

    model, tok = build_tiny([t for pair in PAIRS for t in pair] + ["user", "assistant"], out_dir, seed=0)
    rows = []
    for q, a in PAIRS:
        enc = tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                      return_dict=True, return_assistant_tokens_mask=True)
        rows.append((enc["input_ids"], enc["assistant_masks"]))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, mask) in enumerate(rows):
        ids_t = torch.tensor(ids)
        input_ids[r, : len(ids)] = ids_t
        attention[r, : len(ids)] = 1
        labels[r, : len(ids)] = torch.where(torch.tensor(mask) == 1, ids_t, torch.tensor(-100))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(60):  # about 1 s on a CPU; the loss ends near 0.001
            model(input_ids=input_ids, attention_mask=attention, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def local_model(model_dir):
    from oig.serve.inference import LocalModel

    return LocalModel.load(model_dir, name="tiny-test")


class ServerThread:
    """uvicorn on 127.0.0.1, port 0, in a thread, configured as `oig serve` configures it; stopped on
    exit. Entering waits until /health says the model is ready, unless ``wait_ready`` is False."""

    def __init__(self, app, *, wait_ready: bool = True):
        import uvicorn

        from oig.serve.limits import server_config

        # The configuration `oig serve` runs with: its HTTP protocol and its connection cap.
        self.server = uvicorn.Server(server_config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.wait_ready = wait_ready

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        while self.wait_ready and httpx.get(f"{self.url}/health").status_code != 200:
            assert time.monotonic() < deadline, f"the model did not load: {httpx.get(f'{self.url}/health').text}"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(local_model):
    from oig.serve.server import ServeSettings, create_app

    with ServerThread(create_app(local_model, settings=ServeSettings(max_tokens_cap=1000))) as s:
        yield s


@pytest.fixture
def client(server):
    from together import Together

    return Together(api_key="unused-locally", base_url=server.url, max_retries=0)


def _error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# --- through the together SDK -------------------------------------------------------------------------------


def test_chat_completion_answers_greedily_with_usage(client, local_model):
    response = client.chat.completions.create(model="tiny-test", messages=[{"role": "user", "content": QUESTION}],
                                              temperature=0, max_tokens=20)
    assert response.choices[0].message.content == ANSWER
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].finish_reason == "stop"
    assert response.object == "chat.completion" and response.model == "tiny-test"
    prompt = len(local_model.encode([{"role": "user", "content": QUESTION}]))
    answer_tokens = len(local_model.tokenizer(ANSWER)["input_ids"]) + 1  # the answer, then <|im_end|>
    assert response.usage.prompt_tokens == prompt
    assert response.usage.completion_tokens == answer_tokens
    assert response.usage.total_tokens == prompt + answer_tokens


def test_streaming_through_the_sdk_gives_the_same_answer(client):
    stream = client.chat.completions.create(model="tiny-test", messages=[{"role": "user", "content": "Say hello"}],
                                            temperature=0, max_tokens=20, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there!"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stop_sequences_max_tokens_and_seeded_sampling(client):
    def ask(**kw):
        return client.chat.completions.create(model="tiny-test", messages=[{"role": "user", "content": QUESTION}],
                                              **kw)

    stopped = ask(temperature=0, stop=["ri"])
    assert stopped.choices[0].message.content == "Pa" and stopped.choices[0].finish_reason == "stop"
    short = ask(temperature=0, max_tokens=1)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 1
    first, second = ask(temperature=1.5, seed=7, max_tokens=8), ask(temperature=1.5, seed=7, max_tokens=8)
    assert first.choices[0].message.content == second.choices[0].message.content


# --- raw HTTP: the SSE format, models, health, errors ----------------------------------------------------------


def test_sse_stream_format_ends_with_done_and_reports_usage(server):
    body = {"model": "tiny-test", "messages": [{"role": "user", "content": QUESTION}], "stream": True,
            "temperature": 0, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == ANSWER
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 2
    assert len({c["id"] for c in chunks}) == 1


def test_models_and_health(server):
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny-test"]
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok", "model": "tiny-test", "ready": True}


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "tiny-test", "messages": []}, "messages"),
    ({"model": "tiny-test"}, "messages"),
    ({"model": "tiny-test", "messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "temperature"),
    ({"model": "tiny-test", "messages": [{"role": "function", "content": "hi"}]}, "messages.0.role"),
    ({"model": "tiny-test", "messages": [{"role": "tool", "content": "hi"}]}, "messages.0"),
    ({"model": "tiny-test", "messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
    ({"model": "tiny-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "tiny-test", "messages": [{"role": "user", "content": "hi"}], "stop": list("abcde")}, "stop"),
])
def test_bad_requests_get_400_in_openai_shape(server, body, param):
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body)
    assert r.status_code == 400
    error = _error_of(r)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert param.split(".")[0] in error["message"]


def test_invalid_json_unknown_model_routes_and_caps(server):
    r = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in _error_of(r)["message"]
    r = httpx.post(f"{server.url}/v1/chat/completions",
                   json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and _error_of(r)["code"] == "model_not_found"
    r = httpx.get(f"{server.url}/v1/nothing")
    assert r.status_code == 404 and _error_of(r)["type"] == "not_found_error"
    r = httpx.post(f"{server.url}/v1/chat/completions",
                   json={"model": "tiny-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000})
    assert r.status_code == 400 and _error_of(r)["param"] == "max_tokens"


def test_content_parts_are_joined(server):
    body = {"model": "tiny-test", "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "What is the capital "},
                                                      {"type": "text", "text": "of France?"}]}]}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert r.json()["choices"][0]["message"]["content"] == ANSWER


def test_closing_a_stream_stops_generation_and_frees_the_model(local_model):
    pieces = local_model.generate([{"role": "user", "content": "Say hello"}], temperature=0, max_tokens=50)
    assert next(pieces)
    pieces.close()
    assert wait_for(lambda: not local_model.engine.lock.locked())
    text, _ = local_model.complete([{"role": "user", "content": QUESTION}], temperature=0)
    assert text == ANSWER


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    """An untrained tiny model: it rarely says <|im_end|>, so it talks until max_tokens."""
    from oig.serve.inference import LocalModel
    from oig.train.tiny import build_tiny

    folder = tmp_path_factory.mktemp("random") / "model"
    build_tiny(["hello world", "two\nlines"], folder, seed=1)
    return LocalModel.load(folder, name="random")


def test_incremental_decoding_matches_decoding_everything_at_once(random_model):
    import torch

    messages = [{"role": "user", "content": "hello"}]
    prompt = random_model.encode(messages)
    with torch.inference_mode():
        out = random_model.model.generate(torch.tensor([prompt]), max_new_tokens=300, do_sample=False)
    expected = random_model.tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)
    pieces = list(random_model.generate(messages, temperature=0, max_tokens=300))
    assert "".join(pieces) == expected and "\n" in expected and len(pieces) > 10


def test_a_client_that_disconnects_stops_its_generation(random_model):
    from oig.serve.server import create_app

    lm = random_model
    body = {"model": "random", "messages": [{"role": "user", "content": "hello"}], "temperature": 0,
            "max_tokens": 600}
    app = create_app(lm)
    with ServerThread(app) as s:
        started = time.monotonic()
        full = httpx.post(f"{s.url}/v1/chat/completions", json=body, timeout=120).json()
        full_s = time.monotonic() - started
        assert full["usage"]["completion_tokens"] == 600 and full["choices"][0]["finish_reason"] == "length"
        started = time.monotonic()
        with httpx.stream("POST", f"{s.url}/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
            lines = r.iter_lines()
            for _ in range(3):
                next(lines)
        while lm.engine.lock.locked() and time.monotonic() - started < full_s:
            time.sleep(0.005)
        freed_s = time.monotonic() - started
        assert wait_for(lambda: app.state.metrics.cancelled == 1)
    assert freed_s < full_s / 2, f"generation went on after the client left ({freed_s:.2f}s vs {full_s:.2f}s)"


# --- production: loading, API key, limits, concurrency, timeouts, cancellation, metrics ------------------------


def wait_for(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def metric(url: str, sample: str, headers: dict | None = None) -> float:
    """The value of one sample line of /metrics, e.g. ``oig_requests_in_flight``; 0 if absent."""
    for line in httpx.get(f"{url}/metrics", headers=headers).text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return 0.0


@pytest.fixture
def slowed(random_model, monkeypatch) -> list[float]:
    """The untrained model, 20 ms a token (one forward pass each): time to watch it being stopped.
    The list gets a timestamp per forward pass, so tests see whether generation goes on."""
    forward = random_model.model.forward
    calls: list[float] = []

    def slow(*args, **kwargs):
        calls.append(time.monotonic())
        time.sleep(0.02)
        return forward(*args, **kwargs)

    monkeypatch.setitem(random_model.model.__dict__, "forward", slow)
    return calls


def stopped(calls: list[float], lm) -> bool:
    """Generation has ended and stays ended (no forward pass for 0.2 s)."""
    assert wait_for(lambda: not lm.engine.lock.locked()), "the model is still busy"
    before = len(calls)
    time.sleep(0.2)
    return len(calls) == before


HELLO = {"model": "random", "messages": [{"role": "user", "content": "hello"}], "temperature": 0, "max_tokens": 400}


def test_health_says_loading_until_the_model_is_in_and_v1_waits(local_model):
    from oig.serve.server import create_app

    release, heard = threading.Event(), []

    def load():
        release.wait(20)
        return local_model

    app = create_app(load, name="tiny-test", on_loaded=heard.append)
    with ServerThread(app, wait_ready=False) as s:
        try:
            r = httpx.get(f"{s.url}/health")
            assert r.status_code == 503 and r.headers["retry-after"] == "5"
            assert r.json() == {"status": "loading", "model": "tiny-test", "ready": False}
            r = httpx.get(f"{s.url}/v1/models")
            assert r.status_code == 503 and r.headers["retry-after"] == "5"
            assert _error_of(r)["code"] == "model_loading"
            assert metric(s.url, "oig_model_loaded") == 0
        finally:
            release.set()
        assert wait_for(lambda: httpx.get(f"{s.url}/health").status_code == 200)
        assert httpx.get(f"{s.url}/health").json() == {"status": "ok", "model": "tiny-test", "ready": True}
        assert httpx.get(f"{s.url}/v1/models").status_code == 200
        assert metric(s.url, "oig_model_loaded") == 1
    assert heard == [None]


def test_a_model_that_fails_to_load_is_reported_by_health(tmp_path):
    from oig.serve.server import ServeError, create_app

    def load():
        raise ServeError("cannot load model broken: no config.json")

    heard: list = []
    with ServerThread(create_app(load, name="broken", on_loaded=heard.append), wait_ready=False) as s:
        assert wait_for(lambda: heard)
        r = httpx.get(f"{s.url}/health")
        assert r.status_code == 503 and "retry-after" not in r.headers
        assert r.json() == {"status": "failed", "model": "broken", "ready": False,
                            "error": "cannot load model broken: no config.json"}
        r = httpx.post(f"{s.url}/v1/chat/completions", json={"model": "broken", "messages": []})
        assert r.status_code == 503 and _error_of(r)["code"] == "model_not_loaded"
    assert heard == ["cannot load model broken: no config.json"]


def test_api_key_guards_every_route_but_health(local_model):
    from together import Together

    from oig.serve.server import ServeSettings, create_app

    key = "s3cret-key-0123"
    good = {"Authorization": f"Bearer {key}"}
    settings = ServeSettings(api_key=key)
    assert key not in repr(settings)
    with ServerThread(create_app(local_model, settings=settings)) as s:
        assert httpx.get(f"{s.url}/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key},
                        {"Authorization": f"Basic {key}"}, {"Authorization": f"Bearer {key}x"}):
            r = httpx.get(f"{s.url}/v1/models", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert _error_of(r)["code"] == "invalid_api_key" and key not in r.text
        # Refused before the body is read: a bad body still gets 401, not 400.
        assert httpx.post(f"{s.url}/v1/chat/completions", content=b"{not json").status_code == 401
        assert httpx.get(f"{s.url}/v1/nothing").status_code == 401
        assert httpx.get(f"{s.url}/metrics").status_code == 401
        assert httpx.get(f"{s.url}/metrics", headers=good).status_code == 200
        assert httpx.get(f"{s.url}/v1/models", headers={"authorization": f"bearer  {key}"}).status_code == 200
        client = Together(api_key=key, base_url=s.url, max_retries=0)
        answer = client.chat.completions.create(model="tiny-test", temperature=0,
                                                messages=[{"role": "user", "content": QUESTION}])
        assert answer.choices[0].message.content == ANSWER
        assert metric(s.url, 'oig_requests_total{route="/v1/models",status="401"}', good) == 5
    with ServerThread(create_app(local_model, settings=ServeSettings(api_key=key, public_metrics=True))) as s:
        assert httpx.get(f"{s.url}/metrics").status_code == 200
        assert httpx.get(f"{s.url}/v1/models").status_code == 401


def test_body_size_message_and_token_limits(local_model):
    from oig.serve.server import ServeSettings, create_app

    settings = ServeSettings(max_request_bytes=2000, max_messages=3, max_input_chars=100, max_tokens_cap=50)
    url_of = "{}/v1/chat/completions".format
    ok = {"model": "tiny-test", "temperature": 0, "messages": [{"role": "user", "content": QUESTION}]}
    with ServerThread(create_app(local_model, settings=settings)) as s:
        big = {**ok, "messages": [{"role": "user", "content": "x" * 3000}]}
        r = httpx.post(url_of(s.url), json=big)
        assert r.status_code == 413 and _error_of(r)["code"] == "request_too_large" and "2000" in r.text

        def chunks():  # no Content-Length: the body is counted as it arrives
            yield b'{"model": "tiny-test", "messages": [{"role": "user", "content": "'
            for _ in range(30):
                yield b"y" * 100
            yield b'"}]}'

        r = httpx.post(url_of(s.url), content=chunks(), headers={"Content-Type": "application/json"})
        assert "content-length" not in r.request.headers
        assert r.status_code == 413 and "at least" in _error_of(r)["message"]
        four = {**ok, "messages": [{"role": "user", "content": "hi"}] * 4}
        r = httpx.post(url_of(s.url), json=four)
        assert r.status_code == 400 and _error_of(r)["code"] == "too_many_messages"
        assert _error_of(r)["param"] == "messages"
        r = httpx.post(url_of(s.url), json={**ok, "messages": [{"role": "user", "content": "z" * 101}]})
        assert r.status_code == 400 and _error_of(r)["code"] == "input_too_long"
        for param in ("max_tokens", "max_completion_tokens"):
            r = httpx.post(url_of(s.url), json={**ok, param: 51})
            assert r.status_code == 400 and _error_of(r)["param"] == param and "at most 50" in r.text
        r = httpx.post(url_of(s.url), json={**ok, "max_tokens": 50})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == ANSWER
        assert metric(s.url, 'oig_requests_total{route="/v1/chat/completions",status="413"}') == 2


def test_a_malformed_content_length_is_a_400_in_openai_shape(local_model):
    # uvicorn refuses one itself; other ASGI servers may pass it on, so the app is called directly here.
    import asyncio

    from oig.serve.server import create_app

    app = create_app(local_model)
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
             "root_path": "", "headers": [(b"content-length", b"12abc"), (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["code"] == "invalid_content_length"
    assert app.state.metrics.requests == {("/v1/chat/completions", 400): 1}


def raw_http(url: str, request: bytes, seconds: float = 10) -> bytes:
    """Send bytes as they are (httpx will not send a broken request) and read the reply to its end."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=seconds) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_a_body_that_does_not_arrive_in_time_gets_408(local_model):
    from oig.serve.server import ServeSettings, create_app

    with ServerThread(create_app(local_model, settings=ServeSettings(request_timeout=0.3))) as s:
        started = time.monotonic()
        reply = raw_http(s.url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                                b"Content-Type: application/json\r\nConnection: close\r\n\r\n{\"model\"")
        assert reply.startswith(b"HTTP/1.1 408") and b"request_timeout" in reply
        assert time.monotonic() - started < 5


def test_a_full_queue_gets_429_at_once_and_health_answers_during_generation(random_model, slowed):
    from oig.serve.server import ServeSettings, create_app

    with ServerThread(create_app(random_model, settings=ServeSettings(max_concurrency=1, max_queue=0))) as s:
        with httpx.stream("POST", f"{s.url}/v1/chat/completions", json={**HELLO, "stream": True}, timeout=30) as r:
            lines = r.iter_lines()
            next(lines)  # the role chunk: admitted
            assert wait_for(lambda: len(slowed) >= 3)
            # The event loop is free while the model generates on a thread.
            asked = time.monotonic()
            health = httpx.get(f"{s.url}/health", timeout=5)
            health_s = time.monotonic() - asked
            assert health.status_code == 200 and health_s < 1.0, f"/health took {health_s:.2f}s"
            asked, before = time.monotonic(), len(slowed)
            busy = httpx.post(f"{s.url}/v1/chat/completions", json=HELLO, timeout=5)
            assert time.monotonic() - asked < 1.0  # refused at once, not queued behind the generation
            assert wait_for(lambda: len(slowed) > before)  # and the admitted generation carries on
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
            assert _error_of(busy)["type"] == "rate_limit_exceeded"
            assert metric(s.url, "oig_requests_in_flight") == 1
            assert metric(s.url, "oig_rejected_requests_total") == 1
        assert stopped(slowed, random_model) and len(slowed) < HELLO["max_tokens"]
        assert wait_for(lambda: metric(s.url, "oig_cancelled_requests_total") == 1)
        assert metric(s.url, "oig_requests_in_flight") == 0
        # The slot is free again.
        r = httpx.post(f"{s.url}/v1/chat/completions", json={**HELLO, "max_tokens": 3}, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def test_request_timeout_stops_generation_504_or_an_sse_error(random_model, slowed):
    from oig.serve.server import ServeSettings, create_app

    with ServerThread(create_app(random_model, settings=ServeSettings(request_timeout=0.5))) as s:
        asked = time.monotonic()
        r = httpx.post(f"{s.url}/v1/chat/completions", json=HELLO, timeout=30)
        assert r.status_code == 504 and time.monotonic() - asked < 3
        error = _error_of(r)
        assert error["type"] == "timeout_error" and error["code"] == "request_timeout" and "0.5 s" in error["message"]
        assert stopped(slowed, random_model) and len(slowed) < 100  # 0.5 s at 20 ms a token: about 25
        slowed.clear()
        with httpx.stream("POST", f"{s.url}/v1/chat/completions", json={**HELLO, "stream": True}, timeout=30) as r:
            events = [line for line in r.iter_lines() if line]
        assert r.status_code == 200 and events[-1] == "data: [DONE]"
        assert json.loads(events[-2][len("data: "):])["error"]["code"] == "request_timeout"
        assert len(events) > 3  # some content went out before the deadline
        assert stopped(slowed, random_model) and len(slowed) < 100
        assert metric(s.url, "oig_request_timeouts_total") == 2
        assert metric(s.url, "oig_cancelled_requests_total") == 0


def test_a_client_that_leaves_a_plain_request_stops_its_generation(random_model, slowed):
    from oig.serve.server import create_app

    app = create_app(random_model)
    with ServerThread(app) as s:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{s.url}/v1/chat/completions", json=HELLO, timeout=0.5)
        assert stopped(slowed, random_model)
        assert 5 < len(slowed) < 100  # it had begun; it ended about 0.1 s after the client left
        assert wait_for(lambda: app.state.metrics.cancelled == 1)
        assert metric(s.url, 'oig_requests_total{route="/v1/chat/completions",status="499"}') == 1
        assert 5 < metric(s.url, "oig_generated_tokens_total") < 100


def test_a_deadline_or_cancel_also_ends_the_wait_for_a_busy_model(random_model):
    from oig.serve.inference import GenerationCancelled, GenerationTimeout

    messages = [{"role": "user", "content": "hello"}]
    with random_model.engine.lock:  # another request is generating
        asked = time.monotonic()
        with pytest.raises(GenerationTimeout, match="waiting for the model"):
            random_model.complete(messages, deadline=time.monotonic() + 0.2)
        cancel = threading.Event()
        threading.Timer(0.2, cancel.set).start()
        with pytest.raises(GenerationCancelled):
            random_model.complete(messages, cancel=cancel)
        assert time.monotonic() - asked < 2
    text, result = random_model.complete(messages, temperature=0, max_tokens=2)
    assert result.completion_tokens == 2 and result.finish_reason == "length"


SAMPLE = re.compile(r'[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_]\w*="(\\.|[^"\\])*",?)*\})? -?(\d+(\.\d+)?([eE][-+]?\d+)?|\+Inf)')


def test_metrics_are_prometheus_text(server, client):
    client.chat.completions.create(model="tiny-test", messages=[{"role": "user", "content": QUESTION}],
                                   temperature=0, max_tokens=20)
    httpx.get(f"{server.url}/v1/nothing")
    r = httpx.get(f"{server.url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = r.text.splitlines()
    assert r.text.endswith("\n") and all(line for line in lines)
    families: dict[str, str] = {}
    for line in lines:
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            families[name] = kind
        elif not line.startswith("# HELP "):
            assert SAMPLE.fullmatch(line), line
            name = line.split("{")[0].split(" ")[0]
            assert name in families or name.rsplit("_", 1)[0] in families, f"{name} has no # TYPE"
    assert families == {"oig_requests_total": "counter", "oig_request_duration_seconds": "histogram",
                        "oig_requests_in_flight": "gauge", "oig_prompt_tokens_total": "counter",
                        "oig_generated_tokens_total": "counter", "oig_rejected_requests_total": "counter",
                        "oig_request_timeouts_total": "counter", "oig_cancelled_requests_total": "counter",
                        "oig_model_loaded": "gauge", "oig_engine_batches_total": "counter",
                        "oig_engine_rows_total": "counter", "oig_engine_steps_total": "counter",
                        "oig_engine_step_rows_total": "counter", "oig_engine_busy_seconds_total": "counter"}
    values = {line.rpartition(" ")[0]: float(line.rpartition(" ")[2]) for line in lines if not line.startswith("#")}
    chat = '{route="/v1/chat/completions"'
    assert values['oig_requests_total{route="/v1/chat/completions",status="200"}'] >= 1
    assert values['oig_requests_total{route="other",status="404"}'] >= 1
    assert values["oig_model_loaded"] == 1 and values["oig_generated_tokens_total"] >= 2
    assert values["oig_prompt_tokens_total"] >= len("What is the capital of France?") // 8
    buckets = [v for k, v in values.items() if k.startswith(f"oig_request_duration_seconds_bucket{chat}")]
    assert buckets == sorted(buckets) and len(buckets) == 17
    assert buckets[-1] == values[f"oig_request_duration_seconds_count{chat}}}"]
    assert values[f"oig_request_duration_seconds_sum{chat}}}"] > 0


def test_metrics_escape_label_values():
    from oig.serve.metrics import Metrics

    m = Metrics()
    m.observe('a"b\\c\nd', 200, 0.003)
    m.observe('a"b\\c\nd', 200, 1e6)
    text = m.render(model_loaded=False)
    assert 'oig_requests_total{route="a\\"b\\\\c\\nd",status="200"} 2' in text
    assert 'le="0.005"} 1' in text and 'le="600"} 1' in text and 'le="+Inf"} 2' in text
    assert "oig_request_duration_seconds_sum{route=" in text and "} 1000000.003\n" in text


# --- the command --------------------------------------------------------------------------------------------


def test_serve_help(capsys):
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--engine" in out and "/v1/chat/completions" in out and "/metrics" in out
    for flag in ("--api-key-env", "--public-metrics", "--max-tokens-cap", "--max-request-bytes", "--max-messages",
                 "--max-input-chars", "--max-concurrency", "--max-queue", "--max-connections", "--body-timeout",
                 "--request-timeout"):
        assert flag in out


def test_help_states_the_settings_defaults():
    from oig.cli import build_parser
    from oig.cli import serve as command
    from oig.serve.limits import API_KEY_ENV, ServeSettings

    parser = build_parser()._subparsers._group_actions[0].choices["serve"]
    documented = {a.dest: re.search(r"\(default (\d+)\)", a.help) for a in parser._actions if a.dest in command.LIMIT_FLAGS}
    assert set(documented) == set(command.LIMIT_FLAGS)
    for name, found in documented.items():
        if getattr(ServeSettings(), name) is None:  # --max-model-len: the model's own
            assert "(default: the model's own)" in parser._option_string_actions[command.LIMIT_FLAGS[name]].help
            continue
        assert found and float(found.group(1)) == getattr(ServeSettings(), name), name
    assert command.API_KEY_ENV == API_KEY_ENV


def test_the_api_key_and_limits_come_from_flags_and_the_environment(monkeypatch, capsys):
    from oig.cli import build_parser
    from oig.cli.serve import api_key_from_env, settings_from_args

    def settings(*argv):
        args = build_parser().parse_args(["serve", *argv])
        return settings_from_args(args, api_key_from_env(args.api_key_env))

    monkeypatch.setenv("OIG_SERVE_API_KEY", "default-key")
    monkeypatch.setenv("MY_KEY", "mine")
    got = settings("--max-concurrency", "3", "--request-timeout", "0")
    assert got.api_key == "default-key" and got.max_concurrency == 3 and got.request_timeout is None
    assert got.max_tokens_cap == 4096 and not got.public_metrics and "default-key" not in repr(got)
    assert got.body_timeout == 10 and got.max_connections == 256
    got = settings("--body-timeout", "2.5", "--max-connections", "16")
    assert got.body_timeout == 2.5 and got.max_connections == 16
    assert settings("--body-timeout", "0").body_timeout is None
    got = settings("--api-key-env", "MY_KEY", "--public-metrics", "--request-timeout", "2.5")
    assert got.api_key == "mine" and got.public_metrics and got.request_timeout == 2.5
    monkeypatch.delenv("OIG_SERVE_API_KEY")
    assert settings().api_key is None
    # A name that is not set, or a key given where its name belongs: neither is repeated back.
    for given in ("UNSET_NAME_FOR_OIG_TEST", "sk-live-123/abc"):
        assert main(["serve", "--model", "org/m", "--api-key-env", given]) == 2
        err = capsys.readouterr().err
        assert "--api-key-env" in err and given not in err
    for bad in (["--request-timeout", "-1"], ["--request-timeout", "nan"], ["--max-concurrency", "0"],
                ["--body-timeout", "-1"], ["--max-connections", "0"]):
        assert main(["serve", *bad]) == 2


def test_engine_vllm_without_vllm_is_a_clear_error(capsys, tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    assert main(["serve", "--model", str(tmp_path), "--engine", "vllm"]) == 1
    assert "vLLM" in capsys.readouterr().err


def test_engine_vllm_hands_serving_to_vllm(tmp_path, monkeypatch, capsys):
    # A stand-in vllm package records the command line it was started with.
    fake = tmp_path / "site"
    pkg = fake / "vllm" / "entrypoints" / "openai"
    pkg.mkdir(parents=True)
    for d in (fake / "vllm", fake / "vllm" / "entrypoints", pkg):
        (d / "__init__.py").write_text("")
    record = tmp_path / "argv.json"
    (pkg / "api_server.py").write_text(
        f"import json, os, sys\njson.dump([sys.argv[1:], os.environ.get('VLLM_API_KEY')], open({str(record)!r}, 'w'))\n")
    monkeypatch.syspath_prepend(str(fake))
    monkeypatch.setenv("PYTHONPATH", str(fake))
    monkeypatch.delenv("OIG_SERVE_API_KEY", raising=False)
    assert main(["serve", "--model", "org/model", "--revision", "abc", "--engine", "vllm", "--port", "9001"]) == 0
    argv = ["--model", "org/model", "--served-model-name", "org/model", "--host", "127.0.0.1", "--port", "9001",
            "--generation-config", "auto", "--revision", "abc"]
    assert json.loads(record.read_text()) == [argv, None]
    # The key reaches vLLM in its environment, never on its command line (ps would show it there).
    monkeypatch.setenv("OIG_SERVE_API_KEY", "k-123")
    assert main(["serve", "--model", "org/model", "--revision", "abc", "--engine", "vllm", "--port", "9001",
                 "--served-model-name", "oig/chat", "--max-concurrency", "4", "--max-model-len", "2048",
                 "--default-max-tokens", "300", "--lora-modules", "fix=adapters/fix", "--max-lora-rank", "16",
                 "--max-queue", "9", "--request-timeout", "30", "--no-ui"]) == 0
    carried = ["--model", "org/model", "--served-model-name", "oig/chat", "org/model", "--host", "127.0.0.1",
               "--port", "9001", "--generation-config", "auto", "--revision", "abc", "--max-num-seqs", "4",
               "--max-model-len", "2048", "--override-generation-config", '{"max_new_tokens": 300}',
               "--enable-lora", "--lora-modules", "fix=adapters/fix", "--max-lora-rank", "16"]
    assert json.loads(record.read_text()) == [carried, "k-123"]
    note = capsys.readouterr().err
    assert "vLLM has no equivalent of --max-queue, --request-timeout, --no-ui" in note
    assert "k-123" not in note


def test_lora_modules_need_the_vllm_engine(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path), "--lora-modules", "a=b"]) == 2
    assert "--lora-modules and --max-lora-rank need --engine vllm" in capsys.readouterr().err


def test_serve_without_model_reads_model_yaml(tmp_path, capsys):
    assert main(["serve", "--model-yaml", str(tmp_path / "model.yaml")]) == 1
    assert "model.yaml does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_oig_serve_command_serves_model_yaml_and_answers_oig_query(model_dir, tmp_path, capsys):
    (tmp_path / "model.yaml").write_text(
        f"model:\n  local_path: {model_dir}\nbase_model: tiny\nrun_id: r1\ntrained_at: '2026-11-23T12:00:00Z'\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "scripts"), "HF_HUB_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("OIG_SERVE_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "oig", "serve", "--port", "0"], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            url = m.group(1) if m else None
        assert url, "oig serve did not start"
        while httpx.get(f"{url}/health").status_code != 200:  # 503 "loading" until the model is in
            assert time.monotonic() < deadline and proc.poll() is None, "oig serve did not load the model"
            time.sleep(0.1)
        assert main(["query", QUESTION, "--base-url", url + "/v1", "--model-yaml", str(tmp_path / "none.yaml")]) == 0
        assert capsys.readouterr().out == ANSWER + "\n"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        proc.stderr.close()


def test_a_model_that_cannot_be_loaded_is_a_clear_error(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "cannot load model" in err and "Traceback" not in err


def test_a_folder_that_fails_to_load_stops_the_server(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "empty").mkdir()
    started = time.monotonic()
    assert main(["serve", "--model", str(tmp_path / "empty"), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "listening on http://127.0.0.1:" in err and "cannot load model" in err and "Traceback" not in err
    assert time.monotonic() - started < 30


def test_a_port_in_use_is_a_clear_error(model_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(model_dir), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err
