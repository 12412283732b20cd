"""Stray datagrams and silent peers: a live stream survives the first, drops the second.

A real aiortc publisher and a viewer counting decoded frames connect through the server
inside the test's private network namespace; an attacker socket, also inside it, sends
to the publisher's session port (read from the answer's candidates): an empty datagram,
1600 bytes starting 0x80, garbage, malformed STUN, a flood before ICE completes. The
viewer keeps decoding, the drop counters rise, no traceback is logged. Each case runs
with a socket per session and with the worker's shared port. A publisher that vanishes
(killed, no DELETE) is dropped after ``disconnected_timeout`` seconds of silence.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aioice import stun
from yarl import URL

from sansio_aio import webrtc as client
from sansio_aio.testing import LoopThread, PrivateNetwork
from tests.helpers import ROOT
from tests.webrtc.support import ServeFactory, free_ports, make_offer

FRAMES = 30
TIMEOUT = 20.0
SERVER = "10.99.0.1"
COOKIE = 0x2112A442
SDP = {"Content-Type": "application/sdp"}


# ---------------------------------------------------------------------- helpers


async def until(check: Callable[[], Awaitable[bool]], timeout: float, every: float = 0.05) -> bool:
    """Re-check ``check`` every ``every`` s until it holds or ``timeout`` passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(every)
    return True


async def driver_stats(s: Any, room: str | None = None) -> dict[str, int]:
    """The WebRTC driver's counters on the worker of ``room`` (else worker 0)."""
    worker = s.server.rooms[room].worker if room is not None else 0
    stats: dict[str, int] = await s.server.rt.run_on_worker(
        worker, lambda core: dict(core.drivers[0].stats())
    )
    return stats


def attacker(netns: PrivateNetwork) -> socket.socket:
    """A UDP socket inside the namespace (its own port: a source the server never saw)."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((SERVER, 0))
        sock.settimeout(2.0)
        return sock

    return netns.run_inside(make)


def session_port(answer: str) -> int:
    """The port of the answer's host candidate on the namespace's address."""
    for line in answer.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            if parts[4] == SERVER:
                return int(parts[5])
    raise AssertionError(f"no candidate on {SERVER} in the answer:\n{answer}")


def ice_credentials(sdp: str) -> tuple[str, str]:
    """``(ufrag, pwd)`` of an SDP."""
    ufrag = pwd = ""
    for line in sdp.splitlines():
        if line.startswith("a=ice-ufrag:"):
            ufrag = line.split(":", 1)[1].strip()
        elif line.startswith("a=ice-pwd:"):
            pwd = line.split(":", 1)[1].strip()
    return ufrag, pwd


def stun_raw(kind: int, attrs: bytes, cookie: int = COOKIE) -> bytes:
    """A STUN message with the given attribute bytes (no integrity)."""
    return struct.pack("!HHI", kind, len(attrs), cookie) + os.urandom(12) + attrs


def attr(kind: int, value: bytes) -> bytes:
    """One STUN attribute, padded."""
    return struct.pack("!HH", kind, len(value)) + value + b"\x00" * (-len(value) % 4)


def stray_datagrams() -> dict[str, tuple[bytes, str]]:
    """Name -> (datagram, the drop counter it raises)."""
    return {
        "empty": (b"", "empty"),
        "long_rtp": (b"\x80" + os.urandom(1599), "oversize"),
        "long_dtls": (b"\x17" + os.urandom(1599), "oversize"),
        "rtp_garbage": (b"\x80\x60" + os.urandom(200), "unverified"),
        "dtls_garbage": (b"\x16\xfe\xfd" + os.urandom(100), "unverified"),
        # right cookie, attributes aioice cannot unpack (struct.error before the guard)
        "short_priority": (stun_raw(0x0001, attr(0x0024, b"\x01\x02")), "malformed_stun"),
        "short_controlling": (stun_raw(0x0001, attr(0x802A, b"\x01\x02\x03")), "malformed_stun"),
        "short_error_code": (stun_raw(0x0111, attr(0x0009, b"\x01")), "malformed_stun"),
        "bad_utf8_username": (stun_raw(0x0001, attr(0x0006, b"\xff\xfe\xfd")), "malformed_stun"),
        "wrong_cookie": (stun_raw(0x0001, b"", cookie=0x01020304), "malformed_stun"),
        "short_header": (b"\x00\x01\x00\x00\x21\x12", "malformed_stun"),
        "stray_response": (stun_raw(0x0101, b""), "unknown"),
    }


def no_tracebacks(records: list[logging.LogRecord]) -> list[str]:
    """Messages of records that carry or are a traceback, or are errors."""
    return [
        r.getMessage()[:300]
        for r in records
        if r.exc_info or "Traceback" in r.getMessage() or r.levelno >= logging.ERROR
    ]


async def connect(base: str) -> tuple[client.WhipSession, client.WhipSession]:
    """A publisher and a viewer that decoded ``FRAMES`` frames (on the peers' loop)."""
    pub = await client.publish(f"{base}/whip/live", [client.PatternTrack()])
    viewer = await client.view(f"{base}/whep/live")
    await viewer.wait_frames(FRAMES, TIMEOUT)
    return pub, viewer


async def close(*sessions: client.WhipSession) -> None:
    """DELETE and close ``sessions`` (on the peers' loop)."""
    for session in sessions:
        await session.delete()
        await session.close()


def sid(session: client.WhipSession) -> str:
    """The session id of a client session."""
    return session.location.rsplit("/", 1)[1]


# ---------------------------------------------------------------------- stray datagrams


@pytest.mark.slow
@pytest.mark.parametrize("shared", [False, True], ids=["per_session", "one_port"])
async def test_stray_datagrams_do_not_end_a_live_stream(
    serve: ServeFactory,
    peers: LoopThread,
    netns: PrivateNetwork,
    caplog: pytest.LogCaptureFixture,
    shared: bool,
) -> None:
    caplog.set_level(logging.WARNING)
    udp_port = await free_ports(netns, 1) if shared else 0
    async with serve(workers=1, udp_port=udp_port) as s:
        pub, viewer = await peers.run(connect(s.inner), 40)
        assert viewer.frames >= FRAMES
        port = session_port(pub.pc.remoteDescription.sdp)
        if shared:
            assert port == udp_port
        before = await driver_stats(s, "live")
        expected: dict[str, int] = {}
        sock = attacker(netns)
        try:
            for payload, counter in stray_datagrams().values():
                sock.sendto(payload, (SERVER, port))
                name = f"webrtc_udp_dropped_{counter}"
                expected[name] = expected.get(name, 0) + 1
        finally:
            sock.close()

        async def all_dropped() -> bool:
            now = await driver_stats(s, "live")
            return all(now[name] - before[name] >= n for name, n in expected.items())

        assert await until(all_dropped, 5.0), (before, await driver_stats(s, "live"))
        frames = viewer.frames
        # the stream goes on: the viewer decodes another second of frames
        got = await peers.run(viewer.wait_frames(frames + FRAMES, TIMEOUT), 30)
        assert got >= frames + FRAMES
        assert sid(pub) in s.server.sessions and sid(viewer) in s.server.sessions
        await peers.run(close(viewer, pub), 20)
    assert no_tracebacks(caplog.records) == []


async def flood(
    s: Any,
    sock: socket.socket,
    port: int,
    counters: tuple[str, ...],
    total: int = 5000,
    chunk: int = 250,
) -> int:
    """Send ``total`` small datagrams, ``chunk`` at a time, each chunk once the server
    counted most of the previous one in ``counters`` (so the kernel drops few)."""
    payload = b"\x80\x60" + bytes(98)

    async def seen() -> int:
        stats = await driver_stats(s, "live")
        return sum(stats[c] for c in counters)

    sent = 0
    start = await seen()
    while sent < total:
        for _ in range(chunk):
            try:
                sock.sendto(payload, (SERVER, port))
                sent += 1
            except BlockingIOError:
                break

        async def caught_up(goal: int = start + sent - chunk // 4) -> bool:
            return await seen() >= goal

        await until(caught_up, 2.0, every=0.01)  # bounded: go on even if some were lost
    return await seen() - start


@pytest.mark.slow
@pytest.mark.parametrize("shared", [False, True], ids=["per_session", "one_port"])
async def test_flood_before_ice_completes_is_bounded(
    serve: ServeFactory,
    peers: LoopThread,
    netns: PrivateNetwork,
    caplog: pytest.LogCaptureFixture,
    shared: bool,
) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    caplog.set_level(logging.WARNING)
    udp_port = await free_ports(netns, 1) if shared else 0
    async with serve(workers=1, udp_port=udp_port) as s:
        base = s.inner

        async def offer() -> tuple[Any, str, str]:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTransceiver(client.PatternTrack(), direction="sendonly")
            await pc.setLocalDescription(await pc.createOffer())
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"{base}/whip/live", data=pc.localDescription.sdp, headers=SDP) as r,
            ):
                assert r.status == 201, await r.text()
                location = str(r.url.join(URL(r.headers["Location"])))
                return pc, await r.text(), location

        # The publisher posted its offer but has not applied the answer: ICE cannot
        # complete, and nothing reads the session's receive queue yet.
        pc, answer, location = await peers.run(offer(), 20)
        port = session_port(answer)
        server_ufrag, server_pwd = ice_credentials(answer)
        client_ufrag, _ = ice_credentials(pc.localDescription.sdp)

        stranger = attacker(netns)
        insider = attacker(netns)
        try:
            dropped = await flood(s, stranger, port, ("webrtc_udp_dropped_unverified",))
            assert dropped > 0
            # The insider knows the ICE password: an authenticated binding request
            # validates its address, so its flood reaches the queue, which is bounded.
            request = stun.Message(
                message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST
            )
            request.attributes["USERNAME"] = f"{server_ufrag}:{client_ufrag}"
            request.attributes["PRIORITY"] = 1853817087
            request.attributes["ICE-CONTROLLING"] = 1
            request.add_message_integrity(server_pwd.encode())
            request.add_fingerprint()
            insider.sendto(bytes(request), (SERVER, port))
            reply = stun.parse_message(insider.recv(2048))  # timeout: 2 s
            assert reply.message_class == stun.Class.RESPONSE
            counters = ("webrtc_udp_accepted", "webrtc_udp_dropped_queue_full")
            before = await driver_stats(s, "live")
            await flood(s, insider, port, counters)
            after = await driver_stats(s, "live")
            assert after["webrtc_udp_dropped_queue_full"] > before["webrtc_udp_dropped_queue_full"]
        finally:
            stranger.close()
            insider.close()

        async def finish() -> tuple[int, int]:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            pub = client.WhipSession(pc, f"{base}/whip/live", location, None)
            viewer = await client.view(f"{base}/whep/live")
            got = await viewer.wait_frames(FRAMES, TIMEOUT)
            status = await viewer.delete()
            await viewer.close()
            await close(pub)
            return got, status

        got, status = await peers.run(finish(), 40)
        assert got >= FRAMES and status == 200  # the session works after the flood
    assert no_tracebacks(caplog.records) == []


# ---------------------------------------------------------------------- silence


@pytest.mark.slow
async def test_vanished_publisher_is_dropped_after_the_timeout(
    serve: ServeFactory, peers: LoopThread, netns: PrivateNetwork
) -> None:
    # no publisher grace: the viewer ends with the publisher (test_whep_media.py has
    # the grace's own test, with a killed publisher too)
    async with serve(workers=1, disconnected_timeout=2.0, publisher_grace=0) as s:
        url = f"{s.inner}/whip/gone"
        # A publisher in a child process inside the namespace: SIGKILL stops its packets
        # at once, with no DELETE and no DTLS close.
        proc = netns.popen(
            [sys.executable, "-m", "sansio_aio.webrtc.client", "publish", url, "--seconds", "60"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:

            async def connected() -> bool:
                snap = await s.server.snapshot()
                sessions = snap["rooms"].get("gone", {}).get("sessions", [])
                return any(x["role"] == "whip" and x["state"] == "connected" for x in sessions)

            assert await until(connected, 20.0), "the publisher did not connect"
            viewer = await peers.run(client.view(f"{s.inner}/whep/gone"), 20)
            assert await peers.run(viewer.wait_frames(FRAMES, TIMEOUT), 30) >= FRAMES
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        killed = time.monotonic()
        assert await s.server.wait_until(lambda: not s.server.sessions, 8.0)
        silent_for = time.monotonic() - killed
        assert silent_for >= 1.5, f"dropped after {silent_for:.2f} s: before the timeout"
        assert silent_for <= 6.0, f"dropped after {silent_for:.2f} s"
        assert (await driver_stats(s))["webrtc_silenced"] >= 1
        await peers.run(viewer.close(), 10)


async def test_unexpected_aioice_refuses_the_session(
    serve: ServeFactory,
    peers: LoopThread,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from sansio_aio.webrtc import _udpguard

    # Fault injection: the guard now expects another aioice signature, as if aioice
    # had changed under it. The session must be refused, never opened unguarded.
    monkeypatch.setattr(_udpguard, "_GATHER_PARAMS", ["self", "component"])
    async with serve(workers=1) as s, aiohttp.ClientSession() as http:
        offer = await make_offer(peers, "whip")
        async with http.post(f"{s.url}/whip/live", data=offer, headers=SDP) as r:
            body = await r.text()
            assert r.status == 500, body
        assert "get_component_candidates" in body
        assert not s.server.sessions
        stats = await driver_stats(s)
        assert stats["webrtc_publishers"] == 0 and stats["webrtc_open_failed"] == 1
    assert any("get_component_candidates" in r.getMessage() for r in caplog.records)
