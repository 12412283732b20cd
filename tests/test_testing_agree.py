"""The simulated runtime and the real runtime agree on the outputs of one scenario.

The same scenario (spawns placed by the balancer, application messages, requests, bus
pub/sub across workers, broadcasts, task-emitted spawns, a failing task, a graceful
shutdown) runs on a ``SimRuntime`` and on real runtimes on every backend; each task's
sequence of outputs, the requests' replies and the set of ended and failed tasks must
be identical. Only the interleaving *between* tasks may differ (threads).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sansio_aio import (
    Broadcast,
    BroadcastMessage,
    BusMessage,
    Ext,
    ExtOut,
    Publish,
    Reply,
    Request,
    Spawn,
    Spawned,
    Subscribe,
    Task,
    TaskEnded,
    TaskFailed,
    TaskOutput,
)
from sansio_aio.testing import SimRuntime


class Worker(Task):
    """Echo, double on request, publish on demand, spawn children, fail on demand."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        if cfg == "sub":
            self.emit(Subscribe("news"))

    def on_event(self, now: float, event: Any) -> None:
        match event:
            case Ext(msg=("publish", n)):
                for i in range(n):
                    self.emit(Publish("news", i))
            case Ext(msg=("spawn", n)):
                for i in range(n):
                    self.emit(Spawn("worker", None, tag=i))
            case Ext(msg="fail"):
                raise RuntimeError("asked to fail")
            case Ext(msg=msg):
                self.emit(ExtOut(("echo", msg)))
            case Request(id=rid, msg=x):
                self.emit(Reply(rid, 2 * x))
            case BusMessage(channel=ch, msg=m):
                self.emit(ExtOut(("bus", ch, m)))
            case Spawned(tag=tag, ref=ref, error=err):
                self.emit(ExtOut(("spawned", tag, ref, err)))

    def on_shutdown(self, now: float) -> None:
        super().on_shutdown(now)
        self.emit(ExtOut("bye"))


class Host(Task):
    def __init__(self, worker: int) -> None:
        super().__init__(worker)
        self.worker = worker

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext and event.msg == "broadcast":
            self.emit(Broadcast(("hello", self.worker)))
        elif type(event) is BroadcastMessage:
            self.emit(ExtOut(("bcast", self.worker, event.source, event.msg)))


KINDS = {"worker": Worker}


async def scenario(rt: Any) -> dict[str, Any]:
    """Drive ``rt`` (real or simulated) through the scenario; a normalised record of it."""
    events: list[Any] = []

    async def collect(n: int) -> None:
        got = 0
        while got < n:
            ev = await asyncio.wait_for(rt.next_event(), 10)
            events.append(ev)
            got += isinstance(ev, TaskOutput)

    subs = [await rt.spawn("worker", "sub") for _ in range(3)]
    pub = await rt.spawn("worker")
    echo = await rt.spawn("worker")
    rt.send_nowait(pub, ("publish", 20))
    await collect(60)
    for i in range(10):
        rt.send_nowait(echo, i)
    await collect(10)
    replies = [await rt.request(echo, x) for x in (1, 2, 3)]
    parent = await rt.spawn("worker")
    rt.send_nowait(parent, ("spawn", 2))
    await collect(2)
    rt.send_nowait(1, "broadcast")
    await collect(2)
    doomed = await rt.spawn("worker")
    rt.send_nowait(doomed, "fail")
    while not any(isinstance(e, TaskFailed) for e in events):
        events.append(await asyncio.wait_for(rt.next_event(), 10))
    placed = [str(r) for r in (*subs, pub, echo, parent, doomed)]
    await rt.shutdown()
    events.extend(rt.poll_events())
    per_task: dict[str, list[Any]] = {}
    for ev in events:
        if isinstance(ev, TaskOutput):
            per_task.setdefault(str(ev.task), []).append(ev.msg)
    for msgs in per_task.values():
        # Spawned results come from the worker that hosts each child: different workers,
        # so no order between them (FIFO holds per source, not across sources)
        spawned = sorted((m for m in msgs if m[0] == "spawned"), key=repr)
        msgs[:] = [m for m in msgs if m[0] != "spawned"] + spawned
    return {
        "placed": placed,
        "outputs": per_task,
        "replies": replies,
        "ended": sorted(str(e.task) for e in events if isinstance(e, TaskEnded)),
        "failed": [(str(e.task), e.error) for e in events if isinstance(e, TaskFailed)],
    }


@pytest.mark.sansio_runtime(kinds=KINDS, workers=2, host=Host)
@pytest.mark.parametrize("runtime", ["uvloop", "epoll", "poll"], indirect=True)
async def test_simulated_and_real_runtime_agree(runtime: Any) -> None:
    real = await scenario(runtime)
    async with SimRuntime(KINDS, workers=2, host=Host) as sim:
        simulated = await scenario(sim)
    assert simulated == real
    # and the scenario really exercised what it claims
    assert real["replies"] == [2, 4, 6]
    assert [error for _, error in real["failed"]] == ["RuntimeError: asked to fail"]
    assert sum(len(v) for v in real["outputs"].values()) >= 74
