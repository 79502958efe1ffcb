"""A slice's examples, from wherever they live, as one JSONL file of conversations in the cache.

``materialize`` is what mixing and training call; ``check_remote`` is what ``oig validate --remote``
calls. Fetching and the URL policy are in ``oig.data.fetch``, Hugging Face datasets in ``oig.data.hf``, and
row conversion in ``oig.data.formats``.

A materialized slice is cached under a key made of the slice's content (name, inline pairs, every
entry's fields), what each remote entry resolved to (a pinned sha is taken as given, with no network)
and the converter version: a rerun of a pinned slice neither fetches nor converts anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import BinaryIO

from oig.data import fetch, formats, hf, links
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
                pins[i]["rows"] = _convert(hf.iter_rows(res, opts), _row_converter(e.columns), e.limit,
                                           f"HuggingFace[{i}] {e.link}", writer, problems, display)
        offset = len(slice.huggingface)
        for i, e in enumerate(slice.openai_jsonl):
            with _about("OpenAIJsonl", i, e.link):
                blob = fetch.fetch_to_cache(e.link, opts, expected_sha256=e.sha256)
            before = len(problems)
            try:
                pins[offset + i]["rows"] = _convert(formats.iter_jsonl(blob), formats.convert_openai_line, e.limit,
                                                    f"OpenAIJsonl[{i}] {e.link}", writer, problems, display)
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
               "Preferences": slice.preferences, "pins": [{k: v for k, v in p.items() if k != "rows"} for p in pins]}
    key = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def fill(writer: _Writer, problems: list[Problem]) -> None:
        inline = ((f"Preferences[{i}]", p) for i, p in enumerate(slice.preferences))
        _convert(inline, formats.convert_preference, None, "", writer, problems, display)  # type: ignore[arg-type]
        for i, e in enumerate(slice.preference_links):
            with _about("Preferences", i, e.link):
                blob = fetch.fetch_to_cache(e.link, opts, expected_sha256=e.sha256)
            pins[i]["rows"] = _convert(formats.iter_jsonl(blob), formats.convert_preference, e.limit,  # type: ignore[arg-type]
                                       f"Preferences[{i}] {e.link}", writer, problems, display)

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


def check_remote(slice: Slice, opts: SourceOptions, sample: int = 20) -> list[Problem]:
    """Resolve every link (existence, pins) and convert a sample of rows; problems, each with a fix."""
    file = str(slice.path)
    problems: list[Problem] = []

    def add(severity: str, message: str) -> None:
        problems.append(Problem(file, 0, 0, severity, message))

    for i, e in enumerate(slice.huggingface):
        where = f"HuggingFace[{i}] {e.link}"
        try:
            if e.columns:
                formats.layout_of_columns(e.columns)
            res = hf.resolve(e, opts)
            _sample(hf.iter_rows(res, opts), _row_converter(e.columns), min(sample, e.limit or sample), where, add)
        except FetchError as exc:
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
        where = f"{section}[{i}] {e.link}"
        try:
            blob = fetch.fetch_to_cache(e.link, opts, expected_sha256=e.sha256)
        except FetchError as exc:
            add("error", _about_message(section, i, e.link, exc))
            continue
        if not e.sha256:
            add("warning", f"{where} is not pinned: add `sha256: {blob.name}` so the data cannot change "
                           "under the model")
        _sample(formats.iter_jsonl(blob), convert, min(sample, e.limit or sample), where, add)  # type: ignore[arg-type]
    return problems


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
        "HuggingFace": [asdict(e) for e in slice.huggingface],
        "OpenAIJsonl": [asdict(e) for e in slice.openai_jsonl],
        "pins": [{k: v for k, v in p.items() if k != "rows"} for p in pins],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


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

    def write(self, line: bytes) -> None:
        self.f.write(line)
        self.hash.update(line)
        self.count += 1
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
             where: str, writer: _Writer, problems: list[Problem], display: str) -> int:
    """Convert rows into the writer (only while there are no problems). Returns the rows seen."""
    seen = 0
    # islice stops before pulling the row past the limit: no download of a file that is not needed.
    for at, row in islice(_readable(rows), limit):
        seen += 1
        try:
            line = _line(row, convert)
        except ValueError as exc:
            problems.append(Problem(display, 0, 0, "error", ": ".join(filter(None, (where, at, str(exc))))))
            if len(problems) >= MAX_ROW_PROBLEMS:
                problems.append(Problem(display, 0, 0, "error", f"stopped after {MAX_ROW_PROBLEMS} problems"))
                raise InvalidInput(problems) from None
            continue
        if not problems:
            writer.write(line)
    if seen == 0 and where:
        problems.append(Problem(display, 0, 0, "error", f"{where}: no rows"))
    return seen


def _sample(rows: Iterator[tuple[str, object]], convert: Callable[[object], Record], n: int, where: str,
            add: Callable[[str, str], None]) -> None:
    seen = 0
    for at, row in islice(_readable(rows), max(n, 0)):
        seen += 1
        try:
            _line(row, convert)
        except ValueError as exc:
            add("error", ": ".join(filter(None, (where, at, str(exc)))))
    if seen == 0 and n > 0:
        add("error", f"{where}: no rows")
