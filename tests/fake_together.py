"""A local stand-in for the Together API subsets oig uses, for offline tests of together 3.1.1.

Routes: chat completions (plain and SSE), whoami, custom models and remote uploads, dedicated
endpoints and deployments (v2, project-scoped), file upload (the redirect-and-PUT dance of
``files.upload``), hosted fine-tuning (limits, price estimate, create, retrieve, events), and batch
inference (``batches.create`` / ``retrieve`` over an uploaded ``batch-api`` file, ``files.content`` of
the output: one line per request, ``custom_id`` and ``response.body``, the answer ``answer``).
Asynchronous jobs advance one state per poll, so tests can check the waiting loops; every request is
recorded (method, path, query, headers, JSON body) so tests can assert what the SDK sent.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

from servers import ThreadedFake

NOW = "2026-11-23T12:00:00Z"


class FakeTogether(ThreadedFake):
    def __init__(self, api_key: str = "tg_test_key", answer: str = "Paris", project_id: str = "proj_1",
                 project_slug: str = "oig-lab", upload_states: tuple[str, ...] = (
                     "REMOTE_UPLOAD_STATUS_RUNNING", "REMOTE_UPLOAD_STATUS_SUCCEEDED"),
                 deploy_states: tuple[str, ...] = ("DEPLOYMENT_STATE_PROVISIONING", "DEPLOYMENT_STATE_READY"),
                 fine_tune_states: tuple[str, ...] = ("queued", "running", "completed"),
                 whoami_project: bool = True,
                 batch_states: tuple[str, ...] = ("VALIDATING", "IN_PROGRESS", "COMPLETED")):
        self.api_key = api_key
        self.answer = answer
        self.project_id = project_id
        self.project_slug = project_slug
        self.upload_states = list(upload_states)
        self.deploy_states = list(deploy_states)
        self.fine_tune_states = list(fine_tune_states)
        self.whoami_project = whoami_project
        self.requests: list[dict] = []
        self.models: list[dict] = []
        self.endpoints: list[dict] = []
        self.deployments: dict[str, dict] = {}
        self.uploads: dict[str, dict] = {}
        self.files: dict[str, bytes] = {}
        self.jobs: dict[str, dict] = {}
        self.batch_states = list(batch_states)
        self.batches: dict[str, dict] = {}  # id -> {"input_file_id", "states", "status", "output_file_id"}
        self.lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        return type("Handler", (_Handler,), {"together": self})

    def find(self, method: str, path: str, *, prefix: bool = False) -> list[dict]:
        """The recorded requests to ``path`` (or to any path starting with it, with prefix=True)."""
        return [r for r in self.requests
                if r["method"] == method and (r["path"].startswith(path) if prefix else r["path"] == path)]


def _model(fake: FakeTogether, i: int, name: str, body: dict) -> dict:
    return {"id": f"model_{i}", "name": f"{fake.project_slug}/{name}", "organizationId": "org_1",
            "projectId": fake.project_id, "visibility": "VISIBILITY_PRIVATE", "weights": {},
            "baseModelId": body.get("base_model_id"), "description": body.get("description")}


def _deployment(fake: FakeTogether, d: dict) -> dict:
    return {"id": d["id"], "autoscaling": d["autoscaling"], "config": "", "configId": "",
            "createdAt": NOW, "endpointId": d["endpoint_id"], "etag": "1", "hardware": "1x_nvidia_h100_80gb_sxm",
            "model": d["model"], "modelId": "", "modelRevisionId": "", "name": d["name"],
            "projectId": fake.project_id, "status": {"message": d["state"].lower(), "state": d["state"]},
            "trafficMode": "TRAFFIC_MODE_LIVE", "updatedAt": NOW}


class _Handler(BaseHTTPRequestHandler):
    together: FakeTogether
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def _send(self, status: int, data: bytes, content_type: str = "application/json", headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        return True  # the route answered

    def _json(self, status: int, body: object, headers: dict | None = None):
        return self._send(status, json.dumps(body).encode(), headers=headers)

    def _error(self, status: int, message: str):
        return self._json(status, {"error": {"message": message, "type": "invalid_request_error"}})

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        path = unquote(split.path)
        try:
            body = json.loads(raw) if raw and "json" in (self.headers.get("Content-Type") or "") else None
        except ValueError:
            body = None
        fake = self.together
        with fake.lock:
            fake.requests.append({"method": method, "path": path, "query": parse_qs(split.query), "raw": raw,
                                  "headers": {k.lower(): v for k, v in self.headers.items()}, "json": body})
        if path.startswith("/upload/") and method == "PUT":  # the presigned upload target: no API key
            with fake.lock:
                fake.files[path.rsplit("/", 1)[-1]] = raw
            return self._send(200, b"")
        if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
            return self._error(401, "Invalid API key provided")
        body = body or {}
        parts = path.strip("/").split("/")
        with fake.lock:
            route = self._route(method, path, parts, body)
        if route is None:
            self._error(404, f"no route for {method} {path} in the fake Together")

    def _route(self, method: str, path: str, parts: list[str], body: dict):
        fake = self.together
        if method == "POST" and path == "/v1/chat/completions":
            return self._chat(body)
        if method == "GET" and path == "/v3/whoami":
            if not fake.whoami_project:
                return self._json(200, {"type": "user_jwt", "user": {"id": "u1"}})
            return self._json(200, {"type": "project_api_key", "api_key": {"id": "key_1", "name": "ci"},
                                    "organization": {"id": "org_1", "name": "Org", "slug": "org"},
                                    "project": {"id": fake.project_id, "name": "oig", "slug": fake.project_slug}})
        if parts[:2] == ["v2", "projects"] and len(parts) >= 4:
            if parts[2] != fake.project_id:
                return self._error(404, f"project {parts[2]} not found")
            return self._project(method, parts[3:], body)
        if method == "POST" and path == "/v1/files":
            file_id = f"file-{len(fake.files) + 1}"
            return self._send(302, b"", headers={"Location": f"{fake.url}/upload/{file_id}",
                                                 "X-Together-File-Id": file_id})
        if method == "POST" and len(parts) == 4 and parts[:2] == ["v1", "files"] and parts[3] == "preprocess":
            data = fake.files.get(parts[2], b"")
            return self._json(200, {"id": parts[2], "bytes": len(data), "created_at": int(time.time()),
                                    "filename": "together_train.jsonl", "FileType": "jsonl", "object": "file",
                                    "purpose": "fine-tune", "processing_status": "COMPLETED"})
        if method == "GET" and path == "/v1/fine-tunes/models/limits":
            return self._json(200, _LIMITS)
        if method == "POST" and path == "/v1/fine-tunes/estimate-price":
            return self._json(200, {"estimation_available": True, "allowed_to_proceed": True,
                                    "estimated_total_price": 1.5})
        if method == "POST" and path == "/v1/fine-tunes":
            job_id = f"ft-{len(fake.jobs) + 1}"
            fake.jobs[job_id] = {"id": job_id, "request": body, "states": list(fake.fine_tune_states)}
            return self._json(200, self._job(job_id, "pending"))
        if method == "GET" and len(parts) == 3 and parts[:2] == ["v1", "fine-tunes"] and parts[2] in fake.jobs:
            job = fake.jobs[parts[2]]
            state = job["states"].pop(0) if len(job["states"]) > 1 else job["states"][0]
            return self._json(200, self._job(parts[2], state))
        if method == "GET" and len(parts) == 4 and parts[:2] == ["v1", "fine-tunes"] and parts[3] == "events":
            return self._json(200, {"data": [{"object": "fine-tune-event", "message": "job started"},
                                             {"object": "fine-tune-event", "message": "out of memory at step 3"}]})
        if method == "POST" and path == "/v1/batches":
            if body.get("input_file_id") not in fake.files:
                return self._error(404, f"no file {body.get('input_file_id')}")
            batch_id = f"batch-{len(fake.batches) + 1}"
            fake.batches[batch_id] = {"input_file_id": body["input_file_id"], "states": list(fake.batch_states),
                                      "status": "VALIDATING", "request": body}
            return self._json(200, {"job": self._batch(batch_id), "warning": None})
        if method == "GET" and len(parts) == 3 and parts[:2] == ["v1", "batches"] and parts[2] in fake.batches:
            batch = fake.batches[parts[2]]
            batch["status"] = batch["states"].pop(0) if len(batch["states"]) > 1 else batch["states"][0]
            if batch["status"] == "COMPLETED" and "output_file_id" not in batch:
                lines = [json.loads(x) for x in fake.files[batch["input_file_id"]].splitlines() if x.strip()]
                out = [{"custom_id": x["custom_id"], "response": {"status_code": 200, "body": {
                    "id": f"c{i}", "object": "chat.completion", "model": x["body"].get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": fake.answer},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}}}
                       for i, x in enumerate(lines)]
                batch["output_file_id"] = f"file-out-{parts[2]}"
                fake.files[batch["output_file_id"]] = b"".join(json.dumps(r).encode() + b"\n" for r in out)
            return self._json(200, self._batch(parts[2]))
        if method == "GET" and len(parts) == 4 and parts[:2] == ["v1", "files"] and parts[3] == "content":
            if parts[2] not in fake.files:
                return self._error(404, f"no file {parts[2]}")
            return self._send(200, fake.files[parts[2]], "application/octet-stream")
        return None

    def _batch(self, batch_id: str) -> dict:
        b = self.together.batches[batch_id]
        return {"id": batch_id, "status": b["status"], "input_file_id": b["input_file_id"],
                "endpoint": b["request"].get("endpoint"), "output_file_id": b.get("output_file_id"),
                "error_file_id": None, "created_at": NOW, "user_id": "u1"}

    def _job(self, job_id: str, status: str) -> dict:
        job = self.together.jobs[job_id]
        out = {"id": job_id, "status": status, "created_at": NOW, "updated_at": NOW, "user_id": "u1",
               "model": job["request"].get("model"), "training_file": job["request"].get("training_file")}
        if status == "completed":
            out["model_output_name"] = f"user/{job['request'].get('model', 'm').split('/')[-1]}-oig-{job_id}"
        return out

    def _project(self, method: str, rest: list[str], body: dict):
        fake = self.together
        if rest == ["models"] and method == "POST":
            if any(m["name"].endswith("/" + body.get("name", "")) for m in fake.models):
                return self._error(409, "a model with this name already exists")
            model = _model(fake, len(fake.models) + 1, body["name"], body)
            fake.models.append(model)
            return self._json(200, model)
        if rest == ["models"] and method == "GET":
            return self._json(200, {"data": fake.models, "next_cursor": None})
        if rest == ["models", "uploads"] and method == "POST":
            up_id = f"upload_{len(fake.uploads) + 1}"
            fake.uploads[up_id] = {"body": body, "states": list(fake.upload_states)}
            return self._json(200, self._upload(up_id, "REMOTE_UPLOAD_STATUS_PENDING"))
        if len(rest) == 3 and rest[:2] == ["models", "uploads"] and method == "GET" and rest[2] in fake.uploads:
            states = fake.uploads[rest[2]]["states"]
            state = states.pop(0) if len(states) > 1 else states[0]
            return self._json(200, self._upload(rest[2], state))
        if rest == ["endpoints"] and method == "POST":
            if any(e["name"].endswith("/" + body.get("name", "")) for e in fake.endpoints):
                return self._error(409, "an endpoint with this name already exists")
            endpoint = {"id": f"endpoint_{len(fake.endpoints) + 1}", "createdAt": NOW, "deployments": [],
                        "endpointType": "ENDPOINT_TYPE_DEDICATED", "etag": "1",
                        "name": f"{fake.project_slug}/{body['name']}", "projectId": fake.project_id,
                        "trafficSplit": [], "updatedAt": NOW, "visibility": "VISIBILITY_PRIVATE"}
            fake.endpoints.append(endpoint)
            return self._json(200, endpoint)
        if rest == ["endpoints"] and method == "GET":
            return self._json(200, {"data": fake.endpoints, "next_cursor": None})
        if len(rest) == 2 and rest[0] == "endpoints" and method == "PATCH":
            endpoint = next((e for e in fake.endpoints if e["id"] == rest[1]), None)
            if endpoint is None:
                return self._error(404, "endpoint not found")
            endpoint["trafficSplit"] = body.get("trafficSplit", endpoint["trafficSplit"])
            return self._json(200, endpoint)
        if len(rest) == 3 and rest[0] == "endpoints" and rest[2] == "deployments" and method == "POST":
            dep_id = f"deployment_{len(fake.deployments) + 1}"
            dep = {"id": dep_id, "endpoint_id": rest[1], "name": f"{fake.project_slug}/x/{body.get('name')}",
                   "model": body.get("model"), "autoscaling": body.get("autoscaling", {}),
                   "state": "DEPLOYMENT_STATE_PROVISIONING", "states": list(fake.deploy_states)}
            fake.deployments[dep_id] = dep
            return self._json(200, _deployment(fake, dep))
        if len(rest) == 4 and rest[0] == "endpoints" and rest[2] == "deployments" and method == "GET":
            dep = fake.deployments.get(rest[3])
            if dep is None:
                return self._error(404, "deployment not found")
            dep["state"] = dep["states"].pop(0) if len(dep["states"]) > 1 else dep["states"][0]
            return self._json(200, _deployment(fake, dep))
        return None

    def _upload(self, up_id: str, state: str) -> dict:
        up = self.together.uploads[up_id]["body"]
        return {"id": up_id, "createdAt": NOW, "modelId": up.get("model_id"), "projectId": self.together.project_id,
                "remoteUrl": up.get("remote_url"), "status": state,
                "statusMessage": "repository not found" if state.endswith("FAILED") else None}

    def _chat(self, body: dict):
        fake = self.together
        messages = body.get("messages") or []
        if not messages:
            return self._error(400, "messages must not be empty")
        model = body.get("model", "")
        if body.get("stream"):
            chunks = []
            for i, piece in enumerate([fake.answer[: len(fake.answer) // 2], fake.answer[len(fake.answer) // 2:]]):
                delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                chunks.append({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
                               "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            chunks.append({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
                           "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            data = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return self._send(200, data.encode(), "text/event-stream")
        return self._json(200, {"id": "c1", "object": "chat.completion", "created": 1, "model": model,
                                "choices": [{"index": 0, "message": {"role": "assistant", "content": fake.answer},
                                             "finish_reason": "stop"}],
                                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_DELETE(self):
        self._handle("DELETE")


_LIMITS = {
    "default_gradient_accumulation_steps": 1,
    "lora_training": {"default_rank": 8, "max_batch_size": 32, "max_batch_size_dpo": 16, "max_rank": 64,
                      "min_batch_size": 1, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    "full_training": {"max_batch_size": 16, "max_batch_size_dpo": 8, "min_batch_size": 1},
    "max_learning_rate": 1.0, "max_num_checkpoints": 10, "max_num_epochs": 20, "max_num_evals": 10,
    "max_seq_length_dpo": 4096, "max_seq_length_sft": 8192, "merge_output_lora": True,
    "min_learning_rate": 1e-8, "min_max_seq_length": 128, "model_name": "Qwen/Qwen2.5-0.5B-Instruct",
    "supports_full_training": True, "supports_reasoning": False, "supports_tools": False,
    "supports_vision": False,
}
