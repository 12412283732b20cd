"""Helpers of the WebRTC tests (the fixtures are in ``conftest.py`` beside this file).

Every WebRTC peer (the server's workers and the clients) runs inside a private network
namespace made by :class:`~sansio_aio.testing.PrivateNetwork` (a veth pair with
10.99.0.1/24): aioice offers that address, and no packet can leave the machine. The
HTTP server also listens on the host's 127.0.0.1 for plain protocol requests from the
test's own loop. ``offer`` and ``ANSWER`` are hand-written SDP for the room tests.
:class:`Hook` is a real local auth webhook (aiohttp on 127.0.0.1) for the auth tests;
:func:`raw_request` and :func:`until` serve the HTTP-bounds tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sansio_aio.testing import LoopThread, PrivateNetwork, privnet_unavailable_reason

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


class Served:
    """A running server: ``url`` on the host's 127.0.0.1, ``inner`` inside the netns."""

    def __init__(self, server: Any, inner: str) -> None:
        self.server = server
        self.url = server.url
        self.inner = inner


ServeFactory = Callable[..., contextlib.AbstractAsyncContextManager[Served]]


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


def offer(direction: str = "sendonly", kinds: tuple[str, ...] = ("video",)) -> str:
    lines = ["v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0"]
    for i, kind in enumerate(kinds):
        lines += [
            f"m={kind} 9 UDP/TLS/RTP/SAVPF 96",
            "c=IN IP4 0.0.0.0",
            f"a=mid:{i}",
            f"a={direction}",
            "a=rtcp-mux",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:0123456789012345678901",
            "a=candidate:1 1 udp 2130706431 10.99.0.2 5000 typ host",
            "a=candidate:2 1 udp 2130706431 0a1b2c3d-0000.local 5001 typ host",
        ]
    return "\r\n".join(lines) + "\r\n"


ANSWER = (
    "v=0\r\no=- 2 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    "a=mid:0\r\na=recvonly\r\na=rtcp-mux\r\n"
    "a=candidate:1 1 udp 2130706431 10.99.0.1 6000 typ host\r\n"
    "a=candidate:2 1 udp 2130706431 192.168.7.7 6001 typ host\r\n"
)


# ------------------------------------------------------------------ HTTP helpers


async def until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Wait until ``predicate()`` holds, re-checked every 10 ms; its value at ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def host_port(url: str) -> tuple[str, int]:
    """``(host, port)`` of an ``http://host:port/...`` URL."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    return host, int(port)


async def raw_request(url: str, request: bytes, timeout: float = 10.0) -> bytes:
    """Send ``request`` as-is to the server of ``url``; everything it sent back until it
    closed the connection (bounded by ``timeout``)."""
    host, port = host_port(url)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(1 << 20), timeout)
    finally:
        writer.close()


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> bytes | None:
    """Read until the peer closes; what it sent (``b""``: nothing), or ``None`` if still
    open after ``timeout`` seconds. A reset counts as closed."""
    data = b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for _ in range(1000):  # bounded: each round reads something, or ends
        left = deadline - loop.time()
        if left <= 0:
            return None
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except TimeoutError:
            return None
        except ConnectionError:
            return data
        if not chunk:
            return data
        data += chunk
    return None


# ------------------------------------------------------------------ a local auth webhook


class Hook:
    """A real auth webhook on 127.0.0.1: records each question, answers ``status`` with
    ``body``; while ``gate`` is set to an unset event, answers wait for it."""

    def __init__(self) -> None:
        self.url = ""
        self.calls: list[dict[str, Any]] = []
        self.status = 200
        self.body = b""
        self.gate: asyncio.Event | None = None
        self.in_flight = 0
        self.most_in_flight = 0

    async def handle(self, request: Any) -> Any:
        from aiohttp import web

        self.calls.append(await request.json())
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            return web.Response(status=self.status, body=self.body)
        finally:
            self.in_flight -= 1


@contextlib.asynccontextmanager
async def webhook_server() -> AsyncIterator[Hook]:
    """Serve a :class:`Hook` on 127.0.0.1 (an ephemeral port) on the running loop."""
    from aiohttp import web

    hook = Hook()
    app = web.Application()
    app.router.add_post("/auth", hook.handle)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        hook.url = f"http://{host}:{port}/auth"
        yield hook
    finally:
        if hook.gate is not None:
            hook.gate.set()  # let waiting answers finish
        await runner.cleanup()


async def free_ports(netns: PrivateNetwork, count: int, address: str = "10.99.0.1") -> int:
    """``P`` such that UDP ports ``P .. P+count-1`` are free on ``address`` in ``netns``
    (bounded retries; the ports are closed again, so use them at once)."""

    def find() -> int:
        for _ in range(20):
            socks: list[socket.socket] = []
            try:
                first = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(first)
                first.bind((address, 0))
                port = int(first.getsockname()[1])
                if port + count > 65535:
                    continue
                for i in range(1, count):
                    extra = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    socks.append(extra)
                    extra.bind((address, port + i))
                return port
            except OSError:
                continue
            finally:
                for sock in socks:
                    sock.close()
        raise AssertionError("no free UDP ports")

    return netns.run_inside(find)
