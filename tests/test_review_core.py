"""Review of the core runtime: races, ordering, leaks, error paths, API edge cases.

Each test pins one behaviour found (or checked) during a review of core/controller/
worker/ledger/handoff: the ones that failed before their fix say which bug they catch.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from sansio_aio import (
    BusMessage,
    ConfigError,
    Ext,
    ExtOut,
    Publish,
    Reply,
    Request,
    Runtime,
    RuntimeClosed,
    Spawn,
    Spawned,
    Subscribe,
    Task,
    TaskEnded,
    TaskFailed,
    TaskFailedError,
    TaskOutput,
    TaskRef,
    UnknownTarget,
)
from sansio_aio.driver import Driver, DriverContext

from .drivers import FailsOnWorker1, Poke, Poked, Recorded, SyncDriver

T = 5.0


async def collect(rt: Runtime, pred: Any, timeout: float = T) -> list[Any]:
    """Read events until ``pred(events so far)`` holds (or time out)."""
    got: list[Any] = []

    async def run() -> None:
        while not pred(got):
            got.extend(await rt.next_events())

    await asyncio.wait_for(run(), timeout)
    return got


def outs(events: list[Any]) -> list[Any]:
    return [e.msg for e in events if isinstance(e, TaskOutput)]


# ---------------------------------------------------------------- drain rule on end/fail


class PubThenEnd(Task):
    """On ("end", ch): publish on ch, then end. On ("raise", ch): publish, then raise."""

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            what, ch = event.msg
            self.emit(Publish(ch, what))
            if what == "raise":
                self._boom = True
            else:
                self.closing = True

    def pop_output(self, now: float) -> Any | None:
        out = super().pop_output(now)
        if out is None and getattr(self, "_boom", False):
            raise RuntimeError("boom after publishing")
        return out


class Sub(Task):
    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.emit(Subscribe(cfg))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is BusMessage:
            self.emit(ExtOut(("bus", event.msg)))
        elif type(event) is Ext:
            self.emit(ExtOut(("ext", event.msg)))


@pytest.mark.parametrize("what", ["end", "raise"])
async def test_local_publish_of_a_task_that_ends_is_delivered_at_once(
    backend: str, what: str
) -> None:
    """Bug: in WorkerCore.handle_from, a task that ended (or failed) right after an
    application message left the inputs it queued for local tasks (publish, SendTo) in
    the pending queue: they waited for some later input (the next tick, a minute here)
    and were fed after later messages."""
    kinds = {"pub": PubThenEnd, "sub": Sub}
    async with Runtime(kinds, workers=1, backend=backend, tick=60.0) as rt:
        sub = await rt.spawn("sub", "ch")
        pub = await rt.spawn("pub")
        # the subscription is in place once the spawn drained (same worker, FIFO)
        rt.send_nowait(pub, (what, "ch"))
        rt.send_nowait(sub, "after")
        got = await collect(rt, lambda g: len(outs(g)) >= 2)
        assert outs(got)[:2] == [("bus", what), ("ext", "after")]


# ---------------------------------------------------------------- synchronous driver delivery


class Poker(Task):
    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            msg = event.msg
            if msg == "go":
                self.emit(Reply(-1, None))  # a control message: the buffer is "mixed"
                self.emit(ExtOut("a"))
                self.emit(Poke("b"))
            else:
                self.emit(ExtOut(msg))
        elif type(event) is Poked:
            self.emit(ExtOut(event.what))


async def test_sync_driver_delivery_does_not_lose_later_outputs(backend: str) -> None:
    """Bug: Worker.deliver flushed the app buffer while WorkerCore.handle_from was
    running (a driver delivering from inside ``handle``); handle_from kept appending
    the batch's later outputs to the list already handed to the controller, so they
    were lost (or reordered)."""
    async with Runtime({"p": Poker}, workers=1, backend=backend, drivers=[SyncDriver]) as rt:
        ref = await rt.spawn("p")
        for _ in range(3):
            rt.send_nowait(ref, "go")  # one application callback: one worker batch
            rt.send_nowait(ref, "c")
            rt.send_nowait(ref, "d")
            got = await collect(rt, lambda g: len(outs(g)) >= 4)
            assert outs(got) == ["a", "b", "c", "d"]


# ---------------------------------------------------------------- spawn of a task that ends at once


class Instant(Task):
    """Emits one output from its constructor and is empty at once."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.emit(ExtOut("born"))
        self.closing = True


async def test_task_that_ends_in_its_spawn_is_not_left_live(backend: str) -> None:
    """Bug: a task that ended while its constructor's outputs were drained reported
    APP_ENDED before APP_SPAWNED, so the controller put its ref back among the live
    tasks forever: sends to it went through instead of raising UnknownTarget."""
    async with Runtime({"i": Instant}, workers=1, backend=backend) as rt:
        ref = await rt.spawn("i")
        got = await collect(rt, lambda g: any(isinstance(e, TaskEnded) for e in g))
        assert outs(got) == ["born"]
        assert [e.task for e in got if isinstance(e, TaskEnded)] == [ref]
        with pytest.raises(UnknownTarget):
            rt.send_nowait(ref, "hello")
        assert (await rt.stats()).placed == (0,)


# ---------------------------------------------------------------- a failed start


async def test_failed_start_closes_started_drivers_and_stops_quickly(backend: str) -> None:
    """Bugs: a worker whose second driver failed to start never closed the first one
    (its sockets leaked); and the workers that did start were only force-stopped after
    a 2 s grace period, since nobody asked them to shut down."""
    Recorded.log = []
    before = set(threading.enumerate())
    rt = Runtime({}, workers=2, backend=backend, drivers=[Recorded, FailsOnWorker1])
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(ConfigError, match="no such device"):
        async with rt:
            pytest.fail("the body must not run")
    assert loop.time() - t0 < 1.5
    assert sorted(Recorded.log) == ["close", "close", "start 0", "start 1"]
    assert not [t for t in set(threading.enumerate()) - before if "-worker-" in t.name]
    assert not rt.running
    await rt.shutdown()  # a no-op now
    assert await rt.next_events() == []


# ---------------------------------------------------------------- event consumers


class Echo(Task):
    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            self.emit(ExtOut(event.msg))


async def test_cancelling_one_event_waiter_does_not_cancel_another(backend: str) -> None:
    """Bug: every waiter in next_event(s) awaited one shared future, so cancelling one
    waiter (a ``wait_for`` timing out) cancelled that future and raised CancelledError
    in every other consumer."""
    async with Runtime({"echo": Echo}, workers=1, backend=backend) as rt:
        ref = await rt.spawn("echo")
        consumer = asyncio.create_task(rt.next_event())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(rt.next_event(), 0.05)
        assert not consumer.done()
        rt.send_nowait(ref, "x")
        event = await asyncio.wait_for(consumer, T)
        assert isinstance(event, TaskOutput) and event.msg == "x"


async def test_events_awaited_before_start() -> None:
    """Bug: next_event(s) (and events()) awaited before ``start`` failed on an assert."""
    rt = Runtime({"echo": Echo}, workers=1)
    first = asyncio.create_task(rt.next_event())
    await asyncio.sleep(0)
    assert not first.done()
    async with rt:
        ref = await rt.spawn("echo")
        rt.send_nowait(ref, "hi")
        event = await asyncio.wait_for(first, T)
        assert isinstance(event, TaskOutput) and event.msg == "hi"


# ---------------------------------------------------------------- deadlines


class Never(Task):
    """Asks for a wake-up at +inf ("never"), echoes messages."""

    def next_deadline(self) -> float | None:
        return float("inf")

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            self.emit(ExtOut(event.msg))


async def test_infinite_deadline_does_not_break_the_worker(backend: str) -> None:
    async with Runtime({"never": Never}, workers=1, backend=backend) as rt:
        a = await rt.spawn("never")
        b = await rt.spawn("never")
        rt.send_nowait(a, 1)
        rt.send_nowait(b, 2)
        got = await collect(rt, lambda g: len(g) >= 2)
        assert outs(got) == [1, 2]


# ---------------------------------------------------------------- lifecycle edge cases


async def test_shutdown_while_starting_wins(backend: str) -> None:
    """Bug: a shutdown that ran while ``start`` was waiting for its workers was undone
    when ``start`` resumed: the runtime said it was running with its workers gone."""
    rt = Runtime({"echo": Echo}, workers=2, backend=backend)
    starting = asyncio.create_task(rt.start())
    await asyncio.sleep(0)  # start() is now waiting for the workers
    await asyncio.wait_for(rt.shutdown(), T)
    with pytest.raises(RuntimeClosed):
        await asyncio.wait_for(starting, T)
    assert not rt.running
    with pytest.raises(RuntimeClosed):
        await rt.spawn("echo")
    assert not [t for t in threading.enumerate() if t.name.startswith("sansio-worker-")]


async def test_shutdown_twice_concurrently_and_after(backend: str) -> None:
    rt = Runtime({"echo": Echo}, workers=2, backend=backend)
    await rt.shutdown()  # before start: a no-op that closes it
    with pytest.raises(RuntimeClosed):
        await rt.start()
    rt = await Runtime({"echo": Echo}, workers=2, backend=backend).start()
    await rt.spawn("echo")
    await asyncio.wait_for(asyncio.gather(rt.shutdown(), rt.shutdown()), T)
    await rt.shutdown()
    assert not [t for t in threading.enumerate() if t.name.startswith("sansio-worker-")]
    stats = await rt.stats(fresh=True)
    assert len(stats.workers) == 2 and stats.placed == (0, 0)
    assert [type(e) for e in await rt.next_events()] == [TaskEnded]
    assert await rt.next_events() == []
    assert [e async for e in rt.events()] == []
    with pytest.raises(RuntimeClosed):
        await rt.next_event()
    with pytest.raises(RuntimeClosed):
        await rt.run_on_worker(0, lambda core: None)


async def test_waiting_consumer_wakes_at_shutdown(backend: str) -> None:
    async with Runtime({"echo": Echo}, workers=1, backend=backend) as rt:
        consumer = asyncio.create_task(rt.next_events())
        await asyncio.sleep(0)
    assert await asyncio.wait_for(consumer, T) == []


# ---------------------------------------------------------------- task error paths


class Faulty(Task):
    """Raises from the method named by ``cfg`` (after the first message for is_empty)."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        if cfg == "init":
            raise ValueError("init")
        self.armed = False

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            self.emit(ExtOut(event.msg))
            self.armed = True

    def pop_output(self, now: float) -> Any | None:
        out = super().pop_output(now)
        if out is None and self.armed and self.cfg == "pop_output":
            raise ValueError("pop_output")
        return out

    def is_empty(self) -> bool:
        if self.armed and self.cfg == "is_empty":
            raise ValueError("is_empty")
        return super().is_empty()

    def next_deadline(self) -> float | None:
        if self.armed and self.cfg == "next_deadline":
            raise ValueError("next_deadline")
        return None

    def on_shutdown(self, now: float) -> None:
        if self.cfg == "on_shutdown":
            self.emit(ExtOut("last words"))
            raise ValueError("on_shutdown")
        super().on_shutdown(now)


@pytest.mark.parametrize("method", ["pop_output", "is_empty", "next_deadline"])
async def test_a_task_raising_fails_alone_after_its_outputs(backend: str, method: str) -> None:
    async with Runtime({"f": Faulty, "echo": Echo}, workers=1, backend=backend) as rt:
        bad = await rt.spawn("f", method)
        good = await rt.spawn("echo")
        rt.send_nowait(bad, "out")
        rt.send_nowait(good, "still here")
        got = await collect(rt, lambda g: len(g) >= 3)
        assert [type(e) for e in got] == [TaskOutput, TaskFailed, TaskOutput]
        assert got[1].task == bad and method in got[1].traceback
        with pytest.raises(UnknownTarget):
            rt.send_nowait(bad, "gone")


async def test_constructor_and_on_shutdown_raising(backend: str) -> None:
    rt = Runtime({"f": Faulty}, workers=1, backend=backend)
    async with rt:
        with pytest.raises(TaskFailedError, match="init"):
            await rt.spawn("f", "init")
        assert (await rt.stats()).placed == (0,)
        ref = await rt.spawn("f", "on_shutdown")
    got = await rt.next_events()
    # outputs queued by a method that then raises are dropped with the task (by design)
    assert [type(e) for e in got] == [TaskFailed]
    assert got[0].task == ref and "on_shutdown" in got[0].traceback


class Silent(Task):
    """Never replies; a request ("end") ends it."""

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Request and event.msg == "end":
            self.closing = True


async def test_requests_to_tasks_that_end_or_are_stale(backend: str) -> None:
    async with Runtime({"s": Silent}, workers=2, backend=backend) as rt:
        a = await rt.spawn("s")
        waiting = asyncio.create_task(rt.request(a, "ignored", timeout=None))
        await asyncio.sleep(0)
        with pytest.raises(TaskFailedError, match="ended without replying"):
            await rt.request(a, "end", timeout=T)
        with pytest.raises(TaskFailedError):
            await asyncio.wait_for(waiting, T)
        with pytest.raises(UnknownTarget):
            await rt.request(a, "again")
        with pytest.raises(UnknownTarget):
            rt.send_nowait(a, "stale")
        with pytest.raises(UnknownTarget):
            await rt.send(a, "stale")
        b = await rt.spawn("s", worker=a.worker)
        assert b.index == a.index and b != a  # the slot is reused, the ref is not
        hanging = asyncio.create_task(rt.request(b, "ignored", timeout=None))
        await asyncio.sleep(0)
    with pytest.raises(TaskFailedError, match="ended without replying"):
        await asyncio.wait_for(hanging, T)  # it ended at shutdown


# ---------------------------------------------------------------- drivers raising


class Boom:
    pass


class Raising(Driver):
    output_types: ClassVar[tuple[type, ...]] = (Boom,)

    def start(self, ctx: DriverContext) -> None:
        pass

    def handle(self, task: TaskRef, output: Any) -> None:
        raise OSError("handle")

    def release(self, task: TaskRef) -> None:
        raise OSError("release")

    def close(self) -> None:
        raise OSError("close")


class Booms(Task):
    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            if event.msg == "boom":
                self.emit(Boom())
            else:
                self.emit(ExtOut(event.msg))


async def test_driver_raising_in_handle_release_close(backend: str) -> None:
    rt = Runtime({"b": Booms}, workers=1, backend=backend, drivers=[Raising])
    async with rt:
        a = await rt.spawn("b")
        b = await rt.spawn("b")
        rt.send_nowait(a, "boom")
        rt.send_nowait(b, "ok")
        got = await collect(rt, lambda g: len(g) >= 2)
        assert [type(e) for e in got] == [TaskFailed, TaskOutput]
        assert "handle" in got[0].traceback
    assert [type(e) for e in await rt.next_events()] == [TaskEnded]
    assert not [t for t in threading.enumerate() if t.name.startswith("sansio-worker-")]


# ---------------------------------------------------------------- in flight at shutdown


async def test_spawn_and_run_on_worker_in_flight_at_shutdown(backend: str) -> None:
    rt = await Runtime({"echo": Echo}, workers=2, backend=backend).start()
    spawning = asyncio.create_task(rt.spawn("echo"))
    calling = asyncio.create_task(rt.run_on_worker(1, lambda core: core.worker_id))
    await asyncio.sleep(0)  # both are in their lanes, ahead of the shutdown
    await rt.shutdown()
    ref = await asyncio.wait_for(spawning, T)
    assert await asyncio.wait_for(calling, T) == 1
    assert [e.task for e in await rt.next_events()] == [ref]
    with pytest.raises(RuntimeClosed):
        await rt.spawn("echo")


class Spawner(Task):
    """Asks for a child spawn (tagged) on shutdown, and reports the answer."""

    def on_shutdown(self, now: float) -> None:
        self.emit(Spawn("echo", None, tag="child"))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Spawned:
            self.emit(ExtOut((event.ref, event.error)))
            self.closing = True


async def test_task_spawn_during_shutdown_is_refused(backend: str) -> None:
    rt = Runtime({"echo": Echo, "spawner": Spawner}, workers=2, backend=backend)
    async with rt:
        await rt.spawn("spawner", worker=0)
    got = await rt.next_events()
    assert [type(e) for e in got] == [TaskOutput, TaskEnded]
    assert got[0].msg == (None, "runtime closing")


# ---------------------------------------------------------------- waiting for room at shutdown


class Gate(Task):
    """Blocks its worker on ``cfg`` (a threading.Event) for the message "block"."""

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext and event.msg == "block":
            self.cfg[0].set()
            self.cfg[1].wait(T)


async def test_send_waiting_for_room_fails_at_shutdown(backend: str) -> None:
    entered, release = threading.Event(), threading.Event()
    rt = Runtime({"gate": Gate}, workers=1, backend=backend, inbox_capacity=2)
    async with rt:
        ref = await rt.spawn("gate", (entered, release))
        rt.send_nowait(ref, "block")
        assert await asyncio.to_thread(entered.wait, T)
        rt.send_nowait(ref, 1)
        rt.send_nowait(ref, 2)
        waiting = asyncio.create_task(rt.send(ref, 3))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        release.set()
        await asyncio.wait_for(waiting, T)  # room came back: the send went through
        rt.send_nowait(ref, "block")
        release.clear()
        entered.clear()
        assert await asyncio.to_thread(entered.wait, T)
        rt.send_nowait(ref, 4)
        rt.send_nowait(ref, 5)
        waiting = asyncio.create_task(rt.send(ref, 6))
        await asyncio.sleep(0.01)
        closing = asyncio.create_task(rt.shutdown())
        await asyncio.sleep(0.01)
        release.set()
        with pytest.raises(RuntimeClosed):
            await asyncio.wait_for(waiting, T)
        await asyncio.wait_for(closing, T)


# ---------------------------------------------------------------- the deadline heap


class Sliding(Task):
    """An idle timer: every message pushes its deadline further (as QUIC's get_timer)."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.when = 1e9

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            self.when += 1.0
            if event.msg == "last":
                self.emit(ExtOut("done"))

    def next_deadline(self) -> float | None:
        return self.when


async def test_sliding_deadlines_do_not_grow_the_heap(backend: str) -> None:
    """Bug: each deadline change pushed a heap entry and stale ones were dropped only
    when they reached the top (i.e. when their time came): a task sliding an idle timer
    per message grew the heap by one entry per message (and kept ended tasks alive)."""
    async with Runtime({"s": Sliding}, workers=1, backend=backend) as rt:
        ref = await rt.spawn("s")
        for _ in range(20):
            for _ in range(500):
                rt.send_nowait(ref, "x")
            await asyncio.sleep(0)
        rt.send_nowait(ref, "last")
        await collect(rt, lambda g: outs(g) == ["done"])
        size = await rt.run_on_worker(0, lambda core: len(core._heap))
        assert size < 100


# ---------------------------------------------------------------- feeder flushes


@dataclass(frozen=True)
class Feed:
    n: int


class Feeding(Driver):
    """On ``Feed(n)``: later, feed the task ``n`` inputs through ``ctx.feeder``."""

    output_types: ClassVar[tuple[type, ...]] = (Feed,)

    def start(self, ctx: DriverContext) -> None:
        self.ctx = ctx
        self.feeds: dict[TaskRef, Any] = {}

    def handle(self, task: TaskRef, output: Any) -> None:
        feed = self.feeds.get(task)
        if feed is None:  # built once per task, as a socket's reader would
            feed = self.feeds[task] = self.ctx.feeder(task)

        def run() -> None:
            for i in range(output.n):
                feed(("tick", i))
            feed(("end", output.n))

        self.ctx.loop.call_soon(run)

    def release(self, task: TaskRef) -> None:
        pass


class FeedMe(Task):
    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            msg = event.msg
            if msg == "publish":
                self.emit(Publish("elsewhere", 1))
            else:
                self.emit(Feed(msg))
        elif type(event) is tuple and event[0] == "end":
            self.emit(ExtOut(event))


async def test_feeder_does_not_flush_per_input_after_a_cross_worker_wake(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug: the feeder kept the worker's set of deferred wakes by identity, but the
    flush replaced that set: once a callback had woken another worker, the feeder saw
    a stale, non-empty set and flushed after every input (the per-packet path)."""
    from sansio_aio._worker import Worker

    calls = [0]
    flush = Worker._flush_app

    def counting(self: Worker) -> None:
        calls[0] += 1
        flush(self)

    monkeypatch.setattr(Worker, "_flush_app", counting)
    kinds = {"f": FeedMe, "sub": Sub}
    async with Runtime(kinds, workers=2, backend=backend, drivers=[Feeding], tick=60) as rt:
        await rt.spawn("sub", "elsewhere", worker=1)
        ref = await rt.spawn("f", worker=0)
        rt.send_nowait(ref, 1)  # the driver builds its feeder
        await collect(rt, lambda g: ("end", 1) in outs(g))
        rt.send_nowait(ref, "publish")  # wakes worker 1 from worker 0
        await collect(rt, lambda g: ("bus", 1) in outs(g))
        before = calls[0]
        rt.send_nowait(ref, 1000)
        await collect(rt, lambda g: ("end", 1000) in outs(g))
        assert calls[0] - before < 20


# ---------------------------------------------------------------- a deadline stuck in the past


class PastDeadline(Task):
    """Keeps asking for a wake-up in the past (a timer it never advances), for at most
    ``cfg`` seconds of wall time (so a broken runtime is not stuck forever)."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        import time

        self.until = time.monotonic() + cfg
        self.ticks = 0

    def on_tick(self, now: float) -> None:
        self.ticks += 1

    def next_deadline(self) -> float | None:
        import time

        return 0.0 if not self.closing and time.monotonic() < self.until else None


async def test_a_deadline_stuck_in_the_past_does_not_hang_the_worker(backend: str) -> None:
    """Bug: on_deadline fired due deadlines until none was due; a task whose deadline
    stayed in the past was fired again and again inside that one callback, so its worker
    never returned to its loop (no other task ran, shutdown could not complete)."""
    kinds = {"past": PastDeadline, "echo": Echo}
    async with Runtime(kinds, workers=1, backend=backend) as rt:
        echo = await rt.spawn("echo")
        await rt.spawn("past", 3.0)
        rt.send_nowait(echo, "still served")
        got = await collect(rt, lambda g: len(g) >= 1, timeout=1.5)
        assert outs(got) == ["still served"]


# ---------------------------------------------------------------- fds after shutdown


def _fds() -> set[str]:
    import os

    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/fd"), reason="needs /proc")
async def test_no_fds_left_after_shutdown_or_failed_start(backend: str) -> None:
    async with Runtime({}, workers=1, backend=backend):  # warm up lazy imports
        pass
    before = _fds()
    for _ in range(3):
        async with Runtime({"echo": Echo}, workers=3, backend=backend) as rt:
            await rt.spawn("echo")
        with pytest.raises(ConfigError):
            async with Runtime({}, workers=2, backend=backend, drivers=[FailsOnWorker1]):
                pass
    assert _fds() - before == set()


# ---------------------------------------------------------------- a cancelled shutdown


async def test_cancelled_shutdown_still_closes_the_runtime(backend: str) -> None:
    """Bug: a shutdown cancelled midway (``wait_for`` or Ctrl-C during ``async with``'s
    exit) left the runtime "closing" forever: a later shutdown returned at once without
    joining threads or failing pending requests, and next_events() never returned."""
    entered, release = threading.Event(), threading.Event()
    rt = await Runtime({"gate": Gate, "s": Silent}, workers=2, backend=backend).start()
    gate = await rt.spawn("gate", (entered, release), worker=0)
    silent = await rt.spawn("s", worker=1)
    rt.send_nowait(gate, "block")
    assert await asyncio.to_thread(entered.wait, T)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(rt.shutdown(), 0.05)
    release.set()
    await asyncio.wait_for(rt.shutdown(), T)
    assert not [t for t in threading.enumerate() if t.name.startswith("sansio-worker-")]
    got = await asyncio.wait_for(rt.next_events(), T)
    assert sorted(e.task for e in got) == sorted([gate, silent])
    assert await asyncio.wait_for(rt.next_events(), T) == []


async def test_stats_before_start() -> None:
    rt = Runtime({"echo": Echo}, workers=3)
    stats = await rt.stats(fresh=True)
    assert stats.workers == () and stats.placed == (0, 0, 0)


# ---------------------------------------------------------------- a room callback failing


async def test_a_failing_room_callback_does_not_strand_the_batch(backend: str) -> None:
    """Bug: a room callback raising (the controller's one does when the application's
    loop is closed) escaped Worker._on_wake halfway: the batch's outputs were not handed
    over and the other lanes were not drained until some later callback."""
    async with Runtime({"echo": Echo}, workers=1, backend=backend, tick=60) as rt:
        ref = await rt.spawn("echo")
        lane = rt._workers[0].inbox[1]  # the controller's lane into worker 0

        def broken() -> None:
            raise RuntimeError("Event loop is closed")

        called = threading.Event()
        lane._room_waiters.append(broken)
        lane._room_waiters.append(called.set)  # a later waiter still runs
        rt.send_nowait(ref, "through")
        got = await collect(rt, lambda g: len(g) >= 1)
        assert outs(got) == ["through"]
        assert called.is_set()


# ---------------------------------------------------------------- a thread that cannot start


async def test_a_worker_thread_that_cannot_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: if a worker's thread could not be started (``can't start new thread``),
    ``start`` raised with the other workers left running and the runtime "starting";
    ``shutdown`` then failed joining the thread that never started."""
    from sansio_aio._worker import Worker

    real = Worker.start

    def start(self: Worker) -> None:
        if self.worker_id == 1:
            raise RuntimeError("can't start new thread")
        real(self)

    monkeypatch.setattr(Worker, "start", start)
    rt = Runtime({"echo": Echo}, workers=3)
    with pytest.raises(ConfigError, match="can't start new thread"):
        await asyncio.wait_for(rt.start(), T)
    assert not rt.running
    assert not [t for t in threading.enumerate() if t.name.startswith("sansio-worker-")]
    await asyncio.wait_for(rt.shutdown(), T)


async def test_task_that_ends_in_its_spawn_under_the_simulator() -> None:
    """SimRuntime (the same core, its own controller) agrees: the ref is not live."""
    from sansio_aio.testing import SimRuntime

    async with SimRuntime({"i": Instant}, workers=2) as rt:
        ref = await rt.spawn("i")
        got = await rt.next_events()
        assert outs(got) == ["born"] and isinstance(got[-1], TaskEnded)
        with pytest.raises(UnknownTarget):
            await rt.send(ref, "hello")
