"""Property tests with the hypothesis strategies, and determinism of simulations."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_aio import ExtOut, Task, TaskOutput
from sansio_aio.net import UdpBind, UdpBound, UdpPacket, UdpSend
from sansio_aio.testing import Fate, LinkConditions, SimRuntime, TaskHarness
from sansio_aio.testing import strategies as sst
from tests.testing.tutorial import tutorial


class UdpEchoOn7(Task):
    """Binds 127.0.0.1:7 and echoes every datagram."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.emit(UdpBind(("127.0.0.1", 7)))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is UdpPacket:
            self.emit(UdpSend(event.slot, event.source, event.data))


class Client(Task):
    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.emit(UdpBind(("127.0.0.1", 9)))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is UdpBound:
            for payload in self.cfg:
                self.emit(UdpSend(event.slot, ("127.0.0.1", 7), payload))
        elif type(event) is UdpPacket:
            self.emit(ExtOut(event.data))


@settings(max_examples=50, deadline=None)
@given(sst.timed(sst.udp_packets(), max_size=30))
def test_echo_answers_every_datagram_once_in_order(inputs: list[tuple[float, Any]]) -> None:
    h = TaskHarness(UdpEchoOn7)
    h.feed(UdpBound(1, ("127.0.0.1", 7)))
    h.take()
    for gap, packet in inputs:
        assert h.feed(packet, at=h.now + gap) == [UdpSend(1, packet.source, packet.data)]


def expected_echoes(payloads: list[bytes], there: list[Fate], back: list[Fate]) -> Counter[bytes]:
    """What the client must receive, computed from the fates alone (latency 0)."""
    arrivals: list[tuple[float, int, bytes]] = []  # (time, order, payload) at the echo server
    for i, payload in enumerate(payloads):
        fate = there[i] if i < len(there) else Fate()
        if not fate.lost:
            arrivals.extend((fate.delay, i, payload) for _ in range(max(1, fate.copies)))
    got: Counter[bytes] = Counter()
    for j, (_, _, payload) in enumerate(sorted(arrivals, key=lambda a: (a[0], a[1]))):
        fate = back[j] if j < len(back) else Fate()
        if not fate.lost:
            got[payload] += max(1, fate.copies)
    return got


@settings(max_examples=40, deadline=None)
@given(
    st.lists(sst.datagrams(max_size=64), min_size=1, max_size=20),
    sst.fates(max_size=20),
    sst.fates(max_size=40),
)
def test_echo_over_scripted_loss_returns_exactly_the_survivors(
    payloads: list[bytes], there: list[Fate], back: list[Fate]
) -> None:
    async def scenario() -> Counter[bytes]:
        async with SimRuntime({"echo": UdpEchoOn7, "client": Client}, workers=2) as rt:
            rt.net.script(("127.0.0.1", 9), ("127.0.0.1", 7), there)
            rt.net.script(("127.0.0.1", 7), ("127.0.0.1", 9), back)
            await rt.spawn("echo")
            await rt.spawn("client", payloads)
            rt.advance(1.0)
            return Counter(e.msg for e in rt.poll_events() if isinstance(e, TaskOutput))

    assert asyncio.run(scenario()) == expected_echoes(payloads, there, back)


async def reliable_run(seed: int, conditions: LinkConditions, count: int = 20) -> SimRuntime:
    kinds = {"rx": tutorial.Receiver, "tx": tutorial.Sender}
    async with SimRuntime(kinds, workers=2, seed=seed) as rt:
        rt.net.set_default(conditions)
        got, _ = await tutorial.transfer(rt, count=count)
        assert got == [b"message %d" % i for i in range(count)]
    return rt


LOSSY = LinkConditions(latency=0.02, jitter=0.01, loss=0.25, duplicate=0.05, reorder=0.2)


async def test_same_seed_identical_traces_another_seed_differs(tmp_path: Path) -> None:
    a, b, c = [await reliable_run(s, LOSSY) for s in (42, 42, 43)]
    assert a.net.stats.lost > 0 and a.net.stats.reordered > 0  # the scenario is adverse
    assert a.trace.text() == b.trace.text()  # byte for byte
    assert a.trace.digest() == b.trace.digest()
    assert c.trace.digest() != a.trace.digest()
    assert a.trace.first_difference(c.trace) is not None
    path = a.trace.write(tmp_path / "run.trace")
    assert path.read_text() == b.trace.text()
    assert "net lost" in path.read_text() and "seed=42" in path.read_text()


@settings(max_examples=15, deadline=None)
@given(sst.seeds(), sst.link_conditions(max_loss=0.3, max_latency=0.05))
def test_any_seed_and_link_replays_identically(seed: int, conditions: LinkConditions) -> None:
    first = asyncio.run(reliable_run(seed, conditions, count=8))
    second = asyncio.run(reliable_run(seed, conditions, count=8))
    assert first.trace.digest() == second.trace.digest()
    assert first.now == second.now
