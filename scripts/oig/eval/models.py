"""The models ``oig eval`` asks: the model under test, the previous one (``--compare``) and the judge.

Where a model is comes from ``oig.serve.locate`` (model.yaml, a folder or Hub id, any OpenAI-compatible
server); weights are asked through ``oig.serve.query.asker``, one question at a time (one model in this
process). Servers are asked here, over one pooled httpx client per model, so that ``--concurrency``
requests can be in flight at once: the SDK client ``query`` builds per question costs more than a
fast server's answer.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from oig import together_client
from oig.errors import OigError, redact
from oig.files import backoff_delay
from oig.runlog import ModelRef
from oig.serve import locate, query
from oig.serve.locate import Endpoint, Weights
from oig.serve.query import Asker

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
ATTEMPTS = 3  # tries per question, on the statuses above and on connection failures
TIMEOUT_S = 300.0


class EvalError(OigError):
    """A suite that cannot run, or a model that cannot be asked: never a score of zero."""


@dataclass
class Model:
    label: str  # what the results call it: model.yaml's path, the folder, the Hub id or "NAME at URL"
    ask: Asker
    parallel: bool  # a server (True), or weights loaded here (False: asked once first, so a load failure stops at once)
    where: Endpoint | Weights | None = field(default=None, repr=False)


def _http_asker(where: Endpoint, *, max_tokens: int, connections: int, temperature: float = 0.0) -> Asker:
    """Ask an OpenAI-compatible server through one shared httpx client (thread-safe, pooled)."""
    import httpx

    url = f"{together_client.base_url(where.url)}/v1/chat/completions"
    lock = threading.Lock()
    client: list[httpx.Client] = []

    def session() -> httpx.Client:
        with lock:
            if not client:
                key = where.key or together_client.api_key()
                limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
                client.append(httpx.Client(timeout=TIMEOUT_S, limits=limits,
                                           headers={"Authorization": f"Bearer {key}"}))
            return client[0]

    def ask(messages: list[dict]) -> str:
        body = {"model": where.model, "messages": list(messages), "max_tokens": max_tokens,
                "temperature": temperature}
        for attempt in range(ATTEMPTS):
            last = attempt == ATTEMPTS - 1
            try:
                r = session().post(url, json=body)
            except httpx.HTTPError as exc:
                if last:
                    raise query.QueryError(f"{url}: {type(exc).__name__}: {redact(str(exc))[:200]}") from None
                time.sleep(backoff_delay(attempt, base_s=0.5))
                continue
            if r.status_code in RETRY_STATUSES and not last:
                after = r.headers.get("retry-after")
                time.sleep(backoff_delay(attempt, base_s=0.5, retry_after_s=float(after) if
                                         (after or "").replace(".", "", 1).isdigit() else None))
                continue
            if r.status_code != 200:
                raise query.QueryError(f"{url} answered HTTP {r.status_code}: {redact(r.text)[:200]}")
            try:
                content = r.json()["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                raise query.QueryError(f"{url} answered without a message") from None
            if not isinstance(content, str):
                raise query.QueryError(f"{url} answered without text")
            return content
        raise AssertionError("unreachable")

    return ask


def _model(label: str, where: Endpoint | Weights, *, max_tokens: int, concurrency: int) -> Model:
    if isinstance(where, Endpoint):
        return Model(label, _http_asker(where, max_tokens=max_tokens, connections=concurrency), True, where)
    return Model(label, query.asker(where, max_tokens=max_tokens), False, where)


def from_options(*, model_yaml: Path | None = None, model: str | None = None, base_url: str | None = None,
                 model_name: str | None = None, max_tokens: int = query.DEFAULT_MAX_TOKENS,
                 concurrency: int = 8) -> Model:
    """The model under test: ``--base-url`` (asked for ``--model-name``, else what locate.served picks),
    ``--model`` (a folder or Hub id), else ``--model-yaml`` (default model.yaml)."""
    if base_url:
        if model_name:
            where: Endpoint | Weights = Endpoint(base_url, model_name, locate.key_for(base_url) or "none")
        else:
            ref = locate.read(model_yaml) if model_yaml is not None and Path(model_yaml).is_file() else None
            where = locate.served(base_url, ref)
        return _model(f"{where.model} at {base_url}", where, max_tokens=max_tokens, concurrency=concurrency)
    if model:
        folder = Path(model)
        where = Weights(str(folder)) if folder.is_dir() else Weights(model)
        return _model(model, where, max_tokens=max_tokens, concurrency=concurrency)
    return from_model_yaml(model_yaml or Path("model.yaml"), max_tokens=max_tokens, concurrency=concurrency)


def from_model_yaml(path: Path, *, max_tokens: int = query.DEFAULT_MAX_TOKENS, concurrency: int = 8) -> Model:
    """The model a model.yaml names (its Together deployment, else its local folder or Hub repo)."""
    path = Path(path)
    ref: ModelRef = locate.read(path)
    where = locate.locate(ref, path.parent, source=path)
    return _model(str(path), where, max_tokens=max_tokens, concurrency=concurrency)


def judge_model(model: str, base_url: str | None, *, concurrency: int = 8) -> Model:
    """A judge on an OpenAI-compatible server (default: Together, with TOGETHER_API_KEY)."""
    url = together_client.base_url(base_url)
    key = locate.key_for(url) or ("none" if base_url else None)
    return Model(f"judge {model}", _http_asker(Endpoint(url, model, key), max_tokens=64, connections=concurrency),
                 True)
