"""The runtime core on real worker threads, on every backend (rows C1-C15, B1)."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sansio_aio import (
    ConfigError,
    QueueFull,
    RequestTimeout,
    Runtime,
    ShutdownTimeout,
    TaskEnded,
    TaskFailed,
    TaskFailedError,
    TaskOutput,
    TaskRef,
    UnknownKind,
    UnknownTarget,
)
from sansio_aio.lowlevel import WorkerCore

from .tasks import (
    BadDeadline,
    Echo,
    Finite,
    Graceful,
    Host,
    Parent,
    Publisher,
    Recorder,
    Stuck,
    Subscriber,
    Ticker,
)

KINDS = {
    "echo": Echo,
    "recorder": Recorder,
    "ticker": Ticker,
    "sub": Subscriber,
    "pub": Publisher,
    "parent": Parent,
    "graceful": Graceful,
    "stuck": Stuck,
    "finite": Finite,
    "bad_deadline": BadDeadline,
}
T = 5.0  # generous timeout for any single wait


async def outputs(rt: Runtime, n: int, timeout: float = T) -> list[TaskOutput]:
    """Wait for the next ``n`` task outputs (other events are skipped)."""
    got: list[TaskOutput] = []

    async def collect() -> None:
        while len(got) < n:
            event = await rt.next_event()
            if isinstance(event, TaskOutput):
                got.append(event)

    await asyncio.wait_for(collect(), timeout)
    return got


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = T) -> None:
    """Poll an async condition until it holds (bounded by ``timeout``)."""

    async def loop() -> None:
        while not await predicate():  # noqa: ASYNC110 - polling a remote snapshot
            await asyncio.sleep(0.02)

    await asyncio.wait_for(loop(), timeout)


# ---------------------------------------------------------------- C1 workers


async def test_c1_workers_have_ids_threads_and_loops(backend: str) -> None:
    async with Runtime(KINDS, workers=3, backend=backend, host=Host) as rt:

        def probe(core: WorkerCore) -> tuple[int, int, int]:
            return core.worker_id, threading.get_ident(), id(asyncio.get_event_loop())

        results = [await rt.run_on_worker(w, probe) for w in range(3)]
        assert [r[0] for r in results] == [0, 1, 2]
        assert len({r[1] for r in results}) == 3
        assert threading.get_ident() not in {r[1] for r in results}
        assert len({r[2] for r in results}) == 3
        hosts = await outputs(rt, 3)
        # each host was constructed with its own worker id, on its own thread
        assert sorted(o.msg[1] for o in hosts) == [0, 1, 2]
        assert {o.msg[1]: o.msg[2] for o in hosts} == {r[0]: r[1] for r in results}


# ---------------------------------------------------------------- C2 drain rule


async def test_c2_outputs_drained_after_every_input(backend: str) -> None:
    async with Runtime(KINDS, backend=backend, tick=10.0) as rt:
        ref = await rt.spawn("recorder")
        # the constructor's output is delivered at once, long before the 10 s tick
        (hello,) = await outputs(rt, 1, timeout=2.0)
        assert hello.msg == "hello from the constructor"
        rt.send_nowait(ref, "x")
        assert [o.msg for o in await outputs(rt, 2)] == [1, 2]
        log = await rt.request(ref, "log")
        assert log == ["pop", "None", "on_event", "pop", "pop", "None", "on_event"]
        assert await rt.request(ref, "log") == ["pop", "None", "on_event"]


# ---------------------------------------------------------------- C3 ticks, deadlines


async def test_c3_ticks_keep_their_period(backend: str) -> None:
    period = 0.02
    async with Runtime(KINDS, backend=backend, tick=period) as rt:
        ref = await rt.spawn("ticker")
        ticks = [o.msg[1] for o in await outputs(rt, 10) if o.task == ref]
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        assert all(g > 0 for g in gaps)
        # on the grid start + k * period: the mean gap is the period (no drift
        # accumulates even when single ticks run late)
        assert sum(gaps) / len(gaps) == pytest.approx(period, rel=0.5)


def test_c3_tick_grid_skips_missed_ticks_without_drift() -> None:
    from sansio_aio.lowlevel import next_tick

    due, period = 100.0, 1.0
    # on time: the next tick is exactly one period later
    assert next_tick(due, 100.0003, period) == 101.0
    # ten ticks each run 30 ms late: still exact multiples
    for _ in range(10):
        due = next_tick(due, due + 0.03, period)
    assert due == 110.0
    # 3.5 periods late: the missed ticks are skipped, the phase is kept
    assert next_tick(110.0, 113.5, period) == 114.0


async def test_c3_task_deadline_wakes_it_between_ticks(backend: str) -> None:
    async with Runtime(KINDS, backend=backend, tick=10.0) as rt:
        ref = await rt.spawn("ticker", 0.05)
        rt.send_nowait(ref, "arm")
        armed, woke = await outputs(rt, 2, timeout=2.0)
        assert armed.msg[0] == "armed"
        assert woke.msg[0] == "woke"
        assert woke.msg[1] >= armed.msg[1]  # not early
        assert woke.msg[1] - armed.msg[1] < 1.0  # and long before the 10 s tick


# ---------------------------------------------------------------- C4 placement


async def test_c4_spawn_spreads_before_any_stats(backend: str) -> None:
    async with Runtime(KINDS, workers=2, backend=backend) as rt:
        refs = await asyncio.gather(*(rt.spawn("echo") for _ in range(4)))
        assert sorted(r.worker for r in refs) == [0, 0, 1, 1]


async def test_c4_spawn_goes_to_least_loaded(backend: str) -> None:
    async with Runtime(KINDS, workers=2, backend=backend) as rt:
        for _ in range(3):
            assert (await rt.spawn("echo", worker=0)).worker == 0
        assert (await rt.spawn("echo")).worker == 1
        stats = await rt.stats(fresh=True)
        assert [w.tasks for w in stats.workers] == [3, 1]


async def test_c4_task_spawns_use_the_balancer(backend: str) -> None:
    async with Runtime(KINDS, workers=2, backend=backend) as rt:
        for _ in range(2):
            await rt.spawn("echo", worker=0)
        parent = await rt.spawn("parent", 2, worker=0)
        got = await outputs(rt, 2)
        assert sorted(o.msg[1] for o in got) == [0, 1]
        assert all(o.task == parent and o.msg[3] is None for o in got)
        # worker 0 had 3 tasks, worker 1 none: both children go to worker 1
        assert [o.msg[2].worker for o in got] == [1, 1]
        rt.send_nowait(parent, "no-such-kind")
        (bad,) = await outputs(rt, 1)
        assert bad.msg[1] == "bad"
        assert bad.msg[2] is None
        assert "unknown task kind" in bad.msg[3]


# ---------------------------------------------------------------- C5 messages, requests


async def test_c5_worker_messages_reach_only_that_worker(backend: str) -> None:
    async with Runtime(KINDS, workers=2, backend=backend, host=Host) as rt:
        await outputs(rt, 2)  # the hosts' greetings
        rt.send_nowait(1, "ping")
        (got,) = await outputs(rt, 1)
        assert got.msg == ("worker-msg", 1, "ping")
        assert got.task.worker == 1
        assert rt.poll_events() == []


async def test_c5_requests_reach_a_worker_host(backend: str) -> None:
    async with Runtime(KINDS, workers=2, backend=backend, host=Host) as rt:
        host1 = TaskRef(1, "host", 0, 0)
        assert await rt.request(host1, "hi") == ("host", 1, "hi")


async def test_c5_unknown_targets_fail_clearly_and_workers_live_on(backend: str) -> None:
    async with Runtime(KINDS, workers=2, backend=backend) as rt:
        ref = await rt.spawn("echo")
        with pytest.raises(UnknownTarget, match="no worker 7"):
            rt.send_nowait(TaskRef(7, "echo", 0), "x")
        with pytest.raises(UnknownTarget, match="no live task"):
            rt.send_nowait(TaskRef(ref.worker, "echo", 5), "x")
        with pytest.raises(UnknownTarget, match="host"):
            rt.send_nowait(0, "x")  # no host task configured
        with pytest.raises(UnknownKind, match="registered"):
            await rt.spawn("nope")
        rt.send_nowait(ref, "still alive")
        (got,) = await outputs(rt, 1)
        assert got.msg == "still alive"


async def test_c5_request_response(backend: str) -> None:
    async with Runtime(KINDS, workers=2, backend=backend) as rt:
        a, b = await rt.spawn("echo"), await rt.spawn("echo")
        results = await asyncio.gather(
            *(rt.request(r, ("double", i)) for i, r in enumerate([a, b] * 5))
        )
        assert results == [2 * i for i in range(10)]
        with pytest.raises(RequestTimeout):
            await rt.request(a, "ignore", timeout=0.1)


async def test_c5_request_to_a_task_that_dies_fails_instead_of_hanging(backend: str) -> None:
    async with Runtime(KINDS, backend=backend) as rt:
        a = await rt.spawn("echo")
        with pytest.raises(TaskFailedError, match="failed") as info:
            await rt.request(a, "raise", timeout=T)
        assert "asked to fail" in info.value.traceback
        b = await rt.spawn("echo")
        with pytest.raises(TaskFailedError, match="without replying"):
            await rt.request(b, "end", timeout=T)
        with pytest.raises(UnknownTarget):
            await rt.request(a, "x")


# ---------------------------------------------------------------- C6 output stream


async def test_c6_outputs_fifo_and_tagged(backend: str) -> None:
    async with Runtime(KINDS, workers=2, backend=backend) as rt:
        a, b = await rt.spawn("echo"), await rt.spawn("echo")
        rt.send_nowait(a, ("emit", ["e1", "e2", "e3"]))
        rt.send_nowait(b, ("emit", ["f1", "f2"]))
        got = await outputs(rt, 5)
        assert [o.msg for o in got if o.task == a] == ["e1", "e2", "e3"]
        assert [o.msg for o in got if o.task == b] == ["f1", "f2"]
        seen: list[Any] = []
        rt.send_nowait(a, ("emit", [1, 2]))

        async def consume() -> None:
            async for event in rt.events():
                seen.append(event)
                if len(seen) == 2:
                    return

        await asyncio.wait_for(consume(), T)
        assert [e.msg for e in seen if isinstance(e, TaskOutput)] == [1, 2]


# ---------------------------------------------------------------- C7 stats


async def test_c7_stats_count_tasks_and_utilisation(backend: str) -> None:
    async with Runtime(KINDS, backend=backend, stats_interval=0.1) as rt:
        refs = [await rt.spawn("echo") for _ in range(3)]
        stats = await rt.stats(fresh=True)
        (w0,) = stats.workers
        assert w0.tasks == 3
        assert 0.0 <= w0.utilisation <= 1.0
        assert w0.age < 1.0
        # a busy task keeps the worker busy for a whole window: utilisation near 1
        rt.send_nowait(refs[0], ("spin", 1.0))

        async def busy() -> bool:
            return (await rt.stats()).workers[0].utilisation > 0.8

        await until(busy)
        assert (await rt.stats()).workers[0].msgs_in >= 1


async def test_c7_blocked_worker_goes_stale(backend: str) -> None:
    async with Runtime(KINDS, backend=backend, stats_interval=0.05) as rt:
        ref = await rt.spawn("echo")
        started = threading.Event()
        rt.send_nowait(ref, ("spin", 1.0, started))
        assert await asyncio.to_thread(started.wait, T)

        async def stale() -> bool:
            return (await rt.stats()).workers[0].age > 0.4

        await until(stale, timeout=T)
        await outputs(rt, 1)  # the spin ends; the worker is back

        async def fresh() -> bool:
            return (await rt.stats()).workers[0].age < 0.3

        await until(fresh, timeout=T)


# ---------------------------------------------------------------- C8 batching


async def test_c8_batched_wakeups(backend: str) -> None:
    async with Runtime(KINDS, backend=backend) as rt:
        ref = await rt.spawn("echo")
        before = (await rt.stats(fresh=True)).workers[0].wakeups
        started = threading.Event()
        rt.send_nowait(ref, ("spin", 0.2, started))
        assert await asyncio.to_thread(started.wait, T)
        for i in range(1000):  # pushed while the worker is busy
            rt.send_nowait(ref, i)
        got = await outputs(rt, 1001)
        assert [o.msg for o in got[1:]] == list(range(1000))
        after = (await rt.stats(fresh=True)).workers[0].wakeups
        assert after - before < 50, f"{after - before} wake-ups for 1001 messages"


# ---------------------------------------------------------------- C9, C10 bus


async def test_c9_pubsub_across_workers(backend: str) -> None:
    async with Runtime(KINDS, workers=2, backend=backend) as rt:
        subs = [await rt.spawn("sub", "news", worker=w) for w in (0, 1, 1)]
        pub = await rt.spawn("pub", worker=0)
        # the publisher's worker is included
        rt.send_nowait(pub, ("publish", "news", 100, True))
        got = await outputs(rt, 301)
        for sub in subs:
            msgs = [o.msg for o in got if o.task == sub]
            assert [m[2] for m in msgs] == list(range(100)), sub
            assert all(m[0] == "news" and m[1] == pub for m in msgs)
        assert rt._hub.workers("news") == (0, 1)
        # the last unsubscribe on worker 0 removes worker 0 from the channel
        rt.send_nowait(subs[0], "unsubscribe")
        await outputs(rt, 1)
        assert rt._hub.workers("news") == (1,)
        rt.send_nowait(pub, ("publish", "news", 3, True))
        got = await outputs(rt, 7)
        assert {o.task for o in got if o.msg != ("published", 3)} == {subs[1], subs[2]}


async def test_c10_broadcast_reaches_every_worker_once(backend: str) -> None:
    async with Runtime(KINDS, workers=3, backend=backend, host=Host) as rt:
        await outputs(rt, 3)
        rt.send_nowait(1, "broadcast")
        got = await outputs(rt, 3)
        assert sorted(o.msg[1] for o in got) == [0, 1, 2]
        assert all(o.msg[0] == "bcast" and o.msg[2] == 1 for o in got)
        assert all(o.msg[3] == ("hello from", 1) for o in got)


# ---------------------------------------------------------------- C11 bounded queues


async def test_c11_bounded_inbox(backend: str) -> None:
    async with Runtime(KINDS, backend=backend, inbox_capacity=1) as rt:
        ref = await rt.spawn("echo")
        started = threading.Event()
        rt.send_nowait(ref, ("spin", 0.3, started))
        assert await asyncio.to_thread(started.wait, T)
        rt.send_nowait(ref, "a")  # fills the lane
        with pytest.raises(QueueFull, match="await send"):
            rt.send_nowait(ref, "refused")
        rt.send_force(ref, "b")  # the safe send always enqueues
        await rt.send(ref, "c")  # waits for room, resumes when the worker drains
        got = await outputs(rt, 4)
        assert [o.msg for o in got] == [("spun", 0.3), "a", "b", "c"]


async def test_c11_unsafe_bus_sends_are_dropped_and_counted(backend: str) -> None:
    async with Runtime(KINDS, workers=2, backend=backend, inbox_capacity=4) as rt:
        await rt.spawn("sub", "chan", worker=1)
        busy = await rt.spawn("echo", worker=1)
        pub = await rt.spawn("pub", worker=0)
        started = threading.Event()
        rt.send_nowait(busy, ("spin", 0.3, started))
        assert await asyncio.to_thread(started.wait, T)
        rt.send_nowait(pub, ("publish", "chan", 50, False))
        got = await outputs(rt, 2)  # "published", "spun"
        assert ("published", 50) in [o.msg for o in got]
        stats = await rt.stats(fresh=True)
        delivered = 50 - stats.workers[0].drops
        assert stats.workers[0].drops >= 40  # only about the capacity fitted
        rest = await outputs(rt, delivered)
        assert [o.msg[2] for o in rest] == list(range(delivered))


# ---------------------------------------------------------------- C12-C14


async def test_c12_slots_reused_and_stale_refs_refused(backend: str) -> None:
    async with Runtime(KINDS, backend=backend) as rt:
        refs = [await rt.spawn("echo") for _ in range(3)]
        assert [r.index for r in refs] == [0, 1, 2]
        with pytest.raises(TaskFailedError):
            await rt.request(refs[1], "end")
        new = await rt.spawn("echo")
        assert new.index == 1 and new != refs[1]
        with pytest.raises(UnknownTarget):
            rt.send_nowait(refs[1], "stale")


async def test_c13_resources_released_when_a_task_ends(backend: str) -> None:
    async with Runtime(KINDS, workers=2, backend=backend) as rt:
        sub = await rt.spawn("sub", "gone", worker=1)
        await rt.stats(fresh=True)
        assert rt._hub.workers("gone") == (1,)
        rt.send_nowait(sub, "quit")  # ends without unsubscribing
        event = await asyncio.wait_for(rt.next_event(), T)
        assert event == TaskEnded(sub)
        assert rt._hub.workers("gone") == ()


async def test_c14_a_failing_task_ends_alone(backend: str) -> None:
    async with Runtime(KINDS, backend=backend) as rt:
        bad, good = await rt.spawn("echo"), await rt.spawn("echo")
        assert bad.worker == good.worker
        rt.send_nowait(bad, ("raise", "magic packet"))
        event = await asyncio.wait_for(rt.next_event(), T)
        assert isinstance(event, TaskFailed)
        assert event.task == bad
        assert "ValueError: magic packet" in event.traceback
        assert event.error == "ValueError: magic packet"
        for i in range(3):
            rt.send_nowait(good, i)
        assert [o.msg for o in await outputs(rt, 3)] == [0, 1, 2]
        assert (await rt.stats(fresh=True)).workers[0].failures == 1


@pytest.mark.parametrize("bad", ["raise", "soon", float("nan")])
async def test_a_broken_next_deadline_fails_only_that_task(backend: str, bad: Any) -> None:
    async with Runtime(KINDS, backend=backend) as rt:
        broken, good = await rt.spawn("bad_deadline"), await rt.spawn("echo")
        rt.send_nowait(broken, bad)
        event = await asyncio.wait_for(rt.next_event(), T)
        assert isinstance(event, TaskFailed) and event.task == broken
        assert "no idea when" in event.traceback or "must return a time" in event.traceback
        rt.send_nowait(good, "still here")
        assert [o.msg for o in await outputs(rt, 1)] == ["still here"]


async def test_event_buffer_is_bounded_and_drops_are_counted(backend: str) -> None:
    async with Runtime(KINDS, backend=backend, event_capacity=5) as rt:
        ref = await rt.spawn("echo")
        rt.send_nowait(ref, ("emit", list(range(20))))  # one drain, one batch of 20

        async def dropped() -> bool:
            return (await rt.stats()).events_dropped == 15

        await until(dropped)
        assert [e.msg for e in rt.poll_events()] == [0, 1, 2, 3, 4]  # oldest kept, in order
        rt.send_nowait(ref, "after")  # room again: delivered
        assert [o.msg for o in await outputs(rt, 1)] == ["after"]


async def test_finite_task_ends_by_itself(backend: str) -> None:
    async with Runtime(KINDS, backend=backend) as rt:
        ref = await rt.spawn("finite", 3)
        events = []
        while len(events) < 4:
            events.append(await asyncio.wait_for(rt.next_event(), T))
        assert [e.msg for e in events[:3] if isinstance(e, TaskOutput)] == [0, 1, 2]
        assert events[3] == TaskEnded(ref)


# ---------------------------------------------------------------- C15 shutdown


async def test_c15_graceful_shutdown_delivers_the_drain(backend: str) -> None:
    rt = Runtime(KINDS, workers=2, backend=backend, host=Host)
    await rt.start()
    refs = [await rt.spawn("graceful") for _ in range(4)]
    await rt.shutdown(timeout=2)
    assert not any(w.thread.is_alive() for w in rt._workers)
    events = rt.poll_events()
    byes = [e.task for e in events if isinstance(e, TaskOutput) and e.msg == "bye"]
    assert sorted(byes, key=repr) == sorted(refs, key=repr)
    assert await rt.next_events() == []  # the stream ends after shutdown


async def test_c15_shutdown_timeout_names_the_stuck_task(backend: str) -> None:
    rt = Runtime(KINDS, backend=backend)
    await rt.start()
    stuck = await rt.spawn("stuck")
    await rt.spawn("graceful")
    with pytest.raises(ShutdownTimeout, match="unfinished tasks: stuck#0@w0") as info:
        await rt.shutdown(timeout=0.3)
    assert info.value.unfinished == [stuck]
    assert not any(w.thread.is_alive() for w in rt._workers)


# ---------------------------------------------------------------- B1 backends


async def test_b1_custom_loop_factory() -> None:
    made: list[asyncio.AbstractEventLoop] = []

    def factory() -> asyncio.AbstractEventLoop:
        loop = asyncio.SelectorEventLoop()
        made.append(loop)
        return loop

    async with Runtime(KINDS, backend=factory) as rt:
        ref = await rt.spawn("echo")
        assert await rt.request(ref, ("double", 4)) == 8
    assert len(made) == 1 and made[0].is_closed()


def test_b1_bad_arguments_fail_fast() -> None:
    with pytest.raises(ConfigError, match="unknown backend"):
        Runtime(KINDS, backend="kqueue-please")
    with pytest.raises(ConfigError, match="workers"):
        Runtime(KINDS, workers=0)
    with pytest.raises(ConfigError, match="reserved"):
        Runtime({"host": Echo})
    with pytest.raises(ConfigError, match="callable"):
        Runtime({"x": 3})  # type: ignore[dict-item]


async def test_a_broken_backend_fails_start_clearly() -> None:
    def broken() -> asyncio.AbstractEventLoop:
        raise OSError("no loops today")

    with pytest.raises(ConfigError, match="no loops today"):
        async with Runtime(KINDS, backend=broken):
            pass
