"""Robustness review of the I/O drivers and the WHIP/WHEP server: bad input is a value.

Malformed task outputs (every field of the wrong type, unhashable slots included), bad
peer commands, odd HTTP requests: each comes back as an error input or an HTTP error,
the task and the worker live on, and nothing else is lost. Sockets are real, on
127.0.0.1; WebRTC media only inside the private namespace of ``test_webrtc_support``.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import socket
import struct
from typing import Any

import aiohttp
import pytest

from sansio_aio import (
    Ext,
    ExtOut,
    Reply,
    Request,
    Runtime,
    Task,
    TaskEnded,
    TaskFailed,
    TaskOutput,
)
from sansio_aio.net import (
    TcpClose,
    TcpClosed,
    TcpConnect,
    TcpConnected,
    TcpData,
    TcpDriver,
    TcpEof,
    TcpError,
    TcpListen,
    TcpListening,
    TcpPaused,
    TcpPauseReading,
    TcpResumeReading,
    TcpSend,
    TcpShutdown,
    TunBind,
    TunBound,
    TunDriver,
    TunError,
    TunSend,
    TunSendMany,
    TunUnbind,
    UdpBind,
    UdpBound,
    UdpDriver,
    UdpError,
    UdpSend,
    UdpSendBatch,
    UdpSendMany,
    UdpSendPairs,
    UdpUnbind,
    UdpUnbound,
)
from sansio_aio.testing import LoopThread, in_netns
from sansio_aio.webrtc import (
    PeerClose,
    PeerFailed,
    PeerKeyframe,
    PeerOpen,
    PeerTrickle,
    WebRtcDriver,
)
from tests.test_tun import (
    Puppet,
    _ipv4,
    bound,
    driver_counter,
    expect,
    need_tun,
    quiet_netns,
)
from tests.test_webrtc_support import ServeFactory, make_offer, netns, peers, serve

__all__ = ["need_tun", "netns", "peers", "serve"]  # fixtures used by this module

LO = "127.0.0.1"
T = 5.0
SDP = {"Content-Type": "application/sdp"}
SDP_BOGUS = "application/sdp; charset=x-bogus"  # an unknown charset: a 500 before the fix
SDP_UTF16 = "application/sdp; charset=utf-16"


class Probe(Task):
    """Emits the outputs the test sends (a list); reports every other input as ExtOut."""

    def on_event(self, now: float, event: Any) -> None:
        if isinstance(event, Ext):
            if event.msg == "end":
                self.closing = True
                return
            for out in event.msg:
                self.emit(out)
        elif isinstance(event, Request):
            self.emit(Reply(event.id, event.msg))
        else:
            self.emit(ExtOut(event))


async def inputs(rt: Runtime, n: int) -> list[Any]:
    """The next ``n`` inputs the probe reported; a task failure fails the test."""
    got = []
    for _ in range(n):
        ev = await asyncio.wait_for(rt.next_event(), T)
        assert not isinstance(ev, TaskFailed), ev.traceback
        assert isinstance(ev, TaskOutput), ev
        got.append(ev.msg)
    return got


# ------------------------------------------------------------- malformed net outputs


async def test_unhashable_slots_are_error_values_not_task_failures(backend: str) -> None:
    """A slot of the wrong type (a list, a dict) used to raise TypeError in the driver's
    dict lookup, which failed the whole task and lost the rest of its drain."""
    drivers = [UdpDriver, TcpDriver]
    async with Runtime({"probe": Probe}, backend=backend, drivers=drivers) as rt:
        ref = await rt.spawn("probe")
        rt.send_nowait(ref, [UdpBind((LO, 0))])
        (bound,) = await inputs(rt, 1)
        assert isinstance(bound, UdpBound) and bound.ok
        bad: list[Any] = [
            UdpSend([1], (LO, 9), b"x"),  # type: ignore[arg-type]
            UdpSendMany({}, [(LO, 9)], b"x"),  # type: ignore[arg-type]
            UdpSendBatch([], [((LO, 9), b"x")]),  # type: ignore[arg-type]
            UdpSendPairs([([1], (LO, 9))], b"x"),  # type: ignore[list-item]
            UdpUnbind([1]),  # type: ignore[arg-type]
            TcpSend([1], b"x"),  # type: ignore[arg-type]
            TcpShutdown({}),  # type: ignore[arg-type]
            TcpClose([1]),  # type: ignore[arg-type]
            TcpPauseReading([]),  # type: ignore[arg-type]
            TcpResumeReading([]),  # type: ignore[arg-type]
        ]
        # the good send last: it must still happen after all the bad ones
        rt.send_nowait(ref, [*bad, UdpUnbind(bound.slot)])
        got = await inputs(rt, len(bad) + 1)
        kinds = [type(e) for e in got]
        assert kinds == [UdpError] * 4 + [UdpUnbound] + [TcpError] * 5 + [UdpUnbound], got
        assert got[4].error is not None and got[-1].error is None
        assert all(e.errno == errno.EBADF for e in got if isinstance(e, UdpError | TcpError))
        assert await rt.request(ref, "alive?", timeout=T) == "alive?"


@pytest.mark.parametrize(
    "listen",
    [
        TcpListen(("::1", 0, "flowinfo", 0)),  # TypeError in bind
        TcpListen((LO, 0), backlog=1 << 70),  # OverflowError in listen
    ],
    ids=["bad-flowinfo", "huge-backlog"],
)
async def test_malformed_listen_fields_are_error_values(backend: str, listen: TcpListen) -> None:
    """A TypeError/OverflowError from bind or listen used to escape ``except OSError``:
    the task failed and the socket was left to the garbage collector."""
    async with Runtime({"probe": Probe}, backend=backend, drivers=[TcpDriver]) as rt:
        ref = await rt.spawn("probe")
        rt.send_nowait(ref, [listen, TcpListen((LO, 0))])
        bad, good = await inputs(rt, 2)
        assert isinstance(bad, TcpListening) and bad.slot == -1 and not bad.ok, bad
        assert bad.errno == errno.EINVAL and "listen" in str(bad.error)
        assert isinstance(good, TcpListening) and good.ok
        stats = await rt.run_on_worker(0, lambda core: dict(core.drivers[0].stats()))
        assert stats["tcp_listeners"] == 1


async def test_many_connects_to_a_closed_port_each_fail_and_leave_nothing(backend: str) -> None:
    with socket.socket() as s:
        s.bind((LO, 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        async with Runtime({"probe": Probe}, backend=backend, drivers=[TcpDriver]) as rt:
            ref = await rt.spawn("probe")
            n = 200
            rt.send_nowait(ref, [TcpConnect((LO, port), tag=i) for i in range(n)])
            got = await inputs(rt, n)
            assert all(isinstance(e, TcpConnected) and e.slot == -1 for e in got)
            assert {e.errno for e in got} == {errno.ECONNREFUSED}
            assert sorted(e.tag for e in got) == list(range(n))
            stats = await rt.run_on_worker(0, lambda core: dict(core.drivers[0].stats()))
            assert stats["tcp_conns"] == 0 and stats["tcp_errors"] == n


async def test_peer_reset_with_a_full_write_buffer_frees_it(backend: str) -> None:
    """A client that never reads, then resets: the buffer stays bounded, then is freed."""
    factory = functools.partial(TcpDriver, high=64 << 10, low=16 << 10, max_buffer=256 << 10)
    async with Runtime({"probe": Probe}, backend=backend, drivers=[factory]) as rt:
        ref = await rt.spawn("probe")
        rt.send_nowait(ref, [TcpListen((LO, 0))])
        (lst,) = await inputs(rt, 1)
        reader, writer = await asyncio.open_connection(*lst.addr)
        (acc,) = await inputs(rt, 1)
        n = 400  # 25 MiB: far more than the kernel buffers plus max_buffer
        rt.send_nowait(ref, [TcpSend(acc.slot, bytes(64 << 10)) for _ in range(n)])
        seen: list[Any] = []
        for _ in range(n + 1):  # bounded: at most one input per send, plus TcpPaused
            (ev,) = await inputs(rt, 1)
            seen.append(type(ev))
            if isinstance(ev, TcpError):
                break
        assert seen[0] is TcpPaused and seen[-1] is TcpError, seen
        assert ev.errno == errno.ENOBUFS
        stats = await rt.run_on_worker(0, lambda core: dict(core.drivers[0].stats()))
        assert 0 < stats["tcp_write_buffered"] <= 256 << 10
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()  # RST
        for _ in range(n + 1):  # the rest of the refusals, then the close
            (ev,) = await inputs(rt, 1)
            if isinstance(ev, TcpClosed):
                break
            assert isinstance(ev, TcpError) and ev.errno == errno.ENOBUFS, ev
        assert isinstance(ev, TcpClosed) and ev.slot == acc.slot and ev.error, ev
        stats = await rt.run_on_worker(0, lambda core: dict(core.drivers[0].stats()))
        assert stats["tcp_conns"] == 0 and stats["tcp_write_buffered"] == 0
        rt.send_nowait(ref, [TcpSend(acc.slot, b"late")])  # a send after the close
        (late,) = await inputs(rt, 1)
        assert isinstance(late, TcpError) and late.errno == errno.EBADF
        del reader


async def test_send_after_the_peer_half_closed_still_works(backend: str) -> None:
    async with Runtime({"probe": Probe}, backend=backend, drivers=[TcpDriver]) as rt:
        ref = await rt.spawn("probe")
        rt.send_nowait(ref, [TcpListen((LO, 0))])
        (lst,) = await inputs(rt, 1)
        reader, writer = await asyncio.open_connection(*lst.addr)
        (acc,) = await inputs(rt, 1)
        writer.write(b"bye")
        writer.write_eof()
        data, eof = await inputs(rt, 2)
        assert isinstance(data, TcpData) and data.data == b"bye" and isinstance(eof, TcpEof)
        rt.send_nowait(ref, [TcpSend(acc.slot, memoryview(b"still here")), TcpShutdown(acc.slot)])
        assert await asyncio.wait_for(reader.read(), T) == b"still here"
        rt.send_nowait(ref, [TcpSend(acc.slot, b"after shutdown")])
        ev = (await inputs(rt, 1))[0]
        if isinstance(ev, TcpClosed):  # both FINs sent: it may close first
            ev = (await inputs(rt, 1))[0]
        assert isinstance(ev, TcpError) and ev.errno in (errno.EPIPE, errno.EBADF), ev
        writer.close()


# ------------------------------------------------------------ malformed peer commands


async def test_garbage_peer_commands_are_refused_not_fatal(backend: str) -> None:
    """No peer connection is made here (every command is refused before aiortc)."""
    async with Runtime({"probe": Probe}, backend=backend, drivers=[WebRtcDriver]) as rt:
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


# ------------------------------------------------------------------------------ TUN


@in_netns
async def test_tun_garbage_outputs_are_error_values(need_tun: None, backend: str) -> None:
    quiet_netns()
    async with Runtime({"puppet": Puppet}, backend=backend, drivers=[TunDriver]) as rt:
        ref = await rt.spawn("puppet")
        rt.send_nowait(ref, TunBind("bad\0name"))  # embedded NUL
        answer = await expect(rt, TunBound)
        assert answer.slot is None and answer.error, answer
        good = await bound(rt, ref, TunBind("tunr0", address="10.78.0.1", up=True))
        ping = _ipv4(17, bytes(8))
        rt.send_nowait(
            ref,
            [
                TunSend([good.slot], ping),  # type: ignore[arg-type]
                TunSendMany({}, [ping]),  # type: ignore[arg-type]
                TunUnbind([good.slot]),  # type: ignore[arg-type]
                TunSendMany(good.slot, 42),  # type: ignore[arg-type]
                TunSend(good.slot, memoryview(ping)),  # bytes-like: written
            ],
        )
        errors = [await expect(rt, TunError) for _ in range(3)]
        assert "no such slot" in errors[0].error and "no such slot" in errors[1].error
        assert "sequence" in errors[2].error
        assert await rt.request(ref, "still there?", timeout=T) == "alive"
        assert await driver_counter(rt, 0, "tun_tx") == 1
        assert await driver_counter(rt, 0, "tun_queues") == 1  # the bad unbind closed nothing
        stats = await rt.stats()
        assert stats.workers[0].failures == 0


# ------------------------------------------------ closing towards a peer that never reads


def held_by_an_fd(local_port: int, remote_port: int) -> bool:
    """Whether the IPv4 TCP connection ``local_port -> remote_port`` still has an open fd
    (/proc/net/tcp shows inode 0 for a socket the process closed, kept by the kernel to
    flush)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], int(fields[9])
            if int(local.split(":")[1], 16) == local_port and (
                int(remote.split(":")[1], 16) == remote_port
            ):
                return inode != 0
    return False


async def wait_fd_closed(local_port: int, remote_port: int, timeout: float = T) -> None:
    """Wait (bounded) until the server closed its fd of the connection."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while held_by_an_fd(local_port, remote_port):
        assert loop.time() < deadline, "the server still holds the connection"
        await asyncio.sleep(0.02)  # a bounded poll of the kernel's table: nothing to await


@pytest.mark.parametrize("how", ["close", "task-ends"])
async def test_closing_towards_a_peer_that_never_reads_is_bounded_in_time(
    backend: str, how: str
) -> None:
    """Before ``close_timeout``, a graceful close (``TcpClose``, or the task ending) of a
    connection whose peer never reads waited for ever on the stdlib loops: no
    ``TcpClosed``, and the buffer and the fd pinned after the task was gone."""
    factory = functools.partial(
        TcpDriver, high=64 << 10, low=16 << 10, max_buffer=256 << 10, close_timeout=0.3
    )
    async with Runtime({"probe": Probe}, backend=backend, drivers=[factory]) as rt:
        ref = await rt.spawn("probe")
        rt.send_nowait(ref, [TcpListen((LO, 0))])
        (lst,) = await inputs(rt, 1)
        client = socket.create_connection(lst.addr)
        try:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            (acc,) = await inputs(rt, 1)
            n = 400
            rt.send_nowait(ref, [TcpSend(acc.slot, bytes(64 << 10)) for _ in range(n)])
            for _ in range(n + 1):  # until the buffer is full: the peer is stuck
                (ev,) = await inputs(rt, 1)
                if isinstance(ev, TcpError):
                    break
            assert isinstance(ev, TcpError) and ev.errno == errno.ENOBUFS, ev
            if how == "close":
                rt.send_nowait(ref, [TcpClose(acc.slot)])
                for _ in range(n + 1):
                    (ev,) = await inputs(rt, 1)
                    if isinstance(ev, TcpClosed):
                        break
                assert isinstance(ev, TcpClosed) and ev.errno == errno.ETIMEDOUT, ev
                assert "close_timeout" in str(ev.error)
            else:
                rt.send_nowait(ref, "end")
                for _ in range(n + 1):
                    end = await asyncio.wait_for(rt.next_event(), T)
                    if isinstance(end, TaskEnded):
                        break
                assert isinstance(end, TaskEnded), end
            await wait_fd_closed(lst.addr[1], client.getsockname()[1])
            stats = await rt.run_on_worker(0, lambda core: dict(core.drivers[0].stats()))
            assert stats["tcp_conns"] == 0 and stats["tcp_write_buffered"] == 0
        finally:
            client.close()


# --------------------------------------------------------- bursts of sessions, races


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
