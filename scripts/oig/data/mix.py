"""The weighted mixture: which examples of which slices go into training, written as one JSONL file.

What the weights mean (the same words are in the training.yaml JSON Schema and the README):

- Weights are shares of the final mixture, from 0 to 1. Slices not listed share what is left
  (1 minus the listed weights, never below 0) in proportion to their size. With no ``Mixture``
  section the mixture is the plain union of all slices.
- The total number of examples defaults to the number available across all slices; set it with
  ``MixtureTotal:`` in training.yaml or ``oig mix --total N``.
- A slice whose share is larger than the slice is repeated, every example used before any is used
  again; a smaller share samples without replacement. A fixed seed makes the mixture byte-identical
  on a rerun (same inputs, same Python).
- Example: slices a (100 examples), b (10) and c (40) with ``Mixture: {a: 0.5}`` give a 75, b 15,
  c 60 (total 150: a gets half; b and c share the other half 10:40).
- Listed weights adding up to more than 1: a warning, and they are scaled to add up to 1; slices not
  listed get nothing. Listed weights adding up to less than 1 when no unlisted slice has examples
  to take the rest: a warning, and they are scaled up to add up to 1.
- A weight for a slice that does not exist is an error naming the nearest slice; a slice left with
  no share (or with a share too small to round to one example) is a warning.
- Counts add up to the total exactly: each slice gets the whole part of share x total, and the
  examples left over go one each to the largest fractional parts, ties to the name that sorts first.

Selection of a slice's k examples out of n: k // n full passes over the slice, each in a fresh
shuffled order, then k % n examples sampled without replacement. Each slice draws from its own
random stream seeded from (seed, slice name), so adding a slice does not reshuffle the others.

Output order: slices are interleaved so that any prefix of the file holds each slice in proportion
to its count (the j-th of a slice's k examples sits at position (j + 1/2) / k of the file).

Streaming: records are never held in memory. One scan of each materialized JSONL file records line
offsets (8 bytes a line); lines are then read back with ``os.pread`` in the chosen order and each
output line is made by string operations on the input line's bytes, without parsing JSON.
"""

from __future__ import annotations

import difflib
import hashlib
import heapq
import json
import os
import random
import tempfile
from array import array
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Protocol

from oig.data.schemas import MAX_MIXTURE_TOTAL, MIXTURE_TOTAL_FACTOR
from oig.errors import InvalidInput, OigError, Problem

MIXTURE_FILE = "mixture.jsonl"
MANIFEST_FILE = "manifest.json"
PREFERENCES_FILE = "preferences.jsonl"
WHERE = "training.yaml"  # the file a Mixture problem points at when no config path is known
_LINE_HEAD = b'{"messages":['
_LINE_TAIL = b"]}"
_WRITE_CHUNK = 1 << 20  # bytes buffered before each write and hash update


# --- allocation: how many examples each slice gets ------------------------------------------------


@dataclass(frozen=True)
class SliceShare:
    name: str
    available: int
    weight: float | None  # as configured; None when the slice is not listed in Mixture
    share: float  # of the final mixture, 0 to 1
    count: int

    @property
    def epochs(self) -> float:
        """How many times the slice is used: above 1 means repeated, below 1 means sampled."""
        return self.count / self.available if self.available else 0.0


@dataclass(frozen=True)
class Allocation:
    total: int
    slices: list[SliceShare]  # sorted by name
    warnings: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {s.name: s.count for s in self.slices}

    @property
    def shares(self) -> dict[str, float]:
        return {s.name: s.share for s in self.slices}


def _exact(weight: float) -> Fraction:
    # repr() is the shortest decimal that round-trips, i.e. what the user wrote: 0.3 -> 3/10, so
    # 0.7 + 0.3 is exactly 1 and the arithmetic below has no float drift.
    return Fraction(repr(float(weight)))


def _problem(message: str, where: str) -> Problem:
    return Problem(where, 0, 0, "error", message)


def allocate(
    available: dict[str, int], weights: dict[str, float] | None, total: int | None, where: str = WHERE
) -> Allocation:
    """Counts per slice from slice sizes, Mixture weights and a total (see the module docstring).

    Pure: no files. Raises InvalidInput (pointing at ``where``) for weights of unknown slices,
    weights that are not numbers >= 0, a bad total, or a mixture that cannot be made.
    """
    names = sorted(available)
    if not names:
        raise InvalidInput([_problem("there are no slices to mix: add data/<name>.yaml files", "data")])
    problems: list[Problem] = []
    for name, weight in (weights or {}).items():
        if name not in available:
            near = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
            hint = f"; did you mean '{near[0]}'?" if near else f" (slices: {', '.join(names)})"
            problems.append(_problem(f"Mixture names slice '{name}', which does not exist{hint}", where))
        elif isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < float("inf"):
            problems.append(_problem(f"the weight of slice '{name}' must be a number >= 0, not {weight!r}", where))
        elif weight > 0 and available[name] == 0:
            problems.append(_problem(f"slice '{name}' has weight {weight:g} but no examples", where))
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 1):
        problems.append(_problem(f"the mixture total must be a whole number >= 1, not {total!r}", where))
    if problems:
        raise InvalidInput(problems)

    size = sum(available.values())
    total = size if total is None else total
    warnings: list[str] = []
    if size == 0:
        if total:
            raise InvalidInput([_problem(f"no slice has any examples, so a total of {total} cannot be drawn", where)])
        return Allocation(0, [SliceShare(n, 0, _weight(weights, n), 0.0, 0) for n in names],
                          ["no slice has any examples: the mixture is empty"])
    # Bounded: a training.yaml (a pull request's, say) must not make the runner train for days.
    cap = min(MIXTURE_TOTAL_FACTOR * size, MAX_MIXTURE_TOTAL)
    if total > cap:
        raise InvalidInput([_problem(f"a mixture total of {total:,} is more than {MIXTURE_TOTAL_FACTOR}x the {size:,} "
                                     f"examples available (at most {cap:,}; never above {MAX_MIXTURE_TOTAL:,}): "
                                     "lower MixtureTotal or add data", where)])

    # --- shares, exact ---------------------------------------------------------------------------
    shares: dict[str, Fraction]
    if weights is None:
        shares = {n: Fraction(available[n], size) for n in names}
    else:
        listed = {n: _exact(w) for n, w in weights.items()}
        listed_sum = sum(listed.values(), Fraction(0))
        rest = [n for n in names if n not in listed]
        rest_size = sum(available[n] for n in rest)
        if listed_sum > 1:
            warnings.append(f"Mixture weights add up to {float(listed_sum):g}, more than 1: they are scaled to "
                            "add up to 1 and slices not listed get nothing")
            shares = {n: listed.get(n, Fraction(0)) / listed_sum for n in names}
        elif listed_sum < 1 and rest_size == 0:
            if listed_sum == 0:
                raise InvalidInput([_problem("every Mixture weight is 0 and no other slice has examples: "
                                             "there is nothing to mix", where)])
            warnings.append(f"Mixture weights add up to {float(listed_sum):g} and no slice outside Mixture has "
                            "examples to take the rest: they are scaled to add up to 1")
            shares = {n: listed.get(n, Fraction(0)) / listed_sum for n in names}
        else:
            left = 1 - listed_sum  # rest_size is 0 here only when left is 0 too
            shares = {n: listed[n] if n in listed else left * Fraction(available[n], rest_size or 1) for n in names}

    # --- counts: largest remainder, ties to the name that sorts first -----------------------------
    quotas = {n: shares[n] * total for n in names}
    counts = {n: int(q) for n, q in quotas.items()}  # int() of a Fraction >= 0 is its floor
    leftover = total - sum(counts.values())
    for n in sorted(names, key=lambda n: (-(quotas[n] - counts[n]), n))[:leftover]:
        counts[n] += 1

    for n in names:
        if available[n] and shares[n] == 0:
            why = " (its weight is 0)" if weights and n in weights else \
                  " (the listed weights already take the whole mixture)"
            warnings.append(f"slice '{n}' gets no share of the mixture{why}")
        elif available[n] and counts[n] == 0:
            warnings.append(f"slice '{n}' has a share of {float(shares[n]):.4%}, which is no example of "
                            f"{total}: raise its weight or the total")
        elif not available[n]:
            warnings.append(f"slice '{n}' has no examples")
    rows = [SliceShare(n, available[n], _weight(weights, n), float(shares[n]), counts[n]) for n in names]
    return Allocation(total, rows, warnings)


def _weight(weights: dict[str, float] | None, name: str) -> float | None:
    return float(weights[name]) if weights and name in weights else None


# --- selection and writing --------------------------------------------------------------------------


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


def slice_seed(seed: int, name: str) -> int:
    """A stable per-slice seed, the same in every process and Python version (unlike hash())."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{name}".encode()).digest()[:8], "big")


def selection(n: int, k: int, rng: random.Random) -> Iterator[int]:
    """Indices of k draws from n examples: full shuffled passes, then a sample without replacement."""
    passes, rest = divmod(k, n) if n else (0, 0)
    for _ in range(passes):
        order = array("q", range(n))  # 8 bytes an index; a list of ints takes about 40
        rng.shuffle(order)
        yield from order
    if rest:
        yield from rng.sample(range(n), rest)


def _lines(data: SliceData, index: _Index, k: int, seed: int, rank: int, fd: int) -> Iterator[tuple[float, int, bytes]]:
    """The slice's output lines with their interleaving keys (fraction of the file, slice rank)."""
    head = b'{"slice":' + json.dumps(data.name, ensure_ascii=False).encode() + b","
    offsets, last = index.offsets, len(index.offsets) - 2
    pread, twice_k = os.pread, 2 * k
    for j, i in enumerate(selection(len(offsets) - 1, k, random.Random(slice_seed(seed, data.name)))):
        start, size = offsets[i], offsets[i + 1] - offsets[i]
        line = pread(fd, size, start)
        if len(line) != size:
            raise InvalidInput([Problem(str(data.path), i + 1, 1, "error",
                                        f"slice '{data.name}' changed while it was being mixed; run again")])
        if index.missing_newline and i == last:
            line += b"\n"
        yield (2 * j + 1) / twice_k, rank, head + line[1:]


def _atomic_writer(target: Path):
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    return os.fdopen(fd, "wb"), Path(tmp)


def _write_json(target: Path, value: dict) -> None:
    f, tmp = _atomic_writer(target)
    try:
        with f:
            f.write((json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_mixture(out_dir: Path, slices: Sequence[SliceData], allocation: Allocation, seed: int,
                  config: Path | str | None = None, preferences: Sequence[SliceData] = ()) -> dict:
    """Write ``mixture.jsonl`` and ``manifest.json`` under out_dir (atomically). Returns the manifest.

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
    manifest = plan(allocation, seed, slices, config, {n: i.sha256 for n, i in indexes.items()})
    try:
        manifest |= _write(out_dir, by_name, indexes, allocation, seed)
        if preferences:
            manifest["preferences"] = _write_preferences(out_dir, preferences)
        # The manifest comes last: it vouches for the mixture file written above.
        _write_json(out_dir / MANIFEST_FILE, manifest)
    except OSError as exc:
        raise OigError(f"cannot write the mixture to {out_dir}: {exc.strerror or exc}") from exc
    return manifest


def _write(out_dir: Path, by_name: dict[str, SliceData], indexes: dict[str, _Index], allocation: Allocation,
           seed: int) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    # --- stream the interleaved lines into a temp file, hashing as it goes ------------------------
    target = out_dir / MIXTURE_FILE
    f, tmp = _atomic_writer(target)
    digest = hashlib.sha256()
    try:
        with f, ExitStack() as stack:
            streams = []
            for rank, share in enumerate(allocation.slices):
                if share.count:
                    data = by_name[share.name]
                    fd = os.open(data.path, os.O_RDONLY)
                    stack.callback(os.close, fd)
                    streams.append(_lines(data, indexes[share.name], share.count, seed, rank, fd))
            buffer: list[bytes] = []
            size = 0
            for _, _, line in heapq.merge(*streams):
                buffer.append(line)
                size += len(line)
                if size >= _WRITE_CHUNK:
                    chunk = b"".join(buffer)
                    f.write(chunk)
                    digest.update(chunk)
                    buffer, size = [], 0
            chunk = b"".join(buffer)
            f.write(chunk)
            digest.update(chunk)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"mixture": MIXTURE_FILE, "sha256": digest.hexdigest()}


def _write_preferences(out_dir: Path, slices: Sequence[SliceData]) -> dict:
    target = out_dir / PREFERENCES_FILE
    f, tmp = _atomic_writer(target)
    digest = hashlib.sha256()
    try:
        with f:
            for data in slices:
                head = b'{"slice":' + json.dumps(data.name, ensure_ascii=False).encode() + b","
                with open(data.path, "rb") as src:
                    for line in src:
                        out = head + line[1:]  # each line is a compact JSON object: splice the slice in
                        f.write(out)
                        digest.update(out)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"file": PREFERENCES_FILE, "sha256": digest.hexdigest(), "total": sum(s.count for s in slices),
            "slices": [{"name": s.name, "count": s.count, "sha256": s.sha256, "pins": list(s.pins)} for s in slices]}


def plan(allocation: Allocation, seed: int, slices: Sequence[SliceData] = (), config: Path | str | None = None,
         checksums: dict[str, str] | None = None) -> dict:
    """The manifest's content without the mixture file: what ``--plan --format json`` prints."""
    by_name = {s.name: s for s in slices}
    rows = []
    for s in allocation.slices:
        data = by_name.get(s.name)
        rows.append({
            "name": s.name, "available": s.available, "weight": s.weight, "share": s.share, "count": s.count,
            "epochs": s.epochs,
            "sha256": (checksums or {}).get(s.name) or (data.sha256 if data else None) or None,
            "pins": list(data.pins) if data else [],
        })
    return {"config": None if config is None else str(config), "seed": seed, "total": allocation.total,
            "slices": rows, "warnings": list(allocation.warnings)}


# --- the table ------------------------------------------------------------------------------------

COLUMNS = ("slice", "available", "weight", "share", "count", "epochs")


def table_rows(allocation: Allocation) -> list[tuple[str, ...]]:
    """One row of text cells per slice, then the total."""
    rows = [(s.name, f"{s.available:,}", "-" if s.weight is None else f"{s.weight:g}", f"{s.share:.1%}",
             f"{s.count:,}", f"{s.epochs:.2f}") for s in allocation.slices]
    available = sum(s.available for s in allocation.slices)
    epochs = allocation.total / available if available else 0.0
    share = sum(s.share for s in allocation.slices)
    rows.append(("total", f"{available:,}", "", f"{share:.1%}", f"{allocation.total:,}", f"{epochs:.2f}"))
    return rows


def render_text(allocation: Allocation) -> str:
    rows = [COLUMNS, *table_rows(allocation)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _md(cell: str) -> str:
    return cell.replace("|", "\\|").replace("`", "'")


def render_markdown(allocation: Allocation, title: str = "oig mix") -> str:
    """A GitHub-flavoured Markdown table, as the PR workflow shows it in the step summary."""
    lines = [f"### {title}: {allocation.total:,} examples\n", "| " + " | ".join(COLUMNS) + " |",
             "|:---|---:|---:|---:|---:|---:|"]
    rows = table_rows(allocation)
    for r in rows[:-1]:
        lines.append("| " + " | ".join(_md(c) for c in r) + " |")
    lines.append("| " + " | ".join(f"**{c}**" if c else "" for c in rows[-1]) + " |")
    if allocation.warnings:
        lines.append("")
        lines += [f"- ⚠️ {_md(w)}" for w in allocation.warnings]
    return "\n".join(lines) + "\n"


# --- the stage --------------------------------------------------------------------------------------


@dataclass
class MixResult:
    allocation: Allocation
    manifest: dict  # the manifest written, or the plan (no mixture sha256) with plan_only
    out_dir: Path | None


def mix(data_dir: Path, config_path: Path, out_dir: Path | None, *, total: int | None = None,
        seed: int | None = None, allow_local: bool = False, plan_only: bool = False) -> MixResult:
    """``oig mix``: slices and training.yaml in, mixture.jsonl and manifest.json out."""
    from oig.data.config import load_training_config
    from oig.data.fetch import SourceOptions
    from oig.data.sources import materialize, materialize_preferences
    from oig.data.validate import ValidateOptions, load_slices

    data_dir, config_path = Path(data_dir), Path(config_path)
    base_dir = data_dir.parent  # relative links in slice files are relative to the repository root
    # --- the slices and the configuration ---------------------------------------------------------
    slices = load_slices(data_dir, ValidateOptions(allow_local=allow_local, base_dir=base_dir))
    config = load_training_config(config_path, slice_names={s.name for s in slices})
    seed = config.seed if seed is None else seed
    # --- every slice as JSONL (a slice holding only preference pairs takes no part in the SFT mix) --
    opts = SourceOptions(allow_local=allow_local, base_dir=base_dir)
    materialized = [materialize(s, opts) for s in slices if s.io_pairs or s.huggingface or s.openai_jsonl]
    # --- how many examples of each ----------------------------------------------------------------
    if not materialized and any(s.has_preferences for s in slices):  # preference pairs only: DPO alone
        allocation = Allocation(total=0, slices=[], warnings=["no slice has SFT examples: the mixture is empty "
                                                              "and only the preference pairs are written"])
    else:
        allocation = allocate({m.name: m.count for m in materialized}, config.mixture,
                              config.mixture_total if total is None else total, where=str(config_path))
    if plan_only or out_dir is None:
        return MixResult(allocation, plan(allocation, seed, materialized, config_path), None)
    # --- the mixture and its manifest -------------------------------------------------------------
    preferences = [materialize_preferences(s, opts) for s in slices if s.has_preferences]
    manifest = write_mixture(Path(out_dir), materialized, allocation, seed, config_path, preferences)
    return MixResult(allocation, manifest, Path(out_dir))
