"""Canonical copy-through (oig.data.canonical): the same bytes and the same problems as the full path."""

from __future__ import annotations

import json
import random
import sys

import pytest

from oig.data import canonical, formats
from oig.data.fetch import SourceOptions
from oig.data.slices import HFEntry, JsonlEntry, Slice
from oig.data.sources import dumps, materialize
from oig.errors import InvalidInput


def _outcome(at: str, row: object) -> tuple[str, str]:
    """What the full path makes of a row: ("line N", the line it writes, or its problem)."""
    try:
        if isinstance(row, formats.BadRow):
            raise row
        return at, dumps(formats.convert_openai_line(row)).decode()
    except ValueError as exc:
        return at, f"problem: {exc}"


def _full(path) -> list[tuple[str, str]]:
    return [_outcome(at, row) for at, row in formats.iter_jsonl(path)]


def _fast(path) -> tuple[list[tuple[str, str]], int]:
    """The same through canonical.iter_jsonl, each run of Lines split into its lines; and the lines copied."""
    out, copied = [], 0
    for at, row in canonical.iter_jsonl(path):
        if isinstance(row, canonical.Lines):
            first = int(at.split()[1])
            assert row.data.endswith(b"\n")
            lines = [line + "\n" for line in row.data.decode().split("\n")[:-1]]  # "\n" alone ends a line
            assert len(lines) == row.count
            out += [(f"line {first + i}", line) for i, line in enumerate(lines)]
            copied += row.count
            continue
        out.append(_outcome(at, row))
    return out, copied


def _record(*turns, weight=None) -> dict:
    messages = [{"role": r, "content": c} for r, c in turns]
    if weight is not None:
        messages[-1]["weight"] = weight
    return {"messages": messages}


def _compact(record) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


CANONICAL = [
    _record(("user", "Hi"), ("assistant", "Hello!")),
    _record(("user", 'quote " backslash \\ tab \t nl \n cr \r bs \b ff \f nul \x00 us \x1f del \x7f'),
            ("assistant", "ünïcödé 日本語 🙂 \u2028 end")),
    _record(("system", "Be brief."), ("system", "Again."), ("user", "q"), ("assistant", "a", ), weight=0),
    _record(("system", "s"), ("assistant", "a system turn then an answer")),
    _record(("user", "u1"), ("user", "u2"), ("assistant", "a1"), ("user", "u3"), ("assistant", "a2"), weight=1),
    _record(("user", "only CJK in the answer"), ("assistant", "是的")),
    _record(("user", "escapes only"), ("assistant", "\\\"")),
    _record(("user", "<b>html</b> and [link]"), ("assistant", "a < b, [x] > y")),
]
NOT_CANONICAL = [
    json.dumps(CANONICAL[0]).encode(),  # spaces after separators
    json.dumps(CANONICAL[1], separators=(",", ":")).encode(),  # \u escapes for non-ASCII
    b'{"messages":[{"content":"q","role":"user"},{"role":"assistant","content":"a"}]}',  # key order
    b'{"messages":[{"role":"user","content":"\\u0041"},{"role":"assistant","content":"a"}]}',  # needless escape
    b'{"messages":[{"role":"user","content":"\\/"},{"role":"assistant","content":"a"}]}',
    b'{"messages":[{"role":"Human","content":"q"},{"role":"assistant","content":"a"}]}',  # converted
    b'{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a","weight":1.0}]}',
    b'{"prompt":"2+2=","completion":"4"}',
    _compact(CANONICAL[0]) + b" ",
]
BAD = [
    _compact(_record(("user", "q"), ("assistant", "<|im_start|>system"))),  # control token
    _compact(_record(("user", "look <image>"), ("assistant", "a"))),  # multimodal
    _compact(_record(("user", "q"), ("assistant", "[INST] forged"))),
    _compact(_record(("assistant", "first"), ("user", "q"), ("assistant", "a"))),
    _compact(_record(("user", "q"), ("user", "no answer"))),
    _compact(_record(("user", "q"), ("system", "late"), ("assistant", "a"))),
    _compact(_record(("user", "q"), ("assistant", " \t\n\u3000\u2009\x1c"))),  # blank answer
    _compact(_record(("user", "q"), ("assistant", "a"), weight=2)),
    b'{"messages":[{"role":"user","content":"\\ud800"},{"role":"assistant","content":"a"}]}',  # lone surrogate
    b'{"messages":[{"role":"user","content":"\xff"},{"role":"assistant","content":"a"}]}',  # not UTF-8
    b'{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]',  # not JSON
    b'{"messages":[{"role":"user","content":"q"},{"role":"tool","content":"a"}]}',
]


def test_spaces_are_what_strip_removes():
    assert sorted(canonical.SPACES) == [c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace()]


@pytest.mark.parametrize("record", CANONICAL)
def test_canonical_lines_are_recognised(record):
    assert canonical.canonical(_compact(record))


@pytest.mark.parametrize("line", NOT_CANONICAL + BAD)
def test_other_lines_are_not(line):
    assert not canonical.canonical(line)


def test_a_file_of_every_kind_gives_the_same_lines_and_problems(tmp_path):
    lines = [_compact(r) for r in CANONICAL] + NOT_CANONICAL + BAD
    random.Random(3).shuffle(lines)
    path = tmp_path / "mixed.jsonl"
    # A BOM on line 1, blank lines, a CRLF line, and no newline at the end: iter_jsonl's line numbers hold.
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines[:5]) + b"\n\n  \n" + lines[5] + b"\r\n"
                     + b"\n".join(lines[6:]))
    fast, copied = _fast(path)
    assert fast == _full(path)
    assert copied >= len(CANONICAL) - 2
    assert sum(v.startswith("problem:") for _, v in fast) == len(BAD)


def _text(rng: random.Random) -> str:
    alphabet = "ab Z9<>[]/|_\"\\\t\n\r\x00\x08\x0b\x0c\x1c\x1f\x7f é日🙂\u2028\u3000\u00a0"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


def test_random_records_copy_through_exactly(tmp_path):
    rng = random.Random(11)
    lines = []
    for _ in range(3000):
        turns = [("system", _text(rng))] * rng.randint(0, 2) + [("user", _text(rng))]
        turns += [(rng.choice(["user", "assistant"]), _text(rng)) for _ in range(rng.randint(0, 3))]
        record = _record(*turns, ("assistant", _text(rng)), weight=rng.choice([None, 0, 1]))
        lines.append(_compact(record) if rng.random() < 0.9 else json.dumps(record).encode())
    path = tmp_path / "random.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    fast, copied = _fast(path)
    assert fast == _full(path)
    assert copied > 1000  # most are canonical; the rest (blank answers, control tokens) are not


def test_a_long_run_splits_across_reads_and_a_limit_cuts_it(tmp_path, monkeypatch):
    monkeypatch.setattr(canonical, "READ_BYTES", 100)  # every line straddles a read
    lines = [_compact(_record(("user", f"question {i} ü"), ("assistant", f"answer {i}"))) for i in range(200)]
    lines[150] = BAD[0]
    path = tmp_path / "long.jsonl"
    path.write_bytes(b"\n".join(lines))
    assert _fast(path)[0] == _full(path)
    lines[7] += b" " * 200  # longer than the limit below: the same error, at the same line
    path.write_bytes(b"\n".join(lines))
    for read in (formats.iter_jsonl, canonical.iter_jsonl):
        with pytest.raises(ValueError, match="^line 8 is longer than 150 bytes$"):
            for _ in read(path, max_line_bytes=150):
                pass


def _slice(tmp_path, link, limit=None, hub=False) -> Slice:
    if hub:
        return Slice(name="demo", path=tmp_path / "data" / "demo.yaml", huggingface=[HFEntry(link=link, limit=limit)])
    return Slice(name="demo", path=tmp_path / "data" / "demo.yaml", openai_jsonl=[JsonlEntry(link=link, limit=limit)])


def _materialize(tmp_path, name, *, cache, limit=None, hub=False):
    opts = SourceOptions(base_dir=tmp_path, allow_local=True, cache_dir=tmp_path / cache)
    return materialize(_slice(tmp_path, name, limit, hub), opts)


@pytest.mark.parametrize("limit", [None, 1, 4, 2999])
def test_materialized_file_is_byte_identical_to_the_full_path(tmp_path, monkeypatch, limit):
    rng = random.Random(5)
    lines = [_compact(r) for r in CANONICAL] * 300 + NOT_CANONICAL[:3] * 50
    rng.shuffle(lines)
    (tmp_path / "chat.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    fast = _materialize(tmp_path, "chat.jsonl", cache="fast", limit=limit)
    monkeypatch.setattr(canonical, "iter_jsonl", formats.iter_jsonl)  # the full path for every line
    full = _materialize(tmp_path, "chat.jsonl", cache="full", limit=limit)
    assert fast.path.read_bytes() == full.path.read_bytes()
    assert (fast.count, fast.sha256, fast.pins) == (full.count, full.sha256, full.pins)


@pytest.mark.parametrize("tampered", BAD[:9])
def test_a_tampered_line_in_a_canonical_file_is_still_checked(tmp_path, tampered):
    lines = [_compact(_record(("user", f"q{i}"), ("assistant", f"a{i}"))) for i in range(500)]
    lines[321] = tampered
    (tmp_path / "chat.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(InvalidInput) as info:
        _materialize(tmp_path, "chat.jsonl", cache="cache")
    [problem] = info.value.problems
    assert "OpenAIJsonl[0] chat.jsonl: line 322: " in problem.message
    assert not list((tmp_path / "cache").glob("slices/*.jsonl"))  # nothing half-checked is cached


@pytest.mark.parametrize("limit", [None, 700])
def test_a_hub_dataset_of_json_lines_is_copied_through_too(tmp_path, monkeypatch, limit):
    lines = [_compact(r) for r in CANONICAL] * 100 + NOT_CANONICAL[:2] * 20
    lines += [json.dumps({"question": "q ü", "answer": "a"}, ensure_ascii=False).encode()] * 20  # another layout
    random.Random(8).shuffle(lines)
    (tmp_path / "chats").mkdir()
    (tmp_path / "chats" / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    copied = []
    real = canonical.iter_jsonl
    monkeypatch.setattr(canonical, "iter_jsonl", lambda path: (copied.append(path), real(path))[1])
    fast = _materialize(tmp_path, "chats", cache="fast", limit=limit, hub=True)
    assert copied  # the canonical reader read the dataset's file
    monkeypatch.setattr(canonical, "iter_jsonl", formats.iter_jsonl)
    full = _materialize(tmp_path, "chats", cache="full", limit=limit, hub=True)
    assert fast.path.read_bytes() == full.path.read_bytes()
    assert (fast.count, fast.sha256) == (full.count, full.sha256) == (limit or len(lines), fast.sha256)
