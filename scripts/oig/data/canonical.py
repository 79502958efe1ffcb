"""Lines already in canonical record form, recognised without parsing and copied through as bytes.

A materialized slice holds one record a line, exactly ``sources.dumps`` of it: compact JSON with
``ensure_ascii=False``. A source line is *canonical* when it is byte for byte what the full path
(decode, ``json.loads``, ``formats.convert_openai_line``, ``dumps``) would write for it, and that path
would accept it. The patterns below recognise a subset of such lines with no JSON parse:

- ``{"messages":[...]}`` and nothing else, compact, keys in this order: ``role``, ``content``, then
  ``weight`` (0 or 1, assistant messages only); roles system, user and assistant only (no tools);
- system messages only first, a user message first when there is none, an assistant message last
  (``records.check_messages``); the last message's content is not empty or whitespace;
- strings escaped exactly as ``json.dumps`` escapes them: ``\\"``, ``\\\\``, ``\\b \\f \\n \\r \\t``,
  other control characters as lowercase ``\\u00XX``, everything else (non-ASCII too) as itself;
- valid UTF-8, and no control-token or ``<image>`` text anywhere in the line (on the escaped text:
  those patterns hold no character that JSON escapes, so they match there exactly when they match
  the decoded content).

Anything else (a BOM, ``\\u00e9``, spaces, another key order, tool calls, a control token...) is not
canonical and takes the full path, which converts it or reports it. Runs of canonical lines are
matched with one regular-expression call over a whole buffer, so a canonical file is copied at
close to the speed of reading it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from oig.data import formats
from oig.records import CONTROL_TOKEN

READ_BYTES = 1 << 18  # 256 KiB read at a time: a few of them are the memory this takes

# A JSON string body as json.dumps(ensure_ascii=False) writes it (unrolled: runs of plain characters).
_ESC = rb'\\(?:["\\bfnrt]|u00(?:0[0-7bef]|1[0-9a-f]))'
_STR = rb'[^"\\\x00-\x1f]*(?:' + _ESC + rb'[^"\\\x00-\x1f]*)*'
# What str.strip() removes (every c with c.isspace(); tests/test_mix_canonical.py checks the list).
SPACES = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200b))) + \
    "\u2028\u2029\u202f\u205f\u3000"
# Where a last answer ends, for whole runs: on a character that surely survives str.strip(), a
# printable ASCII one or a non-ASCII one that is not a space, and not the end of an escape (an answer
# ending otherwise, or an empty one, is checked line by line instead, exactly).
_VISIBLE_END = rb'(?<=[!#-\[\]-~\x80-\xff])(?<!\\.)(?<!\\u00..)' + b"".join(
    rb"(?<!" + re.escape(c.encode()) + rb")" for c in SPACES if ord(c) > 127)


def _message(role: bytes, body: bytes) -> bytes:
    weight = rb'(?:,"weight":[01])?' if role == b"assistant" else b""
    return rb'\{"role":"' + role + rb'","content":"' + body + rb'"' + weight + rb'\}'


_SYSTEM, _USER, _ASSISTANT = (_message(r, _STR) for r in (b"system", b"user", b"assistant"))
_HEAD, _TAIL = rb'\{"messages":\[', rb'\]\}'
_TURN = rb'(?:' + _USER + b"|" + _ASSISTANT + rb'),'


def _conversation(last: bytes) -> bytes:
    """Any conversation the rules above allow, with ``last`` as its last answer's text."""
    return (_HEAD + rb'(?:' + _SYSTEM + rb'(?:,' + _SYSTEM + rb')*,(?:' + _TURN + rb')*|' + _USER + rb',(?:' + _TURN
            + rb')*)' + _message(b"assistant", last) + _TAIL)


# Runs of lines, each with its "\n": one question and its answer (most lines, and 4x faster to match),
# or any conversation the rules allow.
_PAIRS = re.compile(rb'(?:' + _HEAD + _USER + b"," + _message(b"assistant", _STR + _VISIBLE_END) + _TAIL + rb'\n)*')
_CONVERSATIONS = re.compile(rb'(?:' + _conversation(_STR + _VISIBLE_END) + rb'\n)*')
_ONE = re.compile(_conversation(rb'(?P<last>' + _STR + rb')'))  # one line, without its "\n"
_REFUSED = re.compile(CONTROL_TOKEN.pattern.encode() + rb'|' + formats.MEDIA_PLACEHOLDER.pattern.encode())


@dataclass(frozen=True)
class Lines:
    """Canonical lines, each ending in ``"\\n"``, written to the output as they are."""

    data: bytes
    count: int

    def head(self, n: int) -> Lines:
        """The first n lines."""
        end = 0
        for _ in range(n):
            end = self.data.index(b"\n", end) + 1
        return Lines(self.data[:end], n)


def _clean(data: bytes) -> bool:
    """Valid UTF-8 with no refused text: what the patterns above cannot see."""
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return False
    # Every refused pattern has a "<" or "INST]": two quick scans spare the regex most text.
    return (b"<" not in data and b"INST]" not in data) or _REFUSED.search(data) is None


def canonical(body: bytes) -> bool:
    """Whether one line (without its newline) is canonical: the full path would write it unchanged."""
    m = _ONE.fullmatch(body)
    if m is None or not _clean(body):
        return False
    return bool(json.loads(b'"' + m.group("last") + b'"').strip())


def parse_line(number: int, raw: bytes) -> tuple[str, object] | None:
    """A JSON line as ``formats.iter_jsonl`` reads it: (where, row or BadRow), None for a blank line."""
    if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"line {number}", formats.BadRow(f"not UTF-8 (byte {exc.start + 1}); save the file as UTF-8")
    if not text.strip():
        return None
    try:
        return f"line {number}", json.loads(text)
    except RecursionError:
        return f"line {number}", formats.BadRow("nested too deeply")
    except json.JSONDecodeError as exc:
        return f"line {number}", formats.BadRow(f"not valid JSON: {exc.msg} at column {exc.colno}")
    except ValueError as exc:
        return f"line {number}", formats.BadRow(f"not valid JSON: {exc}")


def iter_jsonl(path: Path, max_line_bytes: int = formats.MAX_LINE_BYTES) -> Iterator[tuple[str, object]]:
    """``formats.iter_jsonl``'s rows, with runs of canonical lines given as ``Lines`` in their place.

    Every other line comes as iter_jsonl gives it (a row, or a BadRow), with the same line numbers
    and the same error for a line longer than ``max_line_bytes``."""
    number = 0  # lines before the buffer
    parts: list[bytes] = []  # the start of a line not ended yet
    pending = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(READ_BYTES)
            if chunk and b"\n" not in chunk:  # a long line: gathered, then joined once
                parts.append(chunk)
                pending += len(chunk)
                if pending > max_line_bytes:
                    raise ValueError(f"line {number + 1} is longer than {max_line_bytes:,} bytes")
                continue
            buffer = b"".join([*parts, chunk]) if parts else chunk
            if not buffer:
                return
            cut = buffer.rfind(b"\n") + 1 if chunk else len(buffer)
            yield from _split(buffer, cut, number, max_line_bytes)
            if not chunk:
                return
            number += buffer.count(b"\n", 0, cut)
            parts, pending = ([buffer[cut:]], len(buffer) - cut) if cut < len(buffer) else ([], 0)


def _split(buffer: bytes, size: int, number: int, max_line_bytes: int) -> Iterator[tuple[str, object]]:
    """The items of the whole lines in buffer[:size] (the last may lack its newline at the end of the
    file); ``number``: the lines before them."""
    pos = 0
    while pos < size:
        end = _PAIRS.match(buffer, pos, size).end()
        if end == pos:
            end = _CONVERSATIONS.match(buffer, pos, size).end()
        if end > pos:
            run = buffer[pos:end]
            if len(run) <= max_line_bytes and _clean(run):
                count = run.count(b"\n")
                yield f"line {number + 1}", Lines(run, count)
                number, pos = number + count, end
                continue
            del run  # a line of it is not UTF-8, spells refused text or is too long: line by line
        else:
            end = buffer.find(b"\n", pos, size) + 1 or size  # one line that is not canonical
        while pos < end:
            stop = buffer.find(b"\n", pos, end) + 1 or end
            number += 1
            item = _one(buffer[pos:stop], number, max_line_bytes)
            if item is not None:
                yield item
            pos = stop


def _one(raw: bytes, number: int, max_line_bytes: int) -> tuple[str, object] | None:
    if len(raw) > max_line_bytes:
        raise ValueError(f"line {number} is longer than {max_line_bytes:,} bytes")
    body = raw[:-1] if raw.endswith(b"\n") else raw
    if canonical(body):
        return f"line {number}", Lines(body + b"\n", 1)
    return parse_line(number, raw)
