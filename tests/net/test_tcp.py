"""TCP driver on real sockets on 127.0.0.1 / ::1: listen, accept, connect, half-close,
backpressure, bad input, bounded closes, and the connections of a task that ends.

Every test runs on every backend; those that make sense across processes also run
with worker processes (the ``variant`` fixture). ``Probe`` emits the outputs the test
sends it and reports every input as an ``ExtOut``; with ``echo`` it echoes data and
closes on EOF.
The robustness cases use the plainer ``tests.tasks.OutputProbe`` (and ``inputs``, which
fails on a task failure). Clients are asyncio streams (or sockets) on the test's own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import random
import socket
import struct
from collections.abc import Iterator
from typing import Any, cast

import pytest

from sansio_aio import Ext, ExtOut, Reply, Request, Runtime, Task, TaskEnded, TaskFailed
from sansio_aio.net import (
    Address,
    TcpAccepted,
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
    TcpResumed,
    TcpResumeReading,
    TcpSend,
    TcpShutdown,
)
from tests.helpers import LO, T, Variant, driver_stats, inputs, msg
from tests.tasks import OutputProbe


class Probe(Task):
    """Emits what the test sends (a list of outputs); reports every input as ExtOut."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        cfg = cfg or {}
        self.echo = cfg.get("echo", False)
        self.done = False
        for out in cfg.get("start", ()):
            self.emit(out)

    def on_event(self, now: float, event: Any) -> None:
        if self.echo:
            if type(event) is TcpData:
                self.emit(TcpSend(event.slot, event.data))
                return
            if type(event) is TcpEof:
                self.emit(TcpClose(event.slot))
                return
        if isinstance(event, Ext):
            if event.msg == "end":
                self.done = True
            elif event.msg == "raise":
                raise RuntimeError("boom (asked by the test)")
            else:
                for out in event.msg:
                    self.emit(out)
            return
        if isinstance(event, Request):
            self.emit(Reply(event.id, event.msg))
            return
        self.emit(ExtOut(event))

    def is_empty(self) -> bool:
        return self.done or super().is_empty()


def runtime(variant: Variant, **kw: Any) -> Runtime:
    kw.setdefault("drivers", [TcpDriver])
    return Runtime({"probe": Probe}, **variant, **kw)


async def listen(rt: Runtime, ref: Any, addr: Any = (LO, 0), **kw: Any) -> TcpListening:
    rt.send_nowait(ref, [TcpListen(addr, **kw)])
    ev = await msg(rt)
    assert isinstance(ev, TcpListening)
    return ev


async def read_data(rt: Runtime, slot: int, n: int) -> bytes:
    """Collect ``TcpData`` of ``slot`` until ``n`` bytes arrived."""
    buf = b""
    while len(buf) < n:
        ev = await msg(rt)
        assert isinstance(ev, TcpData) and ev.slot == slot, ev
        buf += ev.data
    assert len(buf) == n
    return buf


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LO, 0))
        port: int = s.getsockname()[1]
    return port


def have_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


# ------------------------------------------------------------------ listen, accept


async def test_listen_accept_receive_send(variant: Variant) -> None:
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe", {"start": [TcpListen((LO, 0), tag="srv")]})
        lst = await msg(rt)
        assert isinstance(lst, TcpListening) and lst.ok and lst.tag == "srv"
        assert lst.addr is not None, lst  # narrows the type
        assert lst.addr[0] == LO and lst.addr[1] > 0
        reader, writer = await asyncio.open_connection(*lst.addr)
        acc = await msg(rt)
        assert isinstance(acc, TcpAccepted) and acc.listener == lst.slot
        assert acc.slot not in (lst.slot, -1)
        assert acc.remote == writer.get_extra_info("sockname")
        assert acc.local == lst.addr
        writer.write(b"hello task")
        assert await read_data(rt, acc.slot, 10) == b"hello task"
        rt.send_nowait(ref, [TcpSend(acc.slot, b"hello client")])
        assert await asyncio.wait_for(reader.readexactly(12), T) == b"hello client"
        rt.send_nowait(ref, [TcpClose(acc.slot)])
        assert await msg(rt) == TcpClosed(acc.slot)
        assert await asyncio.wait_for(reader.read(), T) == b""
        writer.close()
        stats = await driver_stats(rt)
        assert stats["tcp_accepted"] == 1 and stats["tcp_conns"] == 0


async def test_echo_with_100_concurrent_clients(variant: Variant) -> None:
    n_clients, rounds = 100, 10
    async with runtime(variant) as rt:
        await rt.spawn("probe", {"echo": True, "start": [TcpListen((LO, 0), backlog=256)]})
        lst = await msg(rt)
        assert lst.ok

        async def client(i: int) -> int:
            rng = random.Random(i)
            reader, writer = await asyncio.open_connection(*lst.addr)
            total = 0
            for _ in range(rounds):
                data = rng.randbytes(rng.randint(1, 20_000))
                writer.write(data)
                assert await reader.readexactly(len(data)) == data
                total += len(data)
            writer.write_eof()
            assert await reader.read() == b""  # the echo closed after our EOF
            writer.close()
            await writer.wait_closed()
            return total

        totals = await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(n_clients))), 60)
        stats = await driver_stats(rt)
        assert stats["tcp_accepted"] == n_clients
        assert stats["tcp_rx_bytes"] == stats["tcp_tx_bytes"] == sum(totals)
        assert stats["tcp_errors"] == 0


async def test_listen_on_a_busy_port_fails_as_value(variant: Variant) -> None:
    with socket.socket() as busy:
        busy.bind((LO, 0))
        busy.listen()
        async with runtime(variant) as rt:
            ref = await rt.spawn("probe")
            lst = await listen(rt, ref, busy.getsockname())
            assert not lst.ok and lst.slot == -1 and lst.errno == errno.EADDRINUSE
            good = await listen(rt, ref)
            assert good.ok


@pytest.mark.parametrize(
    ("addr", "needle"),
    [
        (("localhost", 0), "not an IP address"),
        (("127.0.0.1", -1), "port must be"),
        ("127.0.0.1", "(host, port)"),
    ],
)
async def test_bad_addresses_are_error_values(variant: Variant, addr: Any, needle: str) -> None:
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        lst = await listen(rt, ref, addr)
        assert not lst.ok and needle in (lst.error or "") and lst.errno == errno.EINVAL
        rt.send_nowait(ref, [TcpConnect(addr, tag="c")])
        con = await msg(rt)
        assert isinstance(con, TcpConnected) and not con.ok and needle in (con.error or "")
        assert con.tag == "c"
        rt.send_nowait(ref, [TcpListen((LO, 0), backlog=0)])
        bad = await msg(rt)
        assert not bad.ok and "backlog" in bad.error


@pytest.mark.parametrize(
    "listen",
    [
        TcpListen(("::1", 0, "flowinfo", 0)),  # TypeError in bind
        TcpListen((LO, 0), backlog=1 << 70),  # OverflowError in listen
    ],
    ids=["bad-flowinfo", "huge-backlog"],
)
async def test_malformed_listen_fields_are_error_values(
    variant: Variant, listen: TcpListen
) -> None:
    """A TypeError/OverflowError from bind or listen used to escape ``except OSError``:
    the task failed and the socket was left to the garbage collector."""
    async with Runtime({"probe": OutputProbe}, **variant, drivers=[TcpDriver]) as rt:
        ref = await rt.spawn("probe")
        rt.send_nowait(ref, [listen, TcpListen((LO, 0))])
        bad, good = await inputs(rt, 2)
        assert isinstance(bad, TcpListening) and bad.slot == -1 and not bad.ok, bad
        assert bad.errno == errno.EINVAL and "listen" in str(bad.error)
        assert isinstance(good, TcpListening) and good.ok
        stats = await driver_stats(rt)
        assert stats["tcp_listeners"] == 1


async def test_close_listener_acks_and_frees_the_port(variant: Variant) -> None:
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        lst = await listen(rt, ref)
        rt.send_nowait(ref, [TcpClose(lst.slot)])
        assert await msg(rt) == TcpClosed(lst.slot)
        assert lst.addr is not None, lst  # narrows the type
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(*lst.addr)
        with socket.socket() as again:
            again.bind(lst.addr)
            again.listen()


# ------------------------------------------------------------------ connect


async def test_connect_send_receive_close(variant: Variant) -> None:
    got_eof = asyncio.Event()

    async def upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data.upper())
        got_eof.set()
        writer.close()

    server = await asyncio.start_server(upper, LO, 0)
    addr = server.sockets[0].getsockname()
    try:
        async with runtime(variant) as rt:
            ref = await rt.spawn("probe")
            rt.send_nowait(ref, [TcpConnect(addr, tag="up")])
            con = await msg(rt)
            assert isinstance(con, TcpConnected) and con.ok, con
            assert con.local is not None, con  # narrows the type
            assert con.tag == "up" and con.remote == addr and con.local[0] == LO
            rt.send_nowait(ref, [TcpSend(con.slot, b"shout")])
            assert await read_data(rt, con.slot, 5) == b"SHOUT"
            rt.send_nowait(ref, [TcpClose(con.slot)])
            closed = await msg(rt)
            assert closed == TcpClosed(con.slot)
            await asyncio.wait_for(got_eof.wait(), T)
    finally:
        server.close()
        await server.wait_closed()


async def test_connect_refused_is_an_error_value(variant: Variant) -> None:
    port = free_port()
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        rt.send_nowait(ref, [TcpConnect((LO, port), tag=7)])
        con = await msg(rt)
        assert isinstance(con, TcpConnected) and not con.ok and con.slot == -1
        assert con.errno == errno.ECONNREFUSED and con.tag == 7
        assert (await driver_stats(rt))["tcp_errors"] == 1


async def test_many_connects_to_a_closed_port_each_fail_and_leave_nothing(variant: Variant) -> None:
    with socket.socket() as s:
        s.bind((LO, 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        async with Runtime({"probe": OutputProbe}, **variant, drivers=[TcpDriver]) as rt:
            ref = await rt.spawn("probe")
            n = 200
            rt.send_nowait(ref, [TcpConnect((LO, port), tag=i) for i in range(n)])
            got = await inputs(rt, n)
            assert all(isinstance(e, TcpConnected) and e.slot == -1 for e in got)
            assert {e.errno for e in got} == {errno.ECONNREFUSED}
            assert sorted(e.tag for e in got) == list(range(n))
            stats = await driver_stats(rt)
            assert stats["tcp_conns"] == 0 and stats["tcp_errors"] == n


@contextlib.contextmanager
def full_listener() -> Iterator[Address]:
    """The address of a loopback listener that never accepts and whose accept queue is
    full: the kernel drops further SYNs, so a connect to it can only hang."""
    with socket.socket() as full:
        full.bind((LO, 0))
        full.listen(0)
        fillers = []
        try:
            for _ in range(4):
                f = socket.socket()
                f.setblocking(False)
                try:
                    f.connect(full.getsockname())
                except BlockingIOError:
                    pass
                fillers.append(f)
            yield full.getsockname()
        finally:
            for f in fillers:
                f.close()


async def test_connect_times_out_as_an_error_value(variant: Variant) -> None:
    # A listener that never accepts, with its accept queue full: further SYNs are
    # dropped, so a connect can only time out (all on loopback).
    with full_listener() as addr:
        async with runtime(variant) as rt:
            ref = await rt.spawn("probe")
            rt.send_nowait(ref, [TcpConnect(addr, timeout=0.3)])
            con = await msg(rt)
            assert isinstance(con, TcpConnected) and not con.ok
            assert con.errno == errno.ETIMEDOUT and "timed out" in (con.error or "")


async def test_ipv6_connect_and_accept_inside_one_task(variant: Variant) -> None:
    if not have_ipv6():
        pytest.skip("IPv6 loopback (::1) is not available on this machine")
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        lst = await listen(rt, ref, ("::1", 0))
        assert lst.addr is not None, lst  # narrows the type
        assert lst.ok and lst.addr[0] == "::1"
        rt.send_nowait(ref, [TcpConnect(lst.addr[:2])])
        first, second = await msg(rt), await msg(rt)
        by_type = {type(first): first, type(second): second}
        con, acc = by_type[TcpConnected], by_type[TcpAccepted]
        assert con.local is not None, con  # narrows the type
        assert con.ok and acc.remote[:2] == con.local[:2]
        rt.send_nowait(ref, [TcpSend(con.slot, b"over six")])
        assert await read_data(rt, acc.slot, 8) == b"over six"


# ------------------------------------------------------------------ half-close


async def test_peer_half_close_then_reply_then_close(variant: Variant) -> None:
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        lst = await listen(rt, ref)
        assert lst.addr is not None, lst  # narrows the type
        reader, writer = await asyncio.open_connection(*lst.addr)
        acc = await msg(rt)
        writer.write(b"question")
        writer.write_eof()
        assert await read_data(rt, acc.slot, 8) == b"question"
        assert await msg(rt) == TcpEof(acc.slot)
        rt.send_nowait(ref, [TcpSend(acc.slot, b"answer"), TcpClose(acc.slot)])
        assert await asyncio.wait_for(reader.read(), T) == b"answer"
        assert await msg(rt) == TcpClosed(acc.slot)
        writer.close()


async def test_task_half_close_keeps_reading(variant: Variant) -> None:
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        lst = await listen(rt, ref)
        assert lst.addr is not None, lst  # narrows the type
        reader, writer = await asyncio.open_connection(*lst.addr)
        acc = await msg(rt)
        rt.send_nowait(ref, [TcpSend(acc.slot, b"last words"), TcpShutdown(acc.slot)])
        assert await asyncio.wait_for(reader.read(), T) == b"last words"  # then EOF
        writer.write(b"still listening")
        assert await read_data(rt, acc.slot, 15) == b"still listening"
        rt.send_nowait(ref, [TcpSend(acc.slot, b"too late")])
        err = await msg(rt)
        assert isinstance(err, TcpError) and err.errno == errno.EPIPE and err.op == "send"
        writer.close()  # both sides have now sent FIN: the connection closes by itself
        assert await msg(rt) == TcpEof(acc.slot)
        assert await msg(rt) == TcpClosed(acc.slot)


async def test_peer_reset_arrives_as_closed_with_error(variant: Variant) -> None:
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        lst = await listen(rt, ref)
        assert lst.addr is not None, lst  # narrows the type
        sock = socket.create_connection(lst.addr)
        acc = await msg(rt)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
        closed = await msg(rt)
        assert isinstance(closed, TcpClosed) and closed.slot == acc.slot
        # a reset is reported as an error, or as a clean close if the kernel saw EOF first
        assert closed.error is None or closed.errno == errno.ECONNRESET, closed
        rt.send_nowait(ref, [TcpSend(acc.slot, b"gone")])
        assert isinstance(await msg(rt), TcpError)


async def test_send_after_the_peer_half_closed_still_works(backend: str) -> None:
    async with Runtime({"probe": OutputProbe}, backend=backend, drivers=[TcpDriver]) as rt:
        ref = await rt.spawn("probe")
        rt.send_nowait(ref, [TcpListen((LO, 0))])
        (lst,) = await inputs(rt, 1)
        reader, writer = await asyncio.open_connection(*lst.addr)
        (acc,) = await inputs(rt, 1)
        writer.write(b"bye")
        writer.write_eof()
        data, eof = await inputs(rt, 2)
        assert isinstance(data, TcpData) and data.data == b"bye" and isinstance(eof, TcpEof)
        # a bytes-like payload on purpose: TcpSend.data is typed bytes, any buffer works
        rt.send_nowait(ref, [TcpSend(acc.slot, memoryview(b"still here")), TcpShutdown(acc.slot)])  # type: ignore[arg-type]
        assert await asyncio.wait_for(reader.read(), T) == b"still here"
        rt.send_nowait(ref, [TcpSend(acc.slot, b"after shutdown")])
        ev = (await inputs(rt, 1))[0]
        if isinstance(ev, TcpClosed):  # both FINs sent: it may close first
            ev = (await inputs(rt, 1))[0]
        assert isinstance(ev, TcpError) and ev.errno in (errno.EPIPE, errno.EBADF), ev
        writer.close()


# ------------------------------------------------------------------ backpressure


async def test_backpressure_pauses_refuses_and_resumes(backend: str) -> None:
    high, low, cap = 64 * 1024, 16 * 1024, 256 * 1024
    chunk = 128 * 1024
    drivers = [lambda: TcpDriver(high=high, low=low, max_buffer=cap)]
    async with runtime({"backend": backend}, drivers=drivers) as rt:
        ref = await rt.spawn("probe")
        lst = await listen(rt, ref)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow reader
        sock.setblocking(False)
        assert lst.addr is not None, lst  # narrows the type
        await asyncio.get_running_loop().sock_connect(sock, lst.addr)
        reader, writer = await asyncio.open_connection(sock=sock)
        acc = await msg(rt)
        n = 60  # 7.5 MiB in one drain: more than the kernel's buffers can absorb
        rt.send_nowait(ref, [TcpSend(acc.slot, bytes([i]) * chunk) for i in range(n)])
        await rt.request(ref, "sync")  # every input of that drain has been reported
        events = [e.msg for e in rt.poll_events()]  # type: ignore[union-attr]
        paused = [e for e in events if isinstance(e, TcpPaused)]
        refused = [e for e in events if isinstance(e, TcpError)]
        assert len(paused) + len(refused) == len(events), events
        assert len(paused) == 1 and paused[0].slot == acc.slot and paused[0].buffered > high
        assert refused and all(e.errno == errno.ENOBUFS for e in refused)
        assert "write buffer full" in refused[0].error
        stats = await driver_stats(rt)
        assert stats["tcp_paused"] == 1 and stats["tcp_send_refused"] == len(refused)
        assert 0 < stats["tcp_write_buffered"] <= cap  # bounded, whatever the task sends
        # reading is paused while the buffer is high: data sent now waits in the kernel
        writer.write(b"ping")
        await writer.drain()
        for _ in range(3):  # several turns of the worker's loop
            await rt.request(ref, "sync")
        assert rt.poll_events() == []
        # the client drains: everything accepted arrives, in order, then TcpResumed
        accepted = n - len(refused)
        got = await asyncio.wait_for(reader.readexactly(accepted * chunk), 30)
        assert got == b"".join(bytes([i]) * chunk for i in range(accepted))
        assert await msg(rt) == TcpResumed(acc.slot)
        assert await read_data(rt, acc.slot, 4) == b"ping"  # reading resumed
        writer.close()


async def test_task_can_pause_and_resume_reading(variant: Variant) -> None:
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        lst = await listen(rt, ref)
        assert lst.addr is not None, lst  # narrows the type
        _, writer = await asyncio.open_connection(*lst.addr)
        acc = await msg(rt)
        rt.send_nowait(ref, [TcpPauseReading(acc.slot)])
        await rt.request(ref, "sync")
        writer.write(b"wait for it")
        await writer.drain()
        for _ in range(3):  # several loop turns of the worker: nothing may be read
            await rt.request(ref, "sync")
        assert rt.poll_events() == []
        rt.send_nowait(ref, [TcpResumeReading(acc.slot)])
        assert await read_data(rt, acc.slot, 11) == b"wait for it"
        writer.close()


async def test_peer_reset_with_a_full_write_buffer_frees_it(variant: Variant) -> None:
    """A client that never reads, then resets: the buffer stays bounded, then is freed."""
    factory = functools.partial(TcpDriver, high=64 << 10, low=16 << 10, max_buffer=256 << 10)
    async with Runtime({"probe": OutputProbe}, **variant, drivers=[factory]) as rt:
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
        stats = await driver_stats(rt)
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
        stats = await driver_stats(rt)
        assert stats["tcp_conns"] == 0 and stats["tcp_write_buffered"] == 0
        rt.send_nowait(ref, [TcpSend(acc.slot, b"late")])  # a send after the close
        (late,) = await inputs(rt, 1)
        assert isinstance(late, TcpError) and late.errno == errno.EBADF
        del reader


# ------------------------------------------------------------------ bad input, release


async def test_bad_slots_and_malformed_sends_are_error_values(variant: Variant) -> None:
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        other = await rt.spawn("probe")
        lst = await listen(rt, ref)
        assert lst.addr is not None, lst  # narrows the type
        reader, writer = await asyncio.open_connection(*lst.addr)
        acc = await msg(rt)
        rt.send_nowait(
            ref,
            [
                TcpSend(424242, b"x"),
                TcpSend(acc.slot, "not bytes"),  # type: ignore[arg-type]
                TcpSend(lst.slot, b"a listener is no connection"),
                TcpShutdown(999),
                TcpPauseReading(998),
                TcpClose(997),
            ],
        )
        errs = [await msg(rt) for _ in range(6)]
        assert [type(e) for e in errs] == [TcpError] * 6, errs
        assert [e.op for e in errs] == ["send", "send", "send", "shutdown", "pause", "close"]
        rt.send_nowait(other, [TcpSend(acc.slot, b"not yours"), TcpClose(acc.slot)])
        for _ in range(2):
            ev = await asyncio.wait_for(rt.next_event(), T)
            assert ev.task == other and isinstance(ev.msg, TcpError)  # type: ignore[union-attr]
        rt.send_nowait(ref, [TcpSend(acc.slot, b"fine")])  # the connection lives on
        assert await asyncio.wait_for(reader.readexactly(4), T) == b"fine"
        writer.close()


@pytest.mark.parametrize("how", ["end", "raise"])
async def test_an_ended_tasks_listeners_and_connections_are_closed(
    variant: Variant, how: str
) -> None:
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        lst = await listen(rt, ref)
        assert lst.addr is not None, lst  # narrows the type
        reader, writer = await asyncio.open_connection(*lst.addr)
        await msg(rt)  # TcpAccepted
        rt.send_nowait(ref, how)
        ended = await asyncio.wait_for(rt.next_event(), T)
        assert isinstance(ended, TaskEnded if how == "end" else TaskFailed)
        assert await asyncio.wait_for(reader.read(), T) == b""  # the connection closed
        writer.close()
        with socket.socket() as again:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(lst.addr)
            again.listen()  # fails with EADDRINUSE if the task's listener were open
        stats = await driver_stats(rt)
        assert stats["tcp_listeners"] == 0 and stats["tcp_conns"] == 0


async def test_a_connect_pending_when_its_task_ends_is_cancelled_cleanly(backend: str) -> None:
    # A connect that can only hang (the listener's accept queue is full): the task ends
    # meanwhile; the attempt is cancelled, its socket closed, nothing reaches anybody.
    with full_listener() as addr:
        async with runtime({"backend": backend}) as rt:
            ref = await rt.spawn("probe")
            rt.send_nowait(ref, [TcpConnect(addr, timeout=30)])
            rt.send_nowait(ref, "end")
            assert isinstance(await asyncio.wait_for(rt.next_event(), T), TaskEnded)
            # the cancellation runs on the worker's loop: ask until it did (bounded)
            deadline = asyncio.get_running_loop().time() + T
            while True:
                pending = await rt.run_on_worker(
                    0, lambda core: len(cast(TcpDriver, core.drivers[0])._connecting)
                )
                if not pending or asyncio.get_running_loop().time() > deadline:
                    break
            assert pending == 0
            assert (await driver_stats(rt))["tcp_errors"] == 0


# -------------------------------------------------- closing towards a peer that never reads


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
    variant: Variant, how: str
) -> None:
    """Before ``close_timeout``, a graceful close (``TcpClose``, or the task ending) of a
    connection whose peer never reads waited for ever on the stdlib loops: no
    ``TcpClosed``, and the buffer and the fd pinned after the task was gone."""
    factory = functools.partial(
        TcpDriver, high=64 << 10, low=16 << 10, max_buffer=256 << 10, close_timeout=0.3
    )
    async with Runtime({"probe": OutputProbe}, **variant, drivers=[factory]) as rt:
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
            stats = await driver_stats(rt)
            assert stats["tcp_conns"] == 0 and stats["tcp_write_buffered"] == 0
        finally:
            client.close()
