"""``oig query TEXT``: ask the model that model.yaml names, and return only its answer.

Where the question goes, first match wins:

1. ``--base-url URL``: any OpenAI-compatible server (``oig serve``, vLLM, Together itself), through the
   together SDK.
2. model.yaml's Together endpoint (or hosted fine-tuned model): Together, through the together SDK.
3. model.yaml's local folder, else its Hub repo at the recorded revision: loaded with transformers and
   answered greedily with the model's chat template.
"""

from __future__ import annotations

import os
from pathlib import Path

from oig.errors import OigError

DEFAULT_MAX_TOKENS = 256


class QueryError(OigError):
    """model.yaml is missing or unusable, or the model could not answer."""


def read_model_yaml(path: Path) -> dict:
    """Where the model is: model.yaml's ``model`` section, with its ``together`` section inside.

    The file is checked against model.yaml's schema (``oig.runlog``) first.
    """
    from oig.runlog import read_model_yaml as read_checked

    path = Path(path)
    if not path.is_file():
        raise QueryError(f"{path} does not exist: train and publish a model first (`oig train`), or pass "
                         "--model-yaml or --base-url")
    doc = read_checked(path)
    section = dict(doc.get("model") or {})
    if doc.get("together"):
        section["together"] = dict(doc["together"])
    if not any(section.get(k) for k in ("local_path", "hub_repo", "together")):
        raise QueryError(f"{path} names no model: expected model.local_path, model.hub_repo or together")
    return section


def query(text: str, model_yaml: Path = Path("model.yaml"), base_url: str | None = None, *,
          max_tokens: int = DEFAULT_MAX_TOKENS) -> str:
    """The model's answer to ``text`` (greedy, so the same question gets the same answer)."""
    if not text.strip():
        raise QueryError("the question is empty")
    messages = [{"role": "user", "content": text}]
    if base_url:
        section = read_model_yaml(model_yaml) if Path(model_yaml).is_file() else {}
        key = key_for(base_url)
        return ask_openai_compatible(base_url, _served_name(base_url, _preferred_name(section), key), messages,
                                     max_tokens=max_tokens, key=key or "none")
    section = read_model_yaml(model_yaml)
    together = section.get("together") or {}
    name = together.get("endpoint") or together.get("model")
    if name:
        from oig import together_client as together_api

        return ask_openai_compatible(together_api.base_url(together.get("base_url")), name, messages,
                                     max_tokens=max_tokens, key=together_api.api_key())
    return ask_local(section, Path(model_yaml).parent, messages, max_tokens=max_tokens)


def _preferred_name(section: dict) -> str | None:
    together = section.get("together") or {}
    return together.get("endpoint") or together.get("model") or section.get("hub_repo") or section.get("local_path")


def key_for(url: str) -> str | None:
    """TOGETHER_API_KEY, but only for Together itself: any other server never sees it."""
    from urllib.parse import urlsplit

    from oig.together_client import base_url as normalize

    host = (urlsplit(url).hostname or "").lower()
    configured = os.environ.get("TOGETHER_BASE_URL")
    together = host.endswith((".together.ai", ".together.xyz")) or (
        configured is not None and normalize(configured) == normalize(url))
    return (os.environ.get("TOGETHER_API_KEY") or None) if together else None


def _served_name(base_url: str, preferred: str | None, key: str | None) -> str:
    """The model name to ask a server for: model.yaml's when it serves that, else the one it serves."""
    import httpx

    from oig.together_client import base_url as normalize

    try:
        r = httpx.get(f"{normalize(base_url)}/v1/models", timeout=10,
                      headers={"Authorization": f"Bearer {key}"} if key else None)
        r.raise_for_status()
        data = r.json().get("data") if isinstance(r.json(), dict) else r.json()
        ids = [m.get("id") for m in data or [] if isinstance(m, dict) and isinstance(m.get("id"), str)]
    except (httpx.HTTPError, ValueError, AttributeError):
        ids = []  # a server without a model list: ask for model.yaml's name and let it answer
    if preferred and (preferred in ids or not ids):
        return preferred
    if ids:
        return ids[0]
    raise QueryError(f"{base_url} lists no models and model.yaml names none; check the URL")


def ask_openai_compatible(url: str, model: str, messages: list[dict], *, max_tokens: int, key: str) -> str:
    """One chat completion through the together SDK (it speaks the OpenAI protocol)."""
    from oig.together_client import call, make_client

    client = make_client(url, key=key, max_retries=1, timeout=300.0)
    service = "Together" if "together" in str(client.base_url) else "the server"
    response = call(f"asking {model} at {client.base_url}",
                    lambda: client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                           temperature=0), service)
    try:
        content = response.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        raise QueryError(f"{client.base_url} answered without a message") from None
    if not isinstance(content, str):
        raise QueryError(f"{client.base_url} answered without text")
    return content


def ask_local(section: dict, base_dir: Path, messages: list[dict], *, max_tokens: int) -> str:
    """Load the model with transformers and answer greedily."""
    from oig.serve.inference import BadRequest, LocalModel, ServeError

    local = section.get("local_path")
    hub_repo = section.get("hub_repo")
    folder = None
    if local:
        folder = Path(local) if Path(local).is_absolute() else base_dir / local
    if folder is not None and folder.is_dir():
        ref, revision = str(folder), None
    elif hub_repo:
        ref, revision = hub_repo, section.get("revision") or section.get("branch")
    else:
        raise QueryError(f"model.yaml names the local model {local}, but {folder} does not exist here; train it "
                         "again, or publish it to the Hub")
    try:
        model = LocalModel.load(ref, revision=revision)
        text, _ = model.complete(messages, max_tokens=max_tokens, temperature=0)
    except (ServeError, BadRequest) as exc:
        raise QueryError(str(exc)) from None
    return text
