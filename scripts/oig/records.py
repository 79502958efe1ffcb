"""The one record type of the pipeline: a conversation.

A record is a plain dict ``{"messages": [{"role": ..., "content": ..., "weight"?: 0|1}, ...]}``.
Every source format is converted into it once, at the edge (``oig.data.formats``); nothing downstream
knows where a record came from. Plain dicts keep the hot paths (mixing a million records) cheap and
serialise to JSON as they are.

Tool use (OpenAI's function-calling format, in the shape chat templates take): the record may carry
``tools`` (``[{"type": "function", "function": {"name", "description"?, "parameters"?}}]``) after
``messages``; an assistant message may carry ``tool_calls`` (``[{"type": "function", "id"?,
"function": {"name", "arguments": {...}}}]``, its content then may be ""), and a ``tool`` message
answers one with ``tool_call_id`` and/or ``name``. Content is always a string.
"""

from __future__ import annotations

import re
from typing import TypedDict

ROLES = ("system", "user", "assistant", "tool")

# --- control tokens -----------------------------------------------------------------------------------
# Text that chat templates turn into control tokens (ChatML, Llama 3, Mistral, Gemma, Phi, GPT-2...): in a
# message it would forge a turn (a fake system message) or end the answer early. Inline slices
# (oig validate) and linked rows (oig.data.formats) are checked against this pattern; training and
# serving check against the model's own tokens (``special_token_texts``).
CONTROL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]{1,40}\|>|</?s>|\[/?INST\]|<(?:start|end)_of_turn>|<(?:bos|eos|pad)>")


def special_token_texts(tokenizer) -> list[str]:
    """The text of every special token of a tokenizer, longest first: the named ones (bos, eos, pad, ...)
    and the added tokens marked special (ChatML's ``<|im_start|>`` is often only the latter)."""
    found = {str(t) for t in getattr(tokenizer, "all_special_tokens", None) or []}
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            found.add(str(getattr(token, "content", token)))
    return sorted((t for t in found if t.strip()), key=lambda t: (-len(t), t))


class _MessageBase(TypedDict):
    role: str
    content: str


class Message(_MessageBase, total=False):
    weight: int  # 0 or 1: 0 excludes an assistant message from the loss (OpenAI fine-tuning format)
    tool_calls: list[dict]  # assistant only
    tool_call_id: str  # tool only
    name: str  # tool only: the function that answered


class _RecordBase(TypedDict):
    messages: list[Message]


class Record(_RecordBase, total=False):
    tools: list[dict]


def pair(input_text: str, output_text: str) -> Record:
    """An input/output pair as a single user/assistant exchange."""
    return {"messages": [{"role": "user", "content": input_text}, {"role": "assistant", "content": output_text}]}


def check_tools(tools: object) -> str | None:
    """Why a record's ``tools`` is not a list of function definitions, or None when it is."""
    if not isinstance(tools, list) or not tools:
        return "`tools` must be a non-empty list of function definitions"
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            return f"tool {i} is not {{\"type\": \"function\", \"function\": {{...}}}}"
        if not isinstance(function.get("name"), str) or not function["name"]:
            return f"tool {i} has no function name"
        if "parameters" in function and not isinstance(function["parameters"], dict):
            return f"tool {i} ({function['name']}): `parameters` must be a JSON schema object"
    return None


def _check_tool_calls(calls: object, i: int) -> str | None:
    if not isinstance(calls, list) or not calls:
        return f"message {i}: `tool_calls` must be a non-empty list"
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            return f"message {i} has a tool call without a function name"
        if not isinstance(function.get("arguments"), dict):
            return f"message {i}: the arguments of tool call {function['name']!r} are not a JSON object"
    return None


def check_messages(messages: object) -> str | None:
    """Why ``messages`` is not a trainable conversation, or None when it is.

    A conversation is a non-empty list of role/content messages that ends with an assistant turn;
    system messages may only come first (a system turn then an assistant turn is a conversation, as
    OpenAI's fine-tuning accepts; a lone assistant message is not). A tool message follows an assistant tool call or another tool message.
    """
    if not isinstance(messages, list) or not messages:
        return "a conversation must be a non-empty list of messages"
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
        if "tool_calls" in m:
            if role != "assistant":
                return f"message {i} is a {role} message with tool calls; only assistant messages make them"
            why = _check_tool_calls(m["tool_calls"], i)
            if why:
                return why
        if role == "tool":
            before = messages[i - 1] if i else {}
            if not (before.get("role") == "tool" or (before.get("role") == "assistant" and before.get("tool_calls"))):
                return f"message {i} is a tool result that answers no assistant tool call"
    if messages[0]["role"] == "assistant":
        return "a conversation needs a user or system message before the first assistant message"
    if messages[-1]["role"] != "assistant":
        return "a conversation must end with an assistant message"
    return None
