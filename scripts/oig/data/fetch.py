"""Fetching links from data files written by strangers, safely, into a content-addressed cache.

Policy (``check_url``): https only, to public addresses. The host is resolved and every address it
resolves to must be globally routable: loopback, private, link-local, CGNAT, multicast, reserved and
cloud-metadata addresses are refused, also when spelled as IPv4-mapped, 6to4 or NAT64 IPv6. The
connection then goes to the very address that was checked (the name only travels in the Host header
and TLS SNI), so a DNS answer that changes between check and connect cannot slip in a private
address. Redirects are followed by hand, at most 5, and every hop is checked again.

Time: each read times out after ``timeout_s``, and the whole download (redirects included) has a
deadline, ``download_deadline``: a server that drips a byte a second never lets one read time out,
but it cannot hold a run for hours.

``allow_local`` (tests, private mirrors) lifts part of this: local paths (relative to the base
folder), ``file:`` URLs, plain http, and loopback/private/CGNAT addresses are accepted. Link-local and
metadata addresses, multicast and reserved ranges stay refused: no data source lives there.

Cache layout (``$OIG_CACHE_DIR``, default ``~/.cache/oig``)::

    blobs/ab/<sha256>      content, named by its sha256
    urls/<sha256(url)>     {"url", "sha256"}: what a link resolved to last time
    tmp/                   partial downloads; renamed into blobs/ only once complete and verified
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import socket
import ssl
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urljoin, urlsplit

from oig.errors import FetchError
from oig.files import write_bytes_atomic

MAX_REDIRECTS = 5
CHUNK = 1024 * 1024  # 1 MiB per read and hash update
# The deadline of a whole download: DEADLINE_BASE_S, plus its size (the declared length, else the size
# cap) at MIN_BYTES_PER_S. The 2 GiB default cap gives about 39 minutes; a 10 MiB file, 5 minutes 10 s.
DEADLINE_BASE_S = 300.0  # connecting, redirects and a slow start
MIN_BYTES_PER_S = 1024 * 1024  # 1 MiB/s: the slowest average rate a large download may have
SHA256 = re.compile(r"[0-9a-f]{64}")
HF_HOST = "huggingface.co"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud instance-metadata services: credentials live there. Refused even under allow_local.
METADATA = frozenset(map(ipaddress.ip_address, (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
    "169.254.170.2",  # AWS ECS task credentials
    "fd00:ec2::254",  # AWS over IPv6
    "100.100.100.200",  # Alibaba Cloud
)))
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Hosts spelled as bare numbers (2130706433, 0177.0.0.1, 0x7f.1) are refused outright: resolvers read
# them as addresses in ways that differ between libraries.
ODD_NUMERIC_HOST = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)(?:\.(?:0[xX][0-9a-fA-F]*|[0-9]+))*\.?")


# --- the URL policy ------------------------------------------------------------------------------


def is_local_link(link: str) -> bool:
    """A plain path or a file: URL, as opposed to a network link."""
    try:
        scheme = urlsplit(link).scheme.lower()
    except ValueError:  # "https://[::1" and the like: a broken network link, refused later
        return False
    # A one-letter scheme is a Windows drive letter (C:\data), still a path.
    return not scheme or scheme == "file" or len(scheme) == 1


def _unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, NAT64), or the address itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return ip.ipv4_mapped
        if ip.sixtofour:
            return ip.sixtofour
        if ip in NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def address_problem(ip: IPAddress, allow_local: bool) -> str | None:
    """Why a connection to ``ip`` is refused, or None."""
    inner = _unwrap(ip)
    shown = str(ip) if inner == ip else f"{ip} ({inner})"
    if ip in METADATA or inner in METADATA:
        return f"{shown} is a cloud metadata address"
    # ::1 sits inside IPv6's reserved ::/8, hence the loopback exception.
    for kind, bad in (("link-local", inner.is_link_local), ("multicast", inner.is_multicast),
                      ("unspecified", inner.is_unspecified), ("reserved", inner.is_reserved and not inner.is_loopback)):
        if bad:
            return f"{shown} is a {kind} address"
    if inner.is_global:
        return None
    if allow_local and (inner.is_loopback or inner.is_private or inner in CGNAT):
        return None
    kind = "loopback" if inner.is_loopback else "CGNAT" if inner in CGNAT else "private"
    return f"{shown} is a {kind} address (only public hosts are allowed)"


@dataclass(frozen=True)
class _Target:
    url: str  # as given, for messages and relative redirects
    scheme: str
    host: str  # the name, for the Host header and TLS SNI
    port: int
    address: IPAddress  # the checked address the connection goes to
    path: str  # path and query, as sent


def _check_network_url(url: str, allow_local: bool) -> _Target:
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise FetchError("links must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchError(f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise FetchError(f"links must be https URLs, not {scheme}:")
    if scheme == "http" and not allow_local:
        raise FetchError("links must use https, not http")
    if "@" in parts.netloc:
        raise FetchError("links must not contain a user name or password; credentials never go in data files")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise FetchError("the link has no host name")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is None and ODD_NUMERIC_HOST.fullmatch(host):
        raise FetchError(f"write the host name, not a numeric address in an unusual spelling ({host})")
    port = port or (443 if scheme == "https" else 80)
    addresses = [literal] if literal is not None else _resolve(host, port)
    for ip in addresses:
        why = address_problem(ip, allow_local)
        if why:
            via = "" if literal is not None else f"{host} resolves to "
            shown = f"[{host}]" if ":" in host else host
            raise FetchError(f"refused {scheme}://{shown}: {via}{why}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return _Target(url=url, scheme=scheme, host=host, port=port, address=addresses[0], path=path)


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise FetchError(f"cannot resolve host {host}: {getattr(exc, 'strerror', None) or exc}") from None
    found: list[IPAddress] = []
    for info in infos:
        # Scope ids (fe80::1%eth0) are not part of the address.
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in found:
            found.append(ip)
    if not found:
        raise FetchError(f"cannot resolve host {host}: no addresses")
    return found


def check_url(url: str, allow_local: bool) -> None:
    """Raise FetchError when ``url`` may not be fetched. Resolves the host: this does DNS lookups."""
    if is_local_link(url):
        if not allow_local:
            kind = "file: URLs" if urlsplit(url).scheme.lower() == "file" else "local paths"
            raise FetchError(f"links must be https URLs; {kind} need --allow-local-sources")
        return
    _check_network_url(url, allow_local)


def local_path(link: str, base_dir: Path) -> Path:
    """The file a local link names: a path relative to ``base_dir``, an absolute path or a file: URL."""
    parts = urlsplit(link)
    if parts.scheme.lower() == "file":
        if parts.netloc not in ("", "localhost"):
            raise FetchError(f"file: URLs name a file on this machine, not on {parts.netloc}")
        return Path(unquote(parts.path))
    return Path(base_dir) / link


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
    deadline_s: float | None = None  # a whole download's limit; None: download_deadline() of its size


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


def download_deadline(size: int) -> float:
    """Seconds a whole download of ``size`` bytes may take: DEADLINE_BASE_S plus 1 s per MiB."""
    return DEADLINE_BASE_S + max(0, size) / MIN_BYTES_PER_S


def fetch_to_cache(url: str, opts: SourceOptions, expected_sha256: str | None = None, *,
                   max_bytes: int | None = None, immutable: bool = False,
                   redirect_allow_local: bool | None = None, deadline_s: float | None = None) -> Path:
    """The cached blob holding ``url``'s content (its file name is the sha256), fetching it if needed.

    With ``expected_sha256`` a blob already cached is used with no fetch, and a download that does
    not match is an error naming both hashes. Without it the url->sha index answers unless
    ``opts.refresh``; ``immutable`` URLs (a Hub file at a commit) always trust the index. Local
    links (under ``opts.allow_local``) are hashed each time, never indexed: files change in place.
    ``redirect_allow_local`` applies to redirect targets instead of ``opts.allow_local`` (None: same).
    ``deadline_s`` bounds the whole download (None: ``download_deadline`` of the size).
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
            with contextlib.closing(_stream(url, opts.allow_local, redirects_local, opts.timeout_s, limit,
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
    with contextlib.closing(_stream(url, opts.allow_local, redirects_local, opts.timeout_s, max_bytes,
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
            while chunk := f.read(CHUNK):
                writer.write(chunk)
        return writer.commit(expected_sha256)
    except OSError as exc:
        writer.discard()
        raise FetchError(f"{link}: cannot copy into the cache: {exc.strerror or exc}") from None
    except BaseException:
        writer.discard()
        raise


def _stream(url: str, allow_local: bool, redirect_allow_local: bool, timeout_s: float,
            max_bytes: int, deadline_s: float | None = None) -> Iterator[bytes]:
    """The body of ``url``, in chunks, after following (and checking) redirects by hand.

    The whole of it within ``deadline_s`` (None: ``download_deadline(max_bytes)``, tightened to the
    declared length when the server gives one); checked after every read, so a deadline is passed by
    at most one read timeout."""
    import httpx

    # One connection per hop, no keep-alive: a pooled connection to one checked address must never
    # carry a request for another host name.
    limits = httpx.Limits(max_keepalive_connections=0)
    timeout = httpx.Timeout(timeout_s)
    started = time.monotonic()
    allowed = download_deadline(max_bytes) if deadline_s is None else deadline_s

    def check_deadline() -> None:
        if time.monotonic() - started > allowed:
            raise FetchError(f"{url}: the download did not finish within its deadline of {allowed:g} s "
                             f"({DEADLINE_BASE_S:g} s plus 1 s per MiB); the server is too slow")

    current = url
    # trust_env=False: a proxy from the environment would connect by name, around the address check.
    with httpx.Client(timeout=timeout, limits=limits, follow_redirects=False, trust_env=False,
                      verify=_tls_context()) as client:
        for hop in range(MAX_REDIRECTS + 1):
            check_deadline()
            try:
                target = _check_network_url(current, allow_local if hop == 0 else redirect_allow_local)
            except FetchError as exc:
                raise FetchError(f"{url}: {exc}" if hop == 0 else f"{url}: redirect {hop}: {exc}") from None
            try:
                with client.stream("GET", _connect_url(target), headers=_headers(target, first=hop == 0),
                                   extensions={"sni_hostname": target.host} if target.scheme == "https" else {}) as r:
                    if r.status_code in (301, 302, 303, 307, 308):
                        location = r.headers.get("location")
                        if not location:
                            raise FetchError(f"{url}: HTTP {r.status_code} redirect without a Location")
                        current = urljoin(current, location)
                        continue
                    if r.status_code != 200:
                        raise FetchError(f"{url}: HTTP {r.status_code} {r.reason_phrase}".rstrip())
                    declared = r.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > max_bytes:
                        raise FetchError(f"{url} is larger than the limit of {max_bytes:,} bytes "
                                         f"({int(declared):,} bytes)")
                    if declared.isdigit() and deadline_s is None:
                        allowed = min(allowed, download_deadline(int(declared)))
                    # Pieces as they arrive, joined into CHUNKs: the deadline is checked after every read.
                    buffer = bytearray()
                    for piece in r.iter_bytes():
                        check_deadline()
                        buffer += piece
                        if len(buffer) >= CHUNK:
                            yield bytes(buffer)
                            buffer.clear()
                    if buffer:
                        yield bytes(buffer)
                    return
            except httpx.TimeoutException:
                check_deadline()
                raise FetchError(f"{url}: timed out after {timeout_s:g} s") from None
            except httpx.HTTPError as exc:
                raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from None
    raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects")


def _tls_context() -> ssl.SSLContext | bool:
    """Certificates are checked against the host name (sent as SNI), not the address connected to.
    SSL_CERT_FILE names a CA bundle for private mirrors; otherwise httpx's default (certifi)."""
    cafile = os.environ.get("SSL_CERT_FILE")
    if not cafile:
        return True
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise FetchError(f"SSL_CERT_FILE={cafile}: cannot load certificates: {exc}") from None


def _connect_url(target: _Target) -> str:
    host = f"[{target.address}]" if target.address.version == 6 else str(target.address)
    return f"{target.scheme}://{host}:{target.port}{target.path}"


def _headers(target: _Target, first: bool) -> dict[str, str]:
    default = 443 if target.scheme == "https" else 80
    name = f"[{target.host}]" if ":" in target.host else target.host
    headers = {"Host": name if target.port == default else f"{name}:{target.port}",
               "Accept-Encoding": "identity", "User-Agent": "oig"}
    headers.update(_auth_headers(target.scheme, target.host, first))
    return headers


def _auth_headers(scheme: str, host: str, first: bool) -> dict[str, str]:
    """HF_TOKEN (gated or private datasets) goes to the Hub itself only, never along a redirect."""
    token = os.environ.get("HF_TOKEN")
    if token and first and scheme == "https" and host.lower() == HF_HOST:
        return {"Authorization": f"Bearer {token}"}
    return {}

