"""Fixtures of the WHIP/WHEP tests: a private network namespace, a loop thread for the
client peers inside it, and a live server (see ``support.py`` beside this file)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from multiprocessing import resource_tracker
from typing import Any

import pytest

from sansio_aio._backends import BACKENDS
from sansio_aio.testing import PrivateNetwork, ResourceSnapshot, await_no_leaks
from sansio_aio.webrtc import ServerConfig
from tests.webrtc.support import Served, ServeFactory, need_netns


@pytest.fixture
def netns() -> Any:
    """A fresh private network namespace (closed after the test)."""
    need_netns()
    net = PrivateNetwork()
    yield net
    net.close()


@pytest.fixture
def peers(netns: PrivateNetwork) -> Any:
    """A loop thread inside the namespace, for client peers and their HTTP."""
    lt = netns.loop_thread("peers")
    yield lt
    lt.stop()


@pytest.fixture
def serve(netns: PrivateNetwork) -> ServeFactory:
    """``async with serve(workers=2, backend="uvloop", mode="thread", **config) as s``: a
    live server (``mode="process"``: its workers are processes, inside the namespace too).

    The config's defaults hold, the rate limit (10/s, burst 20) and the connection caps
    included: a test that bursts requests from one address on purpose says so
    (``rate_limit=0``, ``max_connections_per_ip=...``)."""
    from sansio_aio.webrtc import open_server

    @contextlib.asynccontextmanager
    async def start(
        backend: str = "uvloop", mode: str = "thread", **overrides: Any
    ) -> AsyncIterator[Served]:
        base: dict[str, Any] = {"port": 0, "workers": 2, "connect_timeout": 10.0}
        base.update(overrides)
        config = replace(ServerConfig(), mode=mode, **base)
        # libuv opens a process-wide signal pipe with its first loop: not a leak.
        BACKENDS[backend]().close()
        if mode == "process":  # spawn's helper process (and its pipe) live on: not a leak
            resource_tracker.ensure_running()
        before = ResourceSnapshot.take()
        sock: socket.socket = netns.listen("127.0.0.1", 0)
        inner = f"http://127.0.0.1:{sock.getsockname()[1]}{config.prefix}"
        factory = netns.loop_factory(backend)  # by name: it crosses to worker processes
        try:
            async with open_server(config, socks=[sock], backend=factory) as server:
                yield Served(server, inner)
        finally:
            sock.close()  # the server closed it already, unless it failed to start
        # Worker threads, aiortc's decoder threads, sockets: all gone with the server.
        assert await await_no_leaks(before, 5.0) == []

    return start
