"""oig serve: the OpenAI-compatible service, exercised through the together SDK and raw HTTP."""

from __future__ import annotations

import json
import os
import re
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
    """The tiny offline model (oig.tiny), taught PAIRS in about a second so greedy answers are known."""
    import torch

    from oig.tiny import build_tiny

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


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model's matrices are too small to share out: on a busy 2-core machine one thread is
    about 10x faster than torch's default pool (measured 0.7 s against 6-10 s for 600 tokens)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def local_model(model_dir):
    from oig.serve import LocalModel

    return LocalModel.load(model_dir, name="tiny-test")


class ServerThread:
    """uvicorn on 127.0.0.1, port 0, in a thread; stopped on exit."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(local_model):
    from oig.serve import ServeSettings, create_app

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
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok", "model": "tiny-test"}


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "tiny-test", "messages": []}, "messages"),
    ({"model": "tiny-test"}, "messages"),
    ({"model": "tiny-test", "messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "temperature"),
    ({"model": "tiny-test", "messages": [{"role": "tool", "content": "hi"}]}, "messages.0.role"),
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
    assert not local_model.lock.locked()
    text, _ = local_model.complete([{"role": "user", "content": QUESTION}], temperature=0)
    assert text == ANSWER


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    """An untrained tiny model: it rarely says <|im_end|>, so it talks until max_tokens."""
    from oig.serve import LocalModel
    from oig.tiny import build_tiny

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
    from oig.serve import create_app

    lm = random_model
    body = {"model": "random", "messages": [{"role": "user", "content": "hello"}], "temperature": 0,
            "max_tokens": 600}
    with ServerThread(create_app(lm)) as s:
        started = time.monotonic()
        full = httpx.post(f"{s.url}/v1/chat/completions", json=body, timeout=120).json()
        full_s = time.monotonic() - started
        assert full["usage"]["completion_tokens"] == 600 and full["choices"][0]["finish_reason"] == "length"
        started = time.monotonic()
        with httpx.stream("POST", f"{s.url}/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
            lines = r.iter_lines()
            for _ in range(3):
                next(lines)
        while lm.lock.locked() and time.monotonic() - started < full_s:
            time.sleep(0.005)
        freed_s = time.monotonic() - started
    assert freed_s < full_s / 2, f"generation went on after the client left ({freed_s:.2f}s vs {full_s:.2f}s)"


# --- the command --------------------------------------------------------------------------------------------


def test_serve_help(capsys):
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--engine" in out and "/v1/chat/completions" in out


def test_engine_vllm_without_vllm_is_a_clear_error(capsys, tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    assert main(["serve", "--model", str(tmp_path), "--engine", "vllm"]) == 1
    assert "vLLM" in capsys.readouterr().err


def test_engine_vllm_hands_serving_to_vllm(tmp_path, monkeypatch):
    # A stand-in vllm package records the command line it was started with.
    fake = tmp_path / "site"
    pkg = fake / "vllm" / "entrypoints" / "openai"
    pkg.mkdir(parents=True)
    for d in (fake / "vllm", fake / "vllm" / "entrypoints", pkg):
        (d / "__init__.py").write_text("")
    record = tmp_path / "argv.json"
    (pkg / "api_server.py").write_text(f"import json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    monkeypatch.syspath_prepend(str(fake))
    monkeypatch.setenv("PYTHONPATH", str(fake))
    assert main(["serve", "--model", "org/model", "--revision", "abc", "--engine", "vllm", "--port", "9001"]) == 0
    assert json.loads(record.read_text()) == ["--model", "org/model", "--served-model-name", "org/model", "--host",
                                              "127.0.0.1", "--port", "9001", "--revision", "abc"]


def test_serve_without_model_reads_model_yaml(tmp_path, capsys):
    assert main(["serve", "--model-yaml", str(tmp_path / "model.yaml")]) == 1
    assert "model.yaml does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_oig_serve_command_serves_model_yaml_and_answers_oig_query(model_dir, tmp_path, capsys):
    (tmp_path / "model.yaml").write_text(
        f"model:\n  local_path: {model_dir}\nbase_model: tiny\nrun_id: r1\ntrained_at: '2026-11-23T12:00:00Z'\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "scripts"), "HF_HUB_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "oig", "serve", "--port", "0"], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            m = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            url = m.group(1) if m else None
        assert url, "oig serve did not start"
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
