"""The examples' task logic under the harness: no sockets, no threads, no real time.

``tests/test_examples_core.py`` runs the examples as programs; here their task classes
are driven one by one with ``TaskHarness`` and together with ``SimRuntime``.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
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

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


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
        sent, back = in_flight, []
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


def _echo_task(module: ModuleType) -> type[Task]:
    found = [
        obj
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and issubclass(obj, Task) and "echo" in name.lower()
    ]
    if not found:
        pytest.skip(f"no echo task class in {module.__name__}")
    return found[0]


async def test_udp_echo_example_over_a_lossy_simulated_network() -> None:
    from sansio_aio.net.events import UdpBind, UdpBound, UdpPacket, UdpSend

    echo = _echo_task(load("udp_echo_server"))

    class Client(Task):
        def __init__(self, cfg: Any) -> None:
            super().__init__(cfg)
            self.emit(UdpBind(("127.0.0.1", 0)))

        def on_event(self, now: float, event: Any) -> None:
            if type(event) is UdpBound:
                for i in range(200):
                    self.emit(UdpSend(event.slot, self.cfg, b"%d" % i))
            elif type(event) is UdpPacket:
                self.emit(ExtOut(event.data))

    async with SimRuntime({"echo": echo, "client": Client}, workers=2, seed=3) as rt:
        rt.net.set_default(LinkConditions(latency=0.001, loss=0.1, duplicate=0.02))
        ref = await rt.spawn("echo", _echo_cfg(echo))
        bound = None
        while bound is None:
            ev = await rt.next_event()
            if isinstance(ev, TaskOutput) and isinstance(ev.msg, tuple | UdpBound):
                bound = ev
        await rt.spawn("client", _bound_addr(rt))
        rt.advance(1.0)
        got = [e.msg for e in rt.poll_events() if isinstance(e, TaskOutput) and e.task != ref]
        stats = rt.net.stats
        assert 0 < len(got) <= 200 + stats.duplicated
        assert set(got) <= {b"%d" % i for i in range(200)}


def _echo_cfg(echo: type[Task]) -> Any:
    return {"addr": ("127.0.0.1", 0)}


def _bound_addr(rt: SimRuntime) -> Any:
    table = rt.net.registry["udp"]
    (addr,) = list(table.by_addr)[:1]
    return addr
