"""Fetching links from data files written by strangers, safely, into a content-addressed cache.

Which links may be fetched is ``oig.data.links`` (the URL policy); one HTTP download, with its
redirects, timeouts and deadline, is ``oig.data.download``. This module is the cache and the options
of a fetch (``SourceOptions``).

Cache layout (``$OIG_CACHE_DIR``, default ``~/.cache/oig``)::

    blobs/ab/<sha256>      content, named by its sha256
    urls/<sha256(url)>     {"url", "sha256"}: what a link resolved to last time
    tmp/                   partial downloads; renamed into blobs/ only once complete and verified

A download's blob is named by its content, known only once the last byte is in, so its temp file
sits in ``tmp/`` rather than beside a target (``_BlobWriter``); everything else the cache holds is
written with ``oig.files``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from oig.data import download
from oig.data.links import check_url, is_local_link, local_path
from oig.errors import FetchError
from oig.files import write_bytes_atomic

SHA256 = re.compile(r"[0-9a-f]{64}")


# --- the cache -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceOptions:
    """How links are fetched: the link policy, the cache, and the limits of one download."""

    allow_local: bool = False
    base_dir: Path = Path(".")  # local paths resolve against this (the repository root)
    cache_dir: Path | None = None  # None -> $OIG_CACHE_DIR or ~/.cache/oig
    timeout_s: float = 30.0
    max_bytes: int = 2 * 1024**3
    refresh: bool = False  # ignore the url->sha index for unpinned links
    deadline_s: float | None = None  # a whole download's limit; None: download.download_deadline() of its size


def cache_root(opts: SourceOptions) -> Path:
    if opts.cache_dir is not None:
        return Path(opts.cache_dir)
    env = os.environ.get("OIG_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "oig"


def blob_path(cache: Path, sha: str) -> Path:
    """Where content with this sha256 lives. The file's name is its sha256."""
    return cache / "blobs" / sha[:2] / sha


def _index_path(cache: Path, url: str) -> Path:
    return cache / "urls" / hashlib.sha256(url.encode()).hexdigest()


def _index_lookup(cache: Path, url: str) -> Path | None:
    try:
        entry = json.loads(_index_path(cache, url).read_bytes())
    except (OSError, ValueError):
        return None
    sha = entry.get("sha256") if isinstance(entry, dict) and entry.get("url") == url else None
    if not isinstance(sha, str) or not SHA256.fullmatch(sha):
        return None
    blob = blob_path(cache, sha)
    return blob if blob.is_file() else None


def _index_store(cache: Path, url: str, sha: str) -> None:
    write_bytes_atomic(_index_path(cache, url), json.dumps({"url": url, "sha256": sha}).encode())


class _BlobWriter:
    """A temp file in the cache that becomes a blob only when complete, within size and as expected."""

    def __init__(self, cache: Path, max_bytes: int, display: str):
        (cache / "tmp").mkdir(parents=True, exist_ok=True)
        self.cache, self.max_bytes, self.display = cache, max_bytes, display
        fd, self.tmp = tempfile.mkstemp(dir=cache / "tmp", prefix="download.")
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise FetchError(f"{self.display} is larger than the limit of {self.max_bytes:,} bytes")
        self.hash.update(chunk)
        self.file.write(chunk)

    def commit(self, expected_sha256: str | None) -> Path:
        self.file.close()
        sha = self.hash.hexdigest()
        if expected_sha256 is not None and sha != expected_sha256:
            raise FetchError(f"{self.display} has sha256 {sha}, but the slice pins sha256 {expected_sha256}: "
                             "the file changed; check it and update the pin")
        blob = blob_path(self.cache, sha)
        blob.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, blob)
        return blob

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


def fetch_to_cache(url: str, opts: SourceOptions, expected_sha256: str | None = None, *,
                   max_bytes: int | None = None, immutable: bool = False,
                   redirect_allow_local: bool | None = None, deadline_s: float | None = None) -> Path:
    """The cached blob holding ``url``'s content (its file name is the sha256), fetching it if needed.

    With ``expected_sha256`` a blob already cached is used with no fetch, and a download that does
    not match is an error naming both hashes. Without it the url->sha index answers unless
    ``opts.refresh``; ``immutable`` URLs (a Hub file at a commit) always trust the index. Local
    links (under ``opts.allow_local``) are hashed each time, never indexed: files change in place.
    ``redirect_allow_local`` applies to redirect targets instead of ``opts.allow_local`` (None: same).
    ``deadline_s`` bounds the whole download (None: ``download.download_deadline`` of the size).
    """
    cache = cache_root(opts)
    limit = opts.max_bytes if max_bytes is None else max_bytes
    if expected_sha256 is not None:
        expected_sha256 = expected_sha256.lower()
        if not SHA256.fullmatch(expected_sha256):
            raise FetchError(f"sha256 must be 64 hex digits, not {expected_sha256!r}")
        blob = blob_path(cache, expected_sha256)
        if blob.is_file():
            return blob
    if is_local_link(url):
        check_url(url, opts.allow_local)
        return _copy_local(local_path(url, opts.base_dir), url, cache, limit, expected_sha256)
    if expected_sha256 is None:
        blob = cached(url, opts, immutable=immutable)
        if blob is not None:
            return blob
    redirects_local = opts.allow_local if redirect_allow_local is None else redirect_allow_local
    try:
        writer = _BlobWriter(cache, limit, url)
        try:
            # closing(): an aborted download drops its connection now, not when the traceback is freed.
            with contextlib.closing(download.stream(url, opts.allow_local, redirects_local, opts.timeout_s, limit,
                                            opts.deadline_s if deadline_s is None else deadline_s)) as body:
                for chunk in body:
                    writer.write(chunk)
            blob = writer.commit(expected_sha256)
        except BaseException:
            writer.discard()
            raise
        _index_store(cache, url, blob.name)
    except OSError as exc:
        raise FetchError(f"cannot write to the cache in {cache}: {exc.strerror or exc}") from None
    return blob


def fetch_bytes(url: str, opts: SourceOptions, *, max_bytes: int,
                redirect_allow_local: bool | None = None, deadline_s: float | None = None) -> bytes:
    """A small network resource (an API answer), in memory and not cached: callers check it first."""
    if is_local_link(url):
        raise FetchError(f"{url}: expected a network link")
    data = bytearray()
    redirects_local = opts.allow_local if redirect_allow_local is None else redirect_allow_local
    with contextlib.closing(download.stream(url, opts.allow_local, redirects_local, opts.timeout_s, max_bytes,
                                    opts.deadline_s if deadline_s is None else deadline_s)) as body:
        for chunk in body:
            data += chunk
            if len(data) > max_bytes:
                raise FetchError(f"{url} is larger than the limit of {max_bytes:,} bytes")
    return bytes(data)


def cached(url: str, opts: SourceOptions, *, immutable: bool = False) -> Path | None:
    """The blob ``url`` resolved to last time, if still cached (never with opts.refresh, unless immutable)."""
    if opts.refresh and not immutable:
        return None
    return _index_lookup(cache_root(opts), url)


def store(url: str, data: bytes, opts: SourceOptions) -> Path:
    """Cache ``data`` as what ``url`` resolves to (content a caller fetched and checked itself)."""
    cache = cache_root(opts)
    blob = blob_path(cache, hashlib.sha256(data).hexdigest())
    if not blob.is_file():
        write_bytes_atomic(blob, data)
    _index_store(cache, url, blob.name)
    return blob


def evict(url: str, blob: Path, opts: SourceOptions) -> None:
    """Forget content that turned out unusable, so that nothing bad stays cached."""
    cache = cache_root(opts)
    with contextlib.suppress(OSError):
        if blob.parent.parent == cache / "blobs":
            blob.unlink()
    with contextlib.suppress(OSError):
        _index_path(cache, url).unlink()


def _copy_local(path: Path, link: str, cache: Path, limit: int, expected_sha256: str | None) -> Path:
    if not path.is_file():
        raise FetchError(f"{link}: no such file" + (f" (looked in {path.parent})" if path.parent.is_dir() else ""))
    try:
        writer = _BlobWriter(cache, limit, link)
    except OSError as exc:
        raise FetchError(f"cannot write to the cache in {cache}: {exc.strerror or exc}") from None
    try:
        with open(path, "rb") as f:
            while chunk := f.read(download.CHUNK):
                writer.write(chunk)
        return writer.commit(expected_sha256)
    except OSError as exc:
        writer.discard()
        raise FetchError(f"{link}: cannot copy into the cache: {exc.strerror or exc}") from None
    except BaseException:
        writer.discard()
        raise
