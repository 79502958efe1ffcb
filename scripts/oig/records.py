"""The one record type of the pipeline: a conversation.

A record is a plain dict ``{"messages": [{"role": ..., "content": ..., "weight"?: 0|1}, ...]}``.
Every source format is converted into it once, at the edge (``oig.data.formats``); nothing downstream
knows where a record came from. Plain dicts keep the hot paths (mixing a million records) cheap and
serialise to JSON as they are.
"""

from __future__ import annotations

from typing import TypedDict

ROLES = ("system", "user", "assistant")


class _MessageBase(TypedDict):
    role: str
    content: str


class Message(_MessageBase, total=False):
    weight: int  # 0 or 1: 0 excludes an assistant message from the loss (OpenAI fine-tuning format)


class Record(TypedDict):
    messages: list[Message]


def pair(input_text: str, output_text: str) -> Record:
    """An input/output pair as a single user/assistant exchange."""
    return {"messages": [{"role": "user", "content": input_text}, {"role": "assistant", "content": output_text}]}


def check_messages(messages: object) -> str | None:
    """Why ``messages`` is not a trainable conversation, or None when it is.

    A conversation is a non-empty list of role/content messages that ends with an assistant turn and
    has at least one user turn; system messages may only come first.
    """
    if not isinstance(messages, list) or not messages:
        return "a conversation must be a non-empty list of messages"
    seen_user = False
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"message {i} is not an object"
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            return f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}"
        if not isinstance(content, str):
            return f"message {i} has no text content"
        if role == "system" and i > 0 and messages[i - 1].get("role") != "system":
            return f"message {i} is a system message after the conversation started"
        if "weight" in m and m["weight"] not in (0, 1):
            return f"message {i} has weight {m['weight']!r}; expected 0 or 1"
        seen_user = seen_user or role == "user"
    if not seen_user:
        return "a conversation needs at least one user message"
    if messages[-1]["role"] != "assistant":
        return "a conversation must end with an assistant message"
    return None
