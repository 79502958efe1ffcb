"""The Together AI client (the ``together`` SDK), shared by publishing (``oig.publish.together``:
deploying a Hub model), hosted fine-tuning (``oig.train.together``), ``oig query`` and the bug judge.

``make_client`` builds the SDK client, ``call`` runs one request and turns the SDK's errors into
:class:`TogetherError` with secrets removed, ``wait_for`` polls an asynchronous job with a timeout.

The key is ``TOGETHER_API_KEY`` only. ``TOGETHER_BASE_URL`` overrides the API address (tests point it at
a local server); ``TOGETHER_PROJECT_ID`` names the project for the project-scoped (v2) calls, which
otherwise comes from ``whoami`` for a project API key. Sleep and clock are injectable so tests of the
waiting loops take no time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import TypeVar

from oig.errors import TogetherError, redact, secret

DEFAULT_BASE_URL = "https://api.together.ai"
POLL_S = 20.0

T = TypeVar("T")


# --- the client -----------------------------------------------------------------------------------


def base_url(url: str | None = None) -> str:
    """The API root without ``/v1``: the SDK adds the version to every path itself."""
    url = (url or os.environ.get("TOGETHER_BASE_URL") or DEFAULT_BASE_URL).strip().rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def api_key() -> str:
    return secret("TOGETHER_API_KEY", TogetherError, "Together needs an API key")


def make_client(url: str | None = None, *, key: str | None = None, max_retries: int = 2, timeout: float = 120.0):
    """A ``together.Together`` client for ``url`` (default: TOGETHER_BASE_URL or Together's API)."""
    from together import Together

    return Together(api_key=key or api_key(), base_url=base_url(url), max_retries=max_retries, timeout=timeout,
                    project_id=os.environ.get("TOGETHER_PROJECT_ID") or None)


def call(what: str, fn: Callable[[], T], service: str = "Together") -> T:
    """Run one SDK call; any failure becomes a TogetherError that says what failed and why."""
    try:
        return fn()
    except TogetherError:
        raise
    except Exception as exc:
        error = translate(what, exc, service)
        if error is None:
            raise
        raise error from None


def translate(what: str, exc: BaseException, service: str = "Together") -> TogetherError | None:
    """The TogetherError for an SDK failure, or None for a bug that should surface as one.

    ``service`` names who answered: Together, or the OpenAI-compatible server ``oig query`` asked.
    """
    import together

    if isinstance(exc, together.AuthenticationError):
        return TogetherError(f"{what}: {service} refused the API key (HTTP 401); check TOGETHER_API_KEY")
    if isinstance(exc, together.PermissionDeniedError):
        return TogetherError(f"{what}: the API key may not do this (HTTP 403); check the key's project and "
                             "permissions")
    if isinstance(exc, together.APIStatusError):
        detail = _first_line(exc.message)
        return TogetherError(redact(f"{what}: {service} answered HTTP {exc.status_code}: {detail}"))
    if isinstance(exc, together.APIConnectionError):
        return TogetherError(redact(f"{what}: could not reach {service} ({_first_line(str(exc))})"))
    if isinstance(exc, together.TogetherError | ValueError | TypeError | AttributeError | KeyError):
        # The SDK raises ValueError for missing arguments, and reading an answer that lacks the
        # expected fields raises AttributeError/KeyError/TypeError.
        return TogetherError(redact(f"{what}: {_first_line(str(exc)) or type(exc).__name__}"))
    return None


def _first_line(text: str, limit: int = 300) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def wait_for(what: str, poll: Callable[[], tuple[bool, str]], *, timeout_s: float, poll_s: float,
             sleep: Callable[[float], None], clock: Callable[[], float]) -> str:
    """Poll until ``poll`` says done (returns its last state) or the time is up (TogetherError).

    ``poll`` returns (done, state) and raises TogetherError itself for a failed job.
    """
    deadline = clock() + timeout_s
    while True:
        done, state = poll()
        if done:
            return state
        if clock() >= deadline:
            raise TogetherError(f"{what} did not finish within {timeout_s:g} s (last state: {state}); it may "
                                "still finish on Together: check it there and publish again")
        sleep(max(0.0, min(poll_s, deadline - clock())))


def slug(text: str, limit: int = 60) -> str:
    """A name Together accepts for models and endpoints: lowercase letters, digits and '-'."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cleaned[:limit].strip("-") or "oig-model"


def project_id(client) -> str:
    """The project the v2 (models, endpoints) calls live under."""
    if client.project_id:
        return client.project_id
    who = call("finding the Together project (whoami)", client.whoami)
    project = getattr(who, "project", None)
    pid = getattr(project, "id", None)
    if not pid:
        raise TogetherError("this Together API key is not tied to a project: set TOGETHER_PROJECT_ID to the "
                            "project that should own the model and endpoint")
    client.project_id = pid
    return pid


def _same_name(qualified: str | None, name: str) -> bool:
    # Together answers with `<project_slug>/<name>`; requests may use the bare name.
    return bool(qualified) and (qualified == name or qualified.rsplit("/", 1)[-1] == name)
