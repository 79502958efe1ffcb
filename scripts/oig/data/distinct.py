"""Distinct examples of very large slices in bounded memory, for ``oig.data.split``.

Each line is keyed by an 8-byte digest (equal lines are the same example: the files are compact
JSON). The (digest, line) records are partitioned by digest into buckets of about
``BUCKET_LINES`` records over all slices, written to scratch files beside the slices (kept in memory
when everything fits in one bucket). Every occurrence of a digest lands in the same bucket, so each
question the split asks (which line first shows an example, is it in another slice, which lines
repeat a held-out one) is answered one bucket at a time: memory holds one bucket, not the slices.
What is kept per line is a bit (``Bits``: is this line an example that may be held out); the lines
trained on are described by the few that are not (``Kept``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack
from functools import partial
from operator import methodcaller
from pathlib import Path

import numpy as np

from oig.errors import InvalidInput, OigError, Problem

BUCKET_LINES = 1 << 20  # records a bucket holds on average (16 bytes each)
_READ_BYTES = 1 << 20  # bytes read at a time while hashing lines
_BLOCK_LINES = 1 << 18  # digests gathered before they are written out to the buckets
_BITS_CHUNK = 1 << 20  # lines unpacked at a time when bits are turned back into line numbers
RECORD = np.dtype([("key", "<u8"), ("line", "<i8")])


def line_digests(name: str, path: Path) -> Iterator[np.ndarray]:
    """The 8-byte digest of each line of the file, as uint64 arrays of a read's lines at a time.
    Two different lines share a digest with a chance of about n^2 / 2^65 (3e-6 for 10M lines)."""
    digest = partial(hashlib.blake2b, digest_size=8)
    rest = b""
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_READ_BYTES):
                *lines, rest = (rest + chunk).split(b"\n")
                yield np.frombuffer(b"".join(map(methodcaller("digest"), map(digest, lines))), "<u8")
    except OSError as exc:
        raise InvalidInput([Problem(str(path), 0, 0, "error", f"cannot read slice '{name}': {exc.strerror}")]) from exc
    if rest:
        yield np.frombuffer(digest(rest).digest(), "<u8")


class Buckets(AbstractContextManager):
    """Every slice's (digest, line) records, partitioned by digest; ``lines[name]``: the lines read."""

    def __init__(self, total_lines: int, scratch: Path | None = None):
        self.count = max(1, -(-total_lines // BUCKET_LINES))
        self.lines: dict[str, int] = {}
        self._memory: dict[str, list[np.ndarray]] = {}
        self._files: dict[str, list[str]] = {}
        self._dir = None
        if self.count > 1:
            try:  # beside the slices (the cache), else the system's temporary folder
                self._dir = tempfile.TemporaryDirectory(prefix=".oig-split-", dir=scratch)
            except OSError:
                try:
                    self._dir = tempfile.TemporaryDirectory(prefix="oig-split-")
                except OSError as exc:
                    raise OigError(f"cannot make scratch files for the held-out split: {exc.strerror}") from None

    def __exit__(self, *exc) -> None:
        self._memory.clear()
        if self._dir is not None:
            self._dir.cleanup()

    def add(self, name: str, path: Path) -> None:
        """Read one slice's lines into the buckets."""
        files = [] if self._dir is None else [os.path.join(self._dir.name, f"{len(self._files)}.{b}")
                                              for b in range(self.count)]
        self._files[name] = files
        line, pending = 0, []
        try:
            with ExitStack() as stack:
                handles = [stack.enter_context(open(p, "wb")) for p in files]
                for keys in line_digests(name, path):
                    pending.append(keys)
                    if sum(map(len, pending)) >= _BLOCK_LINES:
                        line = self._write(name, handles, np.concatenate(pending), line)
                        pending = []
                if pending:
                    line = self._write(name, handles, np.concatenate(pending), line)
        except OSError as exc:  # reading the slice is line_digests' to report: this is the scratch files
            raise OigError(f"cannot write scratch files for the held-out split in {self._dir.name}: "
                           f"{exc.strerror}") from None
        self.lines[name] = line

    def _write(self, name: str, handles: list, keys: np.ndarray, first: int) -> int:
        records = np.empty(len(keys), RECORD)
        records["key"], records["line"] = keys, np.arange(first, first + len(keys), dtype=np.int64)
        if not handles:
            self._memory.setdefault(name, []).append(records)
            return first + len(keys)
        which = self.bucket(keys)
        order = np.argsort(which, kind="stable")  # lines stay ascending within a bucket
        records, bounds = records[order], np.searchsorted(which[order], np.arange(self.count + 1))
        for b, h in enumerate(handles):
            if bounds[b + 1] > bounds[b]:
                h.write(records[bounds[b]:bounds[b + 1]].data)
        return first + len(keys)

    def bucket(self, keys: np.ndarray) -> np.ndarray:
        return ((keys >> np.uint64(32)) * np.uint64(self.count)) >> np.uint64(32)

    def load(self, name: str, b: int) -> np.ndarray:
        """Slice ``name``'s records in bucket b, lines ascending."""
        if self._dir is None:
            parts = self._memory.get(name, [])
            return np.concatenate(parts) if parts else np.empty(0, RECORD)
        try:
            return np.fromfile(self._files[name][b], RECORD)
        except OSError as exc:
            raise OigError(f"cannot read the held-out split's scratch file {self._files[name][b]}: "
                           f"{exc.strerror}") from None


def firsts(records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct key of the records (lines ascending) and the first line that has it, sorted by key."""
    order = np.argsort(records["key"], kind="stable")  # equal keys keep their lines ascending
    keys = records["key"][order]
    new = np.empty(len(keys), bool)
    new[:1] = True
    np.not_equal(keys[1:], keys[:-1], out=new[1:])
    return keys[new], records["line"][order[new]]


class Bits:
    """One bit a line: set lines, counted, and the i-th set line found again."""

    def __init__(self, lines: int):
        self.lines = lines
        self.packed = np.zeros(-(-lines // 8), np.uint8)
        self.count = 0

    def set(self, lines: np.ndarray) -> None:
        """Set the bits of these lines (each at most once)."""
        np.bitwise_or.at(self.packed, lines >> 3, (np.uint8(128) >> (lines & 7).astype(np.uint8)))
        self.count += len(lines)

    def nth(self, positions: np.ndarray) -> np.ndarray:
        """The lines of the set bits at these 0-based positions (ascending), in their order."""
        out = np.empty(len(positions), np.int64)
        done = seen = 0
        for start in range(0, len(self.packed), _BITS_CHUNK // 8):
            if done == len(positions):
                break
            lines = np.flatnonzero(np.unpackbits(self.packed[start:start + _BITS_CHUNK // 8])) + start * 8
            stop = int(np.searchsorted(positions, seen + len(lines)))
            out[done:stop] = lines[positions[done:stop] - seen]
            done, seen = stop, seen + len(lines)
        return out


class Kept(Sequence):
    """The lines 0 to lines - 1 but the sorted ``dropped`` ones, as a sequence (8 bytes a dropped line)."""

    def __init__(self, lines: int, dropped: np.ndarray):
        self.lines = lines
        self.dropped = dropped.astype(np.int64)
        self._before = self.dropped - np.arange(len(self.dropped))  # kept lines before each dropped one

    def __len__(self) -> int:
        return self.lines - len(self.dropped)

    def take(self, indices: np.ndarray) -> np.ndarray:
        """The kept lines at these indices (each 0 <= i < len), as int64."""
        indices = np.asarray(indices, np.int64)
        return indices + np.searchsorted(self._before, indices, side="right")

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i]).tolist()
        if not -len(self) <= i < len(self):
            raise IndexError("kept line index out of range")
        return int(self.take(np.array([i % len(self)]))[0])

    def __iter__(self) -> Iterator[int]:
        for start in range(0, len(self), _BITS_CHUNK):
            yield from self.take(np.arange(start, min(start + _BITS_CHUNK, len(self)))).tolist()
