"""Source formats -> the one record type, a conversation. Everything here runs once, at the edge.
One cohesive module past 420 lines: every way a stranger's row is read, refused or converted sits
together, so that what oig accepts is written down in one place.

Two jobs: reading rows out of data files (JSON lines, JSON arrays, CSV, parquet), and converting one
row into ``{"messages": [...]}``. Rows are dicts from strangers: every value is checked, and a row
that does not convert raises ValueError with the reason, which callers report with the row number.

Layouts recognised (column names in brackets; ``detect_layout`` picks the first that fits):

    messages            [messages]  OpenAI chat: role/content, system messages, weight 0/1 kept, and
                        function calling: [tools] (or legacy [functions]), assistant tool_calls (or
                        function_call), tool (or function) results
    conversations       [conversations]  ShareGPT: from/value with human/gpt/system, and LLaMA-Factory's
                        function_call/observation turns with a [tools] column
    prompt_completion   [prompt, completion]  strings, or message lists (TRL's conversational form)
    alpaca              [instruction, output] and optional [input]
    question_answer     [question, answer]
    text                [text]  LAION OIG: "<human>: ...\\n<bot>: ..." turns

Any layout takes an optional [system] column. An explicit ``columns`` mapping (role -> column name)
picks the layout by the roles it names and the columns to read.

Refused, with the reason: multimodal rows (an images/audio/video column, ``<image>`` placeholders, image
or audio content parts), since oig trains text-only models, and text that spells a control token
(``<|endoftext|>``, ``</s>``, ``<|im_start|>``...), which would end the answer or forge a turn.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

from oig.records import CONTROL_TOKEN, Record, check_messages, check_tools

# Bump when conversion output changes: materialized slices are cached under this version.
CONVERTER_VERSION = 2  # 2: tool calls, multimodal and control-token rows refused

MAX_LINE_BYTES = 64 * 1024 * 1024  # one JSON line or CSV record; longer is refused, not buffered
MAX_JSON_ARRAY_BYTES = 512 * 1024 * 1024  # a .json array is parsed whole; larger must be JSON lines
PARQUET_BATCH_ROWS = 1024

# layout -> (required roles, optional roles); the order is the detection order.
LAYOUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "messages": (("messages",), ()),
    "conversations": (("conversations",), ()),
    "prompt_completion": (("prompt", "completion"), ()),
    "alpaca": (("instruction", "output"), ("input",)),
    "question_answer": (("question", "answer"), ()),
    "text": (("text",), ()),
}
LAYOUT_HELP = ("messages, conversations, prompt/completion, instruction/output, question/answer or text "
               "(<human>:/<bot>: turns)")

# Speaker names seen in the wild -> our roles. "developer" is OpenAI's newer name for system.
SPEAKERS = {
    "system": "system", "developer": "system",
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
    "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
}  # fmt: skip
TOOL_SPEAKERS = {"tool", "function", "ipython", "observation"}
# Columns and placeholders of multimodal datasets (LLaVA, TRL's vision format, audio sets): refused.
MEDIA_COLUMNS = ("images", "image", "audio", "audios", "video", "videos")
# Only LLaVA's <image>: <audio> and <video> are also HTML elements, common in web-development answers.
MEDIA_PLACEHOLDER = re.compile(r"<image>")
OIG_TURN = re.compile(r"^[ \t]*<(human|bot)>:[ \t]?", re.MULTILINE)


class BadRow(ValueError):
    """A row that could not be read (invalid JSON, not UTF-8). Readers yield it in the row's place so
    that every bad line of a file is reported at once, then reading goes on."""


# --- detecting and converting layouts ------------------------------------------------------------


def detect_layout(column_names) -> str | None:
    """The layout a set of column names has, or None when none fits."""
    names = set(column_names)
    for layout, (required, _) in LAYOUTS.items():
        if names.issuperset(required):
            return layout
    return None


def layout_of_columns(columns: dict[str, str]) -> str | None:
    """The layout an explicit mapping names (None: only `system`). Raises ValueError if it mixes two."""
    named = {role for role in columns if role != "system"}
    found = [layout for layout, (req, opt) in LAYOUTS.items() if named & set(req + opt)]
    unknown = named - {r for req, opt in LAYOUTS.values() for r in req + opt}
    if unknown:
        raise ValueError(f"unknown column role {sorted(unknown)[0]!r}")
    if len(found) > 1:
        raise ValueError(f"`columns` mixes the roles of two layouts ({found[0]} and {found[1]}); "
                         "name the columns of one layout")
    return found[0] if found else None


def convert_row(row: dict, columns: dict | None) -> Record:
    """One row as a conversation. Raises ValueError saying why the row does not convert."""
    if not isinstance(row, dict):
        raise ValueError(f"a row must be an object with named fields, not {_kind(row)}")
    media = next((c for c in MEDIA_COLUMNS if row.get(c) not in (None, [], "")), None)
    if media is not None:
        raise ValueError(f"the row has an `{media}` column: a multimodal row, and oig trains text-only models; "
                         "drop such rows (or the column, if the text stands without it)")
    columns = dict(columns or {})
    layout = layout_of_columns(columns) if columns else None
    if layout is None:
        layout = detect_layout(row.keys())
        if layout is None:
            have = ", ".join(map(str, list(row)[:12])) or "none"
            raise ValueError(f"no known layout in columns ({have}); expected {LAYOUT_HELP}, "
                             "or name the columns with `columns`")
    required, _ = LAYOUTS[layout]
    col = {role: columns.get(role, role) for role in (*required, *LAYOUTS[layout][1], "system")}
    for role in required:
        if col[role] not in row:
            have = ", ".join(map(str, list(row)[:12]))
            raise ValueError(f"no column {col[role]!r} for {role} (the row has: {have})")

    if layout == "messages":
        messages = _message_list(row[col["messages"]], col["messages"])
    elif layout == "conversations":
        messages = _message_list(row[col["conversations"]], col["conversations"])
    elif layout == "prompt_completion":
        prompt, completion = row[col["prompt"]], row[col["completion"]]
        if isinstance(prompt, list) and isinstance(completion, list):
            messages = _message_list(prompt, col["prompt"]) + _message_list(completion, col["completion"])
        else:
            messages = [{"role": "user", "content": _text(prompt, col["prompt"])},
                        {"role": "assistant", "content": _text(completion, col["completion"])}]
    elif layout == "alpaca":
        instruction = _text(row[col["instruction"]], col["instruction"])
        extra = row.get(col["input"])
        if extra is not None and not isinstance(extra, str):
            raise ValueError(f"column {col['input']!r} is {_kind(extra)}, not text")
        user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        messages = [{"role": "user", "content": user},
                    {"role": "assistant", "content": _text(row[col["output"]], col["output"])}]
    elif layout == "question_answer":
        messages = [{"role": "user", "content": _text(row[col["question"]], col["question"])},
                    {"role": "assistant", "content": _text(row[col["answer"]], col["answer"])}]
    else:
        messages = _oig_turns(_text(row[col["text"]], col["text"]))

    system = row.get(col["system"])
    if system is not None and "system" not in (m["role"] for m in messages[:1]):
        if not isinstance(system, str):
            raise ValueError(f"column {col['system']!r} is {_kind(system)}, not text")
        if system.strip():
            messages.insert(0, {"role": "system", "content": system})
    why = check_messages(messages)
    if why:
        raise ValueError(why)
    for i, m in enumerate(messages):
        _refuse_text(m["content"], i)
        if m.get("tool_calls"):
            _refuse_text(json.dumps(m["tool_calls"], ensure_ascii=False), i)
    if not messages[-1]["content"].strip() and not messages[-1].get("tool_calls"):
        raise ValueError("the last assistant message is empty")
    tools = _tools(row) if layout in ("messages", "conversations") else None
    m = CONTROL_TOKEN.search(json.dumps(tools, ensure_ascii=False)) if tools else None
    if m:
        raise ValueError(f"`tools` contains {m.group(0)!r}, which chat templates read as a control token; "
                         "remove it from the data")
    return {"messages": messages, "tools": tools} if tools else {"messages": messages}


def convert_openai_line(row: object) -> Record:
    """One line of an OpenAI fine-tuning file: chat ``{"messages": [...]}`` or legacy prompt/completion."""
    if isinstance(row, dict) and detect_layout(row.keys()) not in ("messages", "prompt_completion"):
        raise ValueError('expected an OpenAI fine-tuning line: {"messages": [...]} or {"prompt": ..., '
                         '"completion": ...}')
    return convert_row(row, None)  # type: ignore[arg-type]


def _text(value: object, column: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        raise ValueError(f"column {column!r} is empty")
    raise ValueError(f"column {column!r} is {_kind(value)}, not text")


def _message_list(value: object, column: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"column {column!r} must be a non-empty list of messages, not {_kind(value)}")
    return [_message(m, i) for i, m in enumerate(value)]


def _message(m: object, i: int) -> dict:
    if not isinstance(m, dict):
        raise ValueError(f"message {i} is {_kind(m)}, not an object with role and content")
    # Parquet gives every struct field to every message: a ShareGPT row may carry role=None beside from.
    speaker = m.get("role") if m.get("role") is not None else m.get("from")
    if not isinstance(speaker, str):
        raise ValueError(f"message {i} has no role (expected `role` or ShareGPT `from`)")
    if speaker.lower() == "function_call":  # LLaMA-Factory's ShareGPT: the call as JSON in `value`
        return _sharegpt_call(m.get("value") if m.get("value") is not None else m.get("content"), i)
    role = "tool" if speaker.lower() in TOOL_SPEAKERS else SPEAKERS.get(speaker.lower())
    if role is None:
        raise ValueError(f"message {i} has role {speaker!r}; expected system, user, assistant or tool "
                         "(ShareGPT: system, human, gpt)")
    content = m.get("content") if m.get("content") is not None else m.get("value")
    calls = _tool_calls(m, i) if role == "assistant" else None
    if content is None and calls:
        content = ""  # OpenAI: an assistant turn that only calls tools has null content
    if isinstance(content, list):
        content = _text_parts(content, i)
    if not isinstance(content, str):
        raise ValueError(f"message {i} has no text content ({_kind(content)})")
    out: dict = {"role": role, "content": content}
    if calls:
        out["tool_calls"] = calls
    if role == "tool":
        for key in ("tool_call_id", "name"):
            if isinstance(m.get(key), str) and m[key]:
                out[key] = m[key]
    weight = m.get("weight")
    if weight is not None:
        if role != "assistant":
            raise ValueError(f"message {i} is a {role} message with a weight; only assistant messages "
                             "take weight")
        if weight not in (0, 1):
            raise ValueError(f"message {i} has weight {weight!r}; expected 0 or 1")
        out["weight"] = int(weight)
    return out


def _arguments(value: object, i: int, name: str) -> dict:
    """Tool call arguments as an object: OpenAI writes them as a JSON string, chat templates take a dict."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            raise ValueError(f"message {i}: the arguments of tool call {name!r} are not valid JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"message {i}: the arguments of tool call {name!r} are {_kind(value)}, not a JSON object")
    return value


def _tool_calls(m: dict, i: int) -> list[dict] | None:
    """An assistant message's ``tool_calls``, or its legacy ``function_call``, in the chat-template shape."""
    raw = m.get("tool_calls")
    if raw is None and m.get("function_call") is not None:
        raw = [{"type": "function", "function": m["function_call"]}]
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"message {i}: `tool_calls` must be a non-empty list")
    calls = []
    for call in raw:
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise ValueError(f"message {i} has a tool call without a function name "
                             '(expected {"type": "function", "function": {"name": ..., "arguments": ...}})')
        out = {"type": "function", "function": {"name": name, "arguments": _arguments(function.get("arguments"), i, name)}}
        if isinstance(call.get("id"), str) and call["id"]:
            out["id"] = call["id"]
        calls.append(out)
    return calls


def _sharegpt_call(value: object, i: int) -> dict:
    """A ShareGPT ``function_call`` turn: ``{"name", "arguments"}`` (or a list of them) as JSON text."""
    try:
        calls = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        calls = None
    calls = [calls] if isinstance(calls, dict) else calls
    if not isinstance(calls, list) or not calls:
        raise ValueError(f"message {i} is a function_call turn whose value is not a JSON call "
                         '({"name": ..., "arguments": ...})')
    message = {"role": "assistant", "content": "",
               "tool_calls": [{"type": "function", "function": c} if isinstance(c, dict) else c for c in calls]}
    return {"role": "assistant", "content": "", "tool_calls": _tool_calls(message, i)}


def _tools(row: dict) -> list[dict] | None:
    """A row's ``tools`` (OpenAI function calling), or its legacy ``functions``, checked."""
    tools = row.get("tools")
    if isinstance(tools, str):  # many Hub datasets keep the definitions as one JSON string
        try:
            tools = json.loads(tools) if tools.strip() else None
        except ValueError:
            raise ValueError("`tools` is text that is not valid JSON") from None
    if tools is None and row.get("functions") is not None:
        functions = row["functions"]
        if not isinstance(functions, list):
            raise ValueError(f"`functions` is {_kind(functions)}, not a list of function definitions")
        tools = [{"type": "function", "function": f} for f in functions]
    if tools is None or tools == []:
        return None
    if isinstance(tools, list):  # bare function definitions, as LLaMA-Factory's `tools` column has them
        tools = [{"type": "function", "function": t} if isinstance(t, dict) and "type" not in t and "name" in t
                 else t for t in tools]
    why = check_tools(tools)
    if why:
        raise ValueError(why)
    return tools


def _text_parts(parts: list, i: int) -> str:
    """OpenAI content parts: text parts are joined; images or audio cannot be trained on here."""
    texts = []
    for part in parts:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else _kind(part)
            raise ValueError(f"message {i} has a {kind} content part; oig trains text-only models, so images "
                             "and audio cannot be trained: drop such rows, or keep only the text parts")
        texts.append(part["text"])
    return "".join(texts)


def _refuse_text(content: str, i: int) -> None:
    """Refuse multimodal placeholders and control-token text: trained as text they would teach garbage."""
    m = MEDIA_PLACEHOLDER.search(content)
    if m:
        raise ValueError(f"message {i} has a {m.group(0)} placeholder: this is a multimodal row (the media "
                         "lives in another column), and oig trains text-only models; drop such rows")
    m = CONTROL_TOKEN.search(content)
    if m:
        raise ValueError(f"message {i} contains {m.group(0)!r}, which chat templates read as a control token "
                         "(it would end the answer or forge a turn); remove it from the data")


def _oig_turns(text: str) -> list[dict]:
    """LAION OIG's "<human>: q\\n<bot>: a" turns. Text before the first turn is context: a system message."""
    pieces = OIG_TURN.split(text)
    if len(pieces) == 1:
        raise ValueError("text has no <human>:/<bot>: turns; name the columns with `columns` "
                         "if this dataset has another layout")
    messages = [{"role": "system", "content": pieces[0].strip()}] if pieces[0].strip() else []
    for speaker, content in zip(pieces[1::2], pieces[2::2], strict=True):
        messages.append({"role": "user" if speaker == "human" else "assistant", "content": content.strip()})
    return messages


def _kind(value: object) -> str:
    if value is None:
        return "empty"
    return {str: "text", bool: "a boolean", int: "a number", float: "a number", list: "a list",
            dict: "an object", bytes: "binary data"}.get(type(value), type(value).__name__)


# --- reading data files --------------------------------------------------------------------------

FILE_FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}


def file_format(name: str) -> str | None:
    """parquet, jsonl, json or csv by the file name, or None for anything else."""
    lower = name.lower()
    return next((fmt for ext, fmt in FILE_FORMATS.items() if lower.endswith(ext)), None)


def iter_rows(path: Path, fmt: str) -> Iterator[tuple[str, object]]:
    """(where, row) for each row of a data file: where is "line N" or "row N", counted from 1.

    A line that is not JSON comes as a BadRow in its place; a file that cannot be read on raises
    ValueError naming the line or row. Memory stays bounded (one line, one CSV record, one parquet
    batch), except for a .json array, parsed whole up to a limit.
    """
    if fmt == "jsonl":
        return iter_jsonl(path)
    if fmt == "json":
        return _iter_json(path)
    if fmt == "csv":
        return _iter_csv(path)
    if fmt == "parquet":
        return _iter_parquet(path)
    raise ValueError(f"unsupported data file format {fmt!r}")


def iter_jsonl(path: Path, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[str, object]]:
    """JSON lines: UTF-8, one value a line; blank lines are skipped; bad lines come as BadRow."""
    with open(path, "rb") as f:
        number = 0
        while True:
            raw = f.readline(max_line_bytes + 1)
            if not raw:
                return
            number += 1
            if len(raw) > max_line_bytes:
                raise ValueError(f"line {number} is longer than {max_line_bytes:,} bytes")
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield f"line {number}", BadRow(f"not UTF-8 (byte {exc.start + 1}); save the file as UTF-8")
                continue
            if not text.strip():
                continue
            try:
                yield f"line {number}", _parse_json(text)
            except ValueError as exc:
                yield f"line {number}", BadRow(str(exc))


def _parse_json(text: str) -> object:
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    except ValueError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None


def _iter_json(path: Path) -> Iterator[tuple[str, object]]:
    """A .json data file is either JSON lines or one array of objects (Hugging Face reads both)."""
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head.startswith(b"["):
        yield from iter_jsonl(path)
        return
    size = path.stat().st_size
    if size > MAX_JSON_ARRAY_BYTES:
        raise ValueError(f"a JSON array file of {size:,} bytes is too large to read whole "
                         f"(limit {MAX_JSON_ARRAY_BYTES:,}); use JSON lines")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"the file is not UTF-8 (byte {exc.start + 1})") from None
    try:
        rows = _parse_json(text)
    except ValueError as exc:
        raise ValueError(f"the file is {exc}") from None
    for i, row in enumerate(rows if isinstance(rows, list) else [rows], 1):
        yield f"row {i}", row


def _iter_csv(path: Path) -> Iterator[tuple[str, object]]:
    csv.field_size_limit(MAX_LINE_BYTES)
    number = 0
    try:
        with open(path, encoding="utf-8-sig", errors="strict", newline="") as f:
            for number, row in enumerate(csv.DictReader(f), 1):
                if None in row:
                    raise ValueError(f"row {number} has more fields than the header")
                yield f"row {number}", row
    except UnicodeDecodeError:
        raise ValueError(f"row {number + 1} is not UTF-8; save the file as UTF-8") from None
    except csv.Error as exc:
        raise ValueError(f"row {number + 1} is not valid CSV: {exc}") from None


def _iter_parquet(path: Path) -> Iterator[tuple[str, object]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    number = 0
    try:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                number += 1
                yield f"row {number}", row
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"not a readable parquet file (after row {number}): {exc}") from None


def convert_preference(row: object) -> dict:
    """One preference pair for DPO, in TRL's conversational form.

    Accepts ``{prompt, chosen, rejected}`` where each is text or a list of chat messages. The result is
    ``{"prompt": [... ending with a user turn], "chosen": [assistant], "rejected": [assistant]}``.
    """
    if not isinstance(row, dict) or not all(k in row for k in ("prompt", "chosen", "rejected")):
        raise ValueError('expected a preference pair: {"prompt": ..., "chosen": ..., "rejected": ...}')
    prompt = row["prompt"]
    if isinstance(prompt, str):
        prompt_messages = [{"role": "user", "content": prompt}]
    else:
        prompt_messages = _message_list(prompt, "prompt")
    if prompt_messages[-1]["role"] != "user":
        raise ValueError("the prompt must end with a user message")
    out: dict = {"prompt": prompt_messages}
    for key in ("chosen", "rejected"):
        value = row[key]
        messages = [{"role": "assistant", "content": value}] if isinstance(value, str) else _message_list(value, key)
        if len(messages) != 1 or messages[0]["role"] != "assistant" or not messages[0]["content"].strip():
            raise ValueError(f"{key} must be one non-empty assistant answer")
        messages[0].pop("weight", None)
        out[key] = messages
    for i, m in enumerate(prompt_messages + out["chosen"] + out["rejected"]):
        _refuse_text(m["content"], i)
    if out["chosen"][0]["content"] == out["rejected"][0]["content"]:
        raise ValueError("chosen and rejected are the same answer")
    return out
