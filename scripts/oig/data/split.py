"""The held-out split: which distinct examples of each slice are kept out of training for evaluation.

It happens in ``oig mix``, per slice, on the slice's distinct examples and before the mixture
weights upsample anything, so a repeated example never sits on both sides and the weights apply to
what is trained on:

- ``eval_size`` (training.yaml, Training section) below 1 is a fraction of each slice's distinct
  examples; a whole number of 1 or more is a count shared among the slices in proportion to their
  distinct examples. Either way the held-out total (the fraction of all distinct examples that
  may be held out, rounded half up, or the count) is shared by largest remainder, ties to the name
  that sorts first. Unset: 0.1, at most 1000 examples in all. ``0`` turns the split off.
- A slice with fewer than ``MIN_DISTINCT`` (10) distinct examples, or with ``holdout: false``, stays
  whole in training: a one-example fix slice is always trained on. At most half of the distinct
  examples that may be held out are (a larger eval_size is capped, with a warning), so a slice never gives its last.
- An example that also appears in another slice is never held out (it would be trained on there).
  Repeats of a held-out example inside its slice are kept out of training too; eval gets one copy.
- Which examples: a sample drawn from the slice's own random stream (seed, slice name), so adding a
  slice does not change what the others hold out.

Examples are named by slice and index: the 0-based line of the slice's materialized JSONL, which for
inline pairs is the position in ``IOPairs`` (linked datasets follow, in order).
"""

from __future__ import annotations

import hashlib
import random
from array import array
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from math import ceil, log
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from oig.errors import InvalidInput, Problem

if TYPE_CHECKING:
    from oig.data.distinct import Kept

MIN_DISTINCT = 10  # distinct examples a slice needs before any of it is held out
DEFAULT_FRACTION = Fraction(1, 10)
MAX_DEFAULT = 1000  # examples held out when eval_size is unset; a larger set only slows evaluation
_READ_BYTES = 1 << 20  # 1 MiB read at a time while hashing lines


class SliceLines(Protocol):
    name: str
    path: Path
    count: int


@dataclass(frozen=True)
class SliceSplit:
    name: str
    count: int  # lines of the slice
    distinct: int
    held_out: list[int] = field(default_factory=list)  # indices, one per distinct held-out example, ascending
    keep: Kept | None = None  # indices trained on (repeats included), a sequence; None: every line
    why: str = "held out"  # or why nothing is: "holdout: false", "fewer than 10 distinct examples", ...

    @property
    def train_count(self) -> int:
        return self.count if self.keep is None else len(self.keep)


@dataclass(frozen=True)
class Split:
    eval_size: float | None  # as configured
    slices: dict[str, SliceSplit]
    warnings: list[str] = field(default_factory=list)
    min_distinct: int = MIN_DISTINCT

    @property
    def enabled(self) -> bool:
        return self.eval_size != 0

    @property
    def held_out(self) -> dict[str, int]:
        return {n: len(s.held_out) for n, s in self.slices.items()}

    def train_counts(self) -> dict[str, int]:
        return {n: s.train_count for n, s in self.slices.items()}

    def examples(self) -> list[dict]:
        """The held-out examples, by slice (sorted by name) and index."""
        return [{"slice": n, "index": i} for n in sorted(self.slices) for i in self.slices[n].held_out]


def slice_seed(seed: int, name: str) -> int:
    """A stable per-slice seed, the same in every process and Python version (unlike hash())."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{name}".encode()).digest()[:8], "big")


def no_split(slices: Sequence[SliceLines], eval_size: float | None = 0) -> Split:
    return Split(eval_size, {s.name: SliceSplit(s.name, s.count, s.count, why="eval_size 0") for s in slices})


def _bit_lengths(top: int, bottom: int) -> Iterator[tuple[int, int, int]]:
    """(b, hi, lo): the bounds m from top down to bottom (both included) that have bit length b, as
    range(hi, lo, -1) runs them."""
    while top >= bottom:
        b = top.bit_length()
        lo = max(bottom, 1 << (b - 1)) - 1
        yield b, top, lo
        top = lo


def sample_indices(n: int, k: int, rng: random.Random) -> Iterator[int]:
    """``rng.sample(range(n), k)``, the same draws in the same order, with an 8-byte-a-slot pool
    instead of a list of n ints (CPython 3.11's algorithm; tests/test_mix_split.py checks they agree).
    Draws of ``rng._randbelow`` are made inline with getrandbits, as ``random.Random`` makes them,
    and a large sparse sample in bulk: rng is spent afterwards (its state is not what sample leaves)."""
    if not 0 <= k <= n:
        raise ValueError("sample larger than population or is negative")
    inline = type(rng) is random.Random  # its _randbelow: getrandbits(m.bit_length()) until below m
    randbelow, getrandbits = rng._randbelow, rng.getrandbits  # what Random.sample draws with
    setsize = 21 + (4 ** ceil(log(k * 3, 4)) if k > 5 else 0)
    if n <= setsize:
        pool = array("q", range(n))
        if not inline:
            for i in range(k):
                j = randbelow(n - i)
                yield pool[j]
                pool[j] = pool[n - i - 1]
            return
        for b, hi, lo in _bit_lengths(n, n - k + 1):  # the i-th draw is below m = n - i
            for m in range(hi, lo, -1):
                j = getrandbits(b)
                while j >= m:
                    j = getrandbits(b)
                yield pool[j]
                pool[j] = pool[m - 1]
    elif inline and n.bit_length() <= 32:
        yield from _sparse_sample(n, k, rng)
    else:
        selected: set[int] = set()
        for _ in range(k):
            j = randbelow(n)
            while j in selected:
                j = randbelow(n)
            selected.add(j)
            yield j


def _sparse_sample(n: int, k: int, rng: random.Random) -> list[int]:
    """Sample's set branch (n > 3k) in bulk: its draws are the first k distinct values below n of
    getrandbits(b) = the next 32-bit word >> (32 - b), and getrandbits(32 * m) is the next m words,
    the first in the lowest bits."""
    import numpy as np

    b = n.bit_length()
    accepted, first = np.empty(0, np.uint32), np.empty(0, np.intp)
    while len(first) < k:
        m = 64 + int((k - len(first)) * 1.25 * (1 << b) / n)
        words = np.frombuffer(rng.getrandbits(32 * m).to_bytes(4 * m, "little"), "<u4") >> np.uint32(32 - b)
        accepted = np.concatenate([accepted, words[words < n]])
        first = np.unique(accepted, return_index=True)[1]
    first.sort()
    return accepted[first[:k]].tolist()


def shuffled(n: int, rng: random.Random) -> array:
    """``rng.shuffle`` of 0..n-1, the same swaps, in an array of 4 or 8 bytes an index (a list of ints
    would take about 40 bytes each), with random.Random's draws made inline."""
    order = array("I" if n < 2**32 else "q", range(n))
    if type(rng) is not random.Random:
        rng.shuffle(order)
        return order
    getrandbits = rng.getrandbits
    for b, hi, lo in _bit_lengths(n, 2):  # i = m - 1 swaps with j below m, for i from n - 1 down to 1
        for m in range(hi, lo, -1):
            j = getrandbits(b)
            while j >= m:
                j = getrandbits(b)
            order[m - 1], order[j] = order[j], order[m - 1]
    return order


def _target(eval_size: float | None, spare: int, where: str) -> int:
    """How many examples are held out in all, from the examples that may be held out."""
    if eval_size is None:
        return min(int(DEFAULT_FRACTION * spare + Fraction(1, 2)), MAX_DEFAULT)
    if isinstance(eval_size, bool) or not isinstance(eval_size, int | float) or not 0 <= eval_size < float("inf"):
        raise InvalidInput([Problem(where, 0, 0, "error", f"eval_size must be a number >= 0, not {eval_size!r}")])
    if eval_size < 1:
        return int(Fraction(repr(float(eval_size))) * spare + Fraction(1, 2))
    if not float(eval_size).is_integer():
        raise InvalidInput([Problem(where, 0, 0, "error", f"eval_size {eval_size:g} is neither a whole count "
                                    "nor a fraction below 1")])
    return int(eval_size)


def hold_out(slices: Sequence[SliceLines], eval_size: float | None, seed: int, whole: Collection[str] = (),
             where: str = "training.yaml") -> Split:
    """Choose each slice's held-out examples (see the module docstring). ``whole``: slices with
    ``holdout: false``. Raises InvalidInput for an eval_size that is neither a fraction nor a count.
    Memory stays bounded however large the slices (``oig.data.distinct``: scratch files beside them)."""
    if eval_size == 0:
        return no_split(slices)
    import numpy as np

    from oig.data.distinct import Bits, Buckets, firsts

    with Buckets(sum(s.count for s in slices), Path(slices[0].path).parent if slices else None) as buckets:
        for s in slices:
            buckets.add(s.name, s.path)
        # One bucket at a time: each slice's distinct examples there (first lines), and which of
        # them are in no other slice (equal neighbours once every slice's distinct keys are sorted).
        distinct = dict.fromkeys(buckets.lines, 0)
        alone = {n: Bits(lines) for n, lines in buckets.lines.items()}  # first lines of examples in no other slice
        for b in range(buckets.count):
            found = {n: firsts(buckets.load(n, b)) for n in buckets.lines}
            every = np.sort(np.concatenate([keys for keys, _ in found.values()] or [np.empty(0, np.uint64)]))
            shared = every[1:][every[1:] == every[:-1]]
            for n, (keys, lines) in found.items():
                distinct[n] += len(keys)
                alone[n].set(lines[~np.isin(keys, shared)] if len(shared) else lines)
            del found, every, shared
        return _choose(slices, eval_size, seed, whole, where, buckets, distinct, alone)


def _choose(slices: Sequence[SliceLines], eval_size: float | None, seed: int, whole: Collection[str], where: str,
            buckets, distinct: dict[str, int], alone: dict) -> Split:
    """Each slice's share of the held-out total, and which examples (see the module docstring)."""
    import numpy as np

    from oig.data.distinct import Kept

    eligible = sorted(n for n in buckets.lines if n not in whole and distinct[n] >= MIN_DISTINCT)
    spare = sum(distinct[n] for n in eligible)
    total = _target(eval_size, spare, where)
    warnings: list[str] = []
    if total > spare // 2:
        warnings.append(f"eval_size {eval_size:g} asks for {total} held-out examples, but at most half of the {spare} "
                        f"distinct examples that may be held out (slices with at least {MIN_DISTINCT} and no "
                        f"`holdout: false`) are: {spare // 2} are held out")
        total = spare // 2
    # --- each slice's share of the total: largest remainder, ties to the name that sorts first ------
    quotas = {n: Fraction(total * distinct[n], spare) for n in eligible}
    counts = {n: int(q) for n, q in quotas.items()}
    for n in sorted(eligible, key=lambda n: (-(quotas[n] - counts[n]), n))[:total - sum(counts.values())]:
        counts[n] += 1

    out: dict[str, SliceSplit] = {}
    for s in slices:
        n = s.name
        if n not in counts:
            why = "holdout: false" if n in whole else f"fewer than {MIN_DISTINCT} distinct examples"
            out[n] = SliceSplit(n, s.count, distinct[n], why=why)
            continue
        want = counts[n]
        if alone[n].count < want:
            warnings.append(f"slice '{n}' holds out {alone[n].count} examples, not {want}: the others also "
                            "appear in another slice")
            want = alone[n].count
        rng = random.Random(slice_seed(seed, f"eval\0{n}"))
        picked = np.fromiter(sample_indices(alone[n].count, want, rng), np.int64, want)
        first = alone[n].nth(np.sort(picked))  # each held-out example's first line, ascending
        keep = None
        if want:  # every line of a held-out example is kept out of training: found in its bucket
            dropped = []
            for b in range(buckets.count):
                records = buckets.load(n, b)
                held = records["key"][np.isin(records["line"], first)]
                if len(held):
                    dropped.append(records["line"][np.isin(records["key"], held)])
            keep = Kept(buckets.lines[n], np.sort(np.concatenate(dropped)))
        out[n] = SliceSplit(n, s.count, distinct[n], first.tolist(), keep,
                            "held out" if want else "its share of eval_size rounds to 0")
    return Split(eval_size, out, warnings)
