"""The mixture file: which of a slice's examples go where, streamed into ``mixture.jsonl`` with its manifest.

Held out first: the examples ``oig.data.split`` holds out of a slice for evaluation go into ``eval.jsonl``
(one line each, slices by name, each in index order), and the slice's n below counts only the rest.

Selection of a slice's k examples out of n: k // n full passes over the slice, each in a fresh
shuffled order, then k % n examples sampled without replacement. Each slice draws from its own
random stream seeded from (seed, slice name), so adding a slice does not reshuffle the others.

Output order: slices are interleaved so that any prefix of the file holds each slice in proportion
to its count (the j-th of a slice's k examples sits at position (j + 1/2) / k of the file).

Streaming: records are never held in memory. One scan of each materialized JSONL file records line
offsets (8 bytes a line); lines are then read back with ``os.pread`` in the chosen order and each
output line is made by string operations on the input line's bytes, without parsing JSON. Every file
is written through ``oig.files.atomic_output``, the manifest last.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import random
from array import array
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from oig.data.allocation import Allocation
from oig.data.split import Split, slice_seed
from oig.errors import InvalidInput, OigError, Problem
from oig.files import WriteError, atomic_output, write_atomic

MIXTURE_FILE = "mixture.jsonl"
EVAL_FILE = "eval.jsonl"
MANIFEST_FILE = "manifest.json"
PREFERENCES_FILE = "preferences.jsonl"
_LINE_HEAD = b'{"messages":['
_LINE_TAIL = b"]}"
_WRITE_CHUNK = 1 << 20  # bytes buffered before each write and hash update


class SliceData(Protocol):
    """What the writer needs of a materialized slice (``oig.data.sources.Materialized`` has it)."""

    name: str
    path: Path
    count: int
    sha256: str
    pins: list[dict]


@dataclass(frozen=True)
class SliceFile:
    """A slice already as JSONL, one compact ``{"messages":[...]}`` per line."""

    name: str
    path: Path
    count: int
    sha256: str = ""  # empty: computed while indexing the file
    pins: list[dict] = field(default_factory=list)


@dataclass
class _Index:
    offsets: array  # line i is bytes offsets[i]:offsets[i+1] of the file
    sha256: str
    missing_newline: bool  # the last line has no "\n"; one is added when it is copied


def _index(data: SliceData) -> _Index:
    """One sequential pass: line offsets, the checksum, and a check of every line's shape."""
    display = str(data.path)
    offsets = array("Q", [0])
    digest = hashlib.sha256()
    pos = 0
    line = b""
    try:
        with open(data.path, "rb") as f:
            for number, line in enumerate(f, 1):
                digest.update(line)
                body = line[:-1] if line.endswith(b"\n") else line
                # These two checks are what make the string splice in _lines produce valid JSON.
                if not body.startswith(_LINE_HEAD) or not body.endswith(_LINE_TAIL):
                    raise InvalidInput([Problem(display, number, 1, "error", f"slice '{data.name}': each line must "
                                                "be one compact {\"messages\":[...]} object")])
                pos += len(line)
                offsets.append(pos)
    except OSError as exc:
        raise InvalidInput([Problem(display, 0, 0, "error", f"cannot read slice '{data.name}': {exc.strerror}")]) from exc
    found = len(offsets) - 1
    if found != data.count:
        raise InvalidInput([Problem(display, 0, 0, "error", f"slice '{data.name}' should have {data.count} "
                                    f"examples but its file has {found} lines; materialize it again")])
    sha = digest.hexdigest()
    if data.sha256 and data.sha256 != sha:
        raise InvalidInput([Problem(display, 0, 0, "error", f"slice '{data.name}' changed after it was "
                                    "materialized (sha256 differs); materialize it again")])
    return _Index(offsets, sha, bool(found) and not line.endswith(b"\n"))


def selection(n: int, k: int, rng: random.Random) -> Iterator[int]:
    """Indices of k draws from n examples: full shuffled passes, then a sample without replacement."""
    passes, rest = divmod(k, n) if n else (0, 0)
    for _ in range(passes):
        order = array("q", range(n))  # 8 bytes an index; a list of ints takes about 40
        rng.shuffle(order)
        yield from order
    if rest:
        yield from rng.sample(range(n), rest)


def _head(name: str) -> bytes:
    return b'{"slice":' + json.dumps(name, ensure_ascii=False).encode() + b","


def _read_line(data: SliceData, index: _Index, i: int, fd: int) -> bytes:
    """Line i of the slice file, newline-terminated, by its offsets."""
    start, size = index.offsets[i], index.offsets[i + 1] - index.offsets[i]
    line = os.pread(fd, size, start)
    if len(line) != size:
        raise InvalidInput([Problem(str(data.path), i + 1, 1, "error",
                                    f"slice '{data.name}' changed while it was being mixed; run again")])
    if index.missing_newline and i == len(index.offsets) - 2:
        line += b"\n"
    return line


def _lines(data: SliceData, index: _Index, k: int, seed: int, rank: int, fd: int,
           keep: Sequence[int] | None = None) -> Iterator[tuple[float, int, bytes]]:
    """The slice's output lines with their interleaving keys (fraction of the file, slice rank).
    ``keep``: the line indices that may be trained on (None: all)."""
    head, twice_k = _head(data.name), 2 * k
    n = len(index.offsets) - 1 if keep is None else len(keep)
    for j, i in enumerate(selection(n, k, random.Random(slice_seed(seed, data.name)))):
        yield (2 * j + 1) / twice_k, rank, head + _read_line(data, index, i if keep is None else keep[i], fd)[1:]


def write_mixture(out_dir: Path, slices: Sequence[SliceData], allocation: Allocation, seed: int,
                  config: Path | str | None = None, preferences: Sequence[SliceData] = (),
                  split: Split | None = None) -> dict:
    """Write ``mixture.jsonl`` and ``manifest.json`` under out_dir (atomically). Returns the manifest.

    With a split, its held-out examples go into ``eval.jsonl`` (always written, empty when nothing is
    held out), the allocation's counts are drawn from the rest, and the manifest's ``eval`` lists them.

    Preference pairs (for DPO) are not weighted: every pair of every slice goes, in slice order, into
    ``preferences.jsonl`` (one ``{"slice", "prompt", "chosen", "rejected"}`` per line), listed in the
    manifest under ``preferences``.
    """
    out_dir = Path(out_dir)
    by_name = {s.name: s for s in slices}
    missing = [s.name for s in allocation.slices if s.name not in by_name]
    if missing:
        raise ValueError(f"no slice file for {', '.join(missing)}")
    # --- index every slice that contributes -------------------------------------------------------
    indexes = {s.name: _index(by_name[s.name]) for s in allocation.slices}
    manifest = plan(allocation, seed, slices, config, {n: i.sha256 for n, i in indexes.items()}, split)
    try:
        manifest |= _write(out_dir, by_name, indexes, allocation, seed, split)
        if split is not None:
            manifest["eval"]["sha256"] = _write_eval(out_dir, by_name, indexes, split)
        if preferences:
            manifest["preferences"] = _write_preferences(out_dir, preferences)
        # The manifest comes last: it vouches for the mixture file written above.
        write_atomic(out_dir / MANIFEST_FILE, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    except WriteError as exc:
        raise OigError(f"cannot write the mixture to {out_dir}: {exc.reason}") from None
    return manifest


def _write(out_dir: Path, by_name: dict[str, SliceData], indexes: dict[str, _Index], allocation: Allocation,
           seed: int, split: Split | None) -> dict:
    """Stream the interleaved lines into mixture.jsonl, hashing as it goes."""
    digest = hashlib.sha256()
    with atomic_output(out_dir / MIXTURE_FILE, "wb") as f, ExitStack() as stack:
        streams = []
        for rank, share in enumerate(allocation.slices):
            if share.count:
                data = by_name[share.name]
                fd = os.open(data.path, os.O_RDONLY)
                stack.callback(os.close, fd)
                keep = split.slices[share.name].keep if split is not None else None
                streams.append(_lines(data, indexes[share.name], share.count, seed, rank, fd, keep))
        buffer: list[bytes] = []
        size = 0
        for _, _, line in heapq.merge(*streams):
            buffer.append(line)
            size += len(line)
            if size >= _WRITE_CHUNK:
                _hashed_write(f, digest, b"".join(buffer))
                buffer, size = [], 0
        _hashed_write(f, digest, b"".join(buffer))
    return {"mixture": MIXTURE_FILE, "sha256": digest.hexdigest()}


def _write_eval(out_dir: Path, by_name: dict[str, SliceData], indexes: dict[str, _Index], split: Split) -> str:
    """eval.jsonl: one ``{"slice", "messages"}`` line per held-out example, in the manifest's order."""
    digest = hashlib.sha256()
    with atomic_output(out_dir / EVAL_FILE, "wb") as f:
        for name in sorted(split.slices):
            if split.slices[name].held_out:
                data, head = by_name[name], _head(name)
                fd = os.open(data.path, os.O_RDONLY)
                try:
                    for i in split.slices[name].held_out:
                        _hashed_write(f, digest, head + _read_line(data, indexes[name], i, fd)[1:])
                finally:
                    os.close(fd)
    return digest.hexdigest()


def _write_preferences(out_dir: Path, slices: Sequence[SliceData]) -> dict:
    digest = hashlib.sha256()
    with atomic_output(out_dir / PREFERENCES_FILE, "wb") as f:
        for data in slices:
            head = _head(data.name)
            with open(data.path, "rb") as src:
                for line in src:
                    _hashed_write(f, digest, head + line[1:])  # each line is a compact JSON object: splice the slice in
    return {"file": PREFERENCES_FILE, "sha256": digest.hexdigest(), "total": sum(s.count for s in slices),
            "slices": [{"name": s.name, "count": s.count, "sha256": s.sha256, "pins": list(s.pins)} for s in slices]}


def _hashed_write(f: BinaryIO, digest, data: bytes) -> None:
    f.write(data)
    digest.update(data)


def plan(allocation: Allocation, seed: int, slices: Sequence[SliceData] = (), config: Path | str | None = None,
         checksums: dict[str, str] | None = None, split: Split | None = None) -> dict:
    """The manifest's content without the mixture file: what ``--plan --format json`` prints."""
    by_name = {s.name: s for s in slices}
    rows = []
    for s in allocation.slices:
        data = by_name.get(s.name)
        rows.append({
            "name": s.name, "available": s.available, "held_out": s.held_out, "weight": s.weight, "share": s.share,
            "count": s.count, "epochs": s.epochs,
            "sha256": (checksums or {}).get(s.name) or (data.sha256 if data else None) or None,
            "pins": list(data.pins) if data else [],
        })
    manifest = {"config": None if config is None else str(config), "seed": seed, "total": allocation.total,
                "slices": rows, "warnings": list(allocation.warnings)}
    if split is not None:
        examples = split.examples()
        manifest["eval"] = {
            "file": EVAL_FILE, "sha256": None, "eval_size": split.eval_size, "min_distinct": split.min_distinct,
            "total": len(examples),
            "slices": [{"name": n, "distinct": s.distinct, "held_out": len(s.held_out), "why": s.why}
                       for n, s in sorted(split.slices.items())],
            "examples": examples,  # {"slice", "index"}: index is the example's 0-based place in its slice
        }
    return manifest
