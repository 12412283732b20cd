"""Shared fixtures of the WHIP/WHEP tests, and the tests of the private network they use.

Other ``test_whip_*`` / ``test_whep_*`` / ``test_webrtc_*`` modules import the fixtures
from here. Every WebRTC peer (the server's workers and the clients) runs inside a
private network namespace made by :class:`~sansio_aio.testing._privnet.PrivateNetwork`
(a veth pair with 10.99.0.1/24): aioice offers that address, and no packet can leave
the machine. The HTTP server also listens on the host's 127.0.0.1 for plain protocol
requests from the test's own loop.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest

from sansio_aio._backends import BACKENDS
from sansio_aio.testing import (
    LoopThread,
    PrivateNetwork,
    ResourceSnapshot,
    await_no_leaks,
    privnet_unavailable_reason,
)
from sansio_aio.webrtc import ServerConfig

_REASON: list[str | None] = []


def need_netns() -> None:
    """Skip (or fail when CI=true) unless a private network namespace can be made."""
    if not _REASON:
        _REASON.append(privnet_unavailable_reason())
    reason = _REASON[0]
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the WebRTC tests cannot run: {reason}")
        pytest.skip(reason)


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


class Served:
    """A running server: ``url`` on the host's 127.0.0.1, ``inner`` inside the netns."""

    def __init__(self, server: Any, inner: str) -> None:
        self.server = server
        self.url = server.url
        self.inner = inner


ServeFactory = Callable[..., contextlib.AbstractAsyncContextManager[Served]]


@pytest.fixture
def serve(netns: PrivateNetwork) -> ServeFactory:
    """``async with serve(workers=2, backend="uvloop", **config) as s``: a live server."""
    from sansio_aio.webrtc import open_server

    @contextlib.asynccontextmanager
    async def start(backend: str = "uvloop", **overrides: Any) -> AsyncIterator[Served]:
        base = {"port": 0, "workers": 2, "connect_timeout": 10.0}
        base.update(overrides)
        config = replace(ServerConfig(), **base)
        # libuv opens a process-wide signal pipe with its first loop: not a leak.
        BACKENDS[backend]().close()
        before = ResourceSnapshot.take()
        sock: socket.socket = netns.listen("127.0.0.1", 0)
        inner = f"http://127.0.0.1:{sock.getsockname()[1]}{config.prefix}"
        factory = netns.loop_factory(BACKENDS[backend])
        async with open_server(config, socks=[sock], backend=factory) as server:
            yield Served(server, inner)
        # Worker threads, aiortc's decoder threads, sockets: all gone with the server.
        assert await await_no_leaks(before, 5.0) == []

    return start


async def make_offer(peers: LoopThread, role: str) -> str:
    """A real aiortc offer (video, plus audio for WHIP), made inside the namespace."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    from sansio_aio.webrtc import PatternTrack

    async def build() -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if role == "whip":
            pc.addTransceiver(PatternTrack(), direction="sendonly")
            pc.addTransceiver("audio", direction="sendonly")
        else:
            pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp: str = pc.localDescription.sdp
        await pc.close()
        return sdp

    return await peers.run(build(), 10)


# ------------------------------------------------------------------ the network itself


def test_private_network_is_isolated(netns: PrivateNetwork) -> None:
    def probe() -> tuple[str, bool]:
        import subprocess

        routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only a route lookup, nothing is sent
            reachable = True
        except OSError:
            reachable = False
        finally:
            s.close()
        return routes, reachable

    routes, reachable = netns.run_inside(probe)
    assert "10.99.0.0/24" in routes and "default" not in routes
    assert not reachable


async def test_loop_thread_runs_inside(netns: PrivateNetwork) -> None:
    import aioice.ice

    lt = netns.loop_thread()
    try:

        async def addresses() -> list[str]:
            return aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)

        assert await lt.run(addresses(), 5) == ["10.99.0.1"]
    finally:
        lt.stop()
