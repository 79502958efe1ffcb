"""Which links from data files written by strangers may be fetched: the URL policy, with no download.

Policy (``check_url``): https only, to public addresses. The host is resolved and every address it
resolves to must be globally routable: loopback, private, link-local, CGNAT, multicast, reserved and
cloud-metadata addresses are refused, also when spelled as IPv4-mapped, 6to4 or NAT64 IPv6. The
connection then goes to the very address that was checked (``Target.address``; the name only travels
in the Host header and TLS SNI), so a DNS answer that changes between check and connect cannot slip in
a private address. Every redirect hop is checked again (``oig.data.download``).

``allow_local`` (tests, private mirrors) lifts part of this: local paths (relative to the base
folder), ``file:`` URLs, plain http, and loopback/private/CGNAT addresses are accepted. Link-local and
metadata addresses, multicast and reserved ranges stay refused: no data source lives there.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from oig.errors import FetchError

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
class Target:
    url: str  # as given, for messages and relative redirects
    scheme: str
    host: str  # the name, for the Host header and TLS SNI
    port: int
    address: IPAddress  # the checked address the connection goes to
    path: str  # path and query, as sent


def check_network_url(url: str, allow_local: bool) -> Target:
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
    return Target(url=url, scheme=scheme, host=host, port=port, address=addresses[0], path=path)


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
    check_network_url(url, allow_local)


def local_path(link: str, base_dir: Path) -> Path:
    """The file a local link names: a path relative to ``base_dir``, an absolute path or a file: URL."""
    parts = urlsplit(link)
    if parts.scheme.lower() == "file":
        if parts.netloc not in ("", "localhost"):
            raise FetchError(f"file: URLs name a file on this machine, not on {parts.netloc}")
        return Path(unquote(parts.path))
    return Path(base_dir) / link
