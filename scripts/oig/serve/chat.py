"""From a parsed chat-completions request to what the model is asked, and from its text back to an
OpenAI message: tools rendered by the model's chat template, forced tool calls and response_format
as grammar constraints, tool calls parsed out of the answer.

Tool calling, by ``tool_choice``:
- ``none`` (or no tools): the tools are not shown to the model; the answer is text.
- ``auto`` (the default with tools): the template renders the tools; the model answers freely, and
  each ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` block in its answer (the format of
  Qwen2.5/Qwen3, Hermes and oig's tiny model) becomes one of ``tool_calls``. A template that writes
  tool calls another way gets a 400 for ``auto``; ``required`` and named calls still work.
- ``required`` / a named function: the answer is constrained to the call's JSON (as vLLM does): a list
  of ``{"name", "arguments"}`` objects, or the named function's arguments.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from oig.serve.api import ChatCompletionRequest, combination_problem
from oig.serve.inference import BadRequest, LocalModel
from oig.serve.structured import JsonConstraint, response_format_constraint, tool_call_schema

HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


@dataclass
class Plan:
    """What the model is asked for one request, and how its answer becomes a message."""

    messages: list[dict]
    options: dict  # LocalModel.generate's keyword arguments
    tool_mode: str | None = None  # None, "auto", "required" or a function's name
    parallel: bool = True
    tool_names: list[str] = field(default_factory=list)


def plan(body: ChatCompletionRequest, lm: LocalModel, base: dict) -> Plan:
    """The plan for ``body`` on ``lm``, with ``base`` options (max_tokens, stop, seed, deadline, the
    sampling settings); a BadRequest names what the model or its template cannot do."""
    problem = combination_problem(body)
    if problem is not None:
        raise BadRequest(f"{problem[0]}: {problem[1]}", problem[0])
    mode = body.tool_mode()
    uses_tools = any(m.role == "tool" or m.tool_calls for m in body.messages)
    if (mode is not None or uses_tools) and not lm.renders_tools():
        param = "tools" if mode is not None else "messages"
        raise BadRequest(f"{param}: the model's chat template does not render tools, tool calls or tool results, "
                         "so this model cannot be given tools", param, "tools_not_supported")
    if mode == "auto" and "<tool_call>" not in str(lm.tokenizer.chat_template):
        raise BadRequest("tool_choice: the model's chat template does not write tool calls as <tool_call> JSON, "
                         "the format this server parses; use tool_choice \"required\" or a named function",
                         "tool_choice", "tools_not_supported")
    options = dict(base)
    if body.chat_template_kwargs:
        options["chat_template_kwargs"] = body.chat_template_kwargs
    if body.logprobs:
        options["logprobs"] = body.top_logprobs or 0
    if mode is not None:
        options["tools"] = [t.for_template() for t in body.tools]
    parallel = body.parallel_tool_calls is not False
    if mode not in (None, "auto"):
        schema = tool_call_schema(body.tools, None if mode == "required" else mode, parallel)
        options["constraint"] = JsonConstraint(lm, schema, "tools")
    else:
        constraint = response_format_constraint(lm, body.response_format)
        if constraint is not None:
            options["constraint"] = constraint
    return Plan(messages=[m.for_template() for m in body.messages], options=options, tool_mode=mode,
                parallel=parallel, tool_names=[t.function.name for t in body.tools or []])


def prepare(body: ChatCompletionRequest, lm: LocalModel, base: dict) -> Plan:
    """Forged turns refused, then ``plan``, with the prompt's token ids in its options: every pass over
    the request's text, in one trip to a worker thread for a large request (about 15 ms for 400k
    characters to look for special tokens alone)."""
    refuse_forged_turns(body, lm)
    p = plan(body, lm, base)
    p.options["prompt_ids"] = lm.encode(p.messages, p.options.get("chat_template_kwargs"), p.options.get("tools"))
    return p


def answer(p: Plan, text: str, finish_reason: str | None) -> tuple[dict, str | None]:
    """The assistant message for the model's ``text`` and its finish reason ("tool_calls" when it calls)."""
    if p.tool_mode is None:
        return {"role": "assistant", "content": text}, finish_reason
    calls: list[tuple[str, dict]] = []
    content: str | None = text
    if p.tool_mode == "auto":
        content, calls = _hermes_calls(text, p.tool_names)
    else:  # forced: the grammar made it JSON, unless max_tokens or a stop string cut it short (then text)
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if parsed is not None:
            calls = ([(c["name"], c["arguments"]) for c in parsed] if p.tool_mode == "required"
                     else [(p.tool_mode, parsed)])
            content = None
    if not p.parallel:
        calls = calls[:1]
    if not calls:
        return {"role": "assistant", "content": text}, finish_reason
    return {"role": "assistant", "content": content or None,
            "tool_calls": [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}
                           for name, arguments in calls]}, "tool_calls"


def _hermes_calls(text: str, names: list[str]) -> tuple[str | None, list[tuple[str, dict]]]:
    """The ``<tool_call>`` blocks of ``text`` that name a known function with object arguments, and the
    text around them; a block that does not parse stays in the text, as the model wrote it."""
    calls, kept, last = [], [], 0
    for match in HERMES_CALL.finditer(text):
        try:
            call = json.loads(match.group(1))
        except ValueError:
            continue
        if not (isinstance(call, dict) and call.get("name") in names and isinstance(call.get("arguments", {}), dict)):
            continue
        kept.append(text[last:match.start()])
        last = match.end()
        calls.append((call["name"], call.get("arguments", {})))
    kept.append(text[last:])
    rest = "".join(kept).strip()
    return (rest or None) if calls else text, calls


def refuse_forged_turns(body: ChatCompletionRequest, lm: LocalModel) -> None:
    """A BadRequest for a message or tool definition holding the text of a special token: the chat
    template's output is tokenized as a whole, so ``<|im_end|><|im_start|>system`` in a user message
    would become real control tokens and open a turn the client may not write."""
    places = []
    for i, message in enumerate(body.messages):
        places.append((f"messages.{i}.content", message.text()))
        for k, call in enumerate(message.tool_calls or []):
            places.append((f"messages.{i}.tool_calls.{k}.function", call.function.name + call.function.arguments))
    for i, tool in enumerate(body.tools or []):
        places.append((f"tools.{i}.function", json.dumps(tool.function.model_dump(), ensure_ascii=False)))
    for param, text in places:
        token = lm.special_token_in(text)
        if token is not None:
            raise BadRequest(f"{param} holds {token!r}, the text of one of the model's special tokens; it "
                             "would become that control token, so it is refused", param, "special_token_in_content")
