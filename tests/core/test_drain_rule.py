"""The drain rule: after every input a task's outputs are drained until ``pop_output``
returns None, and what the drain queued for local tasks is fed before the next input.

Tests whose docstring starts with "Bug:" failed before their fix: it is their
regression note.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from sansio_aio import (
    ConfigError,
    Ext,
    ExtOut,
    Publish,
    Request,
    Runtime,
    Task,
    TaskEnded,
    TaskFailed,
    TaskFailedError,
    TaskRef,
    UnknownTarget,
)
from sansio_aio._core import DEFAULT_MAX_OUTPUTS
from sansio_aio.driver import Driver, DriverContext
from sansio_aio.lowlevel import WorkerCore
from sansio_aio.testing import SimRuntime, TaskHarness
from tests.drivers import SyncDriver
from tests.helpers import Variant, collect, msg, outputs, outs
from tests.tasks import KINDS, Echo, Instant, Poker, PubThenEnd, TaggedSubscriber


async def test_outputs_are_drained_after_every_input(variant: Variant) -> None:
    async with Runtime(KINDS, **variant, tick=10.0) as rt:
        ref = await rt.spawn("recorder")
        # the constructor's output is delivered at once, long before the 10 s tick
        (hello,) = await outputs(rt, 1, timeout=2.0)
        assert hello.msg == "hello from the constructor"
        rt.send_nowait(ref, "x")
        assert [o.msg for o in await outputs(rt, 2)] == [1, 2]
        log = await rt.request(ref, "log")
        assert log == ["pop", "None", "on_event", "pop", "pop", "None", "on_event"]
        assert await rt.request(ref, "log") == ["pop", "None", "on_event"]


# ----------------------------- a task that ends or fails right after publishing


@pytest.mark.parametrize("what", ["end", "raise"])
async def test_local_publish_of_a_task_that_ends_is_delivered_at_once(
    variant: Variant, what: str
) -> None:
    """Bug: in WorkerCore.handle_from, a task that ended (or failed) right after an
    application message left the inputs it queued for local tasks (publish, SendTo) in
    the pending queue: they waited for some later input (the next tick, a minute here)
    and were fed after later messages."""
    kinds = {"pub": PubThenEnd, "sub": TaggedSubscriber}
    async with Runtime(kinds, workers=1, **variant, tick=60.0) as rt:
        sub = await rt.spawn("sub", "ch")
        pub = await rt.spawn("pub")
        # the subscription is in place once the spawn drained (same worker, FIFO)
        rt.send_nowait(pub, (what, "ch"))
        rt.send_nowait(sub, "after")
        got = await collect(rt, lambda g: len(outs(g)) >= 2)
        assert outs(got)[:2] == [("bus", what), ("ext", "after")]


# -------------------------------------------------- synchronous driver delivery


async def test_sync_driver_delivery_does_not_lose_later_outputs(variant: Variant) -> None:
    """Bug: Worker.deliver flushed the app buffer while WorkerCore.handle_from was
    running (a driver delivering from inside ``handle``); handle_from kept appending
    the batch's later outputs to the list already handed to the controller, so they
    were lost (or reordered)."""
    async with Runtime({"p": Poker}, workers=1, **variant, drivers=[SyncDriver]) as rt:
        ref = await rt.spawn("p")
        for _ in range(3):
            rt.send_nowait(ref, "go")  # one application callback: one worker batch
            rt.send_nowait(ref, "c")
            rt.send_nowait(ref, "d")
            got = await collect(rt, lambda g: len(outs(g)) >= 4)
            assert outs(got) == ["a", "b", "c", "d"]


# ------------------------------------------------ a task that ends in its spawn


async def test_task_that_ends_in_its_spawn_is_not_left_live(variant: Variant) -> None:
    """Bug: a task that ended while its constructor's outputs were drained reported
    APP_ENDED before APP_SPAWNED, so the controller put its ref back among the live
    tasks forever: sends to it went through instead of raising UnknownTarget."""
    async with Runtime({"i": Instant}, workers=1, **variant) as rt:
        ref = await rt.spawn("i")
        got = await collect(rt, lambda g: any(isinstance(e, TaskEnded) for e in g))
        assert outs(got) == ["born"]
        assert [e.task for e in got if isinstance(e, TaskEnded)] == [ref]
        with pytest.raises(UnknownTarget):
            rt.send_nowait(ref, "hello")
        assert (await rt.stats()).placed == (0,)


# --------------------------------------------------------------- feeder flushes


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
    variant: Variant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug: the feeder kept the worker's set of deferred wakes by identity, but the
    flush replaced that set: once a callback had woken another worker, the feeder saw
    a stale, non-empty set and flushed after every input (the per-packet path)."""
    from sansio_aio._worker import Worker

    calls = [0]
    flush = Worker.flush_app

    def counting(self: Worker) -> None:
        calls[0] += 1
        flush(self)

    monkeypatch.setattr(Worker, "flush_app", counting)
    kinds = {"f": FeedMe, "sub": TaggedSubscriber}
    async with Runtime(kinds, workers=2, **variant, drivers=[Feeding], tick=60) as rt:
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


# ------------------------------------------------------ a drain that never ends


class Runaway(Task):
    """Once started (by an application message or a request) its ``pop_output`` never
    returns None: a broken task, which must not hang its worker. With ``cfg="ext"`` it
    pops ``ExtOut(1)``, ``ExtOut(2)``, ...; else publishes on a channel nobody hears."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.running = False
        self.n = 0

    def on_event(self, now: float, event: Any) -> None:
        self.running = type(event) in (Ext, Request)

    def pop_output(self, now: float) -> Any | None:
        if not self.running:
            return super().pop_output(now)
        self.n += 1
        return ExtOut(self.n) if self.cfg == "ext" else Publish("nobody", self.n)


class Releases(Driver):
    """Handles no output; records the tasks it is told to release."""

    output_types: ClassVar[tuple[type, ...]] = ()

    def start(self, ctx: DriverContext) -> None:
        self.released: list[TaskRef] = []

    def handle(self, task: TaskRef, output: Any) -> None:
        pass

    def release(self, task: TaskRef) -> None:
        self.released.append(task)


def released(core: WorkerCore) -> list[TaskRef]:
    """Run on a worker: the tasks its ``Releases`` driver released (module level: it
    crosses to worker processes too)."""
    driver = core.drivers[0]
    assert isinstance(driver, Releases)
    return list(driver.released)


@pytest.mark.parametrize("how", ["message", "request"])  # handle_from's loop, _step's
async def test_a_pop_output_that_never_returns_none_fails_that_task_alone(
    variant: Variant, how: str
) -> None:
    """Bug: a task whose ``pop_output`` never returned None held its worker for good
    (the TaskHarness caught it as a ProtocolViolation; the runtime did not)."""
    kinds = {"runaway": Runaway, "echo": Echo}
    async with Runtime(kinds, **variant, max_outputs=1000, drivers=[Releases]) as rt:
        bad = await rt.spawn("runaway", "ext", worker=0)
        good = await rt.spawn("echo", worker=0)
        if how == "message":
            rt.send_nowait(bad, "go")
        else:
            asking = asyncio.ensure_future(rt.request(bad, "go"))
        got = await collect(rt, lambda g: any(isinstance(e, TaskFailed) for e in g))
        assert outs(got) == list(range(1, 1001))  # the bound's worth, then the failure
        (failed,) = [e for e in got if isinstance(e, TaskFailed)]
        assert failed.task == bad
        assert failed.traceback.rstrip().endswith(
            "RuntimeError: pop_output returned more than 1000 outputs without None in one "
            "drain (the drain rule; the bound is Runtime(max_outputs=1000)): the task was "
            "ended"
        )
        if how == "request":
            with pytest.raises(TaskFailedError, match="more than 1000 outputs without None"):
                await asking
        # its resources were released, and its worker serves its other tasks
        assert await rt.run_on_worker(0, released) == [bad]
        with pytest.raises(UnknownTarget):
            rt.send_nowait(bad, "again")
        rt.send_nowait(good, "still here")
        assert await msg(rt) == "still here"
        assert (await rt.stats(fresh=True)).workers[0].failures == 1


async def test_the_drain_bound_by_default(backend: str) -> None:
    assert DEFAULT_MAX_OUTPUTS == 100_000
    harness = inspect.signature(TaskHarness).parameters["max_outputs"].default
    assert harness == DEFAULT_MAX_OUTPUTS  # one bound for the runtime and the harness
    async with Runtime({"runaway": Runaway}, backend=backend) as rt:
        ref = await rt.spawn("runaway", "publish")
        rt.send_nowait(ref, "go")
        (failed,) = await collect(rt, lambda g: bool(g))
        assert isinstance(failed, TaskFailed) and failed.task == ref
        assert "more than 100000 outputs without None" in failed.traceback


def test_the_drain_bound_is_checked() -> None:
    for bad in (0, -1, 1.5, True, "10", None):
        with pytest.raises(ConfigError, match="max_outputs must be an int >= 1"):
            Runtime(KINDS, max_outputs=bad)  # type: ignore[arg-type]


# ------------------------------------------------------------- batch feeder


@dataclass(frozen=True)
class FeedAll:
    events: tuple[Any, ...]
    now: bool = False  # feed from inside handle (during the drain) instead of later


@dataclass(frozen=True)
class StopFeeding:
    pass


class BatchFeeding(Driver):
    """Feeds lists of inputs through ``ctx.batch_feeder``; ``StopFeeding`` clears the list
    being fed (what a driver does when the task closes the socket the list came from)."""

    output_types: ClassVar[tuple[type, ...]] = (FeedAll, StopFeeding)

    def start(self, ctx: DriverContext) -> None:
        self.ctx = ctx
        self.feeding: list[Any] | None = None

    def handle(self, task: TaskRef, output: Any) -> None:
        if type(output) is StopFeeding:
            if self.feeding is not None:
                self.feeding.clear()
            return
        feed_all = self.ctx.batch_feeder(task)
        events = list(output.events)

        def run() -> None:
            self.feeding = events
            feed_all(events)
            self.feeding = None

        if output.now:
            run()
        else:
            self.ctx.loop.call_soon(run)

    def release(self, task: TaskRef) -> None:
        pass


class BatchFed(Task):
    """Reports each fed input; ``"stop feeding"`` clears the rest, ``"end"`` ends the
    task, ``"raise"`` fails it; an Ext starts a feed (``("now", ...)``: from the drain)."""

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            msg = event.msg
            if msg[0] == "now":
                self.emit(FeedAll(tuple(msg[1:]), now=True))
                self.emit(ExtOut("drain ends"))
            else:
                self.emit(FeedAll(tuple(msg)))
            return
        if event == "raise":
            raise ValueError("asked to fail")
        self.emit(ExtOut(("fed", event)))
        if event == "stop feeding":
            self.emit(StopFeeding())
        elif event == "end":
            self.on_shutdown(now)


class BatchFedCalls(BatchFed):
    """The same task with its own pop_output: the general (non-inlined) loop."""

    def pop_output(self, now: float) -> Any:
        return super().pop_output(now)


@pytest.mark.parametrize("kind", ["plain", "calls"])
async def test_batch_feeder_feeds_in_order_and_stops_when_told(variant: Variant, kind: str) -> None:
    kinds = {"plain": BatchFed, "calls": BatchFedCalls}
    async with Runtime(kinds, drivers=[BatchFeeding], **variant) as rt:
        ref = await rt.spawn(kind)
        rt.send_nowait(ref, [1, 2, 3])
        assert [m for m in await outputs_of(rt, 3)] == [("fed", 1), ("fed", 2), ("fed", 3)]
        # clearing the list (the socket closed) stops the rest: 5 and 6 are never fed
        rt.send_nowait(ref, [4, "stop feeding", 5, 6])
        rt.send_nowait(ref, [7])
        got = await outputs_of(rt, 3)
        assert got == [("fed", 4), ("fed", "stop feeding"), ("fed", 7)]
        # fed during a drain: queued behind it, then fed in order
        rt.send_nowait(ref, ("now", 8, 9))
        assert await outputs_of(rt, 3) == ["drain ends", ("fed", 8), ("fed", 9)]
        # the task ends mid-list: the rest are orphans, nothing reaches a dead task
        rt.send_nowait(ref, [10, "end", 11, 12])
        assert await outputs_of(rt, 2) == [("fed", 10), ("fed", "end")]
        ended = await asyncio.wait_for(rt.next_event(), 5)
        assert isinstance(ended, TaskEnded) and ended.task == ref
        stats = await rt.stats(fresh=True)
        assert stats.workers[0].orphans >= 2


async def test_batch_feeder_a_failing_input_ends_the_task_only(variant: Variant) -> None:
    async with Runtime({"t": BatchFed}, drivers=[BatchFeeding], **variant) as rt:
        ref = await rt.spawn("t")
        other = await rt.spawn("t")
        rt.send_nowait(ref, [1, "raise", 2])
        assert await outputs_of(rt, 1) == [("fed", 1)]
        failed = await asyncio.wait_for(rt.next_event(), 5)
        assert isinstance(failed, TaskFailed) and "asked to fail" in failed.traceback
        rt.send_nowait(other, [3])
        assert await outputs_of(rt, 1) == [("fed", 3)]


async def outputs_of(rt: Runtime, n: int) -> list[Any]:
    """The next ``n`` task outputs' messages (fails on any other event)."""
    return [await msg(rt) for _ in range(n)]


async def test_batch_feeder_under_the_simulator() -> None:
    """The simulator's shell offers ``batch_feeder`` too (one ``deliver`` each; its
    workers have no loop, so this driver feeds from inside the drain only)."""
    async with SimRuntime({"t": BatchFed}, drivers=[BatchFeeding]) as rt:
        ref = await rt.spawn("t")
        rt.send_nowait(ref, ("now", 3, 4))
        got = [(await rt.next_event()).msg for _ in range(3)]  # type: ignore[union-attr]
        assert got == ["drain ends", ("fed", 3), ("fed", 4)]
