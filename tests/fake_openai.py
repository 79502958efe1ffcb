"""Local OpenAI-compatible chat servers for tests and benchmarks (asyncio, on 127.0.0.1, port 0).

    with FakeOpenAI(latency=0.01) as srv:          # srv.base_url: http://127.0.0.1:PORT (no /v1)
        ...                                        # srv.requests: every request, JSON body decoded

Routes: ``POST /v1/chat/completions`` (OpenAI's answer shape, with usage), ``GET /v1/models``,
``GET /health``. Behaviour, each a constructor argument:

- ``latency``: seconds before each answer (a float, or model -> float);
- ``answer``: the answer text, from a callable taking the request body (default ``smart``: models
  echo the prompt, judges answer valid JSON verdicts), a string, or model -> string;
- ``rate_limit_first=N``: the first N chat requests get 429 with ``Retry-After: retry_after``;
- ``malformed_judge``: judge calls (recognised by the judge system prompt) get prose, not JSON;
- ``position_bias``: pairwise judge calls always pick A (so the two orders disagree);
- ``fail_after=N``: after N answers the server dies (listener closed, connections dropped);
- ``status``: model -> HTTP status to answer every call to that model with (e.g. 400).

The batch API too (``POST /v1/files`` multipart with ``purpose=batch``, ``POST /v1/batches``,
``GET /v1/batches/{id}``, ``GET /v1/files/{id}/content``): a batch advances one of ``batch_states``
per status request (default validating, in_progress, completed); when it completes, its output
file holds each line's answer (``response.body`` as a chat completion), and lines for a model in
``status`` go to its error file. ``srv.batches``: id -> {"lines", "states", "status"}; each line
answered is in ``srv.requests`` with method ``BATCH`` (so ``chat_requests`` counts it).

Run alone (the benchmark does, to keep the server off the client's CPU core)::

    python tests/fake_openai.py --latency 0.2     # prints the port, serves until stdin closes
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

JUDGE_MARK = "You are an impartial expert judge"
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: dict | None
    at: float = 0.0  # time.monotonic() on arrival

    @property
    def model(self) -> str | None:
        return (self.body or {}).get("model")

    @property
    def is_judge(self) -> bool:
        messages = (self.body or {}).get("messages") or [{}]
        return str(messages[0].get("content", "")).startswith(JUDGE_MARK)


def _last_user(body: dict) -> str:
    users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
    return users[-1] if users else ""


def _between(text: str, tag: str) -> str:
    m = re.search(rf"<{tag}>\n(.*?)\n</{tag}>", text, re.DOTALL)
    return m.group(1) if m else ""


def smart(body: dict) -> str:
    """Models: ``[model] <the last user message>``. Judges: a valid verdict, decided by answer length
    (longer is better; the same in either order), so tests know which answer wins."""
    user = _last_user(body)
    system = str(body["messages"][0].get("content", ""))
    if not system.startswith(JUDGE_MARK):
        if system.startswith("You have been provided with a set of responses"):
            return f"[{body['model']}] aggregated: {user} (from {system.count(chr(10)) } answers)"
        return f"[{body['model']}] {user}"
    if "<answer_A>" in user:
        a, b = _between(user, "answer_A"), _between(user, "answer_B")
        winner = "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"
        return json.dumps({"winner": winner, "rationale": "the longer answer says more"})
    answer = _between(user, "answer")
    if "<reference>" in user:
        score = 9 if _between(user, "reference") in answer else 2
        return json.dumps({"score": score, "rationale": "compared with the reference"})
    aspects = re.findall(r'"([^"]+)": <1-(\d+)>', user)
    scores = {name: min(int(scale), 1 + len(answer) // 10) for name, scale in aspects}
    return "```json\n" + json.dumps({"scores": scores, "rationale": "length-based test verdict"}) + "\n```"


class FakeOpenAI:
    def __init__(self, *, latency: float | dict[str, float] = 0.0,
                 answer: Callable[[dict], str] | str | dict[str, str] = smart, rate_limit_first: int = 0,
                 retry_after: str | None = "1", malformed_judge: bool = False, position_bias: bool = False,
                 fail_after: int | None = None, status: dict[str, int] | None = None, port: int = 0,
                 served_models: list[str] | None = None,
                 batch_states: tuple[str, ...] = ("validating", "in_progress", "completed")):
        self.latency, self.answer = latency, answer
        self.rate_limit_first, self.retry_after = rate_limit_first, retry_after
        self.malformed_judge, self.position_bias = malformed_judge, position_bias
        self.fail_after, self.status = fail_after, dict(status or {})
        self.served_models = served_models
        self.batch_states = tuple(batch_states)
        self.batches: dict[str, dict] = {}
        self.files: dict[str, bytes] = {}
        self.requests: list[Seen] = []
        self.answered = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._port = port
        self._thread = threading.Thread(target=self._serve, name="fake-openai", daemon=True)
        self.dead = False
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake OpenAI server did not start")

    # --- addresses ----------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def chat_requests(self) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if r.path == "/v1/chat/completions"]

    # --- lifecycle -----------------------------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._connection, "127.0.0.1", self._port)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def kill(self) -> None:
        """Die like a crashed server: no more connections, open ones dropped mid-request."""
        if self.dead:
            return
        self.dead = True

        def stop() -> None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()

        self._loop.call_soon_threadsafe(stop)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self.kill()

        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(drain(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> FakeOpenAI:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- HTTP -------------------------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                size = int(headers.get("content-length", "0"))
                raw = await reader.readexactly(size) if size else b""
                status, payload, extra = await self._route(method, target.split("?", 1)[0], headers, raw)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                extra_lines = "".join(f"{k}: {v}\r\n" for k, v in extra.items())
                writer.write(f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\nContent-Type: application/json"
                             f"\r\nContent-Length: {len(data)}\r\n{extra_lines}\r\n".encode() + data)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _route(self, method: str, path: str, headers: dict, raw: bytes) -> tuple[int, object, dict]:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        seen = Seen(method, path, headers, body if isinstance(body, dict) else None, time.monotonic())
        with self._lock:
            self.requests.append(seen)
        if path == "/health":
            return 200, {"status": "ok"}, {}
        if path == "/v1/models":
            return 200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.served_models or []]}, {}
        if path.startswith(("/v1/files", "/v1/batches")):
            return self._batch_route(method, path, headers, raw)
        if path != "/v1/chat/completions" or method != "POST":
            return 404, {"error": {"message": f"no route {method} {path}"}}, {}
        if seen.body is None or not isinstance(seen.body.get("messages"), list):
            return 400, {"error": {"message": "the request body is not a chat completion request"}}, {}
        model = seen.body.get("model", "")
        with self._lock:
            limited = self.rate_limit_first > 0
            if limited:
                self.rate_limit_first -= 1
        if limited:
            extra = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            return 429, {"error": {"message": "rate limit reached, slow down", "type": "rate_limit"}}, extra
        if model in self.status:
            return self.status[model], {"error": {"message": f"the model {model} cannot answer this"}}, {}
        if self.served_models is not None and model not in self.served_models:
            return 404, {"error": {"message": f"the model '{model}' is not served here"}}, {}
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            delay = self.latency.get(model, 0.0) if isinstance(self.latency, dict) else self.latency
            if delay:
                await asyncio.sleep(delay)
        finally:
            self.in_flight -= 1
        text = self._text(seen)
        with self._lock:
            self.answered += 1
            if self.fail_after is not None and self.answered > self.fail_after:
                self.kill()
                raise ConnectionError("killed")
        prompt_tokens = sum(len(str(m.get("content", ""))) for m in seen.body["messages"]) // 4 + 1
        completion_tokens = len(text) // 4 + 1
        return 200, {
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }, {}

    def _text(self, seen: Seen) -> str:
        body = seen.body or {}
        if seen.is_judge and self.malformed_judge:
            return "Both answers are fine, I would say the first one is a bit better!"
        if seen.is_judge and self.position_bias and "<answer_A>" in _last_user(body):
            return json.dumps({"winner": "A", "rationale": "the first one"})
        if callable(self.answer):
            return self.answer(body)
        if isinstance(self.answer, dict):
            return self.answer.get(body.get("model", ""), smart(body))
        return self.answer


    # --- the batch API ----------------------------------------------------------------------------------
    def _batch_route(self, method: str, path: str, headers: dict, raw: bytes) -> tuple[int, object, dict]:
        parts = path.strip("/").split("/")
        with self._lock:
            if method == "POST" and path == "/v1/files":
                fields = _multipart(headers.get("content-type", ""), raw)
                if fields.get("purpose") != b"batch" or "file" not in fields:
                    return 400, {"error": {"message": "expected multipart purpose=batch and a file"}}, {}
                file_id = f"file-{len(self.files) + 1}"
                self.files[file_id] = fields["file"]
                return 200, {"id": file_id, "object": "file", "purpose": "batch", "bytes": len(fields["file"])}, {}
            if method == "POST" and path == "/v1/batches":
                body = json.loads(raw or b"{}")
                if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
                    return 400, {"error": {"message": "endpoint /v1/chat/completions, completion_window 24h"}}, {}
                data = self.files.get(body.get("input_file_id"))
                if data is None:
                    return 404, {"error": {"message": "no such input file"}}, {}
                batch_id = f"batch_{len(self.batches) + 1}"
                self.batches[batch_id] = {"lines": [json.loads(x) for x in data.splitlines() if x.strip()],
                                          "states": list(self.batch_states), "status": "validating"}
                return 200, self._batch(batch_id), {}
            if method == "GET" and len(parts) == 3 and parts[1] == "batches" and parts[2] in self.batches:
                batch = self.batches[parts[2]]
                batch["status"] = batch["states"].pop(0) if len(batch["states"]) > 1 else batch["states"][0]
                if batch["status"] == "completed" and "output_file_id" not in batch:
                    self._finish(parts[2], batch)
                return 200, self._batch(parts[2]), {}
            if method == "GET" and len(parts) == 4 and parts[1] == "files" and parts[3] == "content":
                if parts[2] not in self.files:
                    return 404, {"error": {"message": "no such file"}}, {}
                return 200, self.files[parts[2]], {}
        return 404, {"error": {"message": f"no route {method} {path}"}}, {}

    def _batch(self, batch_id: str) -> dict:
        b = self.batches[batch_id]
        return {"id": batch_id, "object": "batch", "endpoint": "/v1/chat/completions", "status": b["status"],
                "output_file_id": b.get("output_file_id"), "error_file_id": b.get("error_file_id"),
                "completion_window": "24h"}

    def _finish(self, batch_id: str, batch: dict) -> None:
        out, errors = [], []
        for line in batch["lines"]:
            body = line["body"]
            model = body.get("model", "")
            seen = Seen("BATCH", "/v1/chat/completions", {}, body, time.monotonic())  # a line, not an HTTP call
            self.requests.append(seen)
            if model in self.status:
                errors.append({"id": f"req_{len(errors)}", "custom_id": line["custom_id"],
                               "response": {"status_code": self.status[model], "body": {
                                   "error": {"message": f"the model {model} cannot answer this"}}}})
                continue
            text = self._text(seen)
            tokens = {"prompt_tokens": 5, "completion_tokens": len(text) // 4 + 1}
            tokens["total_tokens"] = tokens["prompt_tokens"] + tokens["completion_tokens"]
            out.append({"id": f"req_{len(out)}", "custom_id": line["custom_id"], "response": {
                "status_code": 200, "body": {"id": f"chatcmpl-b{len(out)}", "object": "chat.completion",
                                             "model": model, "usage": tokens, "choices": [{
                                                 "index": 0, "finish_reason": "stop",
                                                 "message": {"role": "assistant", "content": text}}]}}})
        for name, rows in (("output_file_id", out), ("error_file_id", errors)):
            if rows:
                file_id = f"file-{len(self.files) + 1}"
                self.files[file_id] = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
                batch[name] = file_id


def _multipart(content_type: str, raw: bytes) -> dict[str, bytes]:
    """name -> value of a multipart/form-data body (enough for httpx's uploads)."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        return {}
    fields = {}
    for part in raw.split(b"--" + m.group(1).encode())[1:]:
        head, _, value = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]+)"', head)
        if name:
            fields[name.group(1).decode()] = value[:-2] if value.endswith(b"\r\n") else value
    return fields


def start_child(latency: float) -> tuple:
    """This server in a child process (a benchmark's load must not share the measuring process's GIL):
    (the Popen, whose stdin closing stops it, and the base URL)."""
    import subprocess

    proc = subprocess.Popen([sys.executable, __file__, "--latency", str(latency)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    port = proc.stdout.readline().strip()  # type: ignore[union-attr]
    if not port.isdigit():
        proc.kill()
        raise SystemExit("the fake server did not start")
    return proc, f"http://127.0.0.1:{port}"


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--answer", default=None, help="a fixed answer (default: echo)")
    args = parser.parse_args()
    server = FakeOpenAI(latency=args.latency, answer=args.answer if args.answer is not None else smart)
    print(server.port, flush=True)
    sys.stdin.read()  # serve until the parent closes our stdin (or dies)
    server.close()


if __name__ == "__main__":
    main()
