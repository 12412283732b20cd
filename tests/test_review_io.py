"""Left over from the robustness review: the WebRTC cases (move to tests/webrtc/)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from sansio_aio import Runtime
from sansio_aio.testing import LoopThread
from sansio_aio.webrtc import (
    PeerClose,
    PeerFailed,
    PeerKeyframe,
    PeerOpen,
    PeerTrickle,
    WebRtcDriver,
)
from tests.helpers import T, inputs
from tests.tasks import OutputProbe
from tests.test_webrtc_support import ServeFactory, make_offer, netns, peers, serve

__all__ = ["netns", "peers", "serve"]  # fixtures used by this module

SDP = {"Content-Type": "application/sdp"}
SDP_BOGUS = "application/sdp; charset=x-bogus"  # an unknown charset: a 500 before the fix
SDP_UTF16 = "application/sdp; charset=utf-16"


async def test_garbage_peer_commands_are_refused_not_fatal(backend: str) -> None:
    """No peer connection is made here (every command is refused before aiortc)."""
    async with Runtime({"probe": OutputProbe}, backend=backend, drivers=[WebRtcDriver]) as rt:
        ref = await rt.spawn("probe")
        rt.send_nowait(
            ref,
            [
                PeerOpen(["s"], "whip", "v=0"),  # type: ignore[arg-type]
                PeerOpen("s1", None, "v=0"),  # type: ignore[arg-type]
                PeerOpen("s2", "both", "v=0"),  # type: ignore[arg-type]
                PeerTrickle({}, ()),  # type: ignore[arg-type]
                PeerTrickle("nobody", None),  # type: ignore[arg-type]
                PeerKeyframe([]),  # type: ignore[arg-type]
                PeerClose({}),  # type: ignore[arg-type]
            ],
        )
        got = await inputs(rt, 3)
        assert [type(e) for e in got] == [PeerFailed] * 3, got
        assert [e.status for e in got] == [400] * 3
        assert "session must be a str" in got[0].reason and "role" in got[1].reason
        assert await rt.request(ref, "alive?", timeout=T) == "alive?"
        stats = await rt.stats()
        assert stats.workers[0].failures == 0


async def raw_http(url: str, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` as-is to the server of ``url``; the status and the whole reply."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
        status = int(head.split(b" ", 2)[1])
        return status, head
    finally:
        writer.close()


async def test_odd_http_requests_get_clear_errors_and_the_server_lives(
    serve: ServeFactory, peers: LoopThread
) -> None:
    async with serve() as s, aiohttp.ClientSession() as http:
        base = s.url
        cases: list[tuple[str, str, dict[str, str], bytes, set[int]]] = [
            ("PUT", "/whip/r", SDP, b"v=0", {405}),
            ("PROPFIND", "/whip/r", {}, b"", {405}),
            ("GET", "/session/nope", {}, b"", {405}),
            ("DELETE", "/session/nope", {}, b"", {404}),
            ("POST", "/whip/r", SDP, b"", {400}),
            ("POST", "/whip/r", SDP, b"   \r\n", {400}),
            ("POST", "/whip/r", SDP, b"\xff\xfe\x00binary", {400}),
            ("POST", "/whip/r", {"Content-Type": SDP_BOGUS}, b"v=0", {400}),
            ("POST", "/whip/r", {"Content-Type": SDP_UTF16}, b"\xd8", {400}),
            ("POST", "/whip/" + "r" * 65, SDP, b"v=0", {400}),
            ("POST", "/whip/r%00", SDP, b"v=0", {400}),
            ("POST", "/whip/r", {**SDP, "Authorization": "Bearer"}, b"\x00", {400}),
        ]
        for method, path, headers, body, want in cases:
            async with http.request(method, base + path, data=body, headers=headers) as resp:
                await resp.read()
                assert resp.status in want, (method, path, headers, body, resp.status)

        async def chunks() -> Any:
            for _ in range(10):
                yield b"v" * 10_000  # 100 kB chunked, no Content-Length: over max_body

        async with http.post(base + "/whip/r", data=chunks(), headers=SDP) as resp:
            assert resp.status == 413, await resp.text()
        # a lying Content-Length, and a malformed one
        status, _ = await raw_http(
            base,
            b"POST /whip/r HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
            b"Content-Length: 99999999\r\nConnection: close\r\n\r\nv=0",
        )
        assert status == 413
        status, _ = await raw_http(
            base,
            b"POST /whip/r HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
            b"Content-Length: -1\r\nConnection: close\r\n\r\n",
        )
        assert status == 400
        # and a real publisher still gets its session
        offer = await make_offer(peers, "whip")
        async with http.post(base + "/whip/r", data=offer, headers=SDP) as resp:
            assert resp.status == 201, await resp.text()
            location = resp.headers["Location"]
        # a PATCH with an undecodable body is a 400 too, and the session lives on
        frag = {"Content-Type": "application/trickle-ice-sdpfrag; charset=x-bogus"}
        async with http.patch(base + location, data=b"a=end", headers=frag) as resp:
            assert resp.status == 400, await resp.text()
        async with http.delete(base + location) as resp:
            assert resp.status == 200


async def test_burst_of_sessions_created_and_deleted_concurrently(
    serve: ServeFactory, peers: LoopThread
) -> None:
    """Publishers and viewers in several rooms, then every DELETE at once (publisher
    DELETEs racing their viewers', each session deleted twice): every request answered,
    no task fails, and every session and room is gone at the end."""
    whip = await make_offer(peers, "whip")
    whep = await make_offer(peers, "whep")
    async with serve(room_idle_timeout=0.2) as s, aiohttp.ClientSession() as http:

        async def post(path: str, body: str) -> tuple[int, str]:
            async with http.post(s.url + path, data=body, headers=SDP) as resp:
                await resp.read()
                return resp.status, resp.headers.get("Location", "")

        async def delete(location: str) -> int:
            async with http.delete(s.url + location) as resp:
                await resp.read()
                return resp.status

        rooms = [f"burst{i}" for i in range(6)]
        pubs = await asyncio.gather(*(post(f"/whip/{r}", whip) for r in rooms))
        assert [st for st, _ in pubs] == [201] * len(rooms), pubs
        views = await asyncio.gather(*(post(f"/whep/{r}", whep) for r in rooms for _ in range(3)))
        assert [st for st, _ in views] == [201] * len(views), views
        assert len(s.server.sessions) == len(pubs) + len(views)
        locations = [loc for _, loc in pubs + views]
        statuses = await asyncio.gather(*(delete(loc) for loc in locations + locations))
        assert set(statuses) <= {200, 404}, statuses
        for i, loc in enumerate(locations):  # each session: one 200 at most, never two
            assert sorted([statuses[i], statuses[i + len(locations)]]).count(200) <= 1, loc
        assert statuses[: len(pubs)].count(200) + statuses[len(locations) :][: len(pubs)].count(
            200
        ) == len(pubs)  # each publisher's DELETE succeeded exactly once
        assert await s.server.wait_until(lambda: not s.server.sessions, 5), s.server.sessions
        assert await s.server.wait_until(lambda: not s.server.rooms, 5), s.server.rooms
        stats = await s.server.rt.stats(fresh=True)
        assert all(w.failures == 0 for w in stats.workers)
        assert sum(w.drivers.get("webrtc_publishers", 0) for w in stats.workers) == 0
        # and the server still serves
        status, location = await post("/whip/burst0", whip)
        assert status == 201 and await delete(location) == 200
