"""UDP driver on real sockets on 127.0.0.1 / ::1: bind, unbind, sends, batches, drops,
floods, and the sockets of a task that ends.

Every test runs on every backend; those that make sense across processes also run
with worker processes (the ``variant`` fixture). A ``Probe`` task is scripted by the
test: it emits the outputs the test sends it and reports every input it gets back as an
``ExtOut``.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import random
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    available_backends,
)
from sansio_aio.net import (
    MAX_UDP_PAYLOAD,
    UdpBind,
    UdpBound,
    UdpDriver,
    UdpError,
    UdpPacket,
    UdpPackets,
    UdpSend,
    UdpSendBatch,
    UdpSendMany,
    UdpSendPairs,
    UdpUnbind,
    UdpUnbound,
)
from tests.helpers import LO, T, Variant, driver_stats, msg

#: every test runs on the C datagram path and on the pure-Python one (tests/net/conftest.py)
pytestmark = pytest.mark.usefixtures("datagram_path")


class Probe(Task):
    """Emits what the test sends (a list of outputs); reports every input as ExtOut.

    With ``cfg["echo"]`` it echoes datagrams instead of reporting them; slots listed in
    ``cfg["count"]`` are only counted (flood tests). ``"end"`` makes it finish;
    ``"raise"`` makes it fail; ``"report ticks"`` reports each tick as ``("tick", now)``.
    Requests ``"ticks"`` and ``"counted"`` reply with its tick times / counted datagrams.
    """

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        cfg = cfg or {}
        self.echo = cfg.get("echo", False)
        self.count_slots: set[int] = set(cfg.get("count", ()))
        self.counted = 0
        self.count_signal = -1
        self.report_ticks = False
        self.ticks: list[float] = []
        self.done = False
        for out in cfg.get("start", ()):
            self.emit(out)

    def on_tick(self, now: float) -> None:
        self.ticks.append(now)
        if self.report_ticks:
            self.emit(ExtOut(("tick", now)))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is UdpPackets and self.echo:
            self.emit(UdpSendBatch(event.slot, event.packets))
            self.emit(ExtOut(("batch", len(event.packets))))
            return
        if type(event) is UdpPacket:
            if self.echo:
                self.emit(UdpSend(event.slot, event.source, event.data))
                return
            if event.slot in self.count_slots:
                self.counted += 1
                if self.counted == self.count_signal:
                    self.emit(ExtOut(("counted", self.counted)))
                return
        if isinstance(event, Ext):
            msg = event.msg
            if msg == "end":
                self.done = True
            elif msg == "report ticks":
                self.report_ticks = True
            elif msg == "raise":
                raise RuntimeError("boom (asked by the test)")
            elif isinstance(msg, tuple) and msg[0] == "count":
                self.count_slots.add(msg[1])
                self.count_signal = msg[2]
            else:
                for out in msg:
                    self.emit(out)
            return
        if isinstance(event, Request):
            if event.msg == "ticks":
                self.emit(Reply(event.id, list(self.ticks)))
            elif event.msg == "counted":
                self.emit(Reply(event.id, self.counted))
            return
        self.emit(ExtOut(event))

    def is_empty(self) -> bool:
        return self.done or super().is_empty()


async def recv(sock: socket.socket, timeout: float = T) -> tuple[bytes, Any]:
    """Receive one datagram on a test socket without blocking the test's loop."""
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recvfrom(sock, 70000), timeout)


def udp_socket(host: str = LO, family: int = socket.AF_INET) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((host, 0))
    return s


@pytest.fixture
def sockets() -> Iterator[Callable[..., socket.socket]]:
    made: list[socket.socket] = []

    def make(host: str = LO, family: int = socket.AF_INET) -> socket.socket:
        s = udp_socket(host, family)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def runtime(variant: Variant, **kw: Any) -> Runtime:
    kw.setdefault("drivers", [UdpDriver])
    kw.setdefault("stats_interval", 0.05)
    return Runtime({"probe": Probe}, **variant, **kw)


async def bind(rt: Runtime, ref: Any, addr: Any = (LO, 0), **kw: Any) -> UdpBound:
    rt.send_nowait(ref, [UdpBind(addr, **kw)])
    bound = await msg(rt)
    assert isinstance(bound, UdpBound)
    return bound


def have_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------- bind


async def test_bind_ephemeral_port_and_receive(variant: Variant, sockets: Any) -> None:
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe", {"start": [UdpBind((LO, 0), tag="t1")]})
        bound = await msg(rt)
        assert isinstance(bound, UdpBound) and bound.ok, bound
        assert bound.tag == "t1" and bound.slot > 0
        assert bound.addr is not None, bound  # narrows the type
        assert bound.addr[0] == LO and bound.addr[1] > 0
        client = sockets()
        client.sendto(b"hello", bound.addr)
        pkt = await msg(rt)
        assert pkt == UdpPacket(bound.slot, client.getsockname(), b"hello")
        assert ref.kind == "probe"


async def test_same_port_without_reuse_fails_as_value(variant: Variant) -> None:
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        first = await bind(rt, ref)
        assert first.ok
        second = await bind(rt, ref, first.addr, tag="again")
        assert not second.ok and second.slot == -1 and second.addr is None
        assert second.errno == errno.EADDRINUSE and second.tag == "again"
        assert "bind" in (second.error or "")
        # the worker and the first socket are fine
        assert (await driver_stats(rt))["udp_sockets"] == 1


async def test_same_port_with_reuse_both_bind(variant: Variant, sockets: Any) -> None:
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        a = await bind(rt, ref, reuse=True)
        b = await bind(rt, ref, a.addr, reuse=True)
        assert a.ok and b.ok and a.addr == b.addr and a.slot != b.slot
        # unicast to a shared port lands on one of them: either way the task gets it
        sockets().sendto(b"x", a.addr)
        pkt = await msg(rt)
        assert isinstance(pkt, UdpPacket) and pkt.slot in (a.slot, b.slot)


async def test_ipv6_loopback(variant: Variant, sockets: Any) -> None:
    if not have_ipv6():
        pytest.skip("IPv6 loopback (::1) is not available on this machine")
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        bound = await bind(rt, ref, ("::1", 0))
        assert bound.addr is not None, bound  # narrows the type
        assert bound.ok and bound.addr[0] == "::1", bound
        client = sockets("::1", socket.AF_INET6)
        client.sendto(b"six", bound.addr[:2])
        pkt = await msg(rt)
        assert isinstance(pkt, UdpPacket) and pkt.data == b"six"
        assert pkt.source[:2] == client.getsockname()[:2]
        rt.send_nowait(ref, [UdpSend(bound.slot, pkt.source, b"back")])
        data, source = await recv(client)
        assert data == b"back" and source[:2] == bound.addr[:2]


@pytest.mark.parametrize(
    ("addr", "needle"),
    [
        (("localhost", 0), "not an IP address"),
        (("example.invalid", 53), "not an IP address"),
        (("127.0.0.1", 70000), "port must be"),
        (("127.0.0.1",), "(host, port)"),
        ("127.0.0.1:0", "(host, port)"),
        ((b"127.0.0.1", 0), "host must be"),
        (("127.0.0.1", 0, 0, 0), "IPv4 address takes"),
    ],
)
async def test_bind_bad_address_is_an_error_value(variant: Variant, addr: Any, needle: str) -> None:
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        bad = await bind(rt, ref, addr)
        assert not bad.ok and bad.slot == -1 and needle in (bad.error or ""), bad
        assert bad.errno == errno.EINVAL
        good = await bind(rt, ref)  # the worker and the task live on
        assert good.ok


async def test_bad_buffer_size_is_an_error_value(variant: Variant) -> None:
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        bad = await bind(rt, ref, rcvbuf=-5)
        assert not bad.ok and "rcvbuf" in (bad.error or "")


# ---------------------------------------------------------- unbind, ownership


async def test_unbind_acks_and_a_stale_slot_is_an_error(variant: Variant, sockets: Any) -> None:
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        bound = await bind(rt, ref)
        rt.send_nowait(ref, [UdpUnbind(bound.slot)])
        assert await msg(rt) == UdpUnbound(bound.slot)
        # the port is free again: the socket is really closed
        assert bound.addr is not None, bound  # narrows the type
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(bound.addr)
        target = sockets()
        rt.send_nowait(ref, [UdpSend(bound.slot, target.getsockname(), b"stale")])
        err = await msg(rt)
        assert isinstance(err, UdpError) and err.slot == bound.slot and err.op == "send"
        assert err.errno == errno.EBADF and err.dest == target.getsockname()
        # slots are never reused: a new bind gets a new slot, and the stale one stays dead
        fresh = await bind(rt, ref)
        assert fresh.ok and fresh.slot != bound.slot
        rt.send_nowait(
            ref,
            [
                UdpSend(bound.slot, target.getsockname(), b"stale again"),
                UdpSend(fresh.slot, target.getsockname(), b"fresh"),
            ],
        )
        assert isinstance(await msg(rt), UdpError)
        data, source = await recv(target)
        assert data == b"fresh" and source == fresh.addr  # the stale send went nowhere
        rt.send_nowait(ref, [UdpUnbind(bound.slot)])
        again = await msg(rt)
        assert isinstance(again, UdpUnbound) and again.error is not None
        stats = await driver_stats(rt)
        assert stats["udp_tx_errors"] == 2 and stats["udp_tx"] == 1


async def test_a_task_cannot_use_another_tasks_slot(variant: Variant, sockets: Any) -> None:
    async with runtime(variant) as rt:
        owner = await rt.spawn("probe")
        thief = await rt.spawn("probe")
        bound = await bind(rt, owner)
        target = sockets()
        rt.send_nowait(thief, [UdpSend(bound.slot, target.getsockname(), b"not yours")])
        ev = await asyncio.wait_for(rt.next_event(), T)
        assert isinstance(ev, TaskOutput) and ev.task == thief and isinstance(ev.msg, UdpError)
        rt.send_nowait(thief, [UdpUnbind(bound.slot)])
        ev = await asyncio.wait_for(rt.next_event(), T)
        assert ev.task == thief and ev.msg.error is not None  # type: ignore[union-attr]
        rt.send_nowait(owner, [UdpSend(bound.slot, target.getsockname(), b"mine")])
        data, _ = await recv(target)
        assert data == b"mine"


# ---------------------------------------------------------------------- sends


async def test_send_one_many_and_pairs(variant: Variant, sockets: Any) -> None:
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        s1 = await bind(rt, ref)
        s2 = await bind(rt, ref)
        r1, r2, r3 = sockets(), sockets(), sockets()
        a1, a2, a3 = r1.getsockname(), r2.getsockname(), r3.getsockname()

        rt.send_nowait(ref, [UdpSend(s1.slot, a1, b"one")])
        assert await recv(r1) == (b"one", s1.addr)

        rt.send_nowait(ref, [UdpSendMany(s1.slot, [a1, a2, a3], b"many")])
        for r in (r1, r2, r3):
            assert await recv(r) == (b"many", s1.addr)

        rt.send_nowait(ref, [UdpSendPairs([(s1.slot, a1), (s2.slot, a2), (s1.slot, a3)], b"p")])
        assert await recv(r1) == (b"p", s1.addr)
        assert await recv(r2) == (b"p", s2.addr)
        assert await recv(r3) == (b"p", s1.addr)
        assert (await driver_stats(rt))["udp_tx"] == 7


async def test_send_many_reports_each_bad_destination(variant: Variant, sockets: Any) -> None:
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        s1 = await bind(rt, ref)
        r1 = sockets()
        rt.send_nowait(
            ref,
            [
                UdpSendMany(s1.slot, [("127.0.0.1", 99999), r1.getsockname()], b"m"),
                UdpSendPairs([(424242, r1.getsockname()), (s1.slot, r1.getsockname())], b"q"),
                UdpSendMany(s1.slot, 12, b"m"),  # type: ignore[arg-type]
            ],
        )
        errs = [await msg(rt) for _ in range(3)]
        assert all(isinstance(e, UdpError) for e in errs), errs
        assert errs[0].dest == ("127.0.0.1", 99999)
        assert errs[1].slot == 424242
        assert await recv(r1) == (b"m", s1.addr)
        assert await recv(r1) == (b"q", s1.addr)


async def test_send_batch_handles_every_kind_of_item_as_sendto_would(
    variant: Variant, sockets: Any, datagram_path: str
) -> None:
    """Items the C path cannot send itself (bytes-like data, a bad port) go through
    ``sendto`` in place, in order; a malformed item stops the batch with one error, as
    before; long batches cross several ``sendmmsg`` calls."""
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        s1 = await bind(rt, ref)
        r1 = sockets()
        dst = r1.getsockname()
        items: list[Any] = [
            (dst, b"1"),
            (dst, bytearray(b"2")),
            ((LO, 99999), b"bad port"),
            (dst, bytearray(b"3")),
            (list(dst), b"not sent"),  # sendto wants a tuple: an error value
            (dst, b"4"),
        ]
        items += [(dst, b"n%d" % i) for i in range(150)]
        rt.send_nowait(ref, [UdpSendBatch(s1.slot, items)])
        errors = [await msg(rt), await msg(rt)]
        assert all(isinstance(e, UdpError) for e in errors), errors
        assert [e.dest for e in errors] == [(LO, 99999), list(dst)]
        got = [(await recv(r1))[0] for _ in range(154)]
        assert got == [b"1", b"2", b"3", b"4"] + [b"n%d" % i for i in range(150)]
        rt.send_nowait(ref, [UdpSendBatch(s1.slot, [(dst, b"a"), "junk", (dst, b"b")])])  # type: ignore[list-item]
        error = await msg(rt)
        assert isinstance(error, UdpError) and "items must hold" in error.error
        assert await recv(r1) == (b"a", s1.addr)
        stats = await driver_stats(rt)
        assert stats["udp_tx"] == 155 and stats["udp_tx_errors"] == 3
        assert stats["udp_compiled"] == (datagram_path == "compiled")
        r1.sendto(b"after", s1.addr)  # b"b" was never sent: "after" is the next datagram
        pkt = await msg(rt)
        assert isinstance(pkt, UdpPacket) and pkt.data == b"after"


class UnbindOnFirst(Task):
    """Binds; on its first datagram unbinds the slot; reports every input."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.emit(UdpBind((LO, 0), rcvbuf=1 << 20))
        self.unbound = False

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is UdpPacket and not self.unbound:
            self.unbound = True
            self.emit(UdpUnbind(event.slot))
        self.emit(ExtOut(event))


async def test_no_datagram_is_delivered_after_its_slot_is_unbound(
    variant: Variant, sockets: Any
) -> None:
    """A burst already read (one ``recvmmsg``) when the task unbinds on its first
    datagram: the rest are discarded, as a closed socket's queue is."""
    async with Runtime({"u": UnbindOnFirst}, drivers=[UdpDriver], **variant) as rt:
        ref = await rt.spawn("u")
        bound = await msg(rt)
        assert isinstance(bound, UdpBound)
        client = sockets()
        for i in range(50):
            client.sendto(b"%d" % i, bound.addr)
        seen: list[Any] = []
        while not any(isinstance(e, UdpUnbound) for e in seen):
            seen.append(await msg(rt))
        assert isinstance(seen[0], UdpPacket) and seen[0].data == b"0"
        assert all(isinstance(e, UdpPacket) for e in seen[:-1]) and len(seen) == 2
        rt.send_nowait(ref, "after")
        assert await msg(rt) == Ext("after")  # the next input: no late datagram
        assert (await driver_stats(rt))["udp_sockets"] == 0


# ------------------------------------------------------ batches, whole datagrams


async def test_batch_mode_receives_and_sends_whole_batches(variant: Variant, sockets: Any) -> None:
    """``UdpBind(batch=True)``: a readiness arrives as one ``UdpPackets``; ``UdpSendBatch``
    sends each (dest, data) back; nothing is lost or reordered."""
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe", {"echo": True})
        bound = await bind(rt, ref, batch=True)
        client = sockets()
        sent = [f"datagram {i}".encode() * (i + 1) for i in range(40)]
        for data in sent:
            client.sendto(data, bound.addr)
        got = [(await recv(client))[0] for _ in sent]
        assert got == sent
        batches = 0
        while batches < len(sent):
            kind, n = await msg(rt)
            assert kind == "batch" and 1 <= n <= 40
            batches += n
        assert batches == len(sent)
        # a batch send on a slot that is not ours is an error value, never a send
        rt.send_nowait(ref, [UdpSendBatch(bound.slot + 1000, [(client.getsockname(), b"x")])])
        error = await msg(rt)
        assert isinstance(error, UdpError) and error.errno == errno.EBADF


async def test_large_datagrams_arrive_whole(variant: Variant, sockets: Any) -> None:
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        bound = await bind(rt, ref, rcvbuf=1 << 20)
        client = sockets()
        rng = random.Random(4)
        for size in (9000, MAX_UDP_PAYLOAD):
            payload = rng.randbytes(size)
            client.sendto(payload, bound.addr)
            pkt = await msg(rt)
            assert isinstance(pkt, UdpPacket) and len(pkt.data) == size
            assert pkt.data == payload
            rt.send_nowait(ref, [UdpSend(bound.slot, client.getsockname(), payload)])
            data, _ = await recv(client)
            assert data == payload


async def test_oversize_and_malformed_sends_are_error_values(
    variant: Variant, sockets: Any
) -> None:
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        bound = await bind(rt, ref)
        target = sockets()
        dest = target.getsockname()
        rt.send_nowait(
            ref,
            [
                UdpSend(bound.slot, dest, bytes(MAX_UDP_PAYLOAD + 1)),
                UdpSend(bound.slot, dest, "text is not bytes"),  # type: ignore[arg-type]
                UdpSend(bound.slot, "nowhere", b"x"),  # type: ignore[arg-type]
                UdpSend(bound.slot, ("127.0.0.1", 99999), b"x"),
                UdpSend("slot", dest, b"x"),  # type: ignore[arg-type]
                UdpSend(bound.slot, dest, b"still alive"),
            ],
        )
        errs = [await msg(rt) for _ in range(5)]
        assert [type(e) for e in errs] == [UdpError] * 5, errs
        assert errs[0].errno == errno.EMSGSIZE
        assert "TypeError" in errs[1].error
        assert await recv(target) == (b"still alive", bound.addr)
        assert (await driver_stats(rt))["udp_tx_errors"] == 5


# ------------------------------------------------------- send drops are counted


class FlakySocket(socket.socket):
    """Fault injection: every 3rd send has no buffer room, every 7th gets ENOBUFS."""

    calls = 0

    def sendto(self, data: Any, *args: Any) -> int:
        FlakySocket.calls += 1
        if FlakySocket.calls % 3 == 0:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        if FlakySocket.calls % 7 == 0:
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return super().sendto(data, *args)


def expected_flaky(n: int) -> int:
    return sum(1 for i in range(1, n + 1) if i % 3 == 0 or i % 7 == 0)


async def test_send_would_block_is_counted_never_silent(backend: str, sockets: Any) -> None:
    FlakySocket.calls = 0
    drivers = [lambda: UdpDriver(socket_factory=FlakySocket)]
    async with runtime({"backend": backend}, drivers=drivers) as rt:
        ref = await rt.spawn("probe")
        bound = await bind(rt, ref)
        target = sockets()
        n = 10_000
        rt.send_nowait(ref, [UdpSendMany(bound.slot, [target.getsockname()] * n, b"b")])
        st = await driver_stats(rt)
        assert st["udp_tx"] + st["udp_tx_dropped"] == n
        assert st["udp_tx_dropped"] == expected_flaky(n)
        assert st["udp_tx_errors"] == 0
        # and the worker's own stats show it
        snap = (await rt.stats(fresh=True)).workers[0]
        assert snap.drivers["udp_tx_dropped"] == expected_flaky(n)


async def test_small_sndbuf_burst_is_fully_accounted(variant: Variant, sockets: Any) -> None:
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        bound = await bind(rt, ref, sndbuf=4096)
        assert bound.ok
        target = sockets()
        n = 10_000
        rt.send_nowait(ref, [UdpSend(bound.slot, target.getsockname(), bytes(1000))] * n)
        st = await driver_stats(rt)
        assert st["udp_tx"] + st["udp_tx_dropped"] == n
        assert st["udp_tx_errors"] == 0


# ---------------------------------------------------------------------- floods

FLOODER = r"""
import socket, sys, time
host, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = b"f" * 64
end = time.monotonic() + limit
sent = 0
sys.stdout.write("go\n"); sys.stdout.flush()
while sent < 5_000_000 and time.monotonic() < end:
    for _ in range(256):
        try:
            s.sendto(payload, (host, port))
        except OSError:
            pass
    sent += 256
print(sent)
"""


async def test_flooded_socket_does_not_starve_others_or_ticks(
    variant: Variant, sockets: Any
) -> None:
    period = 0.05
    async with runtime(variant, tick=period) as rt:
        ref = await rt.spawn("probe")
        a = await bind(rt, ref, rcvbuf=1 << 20)
        b = await bind(rt, ref)
        rt.send_nowait(ref, ("count", a.slot, 2000))
        assert a.addr is not None, a  # narrows the type
        flooder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            FLOODER,
            LO,
            str(a.addr[1]),
            "4.0",
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert flooder.stdout is not None
            assert await asyncio.wait_for(flooder.stdout.readline(), T) == b"go\n"
            client = sockets()
            assert await msg(rt) == ("counted", 2000)  # the flood is reaching the task
            rt.send_nowait(ref, "report ticks")
            ticks: list[float] = []
            got = 0
            client.sendto(b"b0", b.addr)
            while len(ticks) < 10 or got < 10:
                m = await msg(rt, timeout=2.0)
                if isinstance(m, tuple) and m[0] == "tick":
                    ticks.append(m[1])
                    continue
                assert m == UdpPacket(b.slot, client.getsockname(), b"b%d" % got)
                got += 1
                if got < 10:
                    client.sendto(b"b%d" % got, b.addr)
            still_flooding = flooder.returncode is None
            counted = await rt.request(ref, "counted")
            stats = await driver_stats(rt)
        finally:
            if flooder.returncode is None:
                flooder.kill()
            await flooder.wait()
        assert still_flooding, "the flood ended before the check: it proves nothing"
        assert counted >= 2000
        assert stats["udp_rx_full"] > 0, "the drain never hit its batch bound"
        gaps = [y - x for x, y in itertools.pairwise(ticks)]
        assert len(ticks) >= 2
        assert max(gaps) < 5 * period, f"ticks stalled under the flood: {max(gaps):.3f} s"


# ------------------------------------------------------------ a task that ends


@pytest.mark.parametrize("how", ["end", "raise"])
async def test_sockets_of_an_ended_task_are_closed(variant: Variant, how: str) -> None:
    async with runtime(variant) as rt:
        ref = await rt.spawn("probe")
        bound = await bind(rt, ref)
        rt.send_nowait(ref, how)
        ended = await asyncio.wait_for(rt.next_event(), T)
        assert isinstance(ended, TaskEnded if how == "end" else TaskFailed)
        assert bound.addr is not None, bound  # narrows the type
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(bound.addr)  # no reuse: succeeds only if the task's socket is closed
        assert (await driver_stats(rt))["udp_sockets"] == 0


# ------------------------------------------------------------- hypothesis echo

BACKEND_NAMES = [b for b in ("uvloop", "epoll", "poll") if b in available_backends()]


class UdpEcho(Task):
    """Binds the address in cfg (reporting its UdpBound) and echoes every datagram."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.emit(UdpBind(cfg, rcvbuf=1 << 20))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is UdpPacket:
            self.emit(UdpSend(event.slot, event.source, event.data))
        elif type(event) is UdpBound:
            self.emit(ExtOut(event))


@pytest.fixture(scope="module", params=BACKEND_NAMES)
def echo_addr(request: pytest.FixtureRequest) -> Iterator[Any]:
    """An echo task on a runtime run by a background thread (for sync hypothesis tests)."""
    found: list[Any] = []
    started = threading.Event()
    stop = threading.Event()

    async def main() -> None:
        async with Runtime({"echo": UdpEcho}, drivers=[UdpDriver], backend=request.param) as rt:
            await rt.spawn("echo", (LO, 0))
            ev = await asyncio.wait_for(rt.next_event(), T)
            found.append(ev.msg.addr)  # type: ignore[union-attr]
            started.set()
            await asyncio.to_thread(stop.wait)  # serve until the module's tests are done

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert started.wait(10), "echo runtime did not start"
    yield found[0]
    stop.set()
    thread.join(10)


datagram = st.builds(
    lambda n, seed: random.Random(seed).randbytes(n),
    st.one_of(st.integers(0, 2048), st.integers(0, MAX_UDP_PAYLOAD), st.just(MAX_UDP_PAYLOAD)),
    st.integers(0, 2**32),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(datagram, min_size=1, max_size=4))
def test_random_datagrams_echo_byte_for_byte(echo_addr: Any, datagrams: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.settimeout(T)
        s.bind((LO, 0))
        for d in datagrams:
            s.sendto(d, echo_addr)
            got, source = s.recvfrom(70000)
            assert source == echo_addr
            assert got == d
