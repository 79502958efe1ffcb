"""The URL policy and the content-addressed cache, against hostile links and a local HTTP server."""

import hashlib
import os
import socket
import time
from pathlib import Path

import pytest
from servers import Response, redirect

from oig.data.download import _auth_headers
from oig.data.fetch import SourceOptions, blob_path, cache_root, fetch_to_cache
from oig.data.links import check_url
from oig.errors import FetchError

DATA = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
SHA = hashlib.sha256(DATA).hexdigest()


# A self-signed certificate for the name mirror.test (valid until 2126), made for this test only:
# openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 36500
#   -subj /CN=mirror.test -addext subjectAltName=DNS:mirror.test
TEST_CERT = """-----BEGIN CERTIFICATE-----
MIIBmzCCAUGgAwIBAgIUDN6ucI5OI+sxJGX9w2QQDWjRAX8wCgYIKoZIzj0EAwIw
FjEUMBIGA1UEAwwLbWlycm9yLnRlc3QwIBcNMjYxMTIzMjAxNDQwWhgPMjEyNjEw
MzAyMDE0NDBaMBYxFDASBgNVBAMMC21pcnJvci50ZXN0MFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAExr/sCbA8z87blGuFQHyyfeoDRNTPRn3dZaBru7/NFfhnws50
XGvItdj3+6d8d9hYtjK9Uc9HFadP1V5Mcn2MMaNrMGkwHQYDVR0OBBYEFHuboXym
zWY7zKbihf9EmlGXdaYiMB8GA1UdIwQYMBaAFHuboXymzWY7zKbihf9EmlGXdaYi
MA8GA1UdEwEB/wQFMAMBAf8wFgYDVR0RBA8wDYILbWlycm9yLnRlc3QwCgYIKoZI
zj0EAwIDSAAwRQIhAKSnAPvTtBOTQM+/fdT2XyaDoochL6rc9efy+iGy6vFRAiAw
ZXwD8GmVu+ScE1mvGAMwh6LWc6DESRlfwpK/OUTQCQ==
-----END CERTIFICATE-----
"""
TEST_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg+GmVojGjZa/ciz99
oPA0QSZdghFMYQLPl934kcHrnkShRANCAATGv+wJsDzPztuUa4VAfLJ96gNE1M9G
fd1loGu7v80V+GfCznRca8i12Pf7p3x32Fi2Mr1Rz0cVp0/VXkxyfYwx
-----END PRIVATE KEY-----
"""


def opts(tmp_path, **kw) -> SourceOptions:
    kw.setdefault("allow_local", True)
    kw.setdefault("cache_dir", tmp_path / "cache")
    return SourceOptions(base_dir=tmp_path, **kw)


def cached_files(cache: Path) -> list[str]:
    """Every file in the cache; empty folders (tmp/) do not count."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def fake_dns(monkeypatch, table: dict[str, list[str]]):
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in table:
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                     (a, port) if ":" not in a else (a, port, 0, 0)) for a in table[host]]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


# --- the policy ----------------------------------------------------------------------------------

REFUSED = {
    "file-url": ("file:///etc/passwd", "file: URLs need --allow-local-sources"),
    "plain-path": ("data/x.jsonl", "local paths need --allow-local-sources"),
    "parent-path": ("../../secrets.jsonl", "local paths need --allow-local-sources"),
    "http": ("http://example.com/x.jsonl", "links must use https, not http"),
    "ftp": ("ftp://example.com/x.jsonl", "links must be https URLs, not ftp:"),
    "javascript": ("javascript:alert(1)", "links must be https URLs, not javascript:"),
    "userinfo": ("https://user:secret@example.com/x", "must not contain a user name or password"),
    "no-host": ("https:///x.jsonl", "no host name"),
    "space": ("https://exa mple.com/x", "spaces or control characters"),
    "bad-port": ("https://example.com:99999/x", "not a valid URL"),
    "bad-ipv6": ("https://[::1/x", "not a valid URL"),
    "loopback": ("https://127.0.0.1/x", "127.0.0.1 is a loopback address"),
    "loopback-8": ("https://127.8.9.10/x", "loopback"),
    "private-10": ("https://10.0.0.5/x", "10.0.0.5 is a private address"),
    "private-192": ("https://192.168.1.1/x", "private"),
    "cgnat": ("https://100.64.0.1/x", "CGNAT"),
    "link-local": ("https://169.254.1.1/x", "link-local"),
    "metadata": ("https://169.254.169.254/latest/meta-data/", "cloud metadata address"),
    "metadata-v6": ("https://[fd00:ec2::254]/latest", "cloud metadata address"),
    "alibaba-metadata": ("https://100.100.100.200/latest", "cloud metadata address"),
    "ipv6-loopback": ("https://[::1]/x", "::1 is a loopback address"),
    "ipv4-mapped": ("https://[::ffff:127.0.0.1]/x", "(127.0.0.1) is a loopback address"),
    "ipv4-mapped-metadata": ("https://[::ffff:a9fe:a9fe]/x", "cloud metadata address"),
    "6to4-loopback": ("https://[2002:7f00:1::]/x", "loopback"),
    "nat64-private": ("https://[64:ff9b::a00:1]/x", "private"),
    "ipv6-ula": ("https://[fd12:3456::1]/x", "private"),
    "multicast": ("https://224.0.0.1/x", "multicast"),
    "multicast-v6": ("https://[ff02::1]/x", "multicast"),
    "reserved": ("https://240.0.0.1/x", "reserved"),
    "unspecified": ("https://0.0.0.0/x", "unspecified"),
    "decimal-ip": ("https://2130706433/x", "numeric address in an unusual spelling"),
    "decimal-ip-http": ("http://2130706433/x", "https"),
    "octal-ip": ("https://0177.0.0.1/x", "unusual spelling"),
    "hex-ip": ("https://0x7f.1/x", "unusual spelling"),
    "short-ip": ("https://127.1/x", "unusual spelling"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_refused_links(name):
    url, message = REFUSED[name]
    with pytest.raises(FetchError) as info:
        check_url(url, allow_local=False)
    assert message in str(info.value)


def test_names_are_checked_after_resolution(monkeypatch):
    fake_dns(monkeypatch, {"data.example.com": ["127.0.0.1"], "mixed.example.com": ["93.184.216.34", "10.1.1.1"],
                           "meta.example.com": ["169.254.169.254"], "ok.example.com": ["93.184.216.34"]})
    with pytest.raises(FetchError, match="data.example.com resolves to 127.0.0.1 is a loopback address"):
        check_url("https://data.example.com/x.jsonl", allow_local=False)
    with pytest.raises(FetchError, match="resolves to 10.1.1.1 is a private address"):
        check_url("https://mixed.example.com/x.jsonl", allow_local=False)
    with pytest.raises(FetchError, match="cloud metadata"):
        check_url("https://meta.example.com/x.jsonl", allow_local=True)
    check_url("https://ok.example.com/x.jsonl", allow_local=False)


def test_unresolvable_host(monkeypatch):
    def fail(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(FetchError, match="cannot resolve host nowhere.example: Name or service not known"):
        check_url("https://nowhere.example/x", allow_local=False)


def test_allow_local_lifts_local_but_not_metadata():
    check_url("http://127.0.0.1:8080/x.jsonl", allow_local=True)
    check_url("https://10.0.0.5/x.jsonl", allow_local=True)
    check_url("data/x.jsonl", allow_local=True)
    check_url("file:///tmp/x.jsonl", allow_local=True)
    for url in ("https://169.254.169.254/", "http://[fd00:ec2::254]/", "https://224.0.0.1/", "https://169.254.1.1/"):
        with pytest.raises(FetchError):
            check_url(url, allow_local=True)


def test_hf_token_goes_only_to_the_hub(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert _auth_headers("https", "huggingface.co", first=True) == {"Authorization": "Bearer hf_secret"}
    assert _auth_headers("https", "huggingface.co", first=False) == {}
    assert _auth_headers("https", "cdn-lfs.huggingface.co", first=True) == {}
    assert _auth_headers("http", "huggingface.co", first=True) == {}


# --- downloads -----------------------------------------------------------------------------------


def test_download_is_cached_by_content(tmp_path, local_server):
    srv = local_server({"/a.jsonl": DATA})
    o = opts(tmp_path)
    blob = fetch_to_cache(srv.url + "/a.jsonl", o)
    assert blob == blob_path(tmp_path / "cache", SHA) and blob.read_bytes() == DATA
    # The index answers for an unpinned link; refresh asks again.
    assert fetch_to_cache(srv.url + "/a.jsonl", o) == blob
    assert srv.paths() == ["/a.jsonl"]
    assert fetch_to_cache(srv.url + "/a.jsonl", opts(tmp_path, refresh=True)) == blob
    assert srv.paths() == ["/a.jsonl", "/a.jsonl"]
    # A pinned blob in the cache is used with no request at all, even under refresh.
    assert fetch_to_cache(srv.url + "/other.jsonl", opts(tmp_path, refresh=True), expected_sha256=SHA) == blob
    assert len(srv.requests) == 2


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("OIG_CACHE_DIR", str(tmp_path / "env-cache"))
    assert cache_root(SourceOptions()) == tmp_path / "env-cache"
    assert cache_root(SourceOptions(cache_dir=tmp_path / "x")) == tmp_path / "x"
    monkeypatch.delenv("OIG_CACHE_DIR")
    assert cache_root(SourceOptions()) == Path.home() / ".cache" / "oig"


def test_connection_goes_to_the_checked_address(tmp_path, local_server, monkeypatch):
    srv = local_server({"/a.jsonl": DATA})
    fake_dns(monkeypatch, {"mirror.test": ["127.0.0.1"]})
    fetch_to_cache(f"http://mirror.test:{srv.port}/a.jsonl", opts(tmp_path))
    assert srv.requests[0].headers["host"] == f"mirror.test:{srv.port}"


def test_https_checks_the_certificate_of_the_name_not_the_address(tmp_path, local_server, monkeypatch):
    (tmp_path / "cert.pem").write_text(TEST_CERT)
    (tmp_path / "key.pem").write_text(TEST_KEY)
    srv = local_server({"/a.jsonl": DATA}, tls=(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")))
    fake_dns(monkeypatch, {"mirror.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "cert.pem"))
    assert fetch_to_cache(f"https://mirror.test:{srv.port}/a.jsonl", opts(tmp_path)).read_bytes() == DATA
    assert srv.requests[0].headers["host"] == f"mirror.test:{srv.port}"
    # The same server, reached by a name its certificate does not name: refused.
    with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED"):
        fetch_to_cache(f"https://other.test:{srv.port}/a.jsonl", opts(tmp_path))
    monkeypatch.delenv("SSL_CERT_FILE")
    with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED"):  # not in the default CA bundle
        fetch_to_cache(f"https://mirror.test:{srv.port}/a.jsonl", opts(tmp_path, refresh=True))
    assert len(srv.requests) == 1


def test_sha_mismatch_names_both_hashes(tmp_path, local_server):
    srv = local_server({"/a.jsonl": DATA})
    wrong = "0" * 64
    with pytest.raises(FetchError) as info:
        fetch_to_cache(srv.url + "/a.jsonl", opts(tmp_path), expected_sha256=wrong)
    assert f"has sha256 {SHA}, but the slice pins sha256 {wrong}" in str(info.value)
    assert cached_files(tmp_path / "cache") == []


def test_oversize_with_content_length(tmp_path, local_server):
    srv = local_server({"/big": b"x" * 5000})
    with pytest.raises(FetchError, match="larger than the limit of 1,000 bytes"):
        fetch_to_cache(srv.url + "/big", opts(tmp_path, max_bytes=1000))
    assert cached_files(tmp_path / "cache") == []


def test_oversize_streamed_without_length_is_cut_off(tmp_path, local_server):
    sent = []

    def endless(req):
        def chunks():
            for _ in range(10_000):  # 640 MB if nobody stopped reading
                sent.append(1)
                yield b"x" * 65536
        return Response(200, chunks())

    srv = local_server({"/endless": endless})
    with pytest.raises(FetchError, match="larger than the limit of 200,000 bytes"):
        fetch_to_cache(srv.url + "/endless", opts(tmp_path, max_bytes=200_000))
    assert cached_files(tmp_path / "cache") == []
    assert len(sent) < 10_000


def test_read_timeout(tmp_path, local_server):
    def slow(req):
        def chunks():
            yield b"{"
            time.sleep(3)
            yield b"}"
        return Response(200, chunks())

    srv = local_server({"/slow": slow})
    start = time.monotonic()
    with pytest.raises(FetchError, match="timed out after 0.5 s"):
        fetch_to_cache(srv.url + "/slow", opts(tmp_path, timeout_s=0.5))
    assert time.monotonic() - start < 2.5
    assert cached_files(tmp_path / "cache") == []


def test_http_errors(tmp_path, local_server):
    srv = local_server({"/gone": Response(410, b"gone"), "/nowhere": Response(302)})
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_to_cache(srv.url + "/missing", opts(tmp_path))
    with pytest.raises(FetchError, match="HTTP 410"):
        fetch_to_cache(srv.url + "/gone", opts(tmp_path))
    with pytest.raises(FetchError, match="redirect without a Location"):
        fetch_to_cache(srv.url + "/nowhere", opts(tmp_path))
    assert cached_files(tmp_path / "cache") == []


def test_connection_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(FetchError, match="ConnectError"):
        fetch_to_cache(f"http://127.0.0.1:{port}/x", opts(tmp_path))


def test_redirects_are_followed_up_to_five(tmp_path, local_server):
    routes = {f"/r{i}": redirect(f"/r{i + 1}") for i in range(6)}
    routes["/r5"] = routes["/r6"] = DATA
    srv = local_server(routes)
    assert fetch_to_cache(srv.url + "/r0", opts(tmp_path)).read_bytes() == DATA
    srv.routes["/r5"] = redirect("/r6")
    with pytest.raises(FetchError, match="more than 5 redirects"):
        fetch_to_cache(srv.url + "/r0", opts(tmp_path, refresh=True))


def test_redirect_to_metadata_is_refused_even_with_allow_local(tmp_path, local_server):
    srv = local_server({"/a.jsonl": redirect("http://169.254.169.254/latest/meta-data/")})
    with pytest.raises(FetchError) as info:
        fetch_to_cache(srv.url + "/a.jsonl", opts(tmp_path))
    assert "a.jsonl: redirect 1: refused" in str(info.value) and "cloud metadata address" in str(info.value)
    assert cached_files(tmp_path / "cache") == []


def test_redirect_from_allowed_server_to_forbidden_address(tmp_path, local_server):
    target = local_server({"/secret": b"internal"})
    srv = local_server({"/a.jsonl": redirect(target.url + "/secret")})
    with pytest.raises(FetchError) as info:
        fetch_to_cache(srv.url + "/a.jsonl", opts(tmp_path), redirect_allow_local=False)
    assert "a.jsonl: redirect 1: links must use https" in str(info.value)
    https_target = local_server({"/a.jsonl": redirect(f"https://127.0.0.1:{target.port}/secret")})
    with pytest.raises(FetchError, match="127.0.0.1 is a loopback address"):
        fetch_to_cache(https_target.url + "/a.jsonl", opts(tmp_path), redirect_allow_local=False)
    assert target.requests == []
    assert cached_files(tmp_path / "cache") == []


def test_local_paths_need_allow_local(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_bytes(DATA)
    with pytest.raises(FetchError, match="local paths need --allow-local-sources"):
        fetch_to_cache("data/a.jsonl", opts(tmp_path, allow_local=False))
    assert fetch_to_cache("data/a.jsonl", opts(tmp_path)).read_bytes() == DATA
    assert fetch_to_cache((tmp_path / "data" / "a.jsonl").as_uri(), opts(tmp_path)).name == SHA
    with pytest.raises(FetchError, match="no such file"):
        fetch_to_cache("data/missing.jsonl", opts(tmp_path))
    with pytest.raises(FetchError, match="larger than the limit"):
        fetch_to_cache("data/a.jsonl", opts(tmp_path, max_bytes=10, cache_dir=tmp_path / "c2"))
    assert cached_files(tmp_path / "c2") == []


def test_bad_pin_format(tmp_path):
    with pytest.raises(FetchError, match="sha256 must be 64 hex digits"):
        fetch_to_cache("https://example.com/x", opts(tmp_path), expected_sha256="abc")


def test_no_temp_files_left_behind(tmp_path, local_server):
    srv = local_server({"/a": DATA})
    fetch_to_cache(srv.url + "/a", opts(tmp_path))
    assert os.listdir(tmp_path / "cache" / "tmp") == []


def test_a_dripping_server_meets_the_deadline_of_the_whole_download(tmp_path, local_server):
    """Every read gets its byte well within the read timeout; only the deadline for the whole stops it."""
    def drip(req):
        def chunks():
            for _ in range(600):  # a minute at 10 bytes/s if nobody stopped reading
                yield b"x"
                time.sleep(0.1)
        return Response(200, chunks())

    srv = local_server({"/drip": drip})
    start = time.monotonic()
    with pytest.raises(FetchError, match=r"/drip: the download did not finish within its deadline of 1 s"):
        fetch_to_cache(srv.url + "/drip", opts(tmp_path, timeout_s=5), deadline_s=1.0)
    assert time.monotonic() - start < 2.5
    assert cached_files(tmp_path / "cache") == []
    # A download that is merely slow but within its deadline still arrives whole.
    srv.routes["/slow-ok"] = lambda req: Response(200, iter([b"{", b'"a": 1', b"}\n"]))
    assert fetch_to_cache(srv.url + "/slow-ok", opts(tmp_path), deadline_s=1.0).read_bytes() == b'{"a": 1}\n'


def test_download_deadline_grows_with_the_size():
    from oig.data import download

    assert download.download_deadline(0) == download.DEADLINE_BASE_S
    assert download.download_deadline(10 * 1024**2) == download.DEADLINE_BASE_S + 10
    assert 35 * 60 < download.download_deadline(SourceOptions().max_bytes) < 45 * 60  # the 2 GiB default cap
