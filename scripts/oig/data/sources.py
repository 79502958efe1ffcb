"""A slice's examples, from wherever they live, as one JSONL file of conversations in the cache.

``materialize`` is what mixing and training call; ``check_remote`` is what ``oig validate --remote``
calls. Fetching and the URL policy are in ``oig.data.fetch``, Hugging Face datasets in ``oig.data.hf``, and
row conversion in ``oig.data.formats``.

A materialized slice is cached under a key made of the slice's content (name, inline pairs, every
entry's fields), what each remote entry resolved to (a pinned sha is taken as given, with no network)
and the converter version: a rerun of a pinned slice neither fetches nor converts anything.

One cohesive module: materializing and the remote check share the row conversion and its problems.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from itertools import islice
from pathlib import Path
from typing import BinaryIO

from oig.annotations import NOT_FULLY_CHECKED
from oig.data import canonical, download, fetch, formats, hf, links
from oig.data.fetch import SourceOptions
from oig.data.slices import HFEntry, JsonlEntry, Slice
from oig.errors import FetchError, InvalidInput, Problem
from oig.files import WriteError, atomic_output, write_bytes_atomic
from oig.records import Record, pair

MAX_ROW_PROBLEMS = 20  # reported at once per slice; past that the data needs a look as a whole


@dataclass(frozen=True)
class Materialized:
    name: str  # slice name
    path: Path  # a JSONL file in the cache, one record per line, exactly
    # json.dumps({"messages": [...]}, ensure_ascii=False, separators=(",", ":"))
    # IOPairs first, then HuggingFace entries in order, then OpenAIJsonl entries
    count: int  # number of lines
    sha256: str  # sha256 of that file's bytes (the slice's content hash)
    pins: list[dict]
    # one per remote entry: {"section": "HuggingFace"|"OpenAIJsonl", "link": ...,
    #  "revision": sha | "sha256": hex, "pinned": bool (True when the slice file pinned it), "rows": int}


def dumps(record: Record) -> bytes:
    """One JSONL line, exactly as materialized files hold it."""
    try:
        return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the text holds an invalid Unicode escape (a lone surrogate)") from None


def materialize(slice: Slice, opts: SourceOptions) -> Materialized:
    """The slice's conversations as one cached JSONL file. Raises FetchError or InvalidInput."""
    display = str(slice.path)

    # --- what each remote entry is: pins as given, or resolved now -----------------------------
    resolved_hf: list[hf.Resolved | None] = []
    pins: list[dict] = []
    try:
        for i, e in enumerate(slice.huggingface):
            with _about("HuggingFace", i, e.link):
                res = None if _hub_pinned(e, opts) else hf.resolve(e, opts)
            resolved_hf.append(res)
            pins.append({"section": "HuggingFace", "link": e.link, "revision": res.revision if res else e.revision,
                         "pinned": res is None, "rows": 0})
        pins += [_jsonl_pin("OpenAIJsonl", i, e, opts) for i, e in enumerate(slice.openai_jsonl)]
    except FetchError as exc:
        raise FetchError(f"{display}: {exc}") from None

    # --- a cached result for exactly this content, or convert, streaming into the cache ----------------
    def fill(writer: _Writer, problems: list[Problem]) -> None:
        inline = ((f"IOPairs[{i}]", p) for i, p in enumerate(slice.io_pairs))
        _convert(inline, lambda p: pair(p["input"], p["output"]), None, "", writer, problems, display)
        for i, (e, res) in enumerate(zip(slice.huggingface, resolved_hf, strict=True)):
            with _about("HuggingFace", i, e.link):
                res = res or hf.resolve(e, opts)
                # Canonical lines convert to themselves only when no `columns` mapping renames anything.
                _convert(hf.iter_rows(res, opts, copy_canonical=not e.columns), _row_converter(e.columns), e.limit,
                         f"HuggingFace[{i}] {e.link}", writer, problems, display, pins[i], e.max_bad_rows)
        offset = len(slice.huggingface)
        for i, e in enumerate(slice.openai_jsonl):
            with _about("OpenAIJsonl", i, e.link):
                # The blob its pin was taken from: a local file is not copied and hashed twice.
                blob = fetch.fetch_to_cache(e.link, opts, expected_sha256=pins[offset + i]["sha256"])
            before = len(problems)
            try:
                # Lines already in canonical form are copied through unparsed (oig.data.canonical).
                _convert(canonical.iter_jsonl(blob), formats.convert_openai_line, e.limit, f"OpenAIJsonl[{i}] {e.link}",
                         writer, problems, display, pins[offset + i], e.max_bad_rows)
            finally:
                if len(problems) > before and not links.is_local_link(e.link):
                    fetch.evict(e.link, blob, opts)  # the file itself is bad: keep nothing of it

    return _cached(slice, pins, "slices", _cache_key(slice, pins), opts, fill)


def materialize_preferences(slice: Slice, opts: SourceOptions) -> Materialized:
    """The slice's preference pairs (``Preferences:``) as one cached JSONL file, in TRL's conversational
    form: one ``{"prompt": [...], "chosen": [...], "rejected": [...]}`` per line, inline pairs first.
    A slice without preferences gives an empty file. Raises FetchError or InvalidInput."""
    display = str(slice.path)
    try:
        pins = [_jsonl_pin("Preferences", i, e, opts) for i, e in enumerate(slice.preference_links)]
    except FetchError as exc:
        raise FetchError(f"{display}: {exc}") from None
    content = {"converter": formats.CONVERTER_VERSION, "kind": "preferences", "name": slice.name,
               "Preferences": slice.preferences, "pins": [{k: v for k, v in p.items() if k not in ("rows", "bad_rows")} for p in pins],
               "skip": [e.max_bad_rows for e in slice.preference_links if e.max_bad_rows is not None]}
    key = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def fill(writer: _Writer, problems: list[Problem]) -> None:
        inline = ((f"Preferences[{i}]", p) for i, p in enumerate(slice.preferences))
        _convert(inline, formats.convert_preference, None, "", writer, problems, display)  # type: ignore[arg-type]
        for i, e in enumerate(slice.preference_links):
            with _about("Preferences", i, e.link):
                blob = fetch.fetch_to_cache(e.link, opts, expected_sha256=e.sha256)
            _convert(formats.iter_jsonl(blob), formats.convert_preference, e.limit,  # type: ignore[arg-type]
                     f"Preferences[{i}] {e.link}", writer, problems, display, pins[i], e.max_bad_rows)

    return _cached(slice, pins, "preferences", key, opts, fill)


def _cached(slice: Slice, pins: list[dict], folder: str, key: str, opts: SourceOptions,
            fill: Callable[[_Writer, list[Problem]], None]) -> Materialized:
    """The cached JSONL for ``key``, or ``fill`` it (atomically: ``files.atomic_output``)."""
    cache = fetch.cache_root(opts)
    display = str(slice.path)
    out = cache / folder / f"{key}.jsonl"
    meta_path = out.with_suffix(".json")
    hit = _read_meta(meta_path, out)
    if hit is not None:
        return Materialized(slice.name, out, hit["count"], hit["sha256"], hit["pins"])
    problems: list[Problem] = []
    try:
        with atomic_output(out, "wb") as f:
            writer = _Writer(f)
            fill(writer, problems)
            if problems:
                raise InvalidInput(problems)
        meta = {"name": slice.name, "count": writer.count, "sha256": writer.hash.hexdigest(), "pins": pins,
                "bytes": writer.size}
        write_bytes_atomic(meta_path, json.dumps(meta, indent=1).encode())
    except FetchError as exc:
        raise FetchError(f"{display}: {exc}") from None
    except WriteError as exc:
        raise FetchError(f"{display}: cannot write to the cache in {cache}: {exc.reason}") from None
    return Materialized(slice.name, out, writer.count, meta["sha256"], pins)


@dataclass(frozen=True)
class RemoteLimits:
    """How much of one link ``check_remote`` reads: every row, unless the link is larger than this."""

    max_bytes: int = 256 * 1024**2  # 256 MiB read per link (--remote-max-bytes)
    timeout_s: float = 300.0  # seconds per link, download and conversion together (--remote-timeout)



def check_remote(slice: Slice, opts: SourceOptions, limits: RemoteLimits = RemoteLimits(),
                 locate: Callable[[str, int], tuple[int, int]] = lambda section, i: (0, 0)) -> list[Problem]:
    """Resolve every link (existence, pins) and convert every row of it, within ``limits`` per link.

    A link larger than the limits is reported as a warning "not fully checked (N rows checked of ...)".
    ``locate(section, index)`` gives the (line, col) of the entry's link in the slice file."""
    file = str(slice.path)
    problems: list[Problem] = []
    state = {"at": (0, 0)}

    def add(severity: str, message: str) -> None:
        if severity == "error" and sum(p.severity == "error" for p in problems) == MAX_ROW_PROBLEMS:
            raise _TooMany
        problems.append(Problem(file, *state["at"], severity, message))

    for i, e in enumerate(slice.huggingface):
        state["at"] = locate("HuggingFace", i)
        where = f"HuggingFace[{i}] {e.link}"
        deadline = time.monotonic() + limits.timeout_s
        hub_opts = replace(opts, max_bytes=limits.max_bytes, deadline_s=limits.timeout_s)
        try:
            if e.columns:
                formats.layout_of_columns(e.columns)
            res = hf.resolve(e, opts)
            late = (f"{where}: {NOT_FULLY_CHECKED} ({{n:,}} rows checked of a dataset that takes longer than "
                    f"--remote-timeout {limits.timeout_s:g} s to read)")
            seen, complete = _check_rows(hf.iter_rows(res, hub_opts), _row_converter(e.columns), e.limit, where,
                                         add, deadline, late, e.max_bad_rows)
            if seen == 0 and complete:
                add("error", f"{where}: no rows")
        except _TooMany:
            _stopped(problems, file, state["at"])
            return problems
        except FetchError as exc:
            if "larger than the limit" in str(exc) or "deadline" in str(exc):
                add("warning", f"{where}: {NOT_FULLY_CHECKED} (0 rows checked of a dataset file larger than "
                               f"--remote-max-bytes {limits.max_bytes:,} or slower than --remote-timeout "
                               f"{limits.timeout_s:g} s): {exc}")
            else:
                add("error", _about_message("HuggingFace", i, e.link, exc))
            continue
        except ValueError as exc:
            add("error", f"{where}: {exc}")
            continue
        if res.dataset.folder is not None:
            if e.revision:
                add("warning", f"{where}: `revision` is ignored for a local folder; remove it")
        elif not e.revision:
            add("warning", f"{where} is not pinned: add `revision: {res.revision}` (its current commit) so "
                           "the data cannot change under the model")
        elif not hf.SHA40.fullmatch(e.revision):
            add("warning", f"{where}: `revision: {e.revision}` can move; replace it with `revision: "
                           f"{res.revision}` (the commit it points to now) to pin the data")
    jsonl_links = [("OpenAIJsonl", i, e, formats.convert_openai_line) for i, e in enumerate(slice.openai_jsonl)]
    jsonl_links += [("Preferences", i, e, formats.convert_preference) for i, e in enumerate(slice.preference_links)]
    for section, i, e, convert in jsonl_links:
        state["at"] = locate(section, i)
        where = f"{section}[{i}] {e.link}"
        stream = _JsonlStream(e.link, opts, limits, e.sha256)
        try:
            seen, _ = _check_rows(stream.rows(), convert, e.limit, where, add, stream.deadline, None,  # type: ignore[arg-type]
                                  e.max_bad_rows)
        except _TooMany:
            _stopped(problems, file, state["at"])
            return problems
        except FetchError as exc:
            add("error", _about_message(section, i, e.link, exc))
            continue
        if stream.truncated:
            add("warning", f"{where}: {NOT_FULLY_CHECKED} ({stream.rows_seen:,} rows checked of "
                           f"{stream.why}); raise the limit to check every row")
            continue
        if seen == 0:
            add("error", f"{where}: no rows")
            continue
        if e.limit is not None and seen >= e.limit:
            continue  # only the first `limit` rows are used, and all of them were checked
        digest = stream.hash.hexdigest()
        if e.sha256 and e.sha256.lower() != digest:
            add("error", f"{where}: the file's sha256 is {digest} but the slice pins sha256 {e.sha256.lower()}; "
                         "check the link, then update the pin")
        elif not e.sha256:
            add("warning", f"{where} is not pinned: add `sha256: {digest}` under this link so the data cannot "
                           "change under the model")
    return problems


class _TooMany(Exception):
    pass


def _stopped(problems: list[Problem], file: str, at: tuple[int, int]) -> None:
    problems.append(Problem(file, *at, "error", f"stopped after {MAX_ROW_PROBLEMS} problems"))


def _check_rows(rows: Iterator[tuple[str, object]], convert: Callable[[object], Record], limit: int | None,
                where: str, add: Callable[[str, str], None], deadline: float, late: str | None,
                max_bad: int | None = None) -> tuple[int, bool]:
    """Convert every row (up to ``limit``), reporting each bad one with its row and field.
    Returns (rows seen, all of them?): ``late`` (a message with {n}) ends the check past ``deadline``."""
    seen = bad = 0
    for at, row in islice(_readable(rows), limit):
        if late is not None and time.monotonic() > deadline:
            add("warning", late.format(n=seen))
            return seen, False
        seen += 1
        try:
            _line(row, convert)
        except ValueError as exc:
            message = ": ".join(filter(None, (where, at, str(exc))))
            if max_bad is None:
                add("error", message)
                continue
            bad += 1
            if bad > max_bad:
                add("error", _too_many_bad(where, max_bad, message))
                return seen, True
    if bad:
        add("warning", f"{where}: {bad:,} of {seen:,} rows do not convert and are skipped "
                       f"(on_bad_rows: skip, max_bad_rows: {max_bad})")
    return seen, True


class _JsonlStream:
    """A JSONL link's rows as its bytes arrive: no whole-file download before the first row is checked.

    Reading stops at ``limits.max_bytes`` or after ``limits.timeout_s``; ``truncated`` then says so.
    A pinned file already in the cache is read from there."""

    def __init__(self, link: str, opts: SourceOptions, limits: RemoteLimits, sha256: str | None):
        self.link, self.opts, self.limits, self.sha256 = link, opts, limits, sha256
        self.deadline = time.monotonic() + limits.timeout_s
        self.hash = hashlib.sha256()
        self.truncated, self.why, self.rows_seen, self.size = False, "", 0, 0

    def _chunks(self) -> Iterator[bytes]:
        cached = fetch.blob_path(fetch.cache_root(self.opts), self.sha256.lower()) if self.sha256 else None
        if cached is None or not cached.is_file():
            if not links.is_local_link(self.link):
                body = download.stream(self.link, self.opts.allow_local, self.opts.allow_local, self.opts.timeout_s,
                                       self.opts.max_bytes, self.limits.timeout_s + self.opts.timeout_s)
                with contextlib.closing(body):
                    yield from body
                return
            cached = fetch.fetch_to_cache(self.link, self.opts)
        with open(cached, "rb") as f:
            while chunk := f.read(download.CHUNK):
                yield chunk

    def _lines(self) -> Iterator[bytes]:
        rest = b""
        for chunk in self._chunks():
            room = self.limits.max_bytes - self.size
            if len(chunk) > room or time.monotonic() > self.deadline:
                self.truncated = True
                self.why = (f"a file larger than --remote-max-bytes {self.limits.max_bytes:,}" if len(chunk) > room
                            else f"a file that takes longer than --remote-timeout {self.limits.timeout_s:g} s to read")
                complete = (rest + chunk[:max(room, 0)]).split(b"\n")
                yield from complete[:-1] if len(chunk) > room else []
                return
            self.size += len(chunk)
            self.hash.update(chunk)
            *complete, rest = (rest + chunk).split(b"\n")
            if len(rest) > formats.MAX_LINE_BYTES:
                raise ValueError(f"a line is longer than {formats.MAX_LINE_BYTES:,} bytes")
            yield from complete
        if rest:
            yield rest

    def rows(self) -> Iterator[tuple[str, object]]:
        for number, raw in enumerate(self._lines(), 1):
            self.rows_seen = number
            item = canonical.parse_line(number, raw)  # as formats.iter_jsonl reads a line
            if item is not None:
                yield item


# --- helpers -------------------------------------------------------------------------------------


def _about_message(section: str, i: int, link: str, exc: Exception) -> str:
    """The entry an error is about, with its link named once."""
    msg = str(exc)
    return f"{section}[{i}]: {msg}" if link in msg else f"{section}[{i}] {link}: {msg}"


@contextlib.contextmanager
def _about(section: str, i: int, link: str) -> Iterator[None]:
    try:
        yield
    except FetchError as exc:
        raise FetchError(_about_message(section, i, link, exc)) from None


def _jsonl_pin(section: str, i: int, e: JsonlEntry, opts: SourceOptions) -> dict:
    """A JSONL link's pin: its sha256 as given (no network), or the sha256 of the file fetched now."""
    with _about(section, i, e.link):
        sha = e.sha256.lower() if e.sha256 else fetch.fetch_to_cache(e.link, opts).name
    return {"section": section, "link": e.link, "sha256": sha, "pinned": bool(e.sha256), "rows": 0}


def _hub_pinned(e: HFEntry, opts: SourceOptions) -> bool:
    """A Hub link at a commit sha: known with no network. Local folders are hashed every time."""
    return bool(e.revision and hf.SHA40.fullmatch(e.revision)) and hf.parse_link(e.link, opts).folder is None


def _row_converter(columns: dict | None) -> Callable[[object], Record]:
    return lambda row: formats.convert_row(row, columns)  # type: ignore[arg-type]


def _cache_key(slice: Slice, pins: list[dict]) -> str:
    content = {
        "converter": formats.CONVERTER_VERSION,
        "name": slice.name,
        "IOPairs": slice.io_pairs,
        "HuggingFace": [_fields(e) for e in slice.huggingface],
        "OpenAIJsonl": [_fields(e) for e in slice.openai_jsonl],
        "pins": [{k: v for k, v in p.items() if k not in ("rows", "bad_rows")} for p in pins],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _fields(e: HFEntry | JsonlEntry) -> dict:
    """An entry's fields for the cache key; an unset max_bad_rows is left out, so older keys still hold."""
    return {k: v for k, v in asdict(e).items() if k != "max_bad_rows" or v is not None}


def _read_meta(meta_path: Path, out: Path) -> dict | None:
    try:
        meta = json.loads(meta_path.read_bytes())
        if out.stat().st_size == meta["bytes"] and isinstance(meta["count"], int) and isinstance(meta["pins"], list):
            return meta
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


class _Writer:
    """The output file, its sha256 and line count, kept while writing."""

    def __init__(self, f: BinaryIO):
        self.f, self.hash, self.count, self.size = f, hashlib.sha256(), 0, 0

    def write(self, line: bytes, count: int = 1) -> None:
        """One line, or ``count`` lines at once."""
        self.f.write(line)
        self.hash.update(line)
        self.count += count
        self.size += len(line)


def _readable(rows: Iterator[tuple[str, object]]) -> Iterator[tuple[str, object]]:
    """Rows, with a file that stops being readable reported as one last BadRow instead of raised."""
    try:
        yield from rows
    except ValueError as exc:
        yield "", formats.BadRow(str(exc))


def _line(row: object, convert: Callable[[object], Record]) -> bytes:
    if isinstance(row, formats.BadRow):
        raise row
    return dumps(convert(row))


def _convert(rows: Iterator[tuple[str, object]], convert: Callable[[object], Record], limit: int | None,
             where: str, writer: _Writer, problems: list[Problem], display: str, pin: dict | None = None,
             max_bad: int | None = None) -> int:
    """Convert rows into the writer (only while there are no problems). Returns the rows seen.

    With ``max_bad`` (``on_bad_rows: skip``) a bad row is left out and counted in ``pin["bad_rows"]``;
    more than ``max_bad`` of them is one error."""
    seen = bad = 0
    for at, row in _limited(_readable(rows), limit):
        if isinstance(row, canonical.Lines):  # valid rows, already as dumps() writes them
            seen += row.count
            if not problems:
                writer.write(row.data, row.count)
            continue
        seen += 1
        try:
            line = _line(row, convert)
        except ValueError as exc:
            message = ": ".join(filter(None, (where, at, str(exc))))
            if max_bad is not None:
                bad += 1
                if bad <= max_bad:
                    continue
                problems.append(Problem(display, 0, 0, "error", _too_many_bad(where, max_bad, message)))
                break
            problems.append(Problem(display, 0, 0, "error", message))
            if len(problems) >= MAX_ROW_PROBLEMS:
                problems.append(Problem(display, 0, 0, "error", f"stopped after {MAX_ROW_PROBLEMS} problems"))
                raise InvalidInput(problems) from None
            continue
        if not problems:
            writer.write(line)
    if seen == 0 and where:
        problems.append(Problem(display, 0, 0, "error", f"{where}: no rows"))
    if pin is not None:
        pin["rows"] = seen
        if max_bad is not None:
            pin["bad_rows"] = bad  # skipped, in the manifest
    return seen


def _limited(rows: Iterator[tuple[str, object]], limit: int | None) -> Iterator[tuple[str, object]]:
    """The first ``limit`` rows (a run of canonical lines counts its lines), like islice: it stops
    before pulling the row past the limit, so no file that is not needed is downloaded."""
    if limit is None:
        yield from rows
        return
    left = limit
    if left <= 0:
        return
    for at, row in rows:
        if isinstance(row, canonical.Lines):
            row = row if row.count <= left else row.head(left)
            left -= row.count
        else:
            left -= 1
        yield at, row
        if left <= 0:
            return


def _too_many_bad(where: str, max_bad: int, message: str) -> str:
    return (f"{where}: more than max_bad_rows: {max_bad} rows do not convert; fix the data or raise max_bad_rows "
            f"(the row past the limit: {message.removeprefix(where + ': ')})")
