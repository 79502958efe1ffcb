"""Where the model is: the one answer, for ``oig query``, ``oig serve`` and the bug suite, to "which
model does model.yaml (or --base-url) mean, and how is it reached".

First match wins:

1. ``--base-url URL``: that OpenAI-compatible server (``oig serve``, vLLM, Together itself), asked for
   model.yaml's model when it serves it, else for the one it serves (:func:`served`);
2. model.yaml's Together deployment: its dedicated endpoint, else the model (an :class:`Endpoint`);
3. its local folder (relative to model.yaml's folder), when it is here (:class:`Weights`);
4. its Hub repo at the recorded revision, else at the branch (:class:`Weights`).

``oig serve`` loads weights itself, so it starts at 3 (:func:`weights`). Nothing here loads a model or
asks one; ``oig.serve.query.asker`` does, for any of these.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from oig.errors import OigError
from oig.runlog import MODEL_YAML, ModelRef


class QueryError(OigError):
    """model.yaml is missing or names no model that can be reached, or the model could not answer."""


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible API and the model name to ask it for."""

    url: str  # the API root, with or without /v1
    model: str
    key: str | None = field(default=None, repr=False)  # None: TOGETHER_API_KEY, read when asking


@dataclass(frozen=True)
class Weights:
    """A model to load with transformers: a folder here, or a Hub repo at a revision."""

    ref: str
    revision: str | None = None


def read(path: Path = Path(MODEL_YAML)) -> ModelRef:
    """model.yaml (checked against its schema), refusing one that names no model."""
    from oig.runlog import read_model_ref

    path = Path(path)
    if not path.is_file():
        raise QueryError(f"{path} does not exist: train and publish a model first (`oig train`), or pass "
                         "--model-yaml or --base-url")
    model = read_model_ref(path)
    if not (model.local_path or model.hub_repo or model.together):
        raise QueryError(f"{path} names no model: expected model.local_path, model.hub_repo or together")
    return model


def locate(model: ModelRef, base_dir: Path = Path("."), *, source: object = MODEL_YAML) -> Endpoint | Weights:
    """The Together deployment when there is one, else the weights (:func:`weights`)."""
    if model.together is not None:
        from oig import together_client

        return Endpoint(together_client.base_url(model.together.base_url), model.together.name)
    return weights(model, base_dir, source=source)


def weights(model: ModelRef, base_dir: Path = Path("."), *, source: object = MODEL_YAML,
            hint: str = "train it again, or publish it to the Hub") -> Weights:
    """The local folder when it is here, else the Hub repo at its revision. ``source`` and ``hint``
    (what to do) go into the error for a model with no weights to be had here."""
    local = model.local_path
    folder = None
    if local:
        folder = Path(local) if Path(local).is_absolute() else Path(base_dir) / local
        if folder.is_dir():
            return Weights(str(folder))
    if model.hub_repo:
        return Weights(model.hub_repo, model.hub_revision)
    if local:
        raise QueryError(f"{source} names the local model {local}, but {folder} does not exist here; {hint}")
    raise QueryError(f"{source} names only a Together model, which Together serves: there are no weights to "
                     f"load here; {hint}")


def served(base_url: str, model: ModelRef | None = None) -> Endpoint:
    """``--base-url``: the server, asked for model.yaml's model when it lists that (or lists none), else
    for the first one it lists. It gets TOGETHER_API_KEY only when it is Together."""
    key = key_for(base_url)
    return Endpoint(base_url, _served_name(base_url, _preferred_name(model), key), key or "none")


def _preferred_name(model: ModelRef | None) -> str | None:
    if model is None:
        return None
    return (model.together.name if model.together else None) or model.hub_repo or model.local_path


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
