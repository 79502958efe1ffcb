"""Fixtures every test may use. Test helpers that are not fixtures live in their own modules
(``servers.py``: local HTTP servers)."""

from __future__ import annotations

import pytest
from servers import LocalServer


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """No test writes to the user's cache or sends Hub telemetry."""
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("OIG_CACHE_DIR", str(tmp_path_factory.mktemp("oig-cache")))


@pytest.fixture
def local_server():
    """A factory: ``local_server(routes)`` starts a LocalServer that stops when the test ends."""
    started: list[LocalServer] = []

    def start(routes=None, tls=None) -> LocalServer:
        server = LocalServer(routes, tls)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tests that generate with the tiny model use one torch thread: its matrices are too small to share
    out, and on a busy 2-core machine one thread is about 10x faster than torch's default pool
    (measured 0.7 s against 6-10 s for 600 tokens)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
