"""One HTTP download, by hand: redirects checked hop by hop, a read timeout and a whole-download deadline.

Redirects are followed by hand, at most 5, and every hop is checked again by the URL policy
(``oig.data.links``); the connection goes to the checked address. Each read times out after
``timeout_s``, and the whole download (redirects included) has a deadline, ``download_deadline``: a
server that drips a byte a second never lets one read time out, but it cannot hold a run for hours.
HF_TOKEN goes to the Hub itself only, never along a redirect.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Iterator
from urllib.parse import urljoin

from oig.data.links import Target, check_network_url
from oig.errors import FetchError

MAX_REDIRECTS = 5
CHUNK = 1024 * 1024  # 1 MiB per read and hash update
# The deadline of a whole download: DEADLINE_BASE_S, plus its size (the declared length, else the size
# cap) at MIN_BYTES_PER_S. The 2 GiB default cap gives about 39 minutes; a 10 MiB file, 5 minutes 10 s.
DEADLINE_BASE_S = 300.0  # connecting, redirects and a slow start
MIN_BYTES_PER_S = 1024 * 1024  # 1 MiB/s: the slowest average rate a large download may have
HF_HOST = "huggingface.co"


def download_deadline(size: int) -> float:
    """Seconds a whole download of ``size`` bytes may take: DEADLINE_BASE_S plus 1 s per MiB."""
    return DEADLINE_BASE_S + max(0, size) / MIN_BYTES_PER_S


def stream(url: str, allow_local: bool, redirect_allow_local: bool, timeout_s: float,
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
                target = check_network_url(current, allow_local if hop == 0 else redirect_allow_local)
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


def _connect_url(target: Target) -> str:
    host = f"[{target.address}]" if target.address.version == 6 else str(target.address)
    return f"{target.scheme}://{host}:{target.port}{target.path}"


def _headers(target: Target, first: bool) -> dict[str, str]:
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
