"""The engine in its own process (oig.serve.worker): the same answers as the engine in this process,
cancels, deadlines and waiting requests handled across the pipe, a model the child cannot load or a
child that dies reported, never a hang."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time

import httpx
import pytest
from test_serve import ANSWER, QUESTION, ServerThread, model_dir  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ASK = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def here(model_dir):  # noqa: F811
    from oig.serve.inference import LocalModel

    return LocalModel.load(model_dir, name="here")


@pytest.fixture(scope="module")
def there(model_dir):  # noqa: F811
    from oig.serve.worker import load

    lm = load(model_dir, name="there")
    yield lm
    lm.engine.close()


def test_the_model_runs_in_a_child_and_answers_as_it_would_here(here, there):
    from oig.serve.worker import EngineProcess

    assert isinstance(there.engine, EngineProcess) and there.engine._process.pid != os.getpid()
    assert not hasattr(there.model, "forward")  # only the config and the generation config came back
    assert there.context_length == here.context_length and there.eos_ids() == here.eos_ids()
    assert there.sampling() == here.sampling()  # the model's own generation_config.json, read over there
    eos = here.tokenizer.eos_token_id
    for options in ({"temperature": 0}, {"temperature": 0, "max_tokens": 3},
                    {"temperature": 0, "logit_bias": {eos: -100}, "max_tokens": 12},
                    {"temperature": 1.3, "seed": 7, "max_tokens": 10, "top_k": 20},
                    {"temperature": 0, "presence_penalty": 1.5, "repetition_penalty": 1.3, "max_tokens": 10},
                    {"temperature": 0, "logprobs": 3, "max_tokens": 5}):
        a_text, a = here.complete(ASK, **options)
        b_text, b = there.complete(ASK, **options)
        assert (b_text, b.completion_tokens, b.finish_reason) == (a_text, a.completion_tokens, a.finish_reason), options
        assert [e["token"] for e in b.logprobs] == [e["token"] for e in a.logprobs]
        assert [e["logprob"] for e in b.logprobs] == pytest.approx([e["logprob"] for e in a.logprobs], abs=1e-4)
    assert there.complete(ASK, temperature=0)[0] == ANSWER
    assert there.engine.steps > 0 and there.engine.rows > 0  # the child's counters reach /metrics


def test_streamed_pieces_and_stop_strings_across_the_pipe(here, there):
    pieces = list(there.generate(ASK, temperature=0))
    assert "".join(pieces) == ANSWER
    assert there.complete(ASK, temperature=0, stop=["ris"])[0] == here.complete(ASK, temperature=0, stop=["ris"])[0]


def test_a_json_schema_constraint_is_rebuilt_in_the_child(there):
    from oig.serve.structured import JsonConstraint

    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"]}
    text, _ = there.complete(ASK, temperature=0, max_tokens=40, constraint=JsonConstraint(there, schema, "response_format"))
    assert set(json.loads(text)) == {"city"}


def test_cancel_and_deadline_stop_a_row_in_the_child(there):
    from oig.serve.inference import GenerationCancelled, GenerationTimeout

    eos = there.tokenizer.eos_token_id
    endless = {"temperature": 0, "logit_bias": {eos: -100}, "max_tokens": 100_000}
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(GenerationCancelled):
        there.complete(ASK, cancel=cancel, **endless)
    assert time.monotonic() - started < 3
    started = time.monotonic()
    with pytest.raises(GenerationTimeout):
        there.complete(ASK, deadline=time.monotonic() + 0.3, **endless)
    assert time.monotonic() - started < 3
    assert there.complete(ASK, temperature=0)[0] == ANSWER  # the engine goes on


def test_a_waiting_request_is_taken_out_of_the_childs_queue(there):
    from oig.serve.inference import GenerationCancelled

    eos = there.tokenizer.eos_token_id
    there.engine.max_batch = 1
    try:
        stop_first = threading.Event()
        first = threading.Thread(target=lambda: _quietly(there.complete, ASK, temperature=0, cancel=stop_first,
                                                         logit_bias={eos: -100}, max_tokens=100_000))
        first.start()
        time.sleep(0.3)  # the first is generating; the second waits behind it
        cancel = threading.Event()
        threading.Timer(0.3, cancel.set).start()
        started = time.monotonic()
        with pytest.raises(GenerationCancelled, match="waiting"):
            there.complete(ASK, temperature=0, cancel=cancel)
        assert time.monotonic() - started < 2
        stop_first.set()
        first.join(10)
        assert not first.is_alive()
    finally:
        there.engine.max_batch = 16


def _quietly(call, *args, **kwargs):
    with contextlib.suppress(Exception):  # the caller cancels it
        call(*args, **kwargs)


def test_a_model_the_child_cannot_load_is_a_serve_error(model_dir, tmp_path):  # noqa: F811
    from oig.serve.inference import ServeError
    from oig.serve.worker import load

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in os.listdir(model_dir):
        (broken / name).write_bytes((model_dir / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"not weights")
    started = time.monotonic()
    with pytest.raises(ServeError, match="cannot load model"):
        load(broken)
    assert time.monotonic() - started < 60


def test_a_child_that_dies_fails_its_requests_and_every_later_one(model_dir):  # noqa: F811
    from oig.serve.inference import ServeError
    from oig.serve.server import create_app
    from oig.serve.worker import load

    lm = load(model_dir)
    eos = lm.tokenizer.eos_token_id
    failures: list[BaseException] = []

    def endless():
        try:
            lm.complete(ASK, temperature=0, logit_bias={eos: -100}, max_tokens=100_000)
        except ServeError as exc:
            failures.append(exc)

    thread = threading.Thread(target=endless)
    thread.start()
    time.sleep(0.5)
    os.kill(lm.engine._process.pid, signal.SIGKILL)
    thread.join(10)
    assert not thread.is_alive() and failures and "engine's process stopped" in str(failures[0])
    assert lm.engine.failure and "exit code -9" in lm.engine.failure
    started = time.monotonic()
    with pytest.raises(ServeError, match="engine's process"):
        lm.complete(ASK, temperature=0)
    assert time.monotonic() - started < 1
    with ServerThread(create_app(lm), wait_ready=False) as server:  # /health says so, for a supervisor to act
        health = httpx.get(f"{server.url}/health")
        assert health.status_code == 503 and health.json()["status"] == "failed"
        assert "engine's process stopped" in health.json()["error"]
    lm.engine.close()


def test_close_ends_the_child(model_dir):  # noqa: F811
    from oig.serve.worker import load

    lm = load(model_dir)
    process = lm.engine._process
    assert lm.complete(ASK, temperature=0)[0] == ANSWER
    lm.engine.close()
    assert process.poll() == 0
