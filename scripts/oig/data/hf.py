"""Hugging Face datasets as slice sources: resolve a link to a commit and its data files, read rows.

Only data files are read (parquet, JSON lines, JSON, CSV); dataset scripts are never run. This talks
to the Hub's HTTP API through ``oig.data.fetch`` rather than huggingface_hub or datasets: those follow
redirects to any host, and this path must stay light (``oig validate --remote``)::

    GET {endpoint}/api/datasets/{repo}/revision/{revision}   -> {"sha": ..., "siblings": [{"rfilename"}]}
    GET {endpoint}/datasets/{repo}/resolve/{sha}/{file}      -> the file

Which files make a config's split follows the Hub's conventions: ``oig.data.hffiles``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from oig.data import canonical, download, fetch, formats, links
from oig.data.hffiles import pick_files, readme_configs
from oig.errors import FetchError

if TYPE_CHECKING:
    from oig.data.fetch import SourceOptions
    from oig.data.slices import HFEntry

HUB = "https://huggingface.co"
REPO = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
SHA40 = re.compile(r"[0-9a-f]{40}")
MAX_API_BYTES = 64 * 1024 * 1024  # a revision listing; ~300k files
MAX_README_BYTES = 4 * 1024 * 1024
MAX_FILES = 300_000
MAX_PATH = 1000  # characters in one file name


@dataclass(frozen=True)
class Dataset:
    """Where a dataset lives: a Hub endpoint and repo, or a local folder (allow_local only)."""

    link: str
    endpoint: str | None = None
    repo: str | None = None
    folder: Path | None = None


@dataclass(frozen=True)
class Resolved:
    dataset: Dataset
    revision: str  # the commit sha; for a local folder, a sha256 over the chosen files' contents
    files: tuple[str, ...]  # the chosen data files, relative to the repository, in reading order
    fmt: str  # parquet | jsonl | json | csv


def parse_link(link: str, opts: SourceOptions) -> Dataset:
    """The dataset a slice's ``link`` names, with no network (every request is checked when made).

    Under allow_local an existing folder wins over a Hub name of the same spelling (ORG/NAME).
    Raises FetchError for links that are not allowed."""
    if REPO.fullmatch(link) and not (opts.allow_local and (Path(opts.base_dir) / link).is_dir()):
        return Dataset(link, HUB, link)
    if links.is_local_link(link):
        links.check_url(link, opts.allow_local)
        folder = links.local_path(link, opts.base_dir)
        if not folder.is_dir():
            raise FetchError(f"{link}: no such dataset folder")
        return Dataset(link, folder=folder)
    try:
        parts = urlsplit(link)
        port = parts.port
    except ValueError:
        port, parts = -1, urlsplit("")
    match = re.fullmatch(r"/datasets/(" + REPO.pattern + r")/?", parts.path)
    hub = parts.scheme == "https" and (parts.hostname or "").lower() == "huggingface.co" and port is None
    if not match or parts.query or parts.fragment or not (hub or opts.allow_local):
        raise FetchError(f"{link}: Hugging Face links must be {HUB}/datasets/ORG/NAME (or ORG/NAME)")
    return Dataset(link, f"{parts.scheme}://{parts.netloc}", match.group(1))


def resolve(entry: HFEntry, opts: SourceOptions) -> Resolved:
    """The commit and data files of the entry's config and split. Raises FetchError."""
    ds = parse_link(entry.link, opts)
    if ds.folder is not None:
        names = _folder_files(ds.folder)
        readme = _read_local_readme(ds.folder / "README.md") if "README.md" in names else None
        files, fmt = pick_files(names, entry.config, entry.split, readme_configs(readme, entry.link))
        return Resolved(ds, _folder_digest(ds.folder, files), tuple(files), fmt)
    sha, names = _revision_info(ds, entry.revision or "main", opts)
    readme = _hub_readme(ds, sha, opts) if "README.md" in names else None
    files, fmt = pick_files(names, entry.config, entry.split, readme_configs(readme, entry.link))
    return Resolved(ds, sha, tuple(files), fmt)


def iter_rows(resolved: Resolved, opts: SourceOptions, copy_canonical: bool = False) -> Iterator[tuple[str, object]]:
    """(where, row) for every row of the chosen files, in order; files are fetched as reached.

    ``copy_canonical``: JSON lines files give runs of lines already in canonical record form as
    ``canonical.Lines`` (for a caller that converts rows with no ``columns`` mapping)."""
    for name in resolved.files:
        if resolved.dataset.folder is not None:
            path = resolved.dataset.folder / name
        else:
            path = fetch.fetch_to_cache(file_url(resolved, name), opts, immutable=True)
        try:
            rows = canonical.iter_jsonl(path) if copy_canonical and resolved.fmt == "jsonl" else \
                formats.iter_rows(path, resolved.fmt)
            for where, row in rows:
                yield f"{name} {where}", row
        except (ValueError, OSError) as exc:
            raise FetchError(f"{resolved.dataset.link}: {name}: {exc}") from None


def file_url(resolved: Resolved, name: str) -> str:
    ds = resolved.dataset
    return f"{ds.endpoint}/datasets/{ds.repo}/resolve/{resolved.revision}/{quote(name, safe='/')}"


# --- the Hub API (answers are hostile until checked) ----------------------------------------------


def _revision_info(ds: Dataset, revision: str, opts: SourceOptions) -> tuple[str, list[str]]:
    url = f"{ds.endpoint}/api/datasets/{ds.repo}/revision/{quote(revision, safe='')}"
    # A commit's listing never changes: cached for good. A branch's follows opts.refresh.
    pinned = bool(SHA40.fullmatch(revision))
    blob = fetch.cached(url, opts, immutable=pinned)
    if blob is not None:
        try:
            return parse_revision_info(blob.read_bytes(), ds.link, revision)
        except FetchError:
            pass  # a damaged cache entry: ask again
    try:
        data = fetch.fetch_bytes(url, opts, max_bytes=min(MAX_API_BYTES, opts.max_bytes))
    except FetchError as exc:
        if "HTTP 404" in str(exc) or "HTTP 401" in str(exc):
            raise FetchError(f"{ds.link}: no such dataset or revision {revision!r} (or it is private or gated; "
                             "set HF_TOKEN for gated datasets)") from None
        raise
    sha, names = parse_revision_info(data, ds.link, revision)
    fetch.store(url, json.dumps({"sha": sha, "siblings": [{"rfilename": n} for n in names]}).encode(), opts)
    return sha, names


def parse_revision_info(data: bytes, link: str, revision: str) -> tuple[str, list[str]]:
    """(commit sha, file names) from the Hub's revision answer. Raises FetchError on anything unexpected."""

    def bad(why: str) -> FetchError:
        return FetchError(f"{link}: unexpected answer from the Hub API: {why}")

    try:
        info = json.loads(data)
    except (ValueError, RecursionError):
        raise bad("not JSON") from None
    if not isinstance(info, dict):
        raise bad("not a JSON object")
    sha = info.get("sha")
    if not isinstance(sha, str) or not SHA40.fullmatch(sha):
        raise bad("`sha` is not a 40-character commit sha")
    if SHA40.fullmatch(revision) and sha != revision:
        raise bad(f"asked for commit {revision}, got {sha}")
    siblings = info.get("siblings")
    if not isinstance(siblings, list):
        raise bad("`siblings` is not a list")
    if len(siblings) > MAX_FILES:
        raise bad(f"more than {MAX_FILES:,} files")
    names = []
    for s in siblings:
        name = s.get("rfilename") if isinstance(s, dict) else None
        if not isinstance(name, str) or not _safe_name(name):
            raise bad(f"a file name is not a safe relative path: {str(name)[:80]!r}")
        names.append(name)
    return sha, names


def _safe_name(name: str) -> bool:
    parts = name.split("/")
    return (0 < len(name) <= MAX_PATH and "\\" not in name and not any(ord(c) < 32 or ord(c) == 127 for c in name)
            and all(p not in ("", ".", "..") for p in parts))


def _hub_readme(ds: Dataset, sha: str, opts: SourceOptions) -> str:
    url = f"{ds.endpoint}/datasets/{ds.repo}/resolve/{sha}/README.md"
    blob = fetch.cached(url, opts, immutable=True)
    data = blob.read_bytes() if blob is not None else fetch.fetch_bytes(url, opts, max_bytes=MAX_README_BYTES)
    text = _decode_readme(data, ds.link)
    readme_configs(text, ds.link)  # only a readable README is cached
    if blob is None:
        fetch.store(url, data, opts)
    return text


def _read_local_readme(path: Path) -> str:
    with open(path, "rb") as f:
        data = f.read(MAX_README_BYTES + 1)
    if len(data) > MAX_README_BYTES:
        raise FetchError(f"{path}: README.md is larger than {MAX_README_BYTES:,} bytes")
    return _decode_readme(data, str(path))


def _decode_readme(data: bytes, link: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FetchError(f"{link}: README.md is not UTF-8") from None


# --- local folders (allow_local) -----------------------------------------------------------------


def _folder_files(folder: Path) -> list[str]:
    names = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(root).relative_to(folder)
        for f in sorted(files):
            names.append((rel / f).as_posix())
            if len(names) > MAX_FILES:
                raise FetchError(f"{folder}: more than {MAX_FILES:,} files")
    return names


def _folder_digest(folder: Path, files: list[str]) -> str:
    """A content hash standing in for a commit sha: the materialized cache notices edited files."""
    digest = hashlib.sha256()
    for name in files:
        file_hash = hashlib.sha256()
        with open(folder / name, "rb") as f:
            while chunk := f.read(download.CHUNK):
                file_hash.update(chunk)
        digest.update(f"{name}\0{file_hash.hexdigest()}\n".encode())
    return digest.hexdigest()
