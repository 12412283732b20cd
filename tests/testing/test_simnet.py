"""The simulated network: UDP and TCP drivers, link conditions, partitions (no sockets)."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from sansio_aio import Ext, ExtOut, Task, TaskOutput
from sansio_aio.net import (
    TcpAccepted,
    TcpClose,
    TcpClosed,
    TcpConnect,
    TcpConnected,
    TcpData,
    TcpEof,
    TcpListen,
    TcpListening,
    TcpPaused,
    TcpResumed,
    TcpSend,
    TcpShutdown,
    UdpBind,
    UdpBound,
    UdpError,
    UdpPacket,
    UdpSend,
    UdpUnbind,
    UdpUnbound,
)
from sansio_aio.testing import Fate, HarnessError, LinkConditions, SimRuntime


class UdpEcho(Task):
    """Binds ``cfg`` (default 127.0.0.1:0), reports the result, echoes every datagram."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        addr, reuse = cfg if isinstance(cfg, list) else (cfg or ("127.0.0.1", 0), False)
        self.emit(UdpBind(addr, reuse))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is UdpPacket:
            self.emit(UdpSend(event.slot, event.source, event.data))
        elif type(event) is Ext:
            self.emit(event.msg)  # the test makes it emit any output
        else:
            self.emit(ExtOut(event))


class UdpClient(Task):
    """Binds, then on ``Ext((dest, [payloads]))`` sends each; reports every input."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.slot = -1
        self.emit(UdpBind(cfg or ("127.0.0.1", 0)))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is UdpBound:
            self.slot = event.slot
            self.emit(ExtOut(event))
        elif type(event) is Ext:
            dest, payloads = event.msg
            for p in payloads:
                self.emit(UdpSend(self.slot, dest, p))
        else:
            self.emit(ExtOut((now, event)))


KINDS = {"echo": UdpEcho, "client": UdpClient}


async def _pair(rt: SimRuntime) -> tuple[Any, Any, Any]:
    echo = await rt.spawn("echo")
    bound = (await rt.next_event()).msg  # type: ignore[union-attr]
    client = await rt.spawn("client")
    await rt.next_event()
    return echo, client, bound.addr


async def _replies(rt: SimRuntime, within: float = 5.0) -> list[tuple[float, UdpPacket]]:
    rt.advance(within)
    return [e.msg for e in rt.poll_events() if isinstance(e, TaskOutput)]


async def test_latency_and_jitter_free_round_trip_is_exact() -> None:
    async with SimRuntime(KINDS, workers=2) as rt:
        rt.net.set_default(latency=0.025)
        _, client, addr = await _pair(rt)
        rt.send_nowait(client, (addr, [b"a", b"b"]))
        got = await _replies(rt)
        assert [(t, p.data) for t, p in got] == [(0.05, b"a"), (0.05, b"b")]
        assert got[0][1].source == addr


async def test_loss_duplication_and_stats() -> None:
    async with SimRuntime(KINDS) as rt:
        rt.net.set_default(loss=1.0)
        _, client, addr = await _pair(rt)
        rt.send_nowait(client, (addr, [b"x"] * 10))
        assert await _replies(rt) == []
        assert rt.net.stats.lost == 10
        rt.net.set_default(LinkConditions(duplicate=1.0))
        rt.send_nowait(client, (addr, [b"y"]))
        assert len(await _replies(rt)) == 4  # duplicated on the way there and back


async def test_scripted_fates_reorder_and_drop() -> None:
    async with SimRuntime(KINDS) as rt:
        rt.net.set_default(latency=0.01)
        _, client, addr = await _pair(rt)
        src = ("127.0.0.1", addr[1] + 1)  # the client's port (ephemeral ports count up)
        rt.net.script(src, addr, [Fate(delay=0.1), Fate(lost=True), Fate(copies=2)])
        rt.send_nowait(client, (addr, [b"1", b"2", b"3", b"4"]))
        got = [p.data for _, p in await _replies(rt)]
        assert got == [b"3", b"3", b"4", b"1"]


async def test_bandwidth_serialises_and_tail_drops() -> None:
    async with SimRuntime(KINDS) as rt:
        _, client, addr = await _pair(rt)
        rt.net.set_link(addr, ("127.0.0.1", addr[1] + 1), bandwidth=10_000, queue_bytes=3000)
        rt.net.set_link("127.0.0.1", "127.0.0.1", bandwidth=10_000, queue_bytes=3000)
        rt.send_nowait(client, (addr, [bytes(972)] * 6))  # 1000 B on the wire each
        got = await _replies(rt, 10.0)
        times = [t for t, _ in got]
        assert len(got) == 4  # 1 on the wire + 3 queued; the rest tail-dropped
        assert times == pytest.approx([0.2, 0.3, 0.4, 0.5])
        assert rt.net.stats.queue_dropped == 2


async def test_mtu_drops_larger_datagrams() -> None:
    async with SimRuntime(KINDS) as rt:
        rt.net.set_default(LinkConditions(mtu=1500))
        _, client, addr = await _pair(rt)
        rt.send_nowait(client, (addr, [bytes(1472), bytes(1473)]))
        got = await _replies(rt)
        assert [len(p.data) for _, p in got] == [1472]
        assert rt.net.stats.mtu_dropped == 1


async def test_partition_heals() -> None:
    async with SimRuntime({"echo": UdpEcho, "client": UdpClient}, workers=2) as rt:
        echo = await rt.spawn("echo", ("10.0.0.1", 7))
        await rt.next_event()
        client = await rt.spawn("client", ("10.0.0.2", 0))
        await rt.next_event()
        part = rt.net.partition(["10.0.0.1"], until=1.0)
        rt.send_nowait(client, (("10.0.0.1", 7), [b"cut"]))
        assert await _replies(rt, 0.5) == []
        assert rt.net.stats.partitioned == 1 and part.active
        rt.advance(0.6)
        assert not part.active
        rt.send_nowait(client, (("10.0.0.1", 7), [b"healed"]))
        assert [p.data for _, p in await _replies(rt)] == [b"healed"]
        assert echo.worker != client.worker


async def test_bind_errors_reuse_and_ipv6() -> None:
    async with SimRuntime(KINDS) as rt:
        await rt.spawn("echo", ("127.0.0.1", 5000))
        ok = (await rt.next_event()).msg  # type: ignore[union-attr]
        assert ok.ok and ok.addr == ("127.0.0.1", 5000)
        await rt.spawn("echo", ("127.0.0.1", 5000))
        busy = (await rt.next_event()).msg  # type: ignore[union-attr]
        assert busy.slot == -1 and busy.errno == errno.EADDRINUSE
        await rt.spawn("echo", ("localhost", 5001))
        named = (await rt.next_event()).msg  # type: ignore[union-attr]
        assert named.errno == errno.EINVAL and "not an IP address" in named.error
        for _ in range(2):
            await rt.spawn("echo", [("127.0.0.1", 6000), True])
            assert (await rt.next_event()).msg.ok  # type: ignore[union-attr]
        await rt.spawn("echo", ("::1", 0))
        v6 = (await rt.next_event()).msg  # type: ignore[union-attr]
        assert v6.addr[0] == "::1" and len(v6.addr) == 4
        client = await rt.spawn("client", ("::1", 0))
        await rt.next_event()
        rt.send_nowait(client, (v6.addr, [b"six"]))
        (_, pkt), *_ = await _replies(rt)
        assert pkt.data == b"six" and pkt.source == v6.addr


async def test_stale_slot_oversize_and_release() -> None:
    async with SimRuntime(KINDS) as rt:
        echo = await rt.spawn("echo", ("127.0.0.1", 5555))
        slot = (await rt.next_event()).msg.slot  # type: ignore[union-attr]
        big = bytes(65508)
        rt.send_nowait(echo, UdpSend(slot, ("127.0.0.1", 9), big))
        err = (await rt.next_event()).msg  # type: ignore[union-attr]
        assert isinstance(err, UdpError) and err.errno == errno.EMSGSIZE
        rt.send_nowait(echo, UdpUnbind(slot))
        assert (await rt.next_event()).msg == UdpUnbound(slot)  # type: ignore[union-attr]
        rt.send_nowait(echo, UdpSend(slot, ("127.0.0.1", 9), b"x"))
        stale = (await rt.next_event()).msg  # type: ignore[union-attr]
        assert isinstance(stale, UdpError) and stale.errno == errno.EBADF
        rt.send_nowait(echo, UdpBind(("127.0.0.1", 5556)))
        await rt.next_event()
        await rt.shutdown()
        assert rt.net.registry["udp"].by_addr == {}  # every socket closed


async def test_whole_datagrams_up_to_the_limit() -> None:
    async with SimRuntime(KINDS) as rt:
        _, client, addr = await _pair(rt)
        rt.send_nowait(client, (addr, [bytes(65507), bytes(9000)]))
        assert sorted(len(p.data) for _, p in await _replies(rt)) == [9000, 65507]


def test_bad_link_conditions_are_refused() -> None:
    with pytest.raises(HarnessError, match="probability"):
        LinkConditions(loss=1.5)
    with pytest.raises(HarnessError, match="mtu"):
        LinkConditions(mtu=10)


# ----------------------------------------------------------------------------- TCP


class TcpEchoServer(Task):
    """Listens on ``cfg``; echoes every connection's bytes; closes on EOF."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.emit(TcpListen(cfg or ("127.0.0.1", 0)))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is TcpListening:
            self.emit(ExtOut(event))
        elif type(event) is TcpData:
            self.emit(TcpSend(event.slot, event.data))
        elif type(event) is TcpEof:
            self.emit(TcpClose(event.slot))
        elif type(event) in (TcpAccepted, TcpClosed):
            self.emit(ExtOut(type(event).__name__))


class TcpClient(Task):
    """Connects to ``cfg[0]``, sends ``cfg[1]`` then half-closes; reports what comes back."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.data = bytearray()
        self.emit(TcpConnect(cfg[0], timeout=cfg[2] if len(cfg) > 2 else 10.0))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is TcpConnected:
            if not event.ok:
                self.emit(ExtOut(("failed", event.errno, now)))
                self.closing = True
                return
            self.emit(TcpSend(event.slot, self.cfg[1]))
            self.emit(TcpShutdown(event.slot))
        elif type(event) is TcpData:
            self.data += event.data
        elif type(event) is TcpEof:
            self.emit(ExtOut(("echoed", bytes(self.data), now)))
            self.emit(TcpClose(event.slot))
        elif type(event) is TcpClosed:
            self.closing = True
        elif type(event) in (TcpPaused, TcpResumed):
            self.emit(ExtOut(type(event).__name__))


TCP = {"server": TcpEchoServer, "client": TcpClient}


async def _server(rt: SimRuntime) -> Any:
    ref = await rt.spawn("server")
    while True:
        ev = await rt.next_event()
        if isinstance(ev, TaskOutput) and ev.task == ref:
            return ev.msg.addr


async def _until(rt: SimRuntime, first: str) -> Any:
    while True:
        ev = await rt.next_event()
        if isinstance(ev, TaskOutput) and isinstance(ev.msg, tuple) and ev.msg[0] == first:
            return ev.msg


async def test_tcp_stream_is_whole_and_ordered_over_a_lossy_link() -> None:
    async with SimRuntime(TCP, workers=2, seed=11) as rt:
        rt.net.set_default(latency=0.01, jitter=0.005, loss=0.3)
        addr = await _server(rt)
        payload = bytes(range(256)) * 400  # 100 KiB, about 70 segments
        await rt.spawn("client", (addr, payload))
        _, echoed, _ = await _until(rt, "echoed")
        assert echoed == payload
        assert rt.net.stats.retransmitted > 0


async def test_tcp_refused_and_timed_out() -> None:
    async with SimRuntime(TCP) as rt:
        rt.net.set_default(latency=0.01)
        await rt.spawn("client", (("127.0.0.1", 1), b"x"))
        assert (await _until(rt, "failed"))[1:] == (errno.ECONNREFUSED, pytest.approx(0.02))
        addr = await _server(rt)
        rt.net.partition([addr])
        await rt.spawn("client", (addr, b"x", 3.0))
        _, code, when = await _until(rt, "failed")
        assert code == errno.ETIMEDOUT and when == pytest.approx(rt.now) and rt.now >= 3.0


async def test_tcp_backpressure_pauses_and_resumes() -> None:
    async with SimRuntime(TCP) as rt:
        rt.net.set_default(bandwidth=1_000_000)
        addr = await _server(rt)
        await rt.spawn("client", (addr, bytes(600_000)))
        seen = []
        while "echoed" not in seen:
            ev = await rt.next_event()
            if isinstance(ev, TaskOutput):
                seen.append(ev.msg if isinstance(ev.msg, str) else ev.msg[0])
        assert seen.index("TcpPaused") < seen.index("TcpResumed") < seen.index("echoed")
