"""A worker that dies: the simulator's ``kill_worker`` against a real worker process.

``SimRuntime.kill_worker`` kills a simulated worker as ``SIGKILL`` kills a worker process
of ``Runtime(mode="process")``. The differential tests run one script on both runtimes
(the real one killed with ``os.kill``) and compare what the application sees:

* the ``TaskFailed`` events of the dead worker's tasks (references, tracebacks, order)
  and the ``WorkerExited`` that closes them, as one block;
* how the waiters fail: a request pending on a task of the dead worker
  (``TaskFailedError``), a call and a spawn sent to it between its death and the
  controller noticing (``WorkerDied``), and everything addressed to it once it is down
  (``UnknownTarget``);
* what the other worker's tasks do meanwhile (every message answered, bus, broadcast),
  the sends to the dead worker that are dropped (``stats().relay_drops``), placement;
* with ``restart="on-failure"``: two deaths, the replacement's new host task, a new task
  served there, ``stats().restarts``;
* each task's outputs, and which tasks end at shutdown (a killed task never runs
  ``on_shutdown``);
* what the network sees of the dead worker's sockets: a TCP peer reads end-of-file (the
  kernel closes a dead process's connections with FIN), a new connect is refused, and
  its UDP port can be bound again.

Only what must differ is normalised: process ids (compared as "the replacement is
another process"), the ephemeral ports of bound sockets, and time (wall clock against
simulated: the scripts wait, bounded, for events or conditions, never for a set
duration). Tasks are module-level: a worker process imports them by name.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest

from sansio_aio import (
    Broadcast,
    BroadcastMessage,
    BusMessage,
    Direct,
    Ext,
    ExtOut,
    Publish,
    Reply,
    Request,
    RuntimeAPI,
    SendTo,
    Subscribe,
    Task,
    TaskEnded,
    TaskFailed,
    TaskOutput,
    TaskRef,
    UnknownTarget,
    WorkerExited,
)
from sansio_aio.lowlevel import WorkerCore
from sansio_aio.net import (
    TcpAccepted,
    TcpClosed,
    TcpConnect,
    TcpConnected,
    TcpDriver,
    TcpEof,
    TcpListen,
    TcpListening,
    UdpBind,
    UdpBound,
    UdpDriver,
)
from sansio_aio.testing import PROCESS_MODE, SimRuntime
from tests.helpers import T

PROC = [PROCESS_MODE]


class Node(Task):
    """Echoes; subscribes, publishes, sends and broadcasts on command; says "bye" in
    ``on_shutdown`` (a killed task never does)."""

    def on_event(self, now: float, event: Any) -> None:
        t = type(event)
        if t is Ext:
            msg = event.msg
            if msg == "sub":
                self.emit(Subscribe("news"))
                self.emit(ExtOut("subscribed"))
            elif isinstance(msg, tuple) and msg[0] == "pub":
                self.emit(Publish("news", msg[1]))
            elif isinstance(msg, tuple) and msg[0] == "to":
                self.emit(SendTo(msg[1], msg[2]))
            elif msg == "broadcast":
                self.emit(Broadcast("hello"))
            else:
                self.emit(ExtOut(("echo", msg)))
        elif t is BusMessage:
            self.emit(ExtOut(("bus", event.msg)))
        elif t is Direct:
            self.emit(ExtOut(("direct", event.msg)))
        elif t is Request and event.msg != "never":
            self.emit(Reply(event.id, ("re", event.msg)))

    def on_shutdown(self, now: float) -> None:
        super().on_shutdown(now)
        self.emit(ExtOut("bye"))


class Host(Task):
    """A worker's host task: says it is up (a replacement's host says it again), reports
    broadcasts, says "bye" at shutdown."""

    def __init__(self, worker: int) -> None:
        super().__init__(worker)
        self.emit(ExtOut(("host up", worker)))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is BroadcastMessage:
            self.emit(ExtOut(("bcast", event.source, event.msg)))

    def on_shutdown(self, now: float) -> None:
        super().on_shutdown(now)
        self.emit(ExtOut("bye"))


KINDS = {"node": Node}


def pid_of(core: WorkerCore) -> int:
    """Run on a worker: its process id (the test's own under the simulator)."""
    return os.getpid()


# ------------------------------------------------------------------ the script's tools


class Script:
    """One runtime, real or simulated, and everything the application saw of it."""

    def __init__(self, rt: RuntimeAPI) -> None:
        self.rt = rt
        self.events: list[Any] = []
        self.errors: list[tuple[str, str, str]] = []

    async def until(self, pred: Callable[[list[Any]], bool]) -> None:
        """Read events until ``pred(all events so far)`` holds (bounded)."""
        while not pred(self.events):
            batch = await asyncio.wait_for(self.rt.next_events(), T)
            assert batch, f"the runtime closed; events so far: {self.events}"
            self.events.extend(batch)

    async def outputs(self, pred: Callable[[list[Any]], bool]) -> None:
        """Read events until ``pred(the task outputs so far)`` holds."""
        await self.until(lambda evs: pred([e.msg for e in evs if isinstance(e, TaskOutput)]))

    def said(self, ref: TaskRef, msg: Any) -> Callable[[list[Any]], bool]:
        out = TaskOutput(ref, msg)
        return lambda evs: out in evs

    def count(self, kind: type) -> Callable[[list[Any]], bool]:
        n = sum(isinstance(e, kind) for e in self.events) + 1
        return lambda evs: sum(isinstance(e, kind) for e in evs) >= n

    async def fails(self, what: str, call: Any) -> None:
        """Run ``call()`` (a coroutine or a plain call) and record how it failed."""
        try:
            result = call()
            if asyncio.iscoroutine(result):
                await asyncio.wait_for(result, T)
        except Exception as exc:
            self.errors.append((what, type(exc).__name__, str(exc)))
        else:
            self.errors.append((what, "no error", ""))

    def kill(self, worker: int, pid: int, sig: int, *, later: float | None = None) -> None:
        """Kill ``worker`` now, or ``later`` seconds from now (wall or simulated)."""
        rt = self.rt
        if isinstance(rt, SimRuntime):
            at = None if later is None else rt.now + later
            rt.kill_worker(worker, at=at, exitcode=-sig)
        elif later is None:
            os.kill(pid, sig)
        else:
            asyncio.get_running_loop().call_later(later, os.kill, pid, sig)

    async def rejoined(self, worker: int) -> int:
        """The pid of ``worker``'s replacement, once its host said it is up and the
        controller counts it up again.

        The replacement's first outputs can reach the application a moment before the
        real controller marks the worker up (its start report travels in the frame after
        them, and the ledger is updated in a later callback): the probe retries, bounded,
        while the worker is still down. The simulator rejoins at once.
        """
        up = TaskOutput(TaskRef(worker, "host", 0, 0), ("host up", worker))
        ups = self.events.count(up) + 1
        await self.until(lambda evs: evs.count(up) >= ups)

        async def probe() -> int:
            while True:
                try:
                    return await self.rt.run_on_worker(worker, pid_of)
                except UnknownTarget:
                    await asyncio.sleep(0.01)  # polling interval of a bounded wait

        return await asyncio.wait_for(probe(), T)

    async def finish(self) -> None:
        """Shut down and read every event left."""
        await self.rt.shutdown()
        while batch := await asyncio.wait_for(self.rt.next_events(), T):
            self.events.extend(batch)

    def record(self) -> dict[str, Any]:
        """What must be identical on both runtimes."""
        events = self.events
        per_task: dict[str, list[Any]] = {}
        for e in events:
            if isinstance(e, TaskOutput):
                per_task.setdefault(str(e.task), []).append(e.msg)
        # every death is one block: the dead worker's TaskFailed events, then WorkerExited
        deaths: list[list[Any]] = []
        block: list[Any] = []
        for e in events:
            if isinstance(e, TaskFailed) and "WorkerDied" in e.traceback:
                block.append(("failed", str(e.task), e.traceback))
            elif isinstance(e, WorkerExited):
                deaths.append([*block, ("exited", e.worker, e.reason, e.restarting)])
                block = []
            elif block:
                raise AssertionError(f"{e!r} inside a death's block: {events}")
        # a dead task's outputs all come before its TaskFailed (until a replacement
        # worker's tasks take the same references)
        for i, e in enumerate(events):
            if isinstance(e, TaskFailed):
                w = e.task.worker
                up = TaskOutput(TaskRef(w, "host", 0, 0), ("host up", w))
                for x in events[i + 1 :]:
                    if x == up:
                        break
                    assert not (isinstance(x, TaskOutput) and x.task == e.task), (e, x)
        return {
            "outputs": per_task,
            "deaths": deaths,
            "errors": self.errors,
            "ended": sorted(str(e.task) for e in events if isinstance(e, TaskEnded)),
        }


# ------------------------------------------------------------------ a worker killed for good


async def killed_for_good(rt: RuntimeAPI) -> dict[str, Any]:
    s = Script(rt)
    await s.outputs(lambda o: o.count(("host up", 0)) == o.count(("host up", 1)) == 1)
    a = await rt.spawn("node", worker=0)
    sub0 = await rt.spawn("node", worker=0)
    b = await rt.spawn("node", worker=1)
    c = await rt.spawn("node", worker=1)
    for ref in (sub0, c):
        rt.send_nowait(ref, "sub")
    await s.outputs(lambda o: o.count("subscribed") == 2)
    rt.send_nowait(a, ("pub", 1))  # both workers' subscribers
    rt.send_nowait(b, "before")
    await s.until(s.said(b, ("echo", "before")))
    await s.outputs(lambda o: o.count(("bus", 1)) == 2)
    pid = await rt.run_on_worker(1, pid_of)

    # killed 0.2 s from now, while a request waits on one of its tasks
    s.kill(1, pid, signal.SIGKILL, later=0.2)
    await s.fails("request pending on b", lambda: rt.request(b, "never", timeout=T))
    await s.until(s.count(WorkerExited))

    # down: nothing reaches it, nothing is placed there
    await s.fails("spawn on worker 1", lambda: rt.spawn("node", worker=1))
    await s.fails("run_on_worker(1)", lambda: rt.run_on_worker(1, pid_of))
    await s.fails("send to b", lambda: rt.send_nowait(b, "gone"))
    await s.fails("send to worker 1's host", lambda: rt.send_nowait(1, "gone"))
    await s.fails("request to c", lambda: rt.request(c, 1))

    # worker 0 lost nothing and takes every new task
    for i in range(20):
        rt.send_nowait(a, i)
    rt.send_nowait(a, ("pub", 2))  # only worker 0's subscriber is left
    rt.send_nowait(a, ("to", c, "psst"))  # to a dead task: dropped by the controller
    rt.send_nowait(a, "broadcast")  # worker 1's copy is dropped too
    await s.until(s.said(TaskRef(0, "host", 0, 0), ("bcast", 0, "hello")))
    await s.until(s.said(a, ("echo", 19)))
    d = await rt.spawn("node")
    assert await rt.request(d, "x") == ("re", "x")
    stats = await rt.stats()
    await s.finish()
    return {
        **s.record(),
        "spawned on": d.worker,
        "placed": stats.placed,
        "restarts": stats.restarts,
        "relay_drops": stats.relay_drops,
    }


@pytest.mark.sansio_runtime(kinds=KINDS, workers=2, host=Host)
@pytest.mark.parametrize("runtime", PROC, indirect=True)
async def test_a_worker_killed_for_good_looks_the_same_simulated(runtime: RuntimeAPI) -> None:
    real = await killed_for_good(runtime)
    async with SimRuntime(KINDS, workers=2, host=Host) as sim:
        simulated = await killed_for_good(sim)
    assert simulated == real
    # and the script exercised what it claims
    why = "sansio_aio.WorkerDied: worker 1 died: killed by SIGKILL"
    assert real["deaths"] == [
        [
            ("failed", "node#0@w1", why),
            ("failed", "node#1@w1", why),
            ("failed", "host#0@w1", why),
            ("exited", 1, "worker 1 died: killed by SIGKILL", False),
        ]
    ]
    errors = {what: kind for what, kind, _ in real["errors"]}
    assert errors == {
        "request pending on b": "TaskFailedError",
        "spawn on worker 1": "UnknownTarget",
        "run_on_worker(1)": "UnknownTarget",
        "send to b": "UnknownTarget",
        "send to worker 1's host": "UnknownTarget",
        "request to c": "UnknownTarget",
    }
    assert real["outputs"]["node#0@w0"] == [
        ("echo", i) for i in range(20)
    ] + ["bye"]  # fmt: skip
    assert real["outputs"]["node#1@w0"] == ["subscribed", ("bus", 1), ("bus", 2), "bye"]
    assert real["outputs"]["node#1@w1"] == ["subscribed", ("bus", 1)]  # no "bye": killed
    assert real["relay_drops"] == 2  # the SendTo and worker 1's copy of the broadcast
    assert real["spawned on"] == 0 and real["placed"] == (3, 0)


# ------------------------------------------------------------------ a worker restarted


async def restarted(rt: RuntimeAPI) -> dict[str, Any]:
    s = Script(rt)
    await s.outputs(lambda o: o.count(("host up", 0)) == o.count(("host up", 1)) == 1)
    a = await rt.spawn("node", worker=0)
    b = await rt.spawn("node", worker=1)
    pids = [await rt.run_on_worker(1, pid_of)]

    # first death (SIGTERM): a call and a spawn sent before the controller noticed fail
    # with WorkerDied; once it noticed, the worker is down until its replacement runs
    s.kill(1, pids[-1], signal.SIGTERM)
    await s.fails("call sent at the death", lambda: rt.run_on_worker(1, pid_of))
    await s.fails("spawn while it is down", lambda: rt.spawn("node", worker=1))
    await s.until(s.count(WorkerExited))
    pids.append(await s.rejoined(1))
    b2 = await rt.spawn("node", worker=1)
    assert await rt.request(b2, "again") == ("re", "again")
    rt.send_nowait(a, "broadcast")  # both hosts, the replacement's included
    await s.outputs(lambda o: o.count(("bcast", 0, "hello")) == 2)

    # second death (SIGKILL): a spawn sent at the death fails with WorkerDied
    s.kill(1, pids[-1], signal.SIGKILL)
    await s.fails("spawn sent at the death", lambda: rt.spawn("node", worker=1))
    await s.until(s.count(WorkerExited))
    pids.append(await s.rejoined(1))
    b3 = await rt.spawn("node", worker=1)
    rt.send_nowait(b3, "hi")
    await s.until(s.said(b3, ("echo", "hi")))
    stats = await rt.stats()
    await s.finish()
    return {
        **s.record(),
        "new processes": len(set(pids)) == 3,
        # a replacement's first task takes the slot of the dead worker's first task
        "refs": [str(r) for r in (b, b2, b3)],
        "placed": stats.placed,
        "restarts": stats.restarts,
    }


@pytest.mark.sansio_runtime(kinds=KINDS, workers=2, host=Host, restart="on-failure")
@pytest.mark.parametrize("runtime", PROC, indirect=True)
async def test_a_restarted_worker_looks_the_same_simulated(runtime: RuntimeAPI) -> None:
    real = await restarted(runtime)
    async with SimRuntime(KINDS, workers=2, host=Host, restart="on-failure") as sim:
        simulated = await restarted(sim)
    simulated["new processes"] = True  # one process under the simulator: nothing to compare
    assert simulated == real
    assert real["new processes"]
    assert [d[-1] for d in real["deaths"]] == [
        ("exited", 1, "worker 1 died: killed by SIGTERM", True),
        ("exited", 1, "worker 1 died: killed by SIGKILL", True),
    ]
    assert [len(d) for d in real["deaths"]] == [3, 3]  # b, then b2; each time the host
    errors = {what: kind for what, kind, _ in real["errors"]}
    assert errors == {
        "call sent at the death": "WorkerDied",
        "spawn while it is down": "UnknownTarget",
        "spawn sent at the death": "WorkerDied",
    }
    assert real["outputs"]["host#0@w1"] == [
        ("host up", 1), ("host up", 1), ("bcast", 0, "hello"), ("host up", 1), "bye"
    ]  # fmt: skip
    assert real["restarts"] == (0, 2)
    assert real["placed"] == (1, 1)


# ------------------------------------------------------------------ its sockets vanish


class Server(Task):
    """Listens on TCP and binds a UDP port; says where, and what it accepts."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.emit(TcpListen(("127.0.0.1", 0)))
        self.emit(UdpBind(("127.0.0.1", 0)))

    def on_event(self, now: float, event: Any) -> None:
        t = type(event)
        if t is TcpListening:
            self.emit(ExtOut(("tcp", event.addr)))
        elif t is UdpBound:
            self.emit(ExtOut(("udp", event.addr)))
        elif t is TcpAccepted:
            self.emit(ExtOut("accepted"))


class Client(Task):
    """Connects and binds on command; reports what its sockets see."""

    def on_event(self, now: float, event: Any) -> None:
        t = type(event)
        if t is Ext and event.msg[0] == "connect":
            self.emit(TcpConnect(event.msg[1]))
        elif t is Ext and event.msg[0] == "bind":
            self.emit(UdpBind(event.msg[1]))
        elif t is TcpConnected:
            self.emit(ExtOut(("connected", event.errno)))
        elif t is TcpEof:
            self.emit(ExtOut("eof"))
        elif t is TcpClosed:
            self.emit(ExtOut(("closed", event.errno)))
        elif t is UdpBound:
            self.emit(ExtOut(("bound", event.errno)))


NET_KINDS = {"server": Server, "client": Client}


async def sockets_vanish(rt: RuntimeAPI) -> dict[str, Any]:
    s = Script(rt)
    server = await rt.spawn("server", worker=1)
    await s.outputs(lambda o: len(o) == 2)
    addrs = dict(e.msg for e in s.events if isinstance(e, TaskOutput) and e.task == server)
    client = await rt.spawn("client", worker=0)
    rt.send_nowait(client, ("connect", addrs["tcp"]))
    await s.until(s.said(server, "accepted"))
    await s.until(s.said(client, ("connected", 0)))
    s.kill(1, await rt.run_on_worker(1, pid_of), signal.SIGKILL)
    await s.until(s.count(WorkerExited))
    await s.until(s.said(client, "eof"))  # FIN: the kernel closed the dead end
    rt.send_nowait(client, ("connect", addrs["tcp"]))  # nobody listens there any more
    await s.until(s.said(client, ("connected", errno.ECONNREFUSED)))
    rt.send_nowait(client, ("bind", addrs["udp"]))  # its UDP port is free again
    await s.outputs(lambda o: len(o) == 7)
    await s.finish()
    return s.record()


@pytest.mark.sansio_runtime(kinds=NET_KINDS, workers=2, drivers=[UdpDriver, TcpDriver])
@pytest.mark.parametrize("runtime", PROC, indirect=True)
async def test_a_dead_workers_sockets_vanish_the_same_way_simulated(
    runtime: RuntimeAPI,
) -> None:
    real = await sockets_vanish(runtime)
    async with SimRuntime(NET_KINDS, workers=2) as sim:
        simulated = await sockets_vanish(sim)
    for record in (real, simulated):  # addresses: ephemeral ports of two different hosts
        outs = record["outputs"]["server#0@w1"]
        outs[:] = [m[0] if isinstance(m, tuple) else m for m in outs]
    assert simulated == real
    assert real["outputs"]["client#0@w0"] == [
        ("connected", 0), "eof", ("connected", errno.ECONNREFUSED), ("bound", 0)
    ]  # fmt: skip
