"""The WHIP/WHEP HTTP surface against a real server (real aiortc peers, no media).

Every row of the protocol table: 201 with an SDP answer and headers, 409/404 without a
publisher, 415/400/422/413 for bad input (and the server lives on), OPTIONS + CORS,
PATCH trickle 204 / ICE restart 422 / If-Match 428 and 412, DELETE 200 then 404, 405 +
Allow, bearer tokens, limits with 503 + Retry-After, timeouts that free sessions, stats.
HTTP goes to 127.0.0.1; the server's peers live in a private network namespace.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest

from sansio_aio.testing import LoopThread
from sansio_aio.webrtc import check_offer, parse_ice_server
from tests.helpers import T
from tests.webrtc.support import ServeFactory, make_offer

SDP = {"Content-Type": "application/sdp"}
FRAG = "application/trickle-ice-sdpfrag"
SDP_BOGUS = "application/sdp; charset=x-bogus"  # an unknown charset: a 500 before the fix
SDP_UTF16 = "application/sdp; charset=utf-16"
FINGERPRINT = ":".join(["AB"] * 32)


async def post(http: aiohttp.ClientSession, url: str, body: str, **headers: str) -> Any:
    async with http.post(url, data=body, headers={**SDP, **headers}) as resp:
        return resp.status, resp.headers.copy(), await resp.text()


async def publish(http: aiohttp.ClientSession, base: str, peers: LoopThread, room: str) -> Any:
    status, headers, body = await post(http, f"{base}/whip/{room}", await make_offer(peers, "whip"))
    assert status == 201, body
    return headers, body


async def test_whip_post_answers_201_with_everything(
    serve: ServeFactory, peers: LoopThread
) -> None:
    stun = parse_ice_server("stun:127.0.0.1:3478")
    turn = parse_ice_server("turn:alice:secret@127.0.0.1:3478")
    async with serve(ice_servers=(stun, turn)) as s, aiohttp.ClientSession() as http:
        status, h, answer = await post(http, f"{s.url}/whip/r1", await make_offer(peers, "whip"))
        assert status == 201, answer
        assert h["Content-Type"].startswith("application/sdp")
        assert re.fullmatch(r"/session/[A-Za-z0-9_-]{32}", h["Location"])
        assert re.fullmatch(r'"[0-9a-f]{16}"', h["ETag"])
        assert h["Accept-Patch"] == FRAG
        assert h.getall("Link") == [
            '<stun:127.0.0.1:3478>; rel="ice-server"',
            '<turn:127.0.0.1:3478>; rel="ice-server"; username="alice"; '
            'credential="secret"; credential-type="password"',
        ]
        assert "Location" in h["Access-Control-Expose-Headers"]
        sections = answer.split("m=")[1:]
        assert len(sections) == 2
        for section in sections:
            assert "a=rtcp-mux-only" in section and "a=recvonly" in section
        assert "a=candidate:" in answer and "10.99.0.1" in answer
        assert "a=group:BUNDLE" in answer


async def test_whep_without_publisher_409_or_404(serve: ServeFactory, peers: LoopThread) -> None:
    offer = await make_offer(peers, "whep")
    async with serve(retry_after=4) as s, aiohttp.ClientSession() as http:
        status, h, _ = await post(http, f"{s.url}/whep/empty", offer)
        assert (status, h["Retry-After"]) == (409, "4")
    async with serve(no_publisher_status=404) as s, aiohttp.ClientSession() as http:
        status, h, _ = await post(http, f"{s.url}/whep/empty", offer)
        assert status == 404 and "Retry-After" not in h


async def test_whep_with_publisher_answers_sendonly(serve: ServeFactory, peers: LoopThread) -> None:
    async with serve() as s, aiohttp.ClientSession() as http:
        await publish(http, s.url, peers, "r1")
        status, h, answer = await post(http, f"{s.url}/whep/r1", await make_offer(peers, "whep"))
        assert status == 201, answer
        assert "a=sendonly" in answer and "a=rtcp-mux-only" in answer
        assert h["Location"].startswith("/session/")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("hello", 400),
        ("v=0\r\n", 400),
        # payload type 96 without rtpmap: no codec aiortc knows, 422 from the driver
        (
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=ice-ufrag:x\r\na=ice-pwd:y\r\n"
            f"a=fingerprint:sha-256 {FINGERPRINT}\r\n",
            422,
        ),
        ("\x00\x01 binary junk", 400),
    ],
)
async def test_bad_sdp_is_400_or_422_and_server_lives(
    serve: ServeFactory, peers: LoopThread, body: str, status: int
) -> None:
    async with serve() as s, aiohttp.ClientSession() as http:
        got, _, text = await post(http, f"{s.url}/whip/r1", body)
        assert got == status, text
        await publish(http, s.url, peers, "r1")  # the room and its worker live on
        stats = await s.server.rt.stats()
        assert all(w.failures == 0 for w in stats.workers)


def only_av1(offer: str) -> str:
    """The offer with its video section reduced to AV1, a codec aiortc lacks."""
    head, *sections = offer.split("m=")
    out = [head]
    for section in sections:
        if section.startswith("video"):
            lines = section.split("\r\n")
            first = lines[0].split()
            lines[0] = " ".join([*first[:3], "45"])
            lines = [ln for ln in lines if not re.match(r"a=(rtpmap|fmtp|rtcp-fb):", ln)]
            lines.insert(1, "a=rtpmap:45 AV1/90000")
            section = "\r\n".join(lines)
        out.append(section)
    return "m=".join(out)


async def test_offer_aiortc_cannot_answer_is_422(serve: ServeFactory, peers: LoopThread) -> None:
    offer = await make_offer(peers, "whip")
    async with serve() as s, aiohttp.ClientSession() as http:
        status, _, text = await post(http, f"{s.url}/whip/r1", only_av1(offer))
        assert status == 422, text
        assert s.server.sessions == {}
        status, _, text = await post(http, f"{s.url}/whip/r1", offer)
        assert status == 201, text


async def test_wrong_content_type_415(serve: ServeFactory, peers: LoopThread) -> None:
    offer = await make_offer(peers, "whip")
    async with serve() as s, aiohttp.ClientSession() as http:
        for ctype in ("text/plain", "application/json"):
            async with http.post(
                f"{s.url}/whip/r1", data=offer, headers={"Content-Type": ctype}
            ) as resp:
                assert resp.status == 415


async def test_huge_body_413(serve: ServeFactory) -> None:
    async with serve(max_body=4096) as s, aiohttp.ClientSession() as http:
        big = "v=0\r\n" + "a=x\r\n" * 2000
        status, _, _ = await post(http, f"{s.url}/whip/r1", big)
        assert status == 413

        async def chunks() -> Any:  # no Content-Length: caught while reading
            for _ in range(10):
                yield b"a=" + b"y" * 1000 + b"\r\n"

        async with http.post(f"{s.url}/whip/r1", data=chunks(), headers=SDP) as resp:
            assert resp.status == 413


async def test_options_and_cors(serve: ServeFactory) -> None:
    async with serve(cors_origin="https://app.example") as s, aiohttp.ClientSession() as http:
        async with http.options(f"{s.url}/whip/r1") as resp:
            assert resp.status == 200
            assert resp.headers["Accept-Post"] == "application/sdp"
            assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]
            assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
            exposed = resp.headers["Access-Control-Expose-Headers"]
            for name in ("Location", "ETag", "Link", "Accept-Patch"):
                assert name in exposed
        async with http.options(f"{s.url}/session/whatever") as resp:
            assert resp.status == 200 and "PATCH" in resp.headers["Allow"]


async def test_405_with_allow(serve: ServeFactory) -> None:
    async with serve() as s, aiohttp.ClientSession() as http:
        for method, path, allow in (
            ("GET", "/whip/r1", "POST, OPTIONS"),
            ("PUT", "/whep/r1", "POST, OPTIONS"),
            ("GET", "/session/x", "PATCH, DELETE, OPTIONS"),
            ("POST", "/session/x", "PATCH, DELETE, OPTIONS"),
        ):
            async with http.request(method, s.url + path) as resp:
                assert resp.status == 405, (method, path)
                assert resp.headers["Allow"] == allow


async def test_patch_trickle_and_if_match(serve: ServeFactory, peers: LoopThread) -> None:
    async with serve() as s, aiohttp.ClientSession() as http:
        offer = await make_offer(peers, "whip")
        status, h, _ = await post(http, f"{s.url}/whip/r1", offer)
        assert status == 201
        url, etag = s.url + h["Location"], h["ETag"]
        sent = check_offer(offer, "whip")  # a trickle carries the client's credentials
        ufrag, pwd = sent.ufrag, sent.pwd
        frag = (
            "a=ice-ufrag:{u}\r\na=ice-pwd:{p}\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n"
            "a=candidate:9 1 udp 2130706431 10.99.0.1 40000 typ host\r\na=end-of-candidates\r\n"
        )
        good = frag.format(u=ufrag, p=pwd)

        async def patch(body: str, **headers: str) -> int:
            hdrs = {"Content-Type": FRAG, **headers}
            async with http.patch(url, data=body, headers=hdrs) as resp:
                return resp.status

        assert await patch(good) == 428
        assert await patch(good, **{"If-Match": '"0000000000000000"'}) == 412
        assert await patch(good, **{"If-Match": etag}) == 204
        assert await patch(good, **{"If-Match": "*"}) == 204
        restart = frag.format(u="newufrag", p="newpassword0123456789012")
        assert await patch(restart, **{"If-Match": "*"}) == 422
        assert await patch("a=candidate:broken\r\n", **{"If-Match": etag}) == 400
        async with http.patch(url, data=good, headers={"If-Match": etag, **SDP}) as resp:
            assert resp.status == 415
        async with http.patch(
            s.url + "/session/unknown", data=good, headers={"Content-Type": FRAG}
        ) as resp:
            assert resp.status == 404


async def test_delete_200_then_404(serve: ServeFactory, peers: LoopThread) -> None:
    async with serve() as s, aiohttp.ClientSession() as http:
        h, _ = await publish(http, s.url, peers, "r1")
        url = s.url + h["Location"]
        async with http.delete(url) as resp:
            assert resp.status == 200
        async with http.delete(url) as resp:
            assert resp.status == 404
        async with http.patch(url, data="", headers={"Content-Type": FRAG}) as resp:
            assert resp.status == 404
        assert s.server.sessions == {}
        # The room is free again: a new publisher is accepted.
        await publish(http, s.url, peers, "r1")


async def test_bearer_tokens(serve: ServeFactory, peers: LoopThread) -> None:
    offer = await make_offer(peers, "whip")
    async with serve(tokens=("t1",)) as s, aiohttp.ClientSession() as http:
        status, h, _ = await post(http, f"{s.url}/whip/r1", offer)
        assert status == 401 and h["WWW-Authenticate"].startswith("Bearer")
        status, _, _ = await post(http, f"{s.url}/whip/r1", offer, Authorization="Bearer t2")
        assert status == 401
        status, _, _ = await post(http, f"{s.url}/whip/r1", offer, Authorization="Bearer t1")
        assert status == 201


async def test_token_picks_a_derived_room(serve: ServeFactory, peers: LoopThread) -> None:
    """--token-is-room: the bearer names the room, but the room's name is derived from it
    (``k-`` + 16 hex digits): the token shows in no room name, stats or metrics, and a
    viewer with the same bearer reaches the same room."""
    whip = await make_offer(peers, "whip")
    whep = await make_offer(peers, "whep")
    async with serve(token_is_room=True) as s, aiohttp.ClientSession() as http:
        bearer = {"Authorization": "Bearer live1"}
        status, _, _ = await post(http, f"{s.url}/whip", whip, **bearer)
        assert status == 201
        (room,) = s.server.rooms
        assert re.fullmatch(r"k-[0-9a-f]{16}", room)
        status, _, text = await post(http, f"{s.url}/whep", whep, **bearer)
        assert status == 201, text
        status, _, text = await post(http, f"{s.url}/whep/x", whep, **bearer)
        assert status == 201, text  # the bearer names the room, whatever the path says
        assert set(s.server.rooms) == {room}
        for path in ("/stats", "/metrics"):
            async with http.get(s.url + path) as resp:
                text = await resp.text()
            assert "live1" not in text and room in text
        status, _, _ = await post(http, f"{s.url}/whip", whip)
        assert status == 401  # publishing needs the bearer
        status, _, _ = await post(http, f"{s.url}/whep/{room}", whep)
        assert status == 403  # a derived room is reached with its bearer only


async def test_bad_room_name_400(serve: ServeFactory, peers: LoopThread) -> None:
    async with serve() as s, aiohttp.ClientSession() as http:
        status, _, _ = await post(http, f"{s.url}/whip/{'x' * 65}", "v=0")
        assert status == 400
        status, _, _ = await post(http, f"{s.url}/whip", "v=0")
        assert status == 400  # no room in the path, and nothing else names one
        # ``.`` and ``..`` (clients normalise them away: sent raw), and a trailing newline
        for path in (b"/whip/..", b"/whip/.", b"/whep/%2E%2E", b"/whip/r%0A"):
            head = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
            status, _ = await raw_http(s.url, head + b"Content-Length: 3\r\n\r\nv=0")
            assert status == 400, path
        assert s.server.rooms == {}


async def test_refused_requests_spawn_no_room(serve: ServeFactory, peers: LoopThread) -> None:
    """Bad offers, unusable offers and viewers of rooms that do not exist are answered by
    the HTTP layer: no room task is spawned or asked (before: one room per request,
    each living ``room_idle_timeout``)."""
    whep = await make_offer(peers, "whep")
    whip = await make_offer(peers, "whip")
    no_fingerprint = "\r\n".join(x for x in whip.split("\r\n") if "fingerprint" not in x)
    async with serve(rate_limit=0, retry_after=3) as s, aiohttp.ClientSession() as http:
        before = sum(w.msgs_in for w in (await s.server.rt.stats(fresh=True)).workers)
        for i in range(10):
            status, h, _ = await post(http, f"{s.url}/whep/nobody{i}", whep)
            assert (status, h["Retry-After"]) == (409, "3")
            status, _, _ = await post(http, f"{s.url}/whip/bad{i}", "v=0\r\n")
            assert status == 400
            status, _, _ = await post(http, f"{s.url}/whip/nofp{i}", no_fingerprint)
            assert status == 400
            status, _, _ = await post(
                http, f"{s.url}/whip/av1-{i}", whip.replace("m=video", "m=text")
            )
            assert status == 422
        stats = await s.server.rt.stats(fresh=True)
        assert s.server.rooms == {}
        assert sum(w.tasks for w in stats.workers) == 0
        assert sum(w.msgs_in for w in stats.workers) == before
    async with serve(no_publisher_status=404) as s, aiohttp.ClientSession() as http:
        status, h, _ = await post(http, f"{s.url}/whep/nobody", whep)
        assert status == 404 and "Retry-After" not in h
        assert s.server.rooms == {}


async def test_limits_503_with_retry_after(serve: ServeFactory, peers: LoopThread) -> None:
    async with serve(max_sessions_per_room=2, retry_after=9) as s, aiohttp.ClientSession() as h:
        await publish(h, s.url, peers, "r1")
        whep = await make_offer(peers, "whep")
        status, _, _ = await post(h, f"{s.url}/whep/r1", whep)
        assert status == 201
        status, hdrs, _ = await post(h, f"{s.url}/whep/r1", whep)
        assert (status, hdrs["Retry-After"]) == (503, "9")
    async with serve(max_sessions=1, retry_after=2) as s, aiohttp.ClientSession() as h:
        await publish(h, s.url, peers, "r1")
        status, hdrs, _ = await post(h, f"{s.url}/whip/r2", await make_offer(peers, "whip"))
        assert (status, hdrs["Retry-After"]) == (503, "2")


async def test_unconnected_session_is_freed(serve: ServeFactory, peers: LoopThread) -> None:
    async with serve(connect_timeout=0.3) as s, aiohttp.ClientSession() as http:
        h, _ = await publish(http, s.url, peers, "r1")  # the offering peer is gone: no ICE
        sid = h["Location"].rsplit("/", 1)[1]
        assert await s.server.wait_until(lambda: sid not in s.server.sessions, 5)
        async with http.delete(s.url + h["Location"]) as resp:
            assert resp.status == 404
        await publish(http, s.url, peers, "r1")


async def test_idle_room_ends_and_comes_back(serve: ServeFactory, peers: LoopThread) -> None:
    async with serve(room_idle_timeout=0.2) as s, aiohttp.ClientSession() as http:
        h, _ = await publish(http, s.url, peers, "r1")
        async with http.delete(s.url + h["Location"]) as resp:
            assert resp.status == 200
        assert await s.server.wait_until(lambda: "r1" not in s.server.rooms, 5)
        await publish(http, s.url, peers, "r1")
        assert "r1" in s.server.rooms


async def test_stats_and_metrics(serve: ServeFactory, peers: LoopThread) -> None:
    async with serve(prefix="/api") as s, aiohttp.ClientSession() as http:
        await publish(http, s.url, peers, "r1")
        async with http.get(f"{s.url}/stats") as resp:
            assert resp.status == 200
            data = await resp.json()
        assert data["sessions"] == 1
        assert [x["role"] for x in data["rooms"]["r1"]["sessions"]] == ["whip"]
        assert len(data["workers"]) == 2
        async with http.get(f"{s.url}/metrics") as resp:
            text = await resp.text()
        assert "whip_sessions 1" in text and 'whip_room_sessions{room="r1"} 1' in text


async def test_pages_are_served(serve: ServeFactory) -> None:
    async with serve() as s, aiohttp.ClientSession() as http:
        for path, kind in (
            ("/", "text/html"),
            ("/publish", "text/html"),
            ("/view", "text/html"),
            ("/whip.js", "text/javascript"),
        ):
            async with http.get(s.url + path) as resp:
                assert resp.status == 200 and resp.content_type == kind, path
                assert len(await resp.text()) > 100


async def test_concurrent_mixed_requests_all_answered(
    serve: ServeFactory, peers: LoopThread
) -> None:
    whip = await make_offer(peers, "whip")
    whep = await make_offer(peers, "whep")
    async with (
        serve(max_sessions_per_room=8, rate_limit=0, max_connections_per_ip=64) as s,
        aiohttp.ClientSession() as http,
    ):
        await publish(http, s.url, peers, "busy")
        calls = []
        for i in range(40):
            kind = i % 4
            if kind == 0:
                calls.append(post(http, f"{s.url}/whip/r{i}", "garbage"))
            elif kind == 1:
                calls.append(post(http, f"{s.url}/whep/busy", whep))
            elif kind == 2:
                calls.append(post(http, f"{s.url}/whep/nobody{i}", whep))
            else:
                calls.append(post(http, f"{s.url}/whip/busy", whip))
        results = await asyncio.gather(*calls)
        statuses = [r[0] for r in results]
        assert statuses[0::4] == [400] * 10
        assert sorted(statuses[1::4]) == [201] * 7 + [503] * 3  # 1 publisher + 7 viewers
        assert statuses[2::4] == [409] * 10
        assert statuses[3::4] == [409] * 10  # the room already has a publisher
        stats = await s.server.rt.stats()
        assert all(w.failures == 0 for w in stats.workers)


async def test_rate_limit_429_with_retry_after(serve: ServeFactory) -> None:
    async with serve(rate_limit=0.5, rate_burst=2) as s, aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(3):
            status, headers, _ = await post(http, f"{s.url}/whip/r1", "garbage")
            statuses.append(status)
        assert statuses == [400, 400, 429]
        assert headers["Retry-After"] == "2"
        async with http.options(f"{s.url}/whip/r1") as resp:
            assert resp.status == 200  # preflights are not limited


async def test_rate_limit_is_on_by_default(serve: ServeFactory) -> None:
    """RFC 9725 §5: the default limit (10/s, burst 20) refuses a burst from one client
    with 429 + Retry-After; the first 20 requests always pass."""
    async with serve() as s, aiohttp.ClientSession() as http:
        statuses: list[int] = []
        for _ in range(200):  # a 429 comes after 20 + (10 per second taken) requests
            status, headers, _ = await post(http, f"{s.url}/whip/r1", "garbage")
            statuses.append(status)
            if status == 429:
                break
        assert statuses[-1] == 429, statuses
        assert statuses[:20] == [400] * 20 and set(statuses[:-1]) == {400}
        assert headers["Retry-After"] == "1"
        assert s.server.counters["refused"] >= 1


# ------------------------------------------------------------------ odd HTTP requests


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
    async with serve(rate_limit=0) as s, aiohttp.ClientSession() as http:
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


# ------------------------------------------------------- bursts of sessions, races


async def test_burst_of_sessions_created_and_deleted_concurrently(
    serve: ServeFactory, peers: LoopThread
) -> None:
    """Publishers and viewers in several rooms, then every DELETE at once (publisher
    DELETEs racing their viewers', each session deleted twice): every request answered,
    no task fails, and every session and room is gone at the end."""
    whip = await make_offer(peers, "whip")
    whep = await make_offer(peers, "whep")
    limits = {"rate_limit": 0, "max_connections_per_ip": 64}  # a deliberate burst
    async with serve(room_idle_timeout=0.2, **limits) as s, aiohttp.ClientSession() as http:

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
