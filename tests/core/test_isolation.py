"""Isolation: a task that raises (from any method), a broken deadline or a raising driver
fails that task alone; requests to it fail instead of hanging.

Every test runs on every backend; those that make sense across processes also run
with worker processes (the ``variant`` fixture).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, ClassVar

import pytest

from sansio_aio import (
    Ext,
    ExtOut,
    Runtime,
    Task,
    TaskEnded,
    TaskFailed,
    TaskFailedError,
    TaskOutput,
    TaskRef,
    UnknownTarget,
)
from sansio_aio.driver import Driver, DriverContext
from tests.helpers import T, Variant, collect, outputs
from tests.tasks import KINDS, Echo, Silent


async def test_a_failing_task_ends_alone(variant: Variant) -> None:
    async with Runtime(KINDS, **variant) as rt:
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
async def test_a_broken_next_deadline_fails_only_that_task(variant: Variant, bad: Any) -> None:
    async with Runtime(KINDS, **variant) as rt:
        broken, good = await rt.spawn("bad_deadline"), await rt.spawn("echo")
        rt.send_nowait(broken, bad)
        event = await asyncio.wait_for(rt.next_event(), T)
        assert isinstance(event, TaskFailed) and event.task == broken
        assert "no idea when" in event.traceback or "must return a time" in event.traceback
        rt.send_nowait(good, "still here")
        assert [o.msg for o in await outputs(rt, 1)] == ["still here"]


# ------------------------------------------------------------- task error paths


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
async def test_a_task_raising_fails_alone_after_its_outputs(variant: Variant, method: str) -> None:
    async with Runtime({"f": Faulty, "echo": Echo}, workers=1, **variant) as rt:
        bad = await rt.spawn("f", method)
        good = await rt.spawn("echo")
        rt.send_nowait(bad, "out")
        rt.send_nowait(good, "still here")
        got = await collect(rt, lambda g: len(g) >= 3)
        assert [type(e) for e in got] == [TaskOutput, TaskFailed, TaskOutput]
        assert got[1].task == bad and method in got[1].traceback
        with pytest.raises(UnknownTarget):
            rt.send_nowait(bad, "gone")


async def test_constructor_and_on_shutdown_raising(variant: Variant) -> None:
    rt = Runtime({"f": Faulty}, workers=1, **variant)
    async with rt:
        with pytest.raises(TaskFailedError, match="init"):
            await rt.spawn("f", "init")
        assert (await rt.stats()).placed == (0,)
        ref = await rt.spawn("f", "on_shutdown")
    got = await rt.next_events()
    # outputs queued by a method that then raises are dropped with the task (by design)
    assert [type(e) for e in got] == [TaskFailed]
    assert got[0].task == ref and "on_shutdown" in got[0].traceback  # type: ignore[union-attr]


async def test_requests_to_tasks_that_end_or_are_stale(variant: Variant) -> None:
    async with Runtime({"s": Silent}, workers=2, **variant) as rt:
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


# -------------------------------------------------------------- drivers raising


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


async def test_driver_raising_in_handle_release_close(variant: Variant) -> None:
    rt = Runtime({"b": Booms}, workers=1, **variant, drivers=[Raising])
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
