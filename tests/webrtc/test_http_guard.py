"""HTTP bounds against the real server: raw sockets playing slow, idle and greedy clients.

A request head sent one byte at a time, an idle connection and a keep-alive connection
left open are closed after ``header_timeout`` (a request being handled never is); a body
that does not arrive within ``body_timeout`` gets 408; connections past
``max_connections`` or ``max_connections_per_ip`` are closed at once; a malformed request
logs one line. Everything on 127.0.0.1; timeouts are short, bounds generous.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from sansio_aio.testing import LoopThread
from tests.webrtc.support import (
    ServeFactory,
    closed_within,
    host_port,
    make_offer,
    raw_request,
    until,
    webhook_server,
)

GET_STATS = b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n"
SDP = {"Content-Type": "application/sdp"}
SLACK = 10.0  # seconds: generous bounds for a busy machine


@contextlib.asynccontextmanager
async def connection(url: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, port = host_port(url)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One response with a Content-Length body: its status and body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), SLACK)
    lines = head.decode().split("\r\n")
    length = next(int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length"))
    body = await asyncio.wait_for(reader.readexactly(length), SLACK)
    return int(lines[0].split()[1]), body


async def test_slow_request_head_is_closed(serve: ServeFactory) -> None:
    """Before: a client sending one byte every 0.1 s held its connection for ever."""
    async with serve(header_timeout=0.5) as s, connection(s.url) as (reader, writer):
        head = b"POST /whip/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
        closed = None
        for i in range(len(head)):  # ~70 bytes, 0.1 s apart: ~7 s if never closed
            try:
                writer.write(head[i : i + 1])
                await writer.drain()
            except ConnectionError:
                closed = b""
                break
            closed = await closed_within(reader, 0.1)  # the gap between two bytes
            if closed is not None:
                break
        assert closed == b"", "the server kept a slow request head open"
        assert s.server.counters["http_header_timeouts"] == 1


async def test_idle_connections_are_closed(serve: ServeFactory) -> None:
    async with serve(header_timeout=0.3) as s:
        async with connection(s.url) as (reader, _):
            assert await closed_within(reader, SLACK) == b""  # never sent a byte
        async with connection(s.url) as (reader, writer):
            writer.write(GET_STATS)  # a keep-alive request, answered, then silence
            status, _ = await read_response(reader)
            assert status == 200
            assert await closed_within(reader, SLACK) == b""
        assert s.server.counters["http_header_timeouts"] == 0  # idle is not slow


async def test_request_in_flight_is_not_cut(serve: ServeFactory, peers: LoopThread) -> None:
    """A handler that takes longer than ``header_timeout`` (here: waiting for the auth
    webhook) still gets its answer out."""
    offer = await make_offer(peers, "whip")
    async with (
        webhook_server() as hook,
        serve(auth_webhook=hook.url, header_timeout=0.2, webhook_timeout=SLACK) as s,
        aiohttp.ClientSession() as http,
    ):
        hook.gate, hook.status = asyncio.Event(), 403

        async def ask() -> int:
            async with http.post(f"{s.url}/whip/r1", data=offer, headers=SDP) as resp:
                return resp.status

        asked = asyncio.ensure_future(ask())
        try:
            assert await until(lambda: hook.in_flight == 1, SLACK)
            await asyncio.sleep(1.0)  # let five header timeouts pass, on purpose
            hook.gate.set()
            assert await asyncio.wait_for(asked, SLACK) == 403
        finally:
            asked.cancel()


async def test_slow_body_is_408(serve: ServeFactory) -> None:
    """Before: a body that never came held the handler (and the connection) for ever."""
    async with serve(body_timeout=0.3, header_timeout=SLACK) as s:
        head = (
            b"POST /whip/r1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
            b"Content-Length: 200\r\n\r\nv=0\r\n"
        )
        reply = await raw_request(s.url, head, SLACK)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:100]
        assert b"Connection: close" in reply
        assert s.server.counters["http_body_timeouts"] == 1
        assert s.server.rooms == {}


async def test_connections_per_address_are_capped(
    serve: ServeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: connections were unbounded."""
    caplog.set_level(logging.WARNING, logger="sansio_aio.webrtc")
    async with serve(max_connections_per_ip=3, header_timeout=SLACK) as s:
        guard = s.server.guard
        assert guard is not None
        async with contextlib.AsyncExitStack() as stack:
            held = [await stack.enter_async_context(connection(s.url)) for _ in range(3)]
            for reader, writer in held:  # each answered: each admitted
                writer.write(GET_STATS)
                assert (await read_response(reader))[0] == 200
            assert guard.open_from("127.0.0.1") == 3
            for _ in range(2):
                async with connection(s.url) as (reader, _):
                    assert await closed_within(reader, SLACK) == b""  # refused: closed at once
            assert s.server.counters["http_refused"] == 2
            limits = [r for r in caplog.records if "connection limit" in r.getMessage()]
            assert len(limits) == 1  # once per run of refusals
            held[0][1].close()
            assert await until(lambda: guard.open_from("127.0.0.1") == 2, SLACK)
            async with connection(s.url) as (reader, writer):  # room again
                writer.write(GET_STATS)
                assert (await read_response(reader))[0] == 200
        assert await until(lambda: guard.open_from("127.0.0.1") == 0, SLACK)
        async with aiohttp.ClientSession() as http, http.get(s.url + "/metrics") as resp:
            text = await resp.text()
        assert "whip_http_refused_total 2" in text and "whip_http_connections " in text


async def test_connections_in_all_are_capped(serve: ServeFactory) -> None:
    async with serve(max_connections=2, header_timeout=SLACK) as s:
        async with connection(s.url) as (r1, w1), connection(s.url) as (r2, w2):
            for reader, writer in ((r1, w1), (r2, w2)):
                writer.write(GET_STATS)
                assert (await read_response(reader))[0] == 200
            async with connection(s.url) as (reader, _):
                assert await closed_within(reader, SLACK) == b""
        assert s.server.counters["http_refused"] == 1


async def test_malformed_request_logs_one_line(
    serve: ServeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: aiohttp logged each malformed request as an error with a traceback."""
    caplog.set_level(logging.DEBUG)
    async with serve() as s:
        reply = await raw_request(s.url, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        assert reply.startswith(b"HTTP/1.") and b" 400 " in reply.split(b"\r\n")[0]
        async with aiohttp.ClientSession() as http, http.get(s.url + "/stats") as resp:
            assert resp.status == 200  # and the server lives on
    records = [r for r in caplog.records if r.name == "sansio_aio.webrtc.http"]
    assert len(records) == 1, [r.getMessage() for r in records]
    (record,) = records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "\n" not in record.getMessage() and "127.0.0.1" in record.getMessage()
    assert not [r for r in caplog.records if r.exc_info]


async def test_urls_name_every_listening_socket(serve: ServeFactory) -> None:
    async with serve() as s:
        assert s.server.urls == [s.url, s.inner]
        assert s.server.url.startswith("http://127.0.0.1:") and not s.url.endswith(":0")
