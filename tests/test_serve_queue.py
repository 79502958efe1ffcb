"""oig serve under load: TCP_NODELAY on kept-alive connections, admitted requests served in arrival
order from a bounded queue (429 only when it is full), and the name the model is served as."""

from __future__ import annotations

import statistics
import threading
import time

import httpx
import pytest
from test_serve import ANSWER, QUESTION, ServerThread, _error_of, train_tiny, wait_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHAT = {"model": "tiny-test", "messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 20}
HELLO = {"model": "random", "messages": [{"role": "user", "content": "hello"}], "temperature": 0}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def local_model(model_dir):
    from oig.serve.inference import LocalModel

    return LocalModel.load(model_dir, name="tiny-test")


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    """An untrained tiny model: it rarely says <|im_end|>, so it talks until max_tokens."""
    from oig.serve.inference import LocalModel
    from oig.train.tiny import build_tiny

    folder = tmp_path_factory.mktemp("random") / "model"
    build_tiny(["hello world", "two\nlines"], folder, seed=1)
    return LocalModel.load(folder, name="random")


@pytest.fixture
def slowed(random_model, monkeypatch) -> None:
    """The untrained model, 20 ms a token: requests stay long enough in the queue to be watched."""
    forward = random_model.model.forward

    def slow(*args, **kwargs):
        time.sleep(0.02)
        return forward(*args, **kwargs)

    monkeypatch.setitem(random_model.model.__dict__, "forward", slow)


def serving(model, **limits) -> ServerThread:
    from oig.serve.server import ServeSettings, create_app

    return ServerThread(create_app(model, settings=ServeSettings(**limits)))


# --- TCP_NODELAY ----------------------------------------------------------------------------------------------


def _median_ms(post, n: int = 20) -> float:
    took = []
    for _ in range(n):
        started = time.perf_counter()
        r = post()
        took.append((time.perf_counter() - started) * 1000)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 1
    return statistics.median(took)


class ListeningServerThread(ServerThread):
    """The server on a socket from ``oig serve``'s own ``_listen`` (socket.create_server), as ``serve``
    runs it: asyncio sets TCP_NODELAY itself only on sockets whose protocol says TCP, and those that
    uvicorn opens for ServerThread do."""

    def __init__(self, app):
        super().__init__(app)
        from oig.serve.server import _listen

        self.sock = _listen("127.0.0.1", 0)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self.sock.close()


def test_a_kept_alive_connection_answers_as_fast_as_a_fresh_one(local_model):
    """Without TCP_NODELAY, Nagle's algorithm and the client's delayed ACK added about 40 ms to every
    request after the first on a kept-alive connection."""
    from oig.serve.server import create_app

    one = {**CHAT, "max_tokens": 1}
    with ListeningServerThread(create_app(local_model)) as s:
        url = f"{s.url}/v1/chat/completions"
        with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            fresh = _median_ms(lambda: client.post(url, json=one))
        with httpx.Client(timeout=10) as client:
            client.post(url, json=one)  # the connection is open
            kept = _median_ms(lambda: client.post(url, json=one))
            assert len(s.server.server_state.connections) == 1  # one connection served them all
    print(f"\na one-token answer: {kept:.1f} ms median on a kept-alive connection, {fresh:.1f} ms on fresh ones")
    assert kept < fresh + 5, f"keep-alive {kept:.1f} ms against {fresh:.1f} ms on fresh connections"


# --- the queue ------------------------------------------------------------------------------------------------


def _post_in_thread(url: str, body: dict, into: list, tag) -> threading.Thread:
    def post():
        r = httpx.post(url, json=body, timeout=60)
        into.append((tag, r.status_code, time.monotonic()))

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


def test_waiting_requests_are_served_in_arrival_order(random_model, slowed):
    from oig.serve.limits import ServeSettings
    from oig.serve.server import create_app

    app = create_app(random_model, settings=ServeSettings(max_concurrency=1))
    done: list = []
    with ServerThread(app) as s:
        url = f"{s.url}/v1/chat/completions"
        # Long enough (100 slowed steps, 2 s) that the first is still generating when the eighth has queued.
        threads = [_post_in_thread(url, {**HELLO, "max_tokens": 100}, done, "first")]
        assert wait_for(lambda: app.state.turns.busy == 1)
        for i in range(8):
            threads.append(_post_in_thread(url, {**HELLO, "max_tokens": 2}, done, i))
            assert wait_for(lambda n=i + 1: len(app.state.turns.waiting) == n)  # the arrival order is known
        for thread in threads:
            thread.join(60)
        assert [tag for tag, _, _ in done] == ["first", *range(8)]
        assert {status for _, status, _ in done} == {200}
        assert app.state.turns.busy == 0 and not app.state.turns.waiting


def test_sixteen_clients_get_no_429_with_the_default_flags(local_model):
    statuses: list[int] = []
    took: list[float] = []

    def client(url: str) -> None:
        with httpx.Client(timeout=60) as http:
            for _ in range(10):
                started = time.monotonic()
                r = http.post(url, json=CHAT)
                took.append(time.monotonic() - started)
                statuses.append(r.status_code)
                if r.status_code == 200:
                    assert r.json()["choices"][0]["message"]["content"] == ANSWER

    with serving(local_model) as s:
        threads = [threading.Thread(target=client, args=(f"{s.url}/v1/chat/completions",)) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert statuses.count(200) == 160, {code: statuses.count(code) for code in set(statuses)}
        assert 'oig_rejected_requests_total 0' in httpx.get(f"{s.url}/metrics").text
    print(f"\n16 clients x 10 requests: median {statistics.median(took) * 1000:.0f} ms, "
          f"worst {max(took) * 1000:.0f} ms")


def test_a_full_queue_gets_429_with_retry_after_and_the_queue_drains(random_model, slowed):
    from oig.serve.server import ServeSettings, create_app

    app = create_app(random_model, settings=ServeSettings(max_concurrency=1, max_queue=2))
    done: list = []
    with ServerThread(app) as s:
        url = f"{s.url}/v1/chat/completions"
        threads = [_post_in_thread(url, {**HELLO, "max_tokens": 25}, done, "first")]
        assert wait_for(lambda: app.state.turns.busy == 1)
        threads += [_post_in_thread(url, {**HELLO, "max_tokens": 2}, done, i) for i in range(2)]
        assert wait_for(lambda: len(app.state.turns.waiting) == 2)
        asked = time.monotonic()
        busy = httpx.post(url, json={**HELLO, "max_tokens": 2}, timeout=10)
        assert time.monotonic() - asked < 1.0  # refused at once
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        error = _error_of(busy)
        assert error["type"] == "rate_limit_exceeded" and "2 waiting" in error["message"]
        for thread in threads:
            thread.join(60)
        assert sorted(status for _, status, _ in done) == [200, 200, 200]
        assert app.state.metrics.rejected == 1 and wait_for(lambda: app.state.metrics.in_flight == 0)
        assert httpx.post(url, json={**HELLO, "max_tokens": 2}, timeout=10).status_code == 200


def test_a_request_that_waits_past_its_deadline_gets_504_and_leaves_the_queue(random_model):
    from oig.serve.server import ServeSettings, create_app

    app = create_app(random_model, settings=ServeSettings(request_timeout=0.5, max_concurrency=1))
    turns = app.state.turns
    with ServerThread(app) as s:
        url = f"{s.url}/v1/chat/completions"
        turns.busy = 1  # another request is generating, for longer than this one may wait
        try:
            asked = time.monotonic()
            r = httpx.post(url, json={**HELLO, "max_tokens": 2}, timeout=10)
            assert r.status_code == 504 and 0.4 < time.monotonic() - asked < 1.5
            assert _error_of(r)["code"] == "request_timeout" and "waiting for the model" in _error_of(r)["message"]
            assert not turns.waiting
            # A stream that waits past its deadline ends with an error event.
            with httpx.stream("POST", url, json={**HELLO, "max_tokens": 2, "stream": True}, timeout=10) as r:
                events = [line for line in r.iter_lines() if line]
            assert events[-1] == "data: [DONE]" and "waiting for the model" in events[-2]
            assert not turns.waiting and turns.busy == 1
        finally:
            turns.busy = 0
        assert app.state.metrics.timeouts == 2
        assert httpx.post(url, json={**HELLO, "max_tokens": 2}, timeout=10).status_code == 200


def test_a_client_that_leaves_the_queue_frees_its_place(random_model, slowed):
    from oig.serve.server import ServeSettings, create_app

    app = create_app(random_model, settings=ServeSettings(max_concurrency=1))
    done: list = []
    with ServerThread(app) as s:
        url = f"{s.url}/v1/chat/completions"
        # About 4 s (20 ms a token): longer than both waiting clients take to come, wait and leave.
        first = _post_in_thread(url, {**HELLO, "max_tokens": 200}, done, "first")
        assert wait_for(lambda: app.state.turns.busy == 1)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json={**HELLO, "max_tokens": 2}, timeout=0.3)
        assert wait_for(lambda: not app.state.turns.waiting, 3.0)  # it left the queue with its client
        with httpx.stream("POST", url, json={**HELLO, "max_tokens": 2, "stream": True}, timeout=10) as r:
            # The role chunk; then it waits for the model, and the client leaves. The line iterator is
            # kept: dropped, httpx would close the connection at once (its generator's cleanup), and
            # the request would leave before it could be seen waiting.
            lines = r.iter_lines()
            next(lines)
            assert wait_for(lambda: len(app.state.turns.waiting) == 1)
        assert wait_for(lambda: not app.state.turns.waiting, 3.0)
        assert app.state.turns.busy == 1 and not done  # the first is still generating
        first.join(30)
        assert done[0][1] == 200 and wait_for(lambda: app.state.turns.busy == 0)
        assert wait_for(lambda: app.state.metrics.cancelled == 2)
        assert httpx.post(url, json={**HELLO, "max_tokens": 2}, timeout=10).status_code == 200


# --- the served name ------------------------------------------------------------------------------------------


def test_the_served_name_is_listed_and_the_path_is_an_alias(model_dir):
    from oig.serve.server import create_app

    app = create_app(model_dir, name="org/tiny", aliases=(str(model_dir),))
    with ServerThread(app) as s:
        listed = httpx.get(f"{s.url}/v1/models").json()["data"]
        assert [m["id"] for m in listed] == ["org/tiny"]
        for asked in ("org/tiny", str(model_dir)):
            r = httpx.post(f"{s.url}/v1/chat/completions", json={**CHAT, "model": asked}, timeout=30)
            assert r.status_code == 200 and r.json()["model"] == "org/tiny"
            assert r.json()["choices"][0]["message"]["content"] == ANSWER
        r = httpx.post(f"{s.url}/v1/chat/completions", json={**CHAT, "model": "other"}, timeout=30)
        assert r.status_code == 404 and _error_of(r)["code"] == "model_not_found"


@pytest.mark.parametrize(("section", "name"), [
    ("model:\n  local_path: runs/2026-12-02T01-00-00/model\n  hub_repo: org/m\n", "org/m"),
    ("model:\n  local_path: runs/2026-12-02T01-00-00/model\ntogether:\n  model: lab/m-oig\n  endpoint: e1\n",
     "lab/m-oig"),
    ("model:\n  local_path: runs/2026-12-02T01-00-00/qwen-oig\n", "qwen-oig"),
])
def test_the_default_served_name_comes_from_model_yaml_not_the_run_path(tmp_path, monkeypatch, section, name):
    from oig.cli import main
    from oig.serve import server

    (tmp_path / "runs" / "2026-12-02T01-00-00" / "model").mkdir(parents=True)
    (tmp_path / "runs" / "2026-12-02T01-00-00" / "qwen-oig").mkdir(parents=True)
    (tmp_path / "model.yaml").write_text(section + "base_model: tiny\nrun_id: r1\ntrained_at: '2026-12-02T01:00:00Z'\n")
    heard: list = []
    monkeypatch.setattr(server, "serve", lambda model, **kw: heard.append((model, kw["name"])))
    monkeypatch.delenv("OIG_SERVE_API_KEY", raising=False)
    assert main(["serve", "--model-yaml", str(tmp_path / "model.yaml")]) == 0
    assert heard[-1][1] == name and heard[-1][0].endswith(("model", "qwen-oig"))
    assert main(["serve", "--model-yaml", str(tmp_path / "model.yaml"), "--served-model-name", "mine"]) == 0
    assert heard[-1][1] == "mine"
    assert main(["serve", "--model", "org/x"]) == 0
    assert heard[-1] == ("org/x", None)  # served as --model itself


def test_the_queue_flags(monkeypatch):
    from oig.cli import build_parser, main
    from oig.cli.serve import settings_from_args
    from oig.serve.limits import ServeSettings

    def settings(*argv):
        return settings_from_args(build_parser().parse_args(["serve", *argv]), None)

    assert (ServeSettings().max_concurrency, ServeSettings().max_queue) == (16, 64)
    got = settings("--max-queue", "0", "--max-concurrency", "2")
    assert got.max_queue == 0 and got.max_concurrency == 2
    assert main(["serve", "--max-queue", "-1"]) == 2
