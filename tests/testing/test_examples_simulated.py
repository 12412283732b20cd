"""The examples' task logic under the harness: no sockets, no threads, no real time.

``tests/test_examples_core.py`` and ``tests/test_examples_net.py`` run the examples as
programs; here their task classes
are driven one by one with ``TaskHarness`` and together with ``SimRuntime``.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

import pytest

from sansio_aio import (
    BusMessage,
    Ext,
    ExtOut,
    Publish,
    Subscribe,
    Task,
    TaskEnded,
    TaskOutput,
    TaskRef,
)
from sansio_aio.testing import LinkConditions, SimRuntime, TaskHarness
from tests.helpers import EXAMPLES


def load(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (skips, with the reason, if it does not exist)."""
    path = EXAMPLES / f"{name}.py"
    if not path.exists():
        pytest.skip(f"examples/{name}.py does not exist in this checkout")
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ benchmark_ext


def test_benchmark_ext_echo_returns_each_message_once() -> None:
    echo = load("benchmark_ext").Echo
    h = TaskHarness(echo)
    assert h.take() == []
    assert h.feed(Ext(1.5)) == [ExtOut(1.5)]
    assert h.feed(BusMessage("x", TaskRef(0, "a", 0), 1)) == []  # only application messages
    assert h.advance(10.0) == []  # ticks: nothing to say


async def test_benchmark_ext_in_flight_loop_on_the_simulated_runtime() -> None:
    """The benchmark's loop (N in flight, each re-sent when it returns) on 2 workers."""
    echo = load("benchmark_ext").Echo
    async with SimRuntime({"echo": echo}, workers=2) as rt:
        refs = [await rt.spawn("echo") for _ in range(2)]
        in_flight, count = 50, 2000
        for i in range(in_flight):
            rt.send_nowait(refs[i % 2], i)
        sent = in_flight
        back: list[Any] = []
        while len(back) < count:
            for event in await rt.next_events():
                assert isinstance(event, TaskOutput)
                back.append(event.msg)
                if sent < count:
                    rt.send_nowait(event.task, sent)
                    sent += 1
        assert sorted(back) == list(range(count))
        stats = await rt.stats()
        assert [w.msgs_in for w in stats.workers] == [count // 2, count // 2]
        assert rt.now == 0.0  # no simulated time passed either: it is all one instant


# ------------------------------------------------------------------ multi_types


def test_multi_types_sensor_publishes_per_tick_then_ends() -> None:
    sensor = load("multi_types").Sensor
    h = TaskHarness(sensor, {"id": 1, "readings": 60}, tick=0.01)
    h.advance(0.02)
    first = h.take()
    assert len(first) == 50 and all(type(o) is Publish and o.msg[0] == 1 for o in first)
    h.advance(0.01)
    last = h.take()
    assert len(last) == 11 and last[-1] == Publish("readings", (1, None))
    assert h.ended  # the runtime drops it and releases its subscriptions


def test_multi_types_aggregator_summarises_after_every_sensor() -> None:
    agg = load("multi_types").Aggregator
    h = TaskHarness(agg, 2)
    assert h.take() == [Subscribe("readings")]
    src = TaskRef(0, "sensor", 0)
    for ident, value in [(0, 10.0), (1, 30.0), (0, None), (1, 20.0)]:
        assert h.feed(BusMessage("readings", src, (ident, value))) == []
    assert h.feed(Ext("progress?")) == [ExtOut(("progress", 3))]
    assert h.feed(BusMessage("readings", src, (1, None))) == [
        ExtOut(("summary", 3, 10.0, 30.0, 20.0))
    ]
    assert h.ended


async def test_multi_types_system_on_the_simulated_runtime_matches_the_real_one() -> None:
    mod = load("multi_types")
    kinds = {"sensor": mod.Sensor, "aggregator": mod.Aggregator}
    async with SimRuntime(kinds, workers=1, tick=0.01) as rt:
        await rt.spawn("aggregator", 3)
        for i in range(3):
            await rt.spawn("sensor", {"id": i, "readings": 100})
        summary, ended = None, 0
        while summary is None or ended < 4:
            event = await rt.next_event()
            if isinstance(event, TaskOutput) and event.msg[0] == "summary":
                summary = event.msg[1:]
            elif isinstance(event, TaskEnded):
                ended += 1
        assert rt.now == pytest.approx(0.04)  # 4 ticks of 25 readings, simulated
    # the same classes on the real runtime (the example's own main) give the same numbers
    real = await mod.main(3, 100, "epoll")
    assert summary == pytest.approx(tuple(real))
    assert summary[0] == 300


# ------------------------------------------------------------------ UDP echo


def test_udp_echo_server_task_by_hand() -> None:
    from sansio_aio import Reply, Request
    from sansio_aio.net import UdpBind, UdpBound, UdpError, UdpPacket, UdpSend

    echo = load("udp_echo_server").EchoServer
    h = TaskHarness(echo, {"addr": ("127.0.0.1", 0)})
    assert h.take() == [UdpBind(("127.0.0.1", 0), reuse=False, rcvbuf=None)]
    bound = UdpBound(3, ("127.0.0.1", 4242))
    assert h.feed(bound) == [ExtOut(bound)]
    peer = ("127.0.0.1", 5000)
    assert h.feed(UdpPacket(3, peer, b"ping")) == [UdpSend(3, peer, b"ping")]
    h.feed(UdpError(3, "send", "refused", 111, peer))
    assert h.feed(Request(1, "count")) == [Reply(1, (1, 1))]
    failed = TaskHarness(echo, {"addr": ("127.0.0.1", 1)})
    failed.feed(UdpBound(-1, None, error="Address already in use", errno=98))
    assert failed.ended  # nothing to serve: the task ends


class UdpClient(Task):
    """Sends ``count`` numbered datagrams to ``dest`` at once; reports each echo."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        from sansio_aio.net import UdpBind

        super().__init__(cfg)
        self.emit(UdpBind(("127.0.0.1", 0)))

    def on_event(self, now: float, event: Any) -> None:
        from sansio_aio.net import UdpBound, UdpPacket, UdpSend

        if type(event) is UdpBound:
            for i in range(self.cfg["count"]):
                self.emit(UdpSend(event.slot, self.cfg["dest"], b"%d" % i))
        elif type(event) is UdpPacket:
            self.emit(ExtOut(event.data))


async def test_udp_echo_servers_on_two_workers_over_a_lossy_network() -> None:
    """The example's own start_servers/driver_totals drive a SimRuntime unchanged."""
    mod = load("udp_echo_server")
    kinds = {"echo": mod.EchoServer, "client": UdpClient}
    async with SimRuntime(kinds, workers=2, seed=5) as rt:
        rt.net.set_default(LinkConditions(latency=0.001, jitter=0.001, loss=0.1, duplicate=0.02))
        addr = await mod.start_servers(rt, "127.0.0.1", 0, 2)  # SO_REUSEPORT on both
        for _ in range(4):
            await rt.spawn("client", {"dest": addr, "count": 100})
        rt.advance(1.0)
        got = [e.msg for e in rt.poll_events() if isinstance(e, TaskOutput)]
        totals = await mod.driver_totals(rt)
    stats = rt.net.stats
    assert stats.lost > 0 and set(got) <= {b"%d" % i for i in range(100)}
    echoes = totals["udp_tx"] - 400  # the servers answer every datagram they receive
    assert stats.delivered == stats.sent - stats.lost + stats.duplicated
    assert len(got) == stats.delivered - echoes  # what was not delivered to a server
    assert totals["udp_sockets"] == 6 and totals["udp_rx"] > 0


# ------------------------------------------------------------------ TCP echo


async def test_tcp_echo_example_over_a_lossy_network() -> None:
    mod = load("tcp_echo")
    kinds = {"server": mod.TcpEchoServer, "client": mod.TcpEchoClient}
    async with SimRuntime(kinds, workers=2, seed=9) as rt:
        rt.net.set_default(LinkConditions(latency=0.005, loss=0.05, bandwidth=10_000_000))
        server = await rt.spawn("server", ("127.0.0.1", 0), worker=0)
        listening = (await rt.next_event()).msg  # type: ignore[union-attr]
        assert listening.ok
        for _ in range(5):
            cfg = {"dest": listening.addr, "messages": 20, "size": 3000}
            await rt.spawn("client", cfg, worker=1)
        reports: list[Any] = []
        while len(reports) < 5:
            event = await rt.next_event()
            if isinstance(event, TaskOutput) and isinstance(event.msg, dict):
                reports.append(event.msg)
        assert all(r["complete"] and r["error"] is None for r in reports), reports
        assert await rt.request(server, "count") == (5, 5 * 20 * 3000)
        assert rt.net.stats.retransmitted > 0  # losses were hidden by the stream
