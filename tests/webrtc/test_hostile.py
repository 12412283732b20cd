"""A bounded hostile-input suite: a live stream survives every attack of ``bench._abuse``.

A publisher (with its stream key) and a viewer (with the operator token) are connected
through the server inside a private network namespace. Then, from the same machine:
unauthenticated reads of ``/stats`` and ``/metrics``, PATCH/DELETE of the publisher's
session without its token, malformed and abusive offers, bad room names, WHEP to rooms
that do not exist, malformed trickle, a burst of POSTs, slow clients, a pile of idle
connections, broken HTTP heads, and bad datagrams plus a flood sent to the session's UDP
port from another address. Afterwards the viewer still decodes frames, the session is
still there, no room was left behind, every refusal had the right status, nothing was
logged as a traceback. The same attacks at scale are ``make bench NAME=whip_abuse``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from bench._abuse import (
    Scale,
    answer_port,
    answer_ufrag,
    held_connections,
    http_attacks,
    malformed_http,
    slow_clients,
    udp_attacks,
)
from sansio_aio import webrtc as client
from sansio_aio.testing import LoopThread, PrivateNetwork
from tests.webrtc.support import ServeFactory, free_ports, make_offer

OPERATOR = "operator-token-0123"
KEY = "stream-key-4567"
SERVER_ADDR = "10.99.0.1"
FRAMES = 30


def _drops(workers: list[dict[str, Any]]) -> int:
    return sum(
        value
        for w in workers
        for name, value in w["drivers"].items()
        if name.startswith("webrtc_udp_dropped")
    )


@pytest.mark.slow
@pytest.mark.parametrize("udp", ["per_session", "one_port"])
async def test_live_stream_survives_hostile_clients(
    serve: ServeFactory,
    peers: LoopThread,
    netns: PrivateNetwork,
    caplog: pytest.LogCaptureFixture,
    udp: str,
) -> None:
    udp_port = 0
    if udp == "one_port":
        udp_port = await free_ports(netns, 2, SERVER_ADDR)
    config: dict[str, Any] = {
        "workers": 2,
        "tokens": (OPERATOR,),
        "keys": (("live", KEY),),
        "header_timeout": 1.0,
        "body_timeout": 1.0,
        "max_connections_per_ip": 16,
        "udp_port": udp_port,
    }
    scale = Scale(requests=10, slow_clients=4, held_connections=32, datagrams=10, flood=2000)
    caplog.set_level(logging.WARNING)
    async with serve(**config) as s:
        inner = s.inner

        async def connect() -> tuple[Any, Any, str]:
            pub = await client.publish(f"{inner}/whip/live", [client.PatternTrack()], token=KEY)
            viewer = await client.view(f"{inner}/whep/live", token=OPERATOR)
            await viewer.wait_frames(FRAMES, 20)
            return pub, viewer, pub.pc.remoteDescription.sdp

        pub, viewer, answer = await peers.run(connect(), 40)

        async def leave() -> None:
            for session in (viewer, pub):
                await session.close()

        try:
            await _attack(s, peers, caplog, pub, viewer, answer, udp_port, scale)
        finally:
            await peers.run(leave(), 20)


async def _attack(
    s: Any,
    peers: LoopThread,
    caplog: pytest.LogCaptureFixture,
    pub: Any,
    viewer: Any,
    answer: str,
    udp_port: int,
    scale: Scale,
) -> None:
    """Every attack, then the checks (the sessions are closed by the caller)."""
    server = s.server
    inner = s.inner
    assert viewer.frames >= FRAMES
    port = answer_port(answer, SERVER_ADDR)
    assert port is not None, answer
    if udp_port:
        assert port in (udp_port, udp_port + 1)
    before = _drops((await server.snapshot())["workers"])
    good = await make_offer(peers, "whip")
    host, http_port = s.url.removeprefix("http://").rsplit(":", 1)

    # HTTP, from the host's 127.0.0.1 (a different client than the peers' namespace)
    report = await http_attacks(
        s.url,
        good,
        victim=pub.location.replace(inner, s.url),
        victim_etag=pub.etag,
        token=OPERATOR,
        scale=scale,
    )
    closed_after = await slow_clients(host, int(http_port), scale)
    still_open, refused = await held_connections(host, int(http_port), scale)
    broken = await malformed_http(host, int(http_port), scale)

    # UDP, from another address inside the namespace, to the publisher's port
    sent = await peers.run(
        asyncio.to_thread(
            udp_attacks,
            (SERVER_ADDR, port),
            SERVER_ADDR,
            server_ufrag=answer_ufrag(answer),
            scale=scale,
        ),
        30,
    )
    frames_then = viewer.frames
    got = await peers.run(viewer.wait_frames(frames_then + FRAMES, 20), 30)
    after = await server.snapshot()

    r = report.results
    assert set(r["read_unauthenticated"]) == {401}, r
    assert set(r["hijack"]) <= {401, 403}, r
    assert set(r["bad_offer"]) <= {400, 413, 415, 422, 429}, r
    assert set(r["bad_room"]) <= {400, 404, 429}, r
    assert set(r["whep_nowhere"]) <= {404, 409, 429}, r
    assert set(r["bad_trickle"]) <= {400, 429}, r
    assert 429 in r["burst"], r
    assert all(t is not None and t < 6.0 for t in closed_after), closed_after
    assert refused > 0 and still_open <= 16, (still_open, refused)
    assert set(broken) <= {400, 413, 414, 431, 505, -1}, broken
    assert sum(sent.values()) > 0
    # the stream lives on: frames keep coming, the sessions and the one room are there
    assert got >= frames_then + FRAMES
    sid = pub.location.rsplit("/", 1)[1]
    assert sid in server.sessions
    assert set(server.rooms) == {"live"}
    assert _drops(after["workers"]) > before
    tracebacks = [rec for rec in caplog.records if rec.exc_info]
    assert tracebacks == [], [rec.getMessage() for rec in tracebacks]
