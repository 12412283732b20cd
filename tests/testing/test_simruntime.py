"""SimRuntime: the runtime's semantics in one thread on a fake clock (no threads, no sockets)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from sansio_aio import (
    ConfigError,
    Ext,
    ExtOut,
    QueueFull,
    RequestTimeout,
    ShutdownTimeout,
    Spawn,
    Spawned,
    Task,
    TaskEnded,
    TaskFailed,
    TaskFailedError,
    TaskOutput,
    UnknownKind,
    UnknownTarget,
)
from sansio_aio.testing import FakeClock, ProtocolViolation, SimRuntime, SimulationStalled
from tests.drivers import FailsOnWorker1, Poke, Poked, Recorded, SyncDriver
from tests.helpers import collect, outs
from tests.tasks import (
    KINDS,
    Host,
    Recorder,
)


async def outputs(rt: SimRuntime, n: int) -> list[TaskOutput]:
    got: list[TaskOutput] = []
    while len(got) < n:
        ev = await rt.next_event()
        if isinstance(ev, TaskOutput):
            got.append(ev)
    return got


async def test_no_threads_are_started() -> None:
    before = threading.active_count()
    async with SimRuntime(KINDS, workers=3) as rt:
        refs = [await rt.spawn("echo") for _ in range(3)]
        assert sorted(r.worker for r in refs) == [0, 1, 2]
        assert threading.active_count() == before


async def test_placement_least_loaded_ties_round_robin() -> None:
    async with SimRuntime(KINDS, workers=2) as rt:
        refs = [await rt.spawn("echo") for _ in range(4)]
        assert Counter(r.worker for r in refs) == {0: 2, 1: 2}
    async with SimRuntime(KINDS, workers=2) as rt:
        for _ in range(3):
            await rt.spawn("echo", worker=0)
        assert (await rt.spawn("echo")).worker == 1
        assert (await rt.stats()).placed == (3, 1)


async def test_messages_requests_and_errors() -> None:
    async with SimRuntime(KINDS, workers=2) as rt:
        a = await rt.spawn("echo")
        rt.send_nowait(a, "hello")
        assert await rt.next_event() == TaskOutput(a, "hello")
        assert await rt.request(a, ("double", 21)) == 42
        t0 = rt.now
        with pytest.raises(RequestTimeout):
            await rt.request(a, "ignore", timeout=5.0)
        assert rt.now == pytest.approx(t0 + 5.0)  # simulated seconds, not real ones
        with pytest.raises(TaskFailedError):
            await rt.request(a, "raise")
        assert isinstance(await rt.next_event(), TaskFailed)
        with pytest.raises(UnknownTarget):
            rt.send_nowait(a, "to the dead")
        with pytest.raises(UnknownKind):
            await rt.spawn("nope")
        with pytest.raises(UnknownTarget):
            rt.send_nowait(1, "no host task")


async def test_send_many_as_the_runtime_does() -> None:
    async with SimRuntime(KINDS, workers=2, host=Host, inbox_capacity=4) as rt:
        await outputs(rt, 2)  # the hosts' greetings
        a = await rt.spawn("echo")
        rt.send_many(a, ["x", "y", "z"])
        assert [o.msg for o in await outputs(rt, 3)] == ["x", "y", "z"]
        rt.send_many(1, ["w"])
        assert [o.msg for o in await outputs(rt, 1)] == [("worker-msg", 1, "w")]
        with pytest.raises(QueueFull, match="nothing was sent"):
            rt.send_many(a, range(5))  # more than the lane holds
        assert rt.poll_events() == []
        with pytest.raises(UnknownTarget):
            rt.send_many(7, ["x"])


async def test_failure_is_isolated() -> None:
    async with SimRuntime(KINDS, workers=1) as rt:
        bad, good = await rt.spawn("echo"), await rt.spawn("echo")
        rt.send_nowait(bad, ("raise", "magic packet"))
        failed = await rt.next_event()
        assert isinstance(failed, TaskFailed) and failed.task == bad
        assert "ValueError: magic packet" in failed.error
        rt.send_nowait(good, "still here")
        assert await rt.next_event() == TaskOutput(good, "still here")


async def test_bus_pubsub_across_workers_in_order() -> None:
    async with SimRuntime(KINDS, workers=2) as rt:
        subs = [await rt.spawn("sub", "ch") for _ in range(3)]
        pub = await rt.spawn("pub")
        rt.send_nowait(pub, ("publish", "ch", 100, True))
        got = await outputs(rt, 301)
        for s in subs:
            assert [o.msg[2] for o in got if o.task == s] == list(range(100))
        assert TaskOutput(pub, ("published", 100)) in got
        rt.send_nowait(subs[0], "quit")  # ends without unsubscribing: the runtime cleans up
        assert await rt.next_event() == TaskEnded(subs[0])
        rt.send_nowait(pub, ("publish", "ch", 1, True))
        rest = await outputs(rt, 3)
        assert {o.task for o in rest} == {subs[1], subs[2], pub}


async def test_broadcast_and_worker_messages() -> None:
    async with SimRuntime(KINDS, workers=2, host=Host) as rt:
        hello = await outputs(rt, 2)
        assert sorted(o.msg[1] for o in hello) == [0, 1]
        rt.send_nowait(1, "broadcast")
        got = await outputs(rt, 2)
        assert sorted((o.msg[1], o.msg[2]) for o in got) == [(0, 1), (1, 1)]
        rt.send_nowait(0, "ping")
        assert (await rt.next_event()).msg == ("worker-msg", 0, "ping")  # type: ignore[union-attr]


async def test_tasks_spawn_through_the_balancer() -> None:
    async with SimRuntime(KINDS, workers=2) as rt:
        await rt.spawn("parent", 3, worker=0)
        got = await outputs(rt, 3)
        assert sorted(o.msg[1] for o in got) == [0, 1, 2]
        assert Counter(o.msg[2].worker for o in got) == {1: 2, 0: 1}
        rt.send_nowait(got[0].task, "unknown-kind")
        bad = await rt.next_event()
        assert bad.msg[1] == "bad" and "unknown task kind" in bad.msg[3]  # type: ignore[union-attr]


async def test_constructor_outputs_and_finite_tasks() -> None:
    async with SimRuntime(KINDS) as rt:
        ref = await rt.spawn("finite", 3)
        events = [await rt.next_event() for _ in range(4)]
        assert events == [
            TaskOutput(ref, 0),
            TaskOutput(ref, 1),
            TaskOutput(ref, 2),
            TaskEnded(ref),
        ]
        assert rt.now == 0.0  # all at the spawn instant, not at the next tick


async def test_ticks_and_deadlines_in_simulated_time() -> None:
    async with SimRuntime(KINDS, tick=10.0) as rt:
        t = await rt.spawn("ticker", 0.05)
        rt.send_nowait(t, "arm")
        assert (await rt.next_event()).msg == ("armed", 0.05)  # type: ignore[union-attr]
        assert (await rt.next_event()).msg == ("woke", 0.05, 0.05)  # type: ignore[union-attr]
        assert (await rt.next_event()).msg == ("tick", 10.0)  # type: ignore[union-attr]
        rt.advance(30.0)
        assert [e.msg for e in rt.poll_events()] == [("tick", 20.0), ("tick", 30.0), ("tick", 40.0)]  # type: ignore[union-attr]


async def test_graceful_shutdown_and_timeout_naming_the_stuck_task() -> None:
    rt = SimRuntime(KINDS, workers=2)
    async with rt:
        g = await rt.spawn("graceful")
    assert TaskOutput(g, "bye") in rt.poll_events()
    rt2 = SimRuntime(KINDS)
    await rt2.start()
    s = await rt2.spawn("stuck")
    with pytest.raises(ShutdownTimeout, match="stuck#0@w0") as info:
        await rt2.shutdown(timeout=2.0)
    assert info.value.unfinished == [s]
    assert rt2.now == pytest.approx(2.0)


async def test_stats_count_inputs_and_tasks() -> None:
    async with SimRuntime(KINDS, workers=2) as rt:
        refs = [await rt.spawn("echo") for _ in range(4)]
        for r in refs:
            rt.send_nowait(r, "x")
        stats = await rt.stats()
        assert [w.tasks for w in stats.workers] == [2, 2]
        assert sum(w.msgs_in for w in stats.workers) == 4
        assert sum(w.msgs_out for w in stats.workers) == 4


async def test_waiting_for_an_event_that_never_comes_is_reported() -> None:
    async with SimRuntime(KINDS, max_time=30.0) as rt:
        await rt.spawn("echo")
        with pytest.raises(SimulationStalled, match=r"no event within 30\.0"):
            await rt.next_event()
        assert rt.now == pytest.approx(30.0)


async def test_manual_clock_waits_for_the_test_to_advance_it() -> None:
    clock = FakeClock(autojump=False)
    async with SimRuntime(KINDS, clock=clock, tick=1.0) as rt:
        await rt.spawn("ticker")
        waiting = asyncio.ensure_future(rt.next_event())
        await asyncio.sleep(0)
        assert not waiting.done()  # time does not move by itself
        rt.advance(1.0)
        ev = await asyncio.wait_for(waiting, 5)
        assert ev.msg == ("tick", 1.0)  # type: ignore[union-attr]


class Spinner(Task):
    def next_deadline(self) -> float | None:
        return 0.5


class Stranding(Task):
    def on_event(self, now: float, event: Any) -> None:
        self.later = True

    def is_empty(self) -> bool:
        if getattr(self, "later", False):
            self.later = False
            self.emit(ExtOut("stranded"))
        return super().is_empty()


async def test_protocol_violations_are_raised_and_nothing_is_lost() -> None:
    async with SimRuntime({"spin": Spinner}, strict=True) as rt:
        await rt.spawn("spin")
        with pytest.raises(ProtocolViolation, match="would spin"):
            rt.advance(1.0)
    rt2 = SimRuntime({"strand": Stranding})
    async with rt2:
        ref = await rt2.spawn("strand")
        with pytest.raises(ProtocolViolation, match="after returning None"):
            rt2.send_nowait(ref, "x")
        assert await rt2.next_event() == TaskOutput(ref, "stranded")


async def test_lookup_and_run_on_worker() -> None:
    async with SimRuntime(KINDS, workers=2) as rt:
        ref = await rt.spawn("recorder", worker=1)
        task = rt.lookup(ref)
        assert isinstance(task, Recorder)
        assert await rt.run_on_worker(1, lambda core: core.worker_id) == 1


async def test_fixture_factory(sim_runtime: Callable[..., SimRuntime], sim_seed: int) -> None:
    rt = sim_runtime(KINDS, workers=2)
    assert rt.running and rt.seed == sim_seed
    ref = await rt.spawn("echo")
    rt.send_nowait(ref, Ext("wrapped"))
    assert (await rt.next_event()).msg == Ext("wrapped")  # type: ignore[union-attr]


# ------------------------------------------------- re-entrancy from a timer (drain rule)


class TickSpawner(Task):
    """On its first tick: asks for a child, then pokes a synchronous driver."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.ticks = 0
        self.busy = False

    def on_tick(self, now: float) -> None:
        self.ticks += 1
        if self.ticks == 1 and self.cfg == "parent":
            self.emit(Spawn("t", "child", tag="kid"))
            self.emit(Poke("poked"))

    def on_event(self, now: float, event: Any) -> None:
        assert not self.busy, "re-entered while its outputs were drained"
        if type(event) is Poked:
            self.emit(ExtOut(event.what))
        elif type(event) is Spawned:
            self.emit(ExtOut(("spawned", event.tag, event.error)))

    def pop_output(self, now: float) -> Any | None:
        out = super().pop_output(now)
        self.busy = out is not None  # until the runtime has seen the None
        return out


async def test_sync_delivery_from_a_timer_does_not_reenter_the_core() -> None:
    """Bug: a timer fired while the clock moved (run_until, advance: outside settle)
    ran the core (tick, deadline); a driver delivering synchronously from ``handle``
    made SimEngine._deliver settle *inside* that drain: the controller placed the
    task's Spawn at once and the nested handle_from fed the spawning task (Poked,
    Spawned) while it was still being drained, and reset the core's depth to 0."""
    kinds = {"t": TickSpawner}
    async with SimRuntime(kinds, drivers=[SyncDriver]) as rt:
        await rt.spawn("t", "parent")
        got = await collect(rt, lambda g: len(outs(g)) >= 2)
        assert outs(got) == ["poked", ("spawned", "kid", None)]
    assert not rt.violations


# -------------------------------------------------------------------- a failed start


def failing_host(worker: int) -> Task:
    if worker == 1:
        raise OSError("no such host")
    return Task()


@pytest.mark.parametrize("how", ["driver", "host"])
async def test_a_failed_start_under_the_simulator(how: str) -> None:
    """Bug: SimRuntime let a driver's (or the host's) start error escape as is, with
    the drivers that had started left open and the runtime still 'new'. The real
    runtime raises ConfigError, closes every driver that started and ends closed."""
    Recorded.log = []
    if how == "driver":
        rt = SimRuntime({}, workers=2, drivers=[Recorded, FailsOnWorker1])
    else:
        rt = SimRuntime({}, workers=2, host=failing_host, drivers=[Recorded])
    with pytest.raises(ConfigError, match=f"no such {'device' if how == 'driver' else 'host'}"):
        async with rt:
            pytest.fail("the body must not run")
    assert sorted(Recorded.log) == ["close", "close", "start 0", "start 1"]
    assert not rt.running
    await rt.shutdown()  # a no-op now
    assert await rt.next_events() == []
