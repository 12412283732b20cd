"""Helpers of the WebRTC tests (the fixtures are in ``conftest.py`` beside this file).

Every WebRTC peer (the server's workers and the clients) runs inside a private network
namespace made by :class:`~sansio_aio.testing.PrivateNetwork` (a veth pair with
10.99.0.1/24): aioice offers that address, and no packet can leave the machine. The
HTTP server also listens on the host's 127.0.0.1 for plain protocol requests from the
test's own loop. ``offer`` and ``ANSWER`` are hand-written SDP for the room tests.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import pytest

from sansio_aio.testing import LoopThread, privnet_unavailable_reason

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
