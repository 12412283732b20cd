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
    Driver,
    Ext,
    ExtOut,
    Publish,
    Reply,
    Runtime,
    Subscribe,
    Task,
    TaskEnded,
    TaskOutput,
    TaskRef,
    UnknownTarget,
)
from sansio_aio.driver import DriverContext

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


@dataclass(frozen=True)
class Poke:
    what: Any


@dataclass(frozen=True)
class Poked:
    what: Any


class SyncDriver(Driver):
    """Delivers ``Poked`` synchronously from ``handle`` (as UdpBind does with UdpBound)."""

    output_types: ClassVar[tuple[type, ...]] = (Poke,)

    def start(self, ctx: DriverContext) -> None:
        self.ctx = ctx

    def handle(self, task: TaskRef, output: Any) -> None:
        self.ctx.deliver(task, Poked(output.what))

    def release(self, task: TaskRef) -> None:
        pass


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


class Recorded(Driver):
    """Records start/close per instance, class-wide."""

    output_types: ClassVar[tuple[type, ...]] = ()
    log: ClassVar[list[str]] = []

    def start(self, ctx: DriverContext) -> None:
        self.log.append(f"start {ctx.worker_id}")

    def handle(self, task: TaskRef, output: Any) -> None:
        pass

    def release(self, task: TaskRef) -> None:
        pass

    def close(self) -> None:
        self.log.append("close")


class FailsOnWorker1(Driver):
    output_types: ClassVar[tuple[type, ...]] = ()

    def start(self, ctx: DriverContext) -> None:
        if ctx.worker_id == 1:
            raise OSError("no such device")

    def handle(self, task: TaskRef, output: Any) -> None:
        pass

    def release(self, task: TaskRef) -> None:
        pass


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
