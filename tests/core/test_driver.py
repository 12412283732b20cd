"""The public driver interface, with two toy drivers, on every backend."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from sansio_aio import ConfigError, Ext, ExtOut, Runtime, Task, TaskFailed, TaskRef
from sansio_aio.driver import Driver, DriverContext
from tests.helpers import T


@dataclass(slots=True)
class After:
    """Output: deliver ``Fired(token)`` after ``delay`` seconds (an async driver)."""

    delay: float
    token: Any


@dataclass(slots=True)
class Fired:
    token: Any


@dataclass(slots=True)
class Bounce:
    """Output: deliver ``Bounced(token)`` synchronously, from inside ``handle``."""

    token: Any


@dataclass(slots=True)
class Bounced:
    token: Any


class ToyDriver(Driver):
    """Timers through asyncio tasks, plus a synchronous bounce; tracks what tasks hold."""

    output_types = (After, Bounce)
    released: list[TaskRef] = []
    closed = 0

    def start(self, ctx: DriverContext) -> None:
        self.ctx = ctx
        self.held: dict[TaskRef, list[asyncio.Task[None]]] = {}

    def handle(self, task: TaskRef, output: Any) -> None:
        if type(output) is Bounce:
            # delivered during the task's own drain: the core queues it until the
            # drain ends, so the task is never re-entered
            self.ctx.deliver(task, Bounced(output.token))
            return

        async def fire() -> None:
            await asyncio.sleep(output.delay)
            self.ctx.deliver(task, Fired(output.token))

        self.held.setdefault(task, []).append(self.ctx.loop.create_task(fire()))

    def release(self, task: TaskRef) -> None:
        for timer in self.held.pop(task, []):
            timer.cancel()
        ToyDriver.released.append(task)

    def close(self) -> None:
        ToyDriver.closed += 1

    def stats(self) -> dict[str, int]:
        return {"toy_timers": sum(len(v) for v in self.held.values())}


class User(Task):
    """Uses the toy driver; records whether it was ever re-entered."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.inside = False

    def on_event(self, now: float, event: Any) -> None:
        assert not self.inside, "re-entered during a drain"
        self.inside = True
        try:
            if type(event) is Ext:
                kind, token = event.msg
                if kind == "after":
                    self.emit(After(0.01, token))
                elif kind == "bounce":
                    self.emit(Bounce(token))
                    self.emit(ExtOut(("bounce sent", token)))
                elif kind == "raise":
                    self.emit(After(30.0, token))  # held by the driver when we fail
                    raise RuntimeError("boom")
            elif type(event) is Fired:
                self.emit(ExtOut(("fired", event.token)))
            elif type(event) is Bounced:
                self.emit(ExtOut(("bounced", event.token)))
        finally:
            self.inside = False


async def test_driver_async_results_come_back_as_inputs(backend: str) -> None:
    async with Runtime({"user": User}, backend=backend, drivers=[ToyDriver]) as rt:
        ref = await rt.spawn("user")
        rt.send_nowait(ref, ("after", 1))
        event = await asyncio.wait_for(rt.next_event(), T)
        assert event.msg == ("fired", 1)  # type: ignore[union-attr]


async def test_driver_sync_delivery_waits_for_the_drain(backend: str) -> None:
    async with Runtime({"user": User}, backend=backend, drivers=[ToyDriver]) as rt:
        ref = await rt.spawn("user")
        rt.send_nowait(ref, ("bounce", 7))
        first = await asyncio.wait_for(rt.next_event(), T)
        second = await asyncio.wait_for(rt.next_event(), T)
        # the task's own drain finished ("bounce sent") before the bounce was fed
        assert [first.msg, second.msg] == [("bounce sent", 7), ("bounced", 7)]  # type: ignore[union-attr]


async def test_driver_releases_a_failed_tasks_resources(backend: str) -> None:
    ToyDriver.released = []
    ToyDriver.closed = 0
    async with Runtime({"user": User}, backend=backend, drivers=[ToyDriver]) as rt:
        ref = await rt.spawn("user")
        rt.send_nowait(ref, ("raise", 1))
        event = await asyncio.wait_for(rt.next_event(), T)
        assert isinstance(event, TaskFailed)
        assert ToyDriver.released == [ref]
        stats = await rt.stats(fresh=True)
        assert stats.workers[0].drivers == {"toy_timers": 0}
    assert ToyDriver.closed == 1


async def test_two_drivers_cannot_claim_one_output_type() -> None:
    class Clash(ToyDriver):
        pass

    with pytest.raises(ConfigError, match="both handle After"):
        Runtime({"user": User}, drivers=[ToyDriver, Clash])
