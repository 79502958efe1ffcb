"""A safe subset of YAML for files from strangers' pull requests.

Data only: a single document, no anchors, aliases, tags or merge keys, no duplicate keys, no complex
keys; UTF-8 text (a BOM is fine) without NUL; bounded file size, string length and nesting depth.
Scalars resolve by the YAML 1.2 core schema (``yes``/``no``/``on``/``off`` stay strings, ``1e-4`` is a
float), so a contributor's ``output: no`` is the text "no", not a boolean.

libyaml (C) does the parsing; this module builds plain dicts and lists from its event stream in one
pass, which is cheaper than PyYAML's own constructor. Positions are not kept for every node: a
problem found later is located after the fact by :func:`locate`, only for files that have one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import yaml
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

try:
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

MAX_BYTES = 64 * 1024 * 1024  # 64 MiB per file; GitHub itself warns above 50 MB
MAX_DEPTH = 32  # slice files need 4 levels; deep nesting is only ever an attack
MAX_STRING = 1_000_000  # characters in one scalar
MAX_NODES = 4_000_000  # values in one file (~1.3M input/output pairs); bounds memory for tiny-node floods


@dataclass
class YamlError(Exception):
    """The text is not acceptable YAML. line and col count from 1."""

    message: str
    line: int = 0
    col: int = 0
    more: list[YamlError] = field(default_factory=list)  # further problems of the same file (duplicate keys)

    def __str__(self) -> str:
        return self.message


# YAML 1.2 core schema, plain (unquoted) scalars only.
_INT = re.compile(r"[-+]?(?:[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_SPECIAL = {
    "null": None, "Null": None, "NULL": None, "~": None, "": None,
    "true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False,
    ".inf": math.inf, ".Inf": math.inf, ".INF": math.inf, "+.inf": math.inf, "+.Inf": math.inf,
    "+.INF": math.inf, "-.inf": -math.inf, "-.Inf": -math.inf, "-.INF": -math.inf,
    ".nan": math.nan, ".NaN": math.nan, ".NAN": math.nan,
}  # fmt: skip
# A plain scalar can only be non-text if it starts with one of these characters.
_MAYBE_TYPED = frozenset("0123456789+-.~nNtTfF")


def _resolve_plain(value: str) -> object:
    if value in _SPECIAL:
        return _SPECIAL[value]
    if _INT.fullmatch(value):
        if value.lstrip("+-").startswith(("0o", "0x")):
            sign = -1 if value.startswith("-") else 1
            digits = value.lstrip("+-")
            return sign * int(digits[2:], 8 if digits[1] == "o" else 16)
        return int(value)
    if _FLOAT.fullmatch(value):
        return float(value)
    return value


def decode(data: bytes) -> str:
    """Bytes to text: UTF-8 with an optional BOM, no NUL. Raises YamlError with the position."""
    if len(data) > MAX_BYTES:
        raise YamlError(f"file is {len(data):,} bytes; the limit is {MAX_BYTES:,}: split it into several slices")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise YamlError("file is UTF-16 encoded; save it as UTF-8", 1, 1)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise YamlError(f"invalid UTF-8 byte 0x{data[exc.start]:02x}; save the file as UTF-8", line, col) from None
    nul = text.find("\x00")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        raise YamlError("NUL character in file; remove it", line, nul - (text.rfind("\n", 0, nul) + 1) + 1)
    return text


def _refuse(event: object, what: str) -> YamlError:
    mark = event.start_mark  # type: ignore[attr-defined]
    return YamlError(what, mark.line + 1, mark.column + 1)


def load(data: bytes | str) -> object:
    """Parse one YAML document of plain data. Raises YamlError (with line and column) on anything else."""
    text = decode(data) if isinstance(data, bytes) else data
    loader = _Loader(text)
    try:
        return _build(loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        msg = f"{exc.problem or exc.context or 'invalid YAML'}"
        if exc.context and exc.problem:
            msg = f"{exc.context}: {exc.problem}"
        line, col = ((mark.line + 1), (mark.column + 1)) if mark else (0, 0)
        if "nesting depth" in msg:  # PyYAML >= 6.0.4 stops deep flow nesting itself, before our own check
            raise YamlError(f"nesting deeper than {MAX_DEPTH} levels", line, col) from None
        raise _syntax_error(text, msg, line, col) from None
    except yaml.YAMLError as exc:
        raise YamlError(f"YAML error: {exc}") from None
    finally:
        loader.dispose()


def _syntax_error(text: str, msg: str, line: int, col: int) -> YamlError:
    """The parser's message as a sentence with the fix, for the mistakes people make by hand."""
    lines = text.split("\n")
    here = lines[line - 1] if 0 < line <= len(lines) else ""
    if "tab" in msg or ("cannot start any token" in msg and "\t" in here):
        tab = here.find("\t") + 1 or col
        return YamlError(f"YAML indents with spaces, not tabs: replace the tab at line {line} col {tab} with spaces",
                         line, tab)
    indent = len(here) - len(here.lstrip(" "))
    above = next((p for p in reversed(lines[:max(line - 1, 0)]) if p.strip() and not p.lstrip().startswith("#")), "")
    misaligned = indent != len(above) - len(above.lstrip(" ")) or above.lstrip().startswith("- ")
    if "expected key" in msg or "expected '-' indicator" in msg or ("mapping values are not allowed" in msg and misaligned):
        return YamlError(f"the indentation of line {line} does not fit the lines above it: indent it with the same "
                         "number of spaces as the other keys of its entry (or its list's other '- ' items)",
                         line, indent + 1)
    if "mapping values are not allowed" in msg:
        return YamlError(f"line {line} holds ': ' inside a value: put the text in quotes (\"...\") or write it "
                         "as a block (|)", line, col)
    return YamlError(f"YAML syntax error: {msg}", line, col)


def _build(loader: _Loader) -> object:
    get = loader.get_event
    get()  # StreamStart
    event = get()
    if event.__class__ is StreamEndEvent:
        return None  # an empty file
    if event.__class__ is DocumentStartEvent and (event.tags or event.version):
        raise _refuse(event, "YAML directives (%YAML, %TAG) are not allowed; remove them")
    root: object = None
    cur: dict | list | None = None
    key: object = None  # pending key while cur is a dict; _NO_KEY when a key is expected
    stack: list[tuple[dict | list | None, object]] = []
    no_key = _NO_KEY
    key = no_key
    budget = MAX_NODES
    duplicates: list[YamlError] = []
    while True:
        event = get()
        cls = event.__class__
        budget -= 1
        if budget < 0:
            raise _refuse(event, f"more than {MAX_NODES:,} values in one file; split it into several slices")
        if cls is ScalarEvent:
            if event.anchor is not None:
                raise _refuse(event, "YAML anchors (&name) are not allowed; write the value out")
            if event.tag is not None:
                raise _refuse(event, f"YAML tags ({event.tag}) are not allowed; remove the tag")
            value: object = event.value
            if len(value) > MAX_STRING:  # type: ignore[arg-type]
                raise _refuse(event, f"text of {len(value):,} characters; the limit is {MAX_STRING:,}")  # type: ignore[arg-type]
            if cur.__class__ is dict and key is no_key:
                if value in cur:  # type: ignore[operator]
                    # Every duplicate is reported (at the end); the parse goes on with a throwaway key.
                    duplicates.append(_refuse(event, f"duplicate key {value!r}; each key may appear once"))
                    value = _NoKey()
                if value == "<<" and event.implicit[0]:
                    raise _refuse(event, "YAML merge keys (<<) are not allowed; write the keys out")
                key = value
                continue
            if event.implicit[0] and value and value[0] in _MAYBE_TYPED:  # type: ignore[index]
                value = _resolve_plain(value)  # type: ignore[arg-type]
            elif event.implicit[0] and not value:
                value = None
            if cur is None:
                root = value
            elif cur.__class__ is dict:
                cur[key] = value  # type: ignore[index]
                key = no_key
            else:
                cur.append(value)  # type: ignore[union-attr]
        elif cls is MappingStartEvent or cls is SequenceStartEvent:
            if event.anchor is not None:
                raise _refuse(event, "YAML anchors (&name) are not allowed; write the value out")
            if event.tag is not None:
                raise _refuse(event, f"YAML tags ({event.tag}) are not allowed; remove the tag")
            if len(stack) >= MAX_DEPTH:
                raise _refuse(event, f"nesting deeper than {MAX_DEPTH} levels")
            new: dict | list = {} if cls is MappingStartEvent else []
            if cur is None:
                root = new
            elif cur.__class__ is dict:
                if key is no_key:
                    raise _refuse(event, "a mapping key must be plain text, not a list or mapping")
                cur[key] = new  # type: ignore[index]
            else:
                cur.append(new)  # type: ignore[union-attr]
            stack.append((cur, no_key))
            cur, key = new, no_key
        elif cls is MappingEndEvent or cls is SequenceEndEvent:
            cur, key = stack.pop()
        elif cls is AliasEvent:
            raise _refuse(event, "YAML aliases (*name) are not allowed; write the value out")
        elif cls is DocumentEndEvent:
            break
    event = get()
    if event.__class__ is not StreamEndEvent:
        raise _refuse(event, "more than one YAML document (---) in the file; keep one")
    if duplicates:
        first, *rest = duplicates
        first.more = rest
        raise first
    return root


class _NoKey:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<no key>"


_NO_KEY = _NoKey()


def locate(text: str, path: tuple | list, *, key: bool = False) -> tuple[int, int]:
    """(line, col), from 1, of the value at ``path`` (keys and list indexes), or of its key with key=True.

    Falls back to the nearest enclosing node that exists. Used only for files that have problems.
    """
    loader = _Loader(text)
    target = tuple(path)
    best = (1, 1)
    try:
        stack: list[list] = []  # per open container: [is_mapping, current key or index, expecting_key]
        loader.get_event()
        while True:
            event = loader.get_event()
            cls = event.__class__
            if cls in (StreamEndEvent, DocumentEndEvent):
                return best
            if cls is DocumentStartEvent:
                continue
            if cls in (MappingEndEvent, SequenceEndEvent):
                stack.pop()
                if stack and stack[-1][0]:
                    stack[-1][2] = True
                continue
            mark = (event.start_mark.line + 1, event.start_mark.column + 1)
            if stack and stack[-1][0] and stack[-1][2]:  # this scalar is a key
                stack[-1][1] = event.value if cls is ScalarEvent else None
                stack[-1][2] = False
                here = tuple(s[1] for s in stack)
                if here == target[: len(here)]:
                    best = mark
                    if key and here == target:
                        return mark
                continue
            if stack and not stack[-1][0]:
                stack[-1][1] += 1
            here = tuple(s[1] for s in stack)
            if here == target[: len(here)]:
                best = mark
                if here == target:
                    return mark
            if cls in (MappingStartEvent, SequenceStartEvent):
                stack.append([cls is MappingStartEvent, -1, True])
            elif stack and stack[-1][0]:
                stack[-1][2] = True
    except yaml.YAMLError:
        return best
    finally:
        loader.dispose()
