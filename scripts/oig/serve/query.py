"""``oig query TEXT``: ask the model that model.yaml names, and return only its answer.

Where the question goes is ``oig.serve.locate``'s answer: ``--base-url``'s server, else model.yaml's
Together deployment, else its local folder or Hub repo, loaded with transformers. :func:`asker` asks
any of them, greedily (the same question gets the same answer); the bug suite asks through it too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from oig.serve import locate
from oig.serve.locate import Endpoint, QueryError, Weights

DEFAULT_MAX_TOKENS = 256

Asker = Callable[[list[dict]], str]  # a conversation -> the model's answer


def query(text: str, model_yaml: Path = Path("model.yaml"), base_url: str | None = None, *,
          max_tokens: int = DEFAULT_MAX_TOKENS) -> str:
    """The model's answer to ``text``."""
    if not text.strip():
        raise QueryError("the question is empty")
    if base_url:
        where = locate.served(base_url, locate.read(model_yaml) if Path(model_yaml).is_file() else None)
    else:
        where = locate.locate(locate.read(model_yaml), Path(model_yaml).parent)
    return asker(where, max_tokens=max_tokens)([{"role": "user", "content": text}])


def asker(where: Endpoint | Weights, *, max_tokens: int = DEFAULT_MAX_TOKENS) -> Asker:
    """A function asking ``where`` a conversation, greedily. Weights are loaded once, at the first
    question; an endpoint's key (TOGETHER_API_KEY unless it has its own) is read at each."""
    if isinstance(where, Endpoint):
        def ask_endpoint(messages: list[dict]) -> str:
            from oig import together_client

            return ask_openai_compatible(where.url, where.model, messages, max_tokens=max_tokens,
                                         key=where.key or together_client.api_key())

        return ask_endpoint
    loaded: list = []

    def ask_weights(messages: list[dict]) -> str:
        from oig.serve.inference import BadRequest, LocalModel, ServeError

        try:
            if not loaded:
                loaded.append(LocalModel.load(where.ref, revision=where.revision))
            text, _ = loaded[0].complete(messages, max_tokens=max_tokens, temperature=0)
        except (ServeError, BadRequest) as exc:
            raise QueryError(str(exc)) from None
        return text

    return ask_weights


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
