"""Tokenising conversations for training: input ids, and labels that are -100 outside the tokens learned.

Loss goes on assistant turns only (or, with ``assistant_only=False``, on everything), and never on an
assistant turn with ``weight: 0`` (the OpenAI fine-tuning format's per-message weight). Assistant turns
are found from the chat template's ``{% generation %}`` markers when it has them, else by rendering the
conversation up to each turn and comparing prefixes.

Message text is tokenised as it is, so text that spells a special token (``<|im_start|>``) would
become that token: ``special_token_text`` finds it, and ``oig train`` refuses such data.
"""

from __future__ import annotations

import json
import re

from oig.records import special_token_texts
from oig.train.errors import TrainError


class MaskingError(TrainError):
    """A conversation cannot be tokenised with the chat template."""


def training_template(tokenizer) -> str:
    """The chat template to tokenise with: the model's own when it marks assistant turns with
    ``{% generation %}``, TRL's training version of it when TRL has one, else the model's own (turns are
    then found by rendering growing prefixes of the conversation)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()))
    if has_generation_markers(template):
        return template
    try:
        return get_training_chat_template(tokenizer) or template
    except (ValueError, TypeError):
        return template


def special_token_text(records: list[dict], tokenizer) -> tuple[int, list[str], str] | None:
    """(messages whose content spells a special token, their slices in order, the first token found),
    or None when no message does. ``records`` are ``{"slice", "messages"}`` dicts."""
    tokens = special_token_texts(tokenizer)
    if not tokens:
        return None
    pattern = re.compile("|".join(map(re.escape, tokens)))
    count, slices, first = 0, [], None
    for record in records:
        for index, message in enumerate(record["messages"]):
            content = message.get("content")
            m = pattern.search(content) if isinstance(content, str) else None
            if m is None and message.get("tool_calls"):
                m = pattern.search(json.dumps(message["tool_calls"], ensure_ascii=False))
            if m is None and index == 0 and record.get("tools"):  # the tools count with the first message
                m = pattern.search(json.dumps(record["tools"], ensure_ascii=False))
            if m is None:
                continue
            count += 1
            first = first or m.group(0)
            name = str(record.get("slice") or "?")
            if name not in slices:
                slices.append(name)
    return (count, slices, first) if count else None


def has_markers(template: str) -> bool:
    from trl.chat_template_utils import has_generation_markers

    return has_generation_markers(template)


TOOL_KEYS = ("tool_calls", "tool_call_id", "name")


def encode(messages: list[dict], tokenizer, template: str, assistant_only: bool = True,
           marked: bool | None = None, tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation: labels are -100 outside the assistant turns that count.

    An assistant turn with ``weight: 0`` is context only; with ``assistant_only=False`` every token
    but those of weight-0 turns is learned. ``marked``: whether the template has ``{% generation %}``
    markers (found out when not given). ``tools``: the record's function definitions, rendered by the
    template (``apply_chat_template(..., tools=...)``) with the assistants' ``tool_calls``.
    """
    clean = _clean(messages)
    weights = _weights(messages)
    spans: list[tuple[int, int]] = []
    if marked or (marked is None and has_markers(template)):
        ids, spans = _assistant_spans(clean, tokenizer, template, tools)
    if len(spans) != len(weights):
        ids, spans = _prefix_spans(clean, tokenizer, template, tools)
    return ids, _labels(ids, spans, weights, assistant_only)


def encode_many(conversations: list[dict], tokenizer, template: str, assistant_only: bool = True,
                marked: bool | None = None) -> list[tuple[list[int], list[int]]]:
    """``encode`` for many records (``{"messages", "tools"?}``) at once, the same result: with a template
    that marks assistant turns, the records without tools are rendered and tokenised in one
    ``apply_chat_template`` call (one batched tokenizer call instead of one per record); the others,
    and any whose turns the marks do not find, go through ``encode`` one by one."""
    marked = has_markers(template) if marked is None else marked
    out: list[tuple[list[int], list[int]] | None] = [None] * len(conversations)
    from jinja2 import TemplateError

    batch = [i for i, r in enumerate(conversations) if marked and not r.get("tools")]
    try:
        rendered = tokenizer.apply_chat_template([_clean(conversations[i]["messages"]) for i in batch],
                                                 chat_template=template, tokenize=True, return_dict=True,
                                                 return_assistant_tokens_mask=True) if batch else None
    except TemplateError:  # one record the template refuses: each on its own below, so the error names it
        rendered = None
    if rendered is not None:
        for i, ids, mask in zip(batch, rendered["input_ids"], rendered["assistant_masks"], strict=True):
            spans, weights = _spans(list(mask)), _weights(conversations[i]["messages"])
            if len(spans) == len(weights):
                out[i] = (list(ids), _labels(list(ids), spans, weights, assistant_only))
    for i, record in enumerate(conversations):
        if out[i] is None:
            out[i] = encode(record["messages"], tokenizer, template, assistant_only, marked, record.get("tools"))
    return out  # type: ignore[return-value]


def _clean(messages: list[dict]) -> list[dict]:
    """The messages as the template sees them: weights and other record keys left out."""
    return [{"role": m["role"], "content": m["content"], **{k: m[k] for k in TOOL_KEYS if k in m}} for m in messages]


def _weights(messages: list[dict]) -> list:
    return [m.get("weight", 1) for m in messages if m["role"] == "assistant"]


def _labels(ids: list[int], spans: list[tuple[int, int]], weights: list, assistant_only: bool) -> list[int]:
    if assistant_only:
        labels = [-100] * len(ids)
        for (start, end), weight in zip(spans, weights, strict=True):
            if weight:
                labels[start:end] = ids[start:end]
    else:
        labels = list(ids)
        for (start, end), weight in zip(spans, weights, strict=True):
            if not weight:
                labels[start:end] = [-100] * (end - start)
    return labels


def _ids(out) -> list[int]:
    ids = out["input_ids"] if not isinstance(out, list) else out
    return list(ids)


def _assistant_spans(messages: list[dict], tokenizer, template: str,
                     tools: list[dict] | None = None) -> tuple[list[int], list[tuple[int, int]]]:
    """Token spans of the assistant turns from the template's ``{% generation %}`` mask."""
    out = tokenizer.apply_chat_template(messages, chat_template=template, tools=tools, tokenize=True,
                                        return_dict=True, return_assistant_tokens_mask=True)
    return _ids(out), _spans(list(out.get("assistant_masks") or []))


def _spans(mask: list[int]) -> list[tuple[int, int]]:
    """The (start, end) runs of 1 in an assistant tokens mask."""
    spans, start = [], None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            spans.append((start, i))
            start = None
    return spans


def _prefix_spans(messages: list[dict], tokenizer, template: str,
                  tools: list[dict] | None = None) -> tuple[list[int], list[tuple[int, int]]]:
    """Token spans of the assistant turns found by rendering the conversation up to each of them."""

    def render(msgs: list[dict], prompt: bool) -> list[int]:
        return _ids(tokenizer.apply_chat_template(msgs, chat_template=template, tools=tools, tokenize=True,
                                                  return_dict=True, add_generation_prompt=prompt))

    ids = render(messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, after = render(messages[:i], True), render(messages[: i + 1], False)
        if ids[: len(after)] != after or after[: len(before)] != before:
            raise MaskingError("the chat template renders a conversation differently from its beginning, so "
                             "the assistant turns cannot be found for assistant-only loss; use a model whose "
                             "template marks them with {% generation %}")
        spans.append((len(before), len(after)))
    return ids, spans


def check_renders_tools(record: dict, n: int, tokenizer, template: str) -> None:
    """Raise MaskingError unless the template shows a tool-use conversation's tools and tool calls: a
    template that ignores them would train the answers with the calls silently left out."""
    messages = [{"role": m["role"], "content": m["content"], **{k: m[k] for k in TOOL_KEYS if k in m}}
                for m in record["messages"]]
    text = tokenizer.apply_chat_template(messages, chat_template=template, tools=record.get("tools"),
                                         tokenize=False)
    names = [t["function"]["name"] for t in record.get("tools") or []]
    names += [c["function"]["name"] for m in messages for c in m.get("tool_calls") or []]
    missing = [name for name in names if name not in text]
    if missing:
        raise MaskingError(f"slice {record.get('slice', '?')!r} has tool calls (conversation {n} of the mixture), "
                           f"but the model's chat template does not render them ({missing[0]!r} is missing from "
                           "the rendered text); use a base model whose chat template supports tools, or drop "
                           "the tool-use rows from the slice")


def to_dataset(records: list[dict], tokenizer, template: str, assistant_only: bool = True):
    """A ``datasets.Dataset`` of input_ids and labels, and how many records had nothing to learn."""
    from datasets import Dataset
    from jinja2 import TemplateError

    input_ids, labels, dropped = [], [], 0
    marked = has_markers(template)
    checked_tools = False
    for n, record in enumerate(records, 1):
        tools = record.get("tools")
        try:
            if not checked_tools and (tools or any(m.get("tool_calls") for m in record["messages"])):
                check_renders_tools(record, n, tokenizer, template)
                checked_tools = True
            ids, labs = encode(record["messages"], tokenizer, template, assistant_only, marked, tools)
        except TemplateError as exc:  # e.g. a template that refuses system messages
            where = f" (slice {record['slice']!r})" if record.get("slice") else ""
            raise MaskingError(f"the chat template refused conversation {n} of the mixture: {exc}{where}") from None
        if all(t == -100 for t in labs):
            dropped += 1
            continue
        input_ids.append(ids)
        labels.append(labs)
    if not input_ids:
        return None, dropped
    return Dataset.from_dict({"input_ids": input_ids, "labels": labels}), dropped
