"""The mixture file: which of a slice's examples go where, streamed into ``mixture.jsonl`` with its manifest.

Held out first: the examples ``oig.data.split`` holds out of a slice for evaluation go into ``eval.jsonl``
(one line each, slices by name, each in index order), and the slice's n below counts only the rest.

Selection of a slice's k examples out of n: k // n full passes over the slice, each in a fresh
shuffled order, then k % n examples sampled without replacement. Each slice draws from its own
random stream seeded from (seed, slice name), so adding a slice does not reshuffle the others.

Output order: slices are interleaved so that any prefix of the file holds each slice in proportion
to its count (the j-th of a slice's k examples sits at position (j + 1/2) / k of the file).

Streaming: records are never held in memory. One scan of each materialized JSONL file records line
offsets (12 bytes a line); the mixture is then written a block of about 1 MB at a time: each slice's
lines with keys in the block's range are read back with ``os.pread`` (C-level maps, no Python loop a
line), made into output lines by string operations on their bytes (no JSON parsing), and sorted by key.
The selection's index arrays take 4 to 8 bytes a draw. Every file is written through
``oig.files.atomic_output``, the manifest last.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import accumulate, islice, repeat
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from oig.data.allocation import Allocation
from oig.data.split import Split, sample_indices, shuffled, slice_seed
from oig.errors import InvalidInput, OigError, Problem
from oig.files import WriteError, atomic_output, write_atomic

if TYPE_CHECKING:
    import numpy as np

    from oig.data.distinct import Kept

MIXTURE_FILE = "mixture.jsonl"
EVAL_FILE = "eval.jsonl"
MANIFEST_FILE = "manifest.json"
PREFERENCES_FILE = "preferences.jsonl"
_LINE = rb'\{"messages":\[[^\n]*\]\}'  # one line, without its newline
_SHAPES = re.compile(rb"(?:" + _LINE + rb"\n)*" + _LINE)  # lines joined by newlines
_WRITE_CHUNK = 1 << 20  # bytes buffered before each write and hash update
_SPARSE = 3  # a slice's draws are made up front and only their lines indexed when under 1 / _SPARSE of its lines


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
    offsets: array  # where line lines[p] (line p when lines is None) starts in the file
    sha256: str
    missing_newline: bool  # the last line has no "\n"; one is added when it is copied
    tails: array  # bytes of the line after its "{", its "\n" included (4 bytes a line: read with one lookup)
    count: int  # lines in the file
    size: int  # bytes in the file
    lines: np.ndarray | None = None  # the lines indexed, ascending: None for every line

    def spans(self, idx: np.ndarray) -> tuple[list[int], list[int]]:
        """Where lines idx start past their "{", and how many bytes follow (their tails)."""
        import numpy as np

        at = idx if self.lines is None else np.searchsorted(self.lines, idx)
        return ((np.frombuffer(self.offsets, np.uint64)[at] + 1).tolist(),
                np.frombuffer(self.tails, np.uint32)[at].tolist())


def _index(data: SliceData, needed: np.ndarray | None = None) -> _Index:
    """One sequential pass: line offsets, the checksum, and a check of every line's shape. ``needed``
    (ascending): index only these lines, 12 bytes each, and not 12 bytes every line of the file."""
    display = str(data.path)
    offsets = array("Q", [0] if needed is None else [])
    tails = array("I")
    digest = hashlib.sha256()
    rest, found, size = b"", 0, 0
    try:
        with open(data.path, "rb") as f:
            while chunk := f.read(_WRITE_CHUNK):
                digest.update(chunk)
                *lines, rest = (rest + chunk).split(b"\n")
                _check_shapes(data, lines, found)
                if needed is None:
                    tails.extend(map(len, lines))  # len(line) - 1 for the "{" + 1 for the "\n"
                    offsets.extend(islice(accumulate(map((1).__add__, tails[-len(lines):] if lines else ()),
                                                     initial=offsets[-1]), 1, None))
                    size = offsets[-1]
                else:
                    size = _index_some(lines, found, size, needed, offsets, tails)
                found += len(lines)
    except OSError as exc:
        raise InvalidInput([Problem(display, 0, 0, "error", f"cannot read slice '{data.name}': {exc.strerror}")]) from exc
    if rest:
        _check_shapes(data, [rest], found)
        if needed is None:
            offsets.append(size + len(rest))
            tails.append(len(rest) - 1)  # no "\n" to read
        elif len(needed) and needed[-1] == found:
            offsets.append(size)
            tails.append(len(rest) - 1)
        found, size = found + 1, size + len(rest)
    if needed is None:
        offsets.pop()  # the end of the last line: what is left is where each line starts
    if found != data.count:
        raise InvalidInput([Problem(display, 0, 0, "error", f"slice '{data.name}' should have {data.count} "
                                    f"examples but its file has {found} lines; materialize it again")])
    sha = digest.hexdigest()
    if data.sha256 and data.sha256 != sha:
        raise InvalidInput([Problem(display, 0, 0, "error", f"slice '{data.name}' changed after it was "
                                    "materialized (sha256 differs); materialize it again")])
    return _Index(offsets, sha, bool(rest), tails, found, size, needed)


def _index_some(lines: list[bytes], first: int, start: int, needed: np.ndarray, offsets: array, tails: array) -> int:
    """Index the needed ones of these lines (line ``first`` starts at byte ``start``); where they end."""
    import numpy as np

    sizes = np.fromiter(map(len, lines), np.int64, len(lines)) + 1
    lo, hi = np.searchsorted(needed, [first, first + len(lines)])
    if hi > lo:
        ends = np.cumsum(sizes) + start
        at = needed[lo:hi] - first
        offsets.frombytes((ends[at] - sizes[at]).astype(np.uint64).tobytes())
        tails.frombytes((sizes[at] - 1).astype(np.uint32).tobytes())
    return start + int(sizes.sum())


def _check_shapes(data: SliceData, lines: list[bytes], before: int) -> None:
    """What makes the string splice in _block produce valid JSON: every line is {"messages":[...]}."""
    if lines and _SHAPES.fullmatch(b"\n".join(lines)) is None:
        number = before + next(i for i, line in enumerate(lines, 1) if _SHAPES.fullmatch(line) is None)
        raise InvalidInput([Problem(str(data.path), number, 1, "error", f"slice '{data.name}': each line must "
                                    "be one compact {\"messages\":[...]} object")])


def selection(n: int, k: int, rng: random.Random) -> Iterator[int]:
    """Indices of k draws from n examples: full shuffled passes, then a sample without replacement
    (the draws of ``rng.shuffle`` and ``rng.sample``, made in arrays of 4 or 8 bytes an index)."""
    passes, rest = divmod(k, n) if n else (0, 0)
    for _ in range(passes):
        yield from shuffled(n, rng)
    if rest:
        yield from sample_indices(n, rest, rng)


def _head(name: str) -> bytes:
    return b'{"slice":' + json.dumps(name, ensure_ascii=False).encode() + b","


def _read_line(data: SliceData, index: _Index, i: int, fd: int) -> bytes:
    """Line i of the slice file, newline-terminated, by its offsets."""
    import numpy as np

    (start,), (tail,) = index.spans(np.array([i]))
    line = os.pread(fd, tail + 1, start - 1)
    if len(line) != tail + 1:
        raise InvalidInput([Problem(str(data.path), i + 1, 1, "error",
                                    f"slice '{data.name}' changed while it was being mixed; run again")])
    if index.missing_newline and i == index.count - 1:
        line += b"\n"
    return line


@dataclass
class _Stream:
    """One slice's output lines, drawn in order: j is the next of its k."""

    data: SliceData
    index: _Index
    fd: int
    k: int
    picks: Iterator[int]  # line indices, in output order (into ``keep`` when there is one)
    keep: Kept | None
    drawn: np.ndarray | None = None  # or the lines themselves, drawn up front, in output order
    j: int = 0

    def key(self, j: int) -> float:
        """Where the slice's j-th line sits: at (j + 1/2) / k of the file."""
        return (2 * j + 1) / (2 * self.k)

    def block(self, end: int) -> tuple[Iterator[float], list[bytes]]:
        """The keys and output lines of this slice's lines j to end (not included)."""
        import numpy as np

        count = end - self.j
        keys = map((2 * self.k).__rtruediv__, range(2 * self.j + 1, 2 * end + 1, 2))  # key(j), as floats
        if self.drawn is not None:
            idx = self.drawn[self.j:end]
        else:
            idx = np.fromiter(islice(self.picks, count), np.int64, count)
            if self.keep is not None:  # indices into the lines kept for training: their lines
                idx = self.keep.take(idx)
        self.j = end
        starts, sizes = self.index.spans(idx)  # past each line's "{"
        bodies = list(map(os.pread, repeat(self.fd, count), sizes, starts))
        if sum(map(len, bodies)) != sum(sizes):
            short = next(i for i, body, size in zip(idx.tolist(), bodies, sizes, strict=True) if len(body) != size)
            raise InvalidInput([Problem(str(self.data.path), short + 1, 1, "error",
                                        f"slice '{self.data.name}' changed while it was being mixed; run again")])
        if self.index.missing_newline:
            last = self.index.count - 1
            bodies = [body + b"\n" if i == last else body for i, body in zip(idx.tolist(), bodies, strict=True)]
        return keys, list(map(_head(self.data.name).__add__, bodies))


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
    # --- draw a few of many lines now, and index those; every line of the others ------------------
    drawn = {s.name: _draw(by_name[s.name], s.count, seed, split) for s in allocation.slices}
    indexes = {}
    for s in allocation.slices:
        if drawn[s.name] is None:
            indexes[s.name] = _index(by_name[s.name])
        else:
            held = split.slices[s.name].held_out if split is not None else []
            indexes[s.name] = _index(by_name[s.name], _needed(drawn[s.name], held))
    manifest = plan(allocation, seed, slices, config, {n: i.sha256 for n, i in indexes.items()}, split)
    try:
        manifest |= _write(out_dir, by_name, indexes, allocation, seed, split, drawn)
        if split is not None:
            manifest["eval"]["sha256"] = _write_eval(out_dir, by_name, indexes, split)
        if preferences:
            manifest["preferences"] = _write_preferences(out_dir, preferences)
        # The manifest comes last: it vouches for the mixture file written above.
        write_atomic(out_dir / MANIFEST_FILE, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    except WriteError as exc:
        raise OigError(f"cannot write the mixture to {out_dir}: {exc.reason}") from None
    return manifest


def _keep(data: SliceData, split: Split | None) -> Kept | None:
    return split.slices[data.name].keep if split is not None else None


def _draw(data: SliceData, k: int, seed: int, split: Split | None) -> np.ndarray | None:
    """The lines of a slice's k draws, in output order, when they are few of its lines (under a
    third): then only theirs are indexed, and memory follows the mixture, not the slice. None: more."""
    keep = _keep(data, split)
    n = data.count if keep is None else len(keep)  # _index checks the count
    if not k or k * _SPARSE >= n:
        return None
    import numpy as np

    drawn = np.fromiter(selection(n, k, random.Random(slice_seed(seed, data.name))), np.int64, k)
    return drawn if keep is None else keep.take(drawn)


def _needed(drawn: np.ndarray, held_out: Sequence[int]) -> np.ndarray:
    import numpy as np

    return np.union1d(drawn, np.array(held_out, np.int64))


def _write(out_dir: Path, by_name: dict[str, SliceData], indexes: dict[str, _Index], allocation: Allocation,
           seed: int, split: Split | None, drawn: dict[str, np.ndarray | None]) -> dict:
    """Stream the interleaved lines into mixture.jsonl, hashing as it goes."""
    digest = hashlib.sha256()
    with atomic_output(out_dir / MIXTURE_FILE, "wb") as f, ExitStack() as stack:
        streams = []
        for share in allocation.slices:  # by name: on equal keys the slice that sorts first goes first
            if share.count:
                data = by_name[share.name]
                fd = os.open(data.path, os.O_RDONLY)
                stack.callback(os.close, fd)
                keep = _keep(data, split)
                n = indexes[share.name].count if keep is None else len(keep)
                picks = iter(()) if drawn[share.name] is not None else \
                    selection(n, share.count, random.Random(slice_seed(seed, data.name)))
                streams.append(_Stream(data, indexes[share.name], fd, share.count, picks, keep, drawn[share.name]))
        # Blocks of about _WRITE_CHUNK bytes: block b holds every line whose key is below b / blocks.
        total = sum(st.k for st in streams)
        size = sum(st.index.size for st in streams)
        lines = sum(st.index.count for st in streams)
        per_block = min(max(_WRITE_CHUNK * lines // max(size, 1), 256), 1 << 16)
        blocks = max(1, -(-total // per_block))
        for b in range(1, blocks + 1):
            keys: list[float] = []
            block: list[bytes] = []
            for st in streams:
                end = st.k if b == blocks else bisect_left(range(st.k), b / blocks, lo=st.j, key=st.key)
                more_keys, more_lines = st.block(end)
                keys.extend(more_keys)
                block += more_lines
            # A stable sort by key: streams are in slice order, so equal keys keep it.
            _hashed_write(f, digest, b"".join(map(block.__getitem__, sorted(range(len(keys)), key=keys.__getitem__))))
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
