"""Worker processes (``Runtime(mode="process")``): the same API on every core, and a
worker that dies is an event, not a lost runtime.

The tasks here are module-level classes: a worker process imports them by name.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sansio_aio import (
    Broadcast,
    BroadcastMessage,
    BusMessage,
    ConfigError,
    Direct,
    Ext,
    ExtOut,
    Publish,
    QueueFull,
    Reply,
    Request,
    Runtime,
    RuntimeAPI,
    SendTo,
    ShutdownTimeout,
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
    WorkerDied,
    WorkerExited,
)
from sansio_aio._runtime import STOP_SLACK
from sansio_aio.lowlevel import WorkerCore
from sansio_aio.testing import PROCESS_MODE
from tests.helpers import T, until

PROC = [PROCESS_MODE]


class Node(Task):
    """Answers with its process id; follows commands (see ``on_event``)."""

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
                self.emit(Broadcast("to every host"))
            elif isinstance(msg, tuple) and msg[0] == "sleep":
                time.sleep(msg[1])
                self.emit(ExtOut("slept"))
            elif isinstance(msg, tuple) and msg[0] == "sleep-through-sigterm":
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                with open(msg[2], "w"):  # tells the test SIGTERM is ignored now
                    pass
                time.sleep(msg[1])
            elif msg == "exit":
                os._exit(3)
            elif msg == "segfault":
                ctypes.string_at(0)
            elif msg == "unpicklable":
                self.emit(ExtOut(threading.Lock()))
                self.emit(ExtOut("after"))
            else:
                self.emit(ExtOut((os.getpid(), msg)))
        elif t is BusMessage:
            self.emit(ExtOut(("bus", event.msg)))
        elif t is Direct:
            self.emit(ExtOut(("direct", event.source, event.msg)))
        elif t is Request:
            if event.msg == "never":
                return
            self.emit(Reply(event.id, (os.getpid(), event.msg)))


class Parent(Task):
    """On ``"spawn"`` asks for a ``node`` (tagged); reports the answer."""

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext and event.msg == "spawn":
            self.emit(Spawn("node", None, "t"))
        elif type(event) is Spawned:
            self.emit(ExtOut(("spawned", event.ref, event.error)))


class Host(Task):
    """A worker's host task: reports broadcasts with its worker id."""

    def __init__(self, worker: int) -> None:
        super().__init__(worker)
        self.worker = worker

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is BroadcastMessage or type(event) is Ext:
            self.emit(ExtOut(("host", self.worker, event.msg)))


def pid_of(core: WorkerCore) -> int:
    """Run on a worker: its process id."""
    return os.getpid()


def task_count(core: WorkerCore) -> int:
    return core.task_count()


async def outputs(rt: RuntimeAPI, n: int) -> list[Any]:
    got: list[Any] = []
    while len(got) < n:
        batch = await asyncio.wait_for(rt.next_events(), T)
        assert batch, "the runtime closed"
        got += [e.msg for e in batch if isinstance(e, TaskOutput)]
    return got


async def until_event(rt: RuntimeAPI, kind: type, n: int = 1) -> list[Any]:
    """Every event up to and including the ``n``-th of type ``kind``."""
    seen: list[Any] = []
    while sum(isinstance(e, kind) for e in seen) < n:
        batch = await asyncio.wait_for(rt.next_events(), T)
        assert batch, "the runtime closed"
        seen += batch
    return seen


KINDS = {"node": Node, "parent": Parent}


# ------------------------------------------------------------------ the same API


@pytest.mark.sansio_runtime(kinds=KINDS, workers=2, host=Host)
@pytest.mark.parametrize("runtime", PROC, indirect=True)
async def test_workers_are_processes_of_their_own(runtime: RuntimeAPI) -> None:
    pids = {await runtime.run_on_worker(w, pid_of) for w in range(2)}
    assert len(pids) == 2 and os.getpid() not in pids
    refs = [await runtime.spawn("node") for _ in range(4)]
    assert sorted(r.worker for r in refs) == [0, 0, 1, 1]  # least loaded, as in threads
    for r in refs:
        runtime.send_nowait(r, "hi")
    got = await outputs(runtime, 4)
    assert {pid for pid, _ in got} == pids
    assert await runtime.request(refs[1], 42) == (
        await runtime.run_on_worker(refs[1].worker, pid_of),
        42,
    )
    stats = await runtime.stats(fresh=True)
    assert [w.tasks for w in stats.workers] == [2, 2]
    assert stats.restarts == (0, 0)


@pytest.mark.sansio_runtime(kinds=KINDS, workers=2, host=Host)
@pytest.mark.parametrize("runtime", PROC, indirect=True)
async def test_bus_broadcast_and_direct_sends_cross_processes(runtime: RuntimeAPI) -> None:
    a = await runtime.spawn("node", worker=0)
    b = await runtime.spawn("node", worker=1)
    runtime.send_nowait(b, "sub")
    assert await outputs(runtime, 1) == ["subscribed"]
    runtime.send_nowait(a, ("pub", "first"))  # the route reached worker 0 before this
    runtime.send_nowait(a, ("pub", "second"))
    assert await outputs(runtime, 2) == [("bus", "first"), ("bus", "second")]
    runtime.send_nowait(a, ("to", b, "psst"))
    assert await outputs(runtime, 1) == [("direct", a, "psst")]
    runtime.send_nowait(a, "broadcast")
    got = await outputs(runtime, 2)
    assert sorted(got) == [("host", 0, "to every host"), ("host", 1, "to every host")]
    runtime.send_nowait(1, "to the host")
    assert await outputs(runtime, 1) == [("host", 1, "to the host")]


@pytest.mark.sansio_runtime(kinds=KINDS, workers=1, inbox_capacity=4)
@pytest.mark.parametrize("runtime", PROC, indirect=True)
async def test_the_inbox_bound_holds_across_the_process_boundary(runtime: RuntimeAPI) -> None:
    ref = await runtime.spawn("node")
    runtime.send_nowait(ref, ("sleep", 0.3))  # keeps the worker busy
    for i in range(3):
        runtime.send_nowait(ref, i)
    with pytest.raises(QueueFull):
        runtime.send_nowait(ref, "one too many")
    await runtime.send(ref, "waits for room")  # returns once the worker credited room
    got = await outputs(runtime, 5)
    assert got[0] == "slept" and [m for _, m in got[1:]] == [0, 1, 2, "waits for room"]


@pytest.mark.sansio_runtime(kinds=KINDS, workers=2)
@pytest.mark.parametrize("runtime", PROC, indirect=True)
async def test_what_cannot_cross_is_a_config_error_at_the_call(runtime: RuntimeAPI) -> None:
    ref = await runtime.spawn("node")
    lock = threading.Lock()
    with pytest.raises(ConfigError, match="must be picklable"):
        runtime.send_nowait(ref, lock)
    with pytest.raises(ConfigError, match="must be picklable"):
        runtime.send_many(ref, ["fine", lock])  # checked before any is sent
    with pytest.raises(ConfigError, match="must be picklable"):
        await runtime.request(ref, lambda: 1)
    with pytest.raises(ConfigError, match="must be picklable"):
        await runtime.spawn("node", cfg=lock)
    with pytest.raises(ConfigError, match="module-level function"):
        await runtime.run_on_worker(0, lambda core: 1)
    runtime.send_nowait(ref, "still fine")
    assert [m for _, m in await outputs(runtime, 1)] == ["still fine"]


def test_unpicklable_kinds_are_refused_when_the_runtime_is_built() -> None:
    class Local(Task):
        pass

    with pytest.raises(ConfigError, match="define it at module level"):
        Runtime({"local": Local}, mode="process")
    with pytest.raises(ConfigError, match="mode must be 'thread' or 'process'"):
        Runtime(KINDS, mode="fork")
    with pytest.raises(ConfigError, match="restart='on-failure' needs mode='process'"):
        Runtime(KINDS, restart="on-failure")


def test_a_kind_from_a_module_loaded_by_path_is_refused(tmp_path: Any) -> None:
    """Bug: a class loaded with importlib from a file path pickles by name, but a worker
    process cannot import that name: the worker died at start with exit code 1."""
    import importlib.util
    import sys

    path = tmp_path / "made_up_module_name.py"
    path.write_text("from sansio_aio import Task\n\nclass Loose(Task):\n    pass\n")
    spec = importlib.util.spec_from_file_location("made_up_module_name", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["made_up_module_name"] = module
    try:
        spec.loader.exec_module(module)
        with pytest.raises(ConfigError, match="which a worker process cannot import"):
            Runtime({"loose": module.Loose}, mode="process")
        Runtime({"loose": module.Loose})  # threads do not care
    finally:
        del sys.modules["made_up_module_name"]


# ------------------------------------------------------------------ supervision


@pytest.mark.sansio_runtime(kinds=KINDS, workers=2, host=Host)
@pytest.mark.parametrize("runtime", PROC, indirect=True)
async def test_a_killed_worker_ends_its_tasks_and_the_other_loses_nothing(
    runtime: RuntimeAPI,
) -> None:
    a = await runtime.spawn("node", worker=0)
    b = await runtime.spawn("node", worker=1)
    waiting = asyncio.ensure_future(runtime.request(b, "never", timeout=T))
    pid = await runtime.run_on_worker(1, pid_of)
    for i in range(20):
        runtime.send_nowait(a, i)
    os.kill(pid, signal.SIGKILL)
    events = await until_event(runtime, WorkerExited)
    failed = {e.task for e in events if isinstance(e, TaskFailed)}
    assert failed == {b, TaskRef(1, "host", 0)}
    assert all(
        "worker 1 died: killed by SIGKILL" in e.traceback
        for e in events
        if isinstance(e, TaskFailed)
    )
    (exited,) = [e for e in events if isinstance(e, WorkerExited)]
    assert exited.worker == 1 and not exited.restarting and "SIGKILL" in exited.reason
    with pytest.raises(TaskFailedError, match="killed by SIGKILL"):
        await waiting
    with pytest.raises(UnknownTarget, match="worker 1 is down"):
        await runtime.spawn("node", worker=1)
    with pytest.raises(UnknownTarget):
        runtime.send_nowait(b, "gone")
    # worker 0 lost nothing and takes every new task
    got = [m for e in events if isinstance(e, TaskOutput) for _, m in [e.msg]]
    got += [m for _, m in await outputs(runtime, 20 - len(got))]
    assert got == list(range(20))
    c = await runtime.spawn("node")
    assert c.worker == 0
    stats = await runtime.stats()
    assert stats.placed == (2, 0)


@pytest.mark.sansio_runtime(kinds=KINDS, workers=2, restart="on-failure")
@pytest.mark.parametrize("runtime", PROC, indirect=True)
@pytest.mark.parametrize("how", ["exit", "segfault"])
async def test_a_worker_that_exits_or_crashes_is_restarted(runtime: RuntimeAPI, how: str) -> None:
    b = await runtime.spawn("node", worker=1)
    old = await runtime.run_on_worker(1, pid_of)
    calling = asyncio.ensure_future(runtime.run_on_worker(1, pid_of))
    runtime.send_nowait(b, how)
    events = await until_event(runtime, WorkerExited)
    (exited,) = [e for e in events if isinstance(e, WorkerExited)]
    want = "exited with code 3" if how == "exit" else "SIGSEGV"
    assert exited.restarting and want in exited.reason
    assert [e.task for e in events if isinstance(e, TaskFailed)] == [b]
    try:  # the call raced with the death: answered before it, or failed by it
        assert await calling == old
    except WorkerDied:
        pass
    deadline = time.monotonic() + T
    while True:  # the replacement joins within the back-off (0.1 s) plus a start
        try:
            new = await runtime.run_on_worker(1, pid_of)
            break
        except UnknownTarget:
            assert time.monotonic() < deadline, "worker 1 did not come back"
            await asyncio.sleep(0.02)  # polling interval of a bounded wait
    assert new != old
    ref = await runtime.spawn("node", worker=1)
    assert await runtime.request(ref, "again") == (new, "again")
    assert (await runtime.stats()).restarts == (0, 1)


@pytest.mark.sansio_runtime(kinds=KINDS, workers=2)
@pytest.mark.parametrize("runtime", PROC, indirect=True)
async def test_a_pending_spawn_and_call_fail_when_their_worker_dies(runtime: RuntimeAPI) -> None:
    b = await runtime.spawn("node", worker=1)
    pid = await runtime.run_on_worker(1, pid_of)
    runtime.send_nowait(b, ("sleep", 30))  # what follows waits behind this
    spawning = asyncio.ensure_future(runtime.spawn("node", worker=1))
    calling = asyncio.ensure_future(runtime.run_on_worker(1, task_count))
    await asyncio.sleep(0)  # both tasks run up to their await: the commands are queued
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerDied, match="worker 1 died: killed by SIGKILL"):
        await asyncio.wait_for(spawning, T)
    with pytest.raises(WorkerDied, match="worker 1 died"):
        await asyncio.wait_for(calling, T)
    assert await runtime.run_on_worker(0, task_count) == 0  # worker 0 is untouched


@pytest.mark.sansio_runtime(kinds=KINDS, workers=2)
@pytest.mark.parametrize("runtime", PROC, indirect=True)
@pytest.mark.parametrize("block", ["sleep", "sleep-through-sigterm"])
async def test_a_blocked_worker_process_is_killed_at_shutdown(
    runtime: RuntimeAPI, block: str, tmp_path: Path
) -> None:
    """Bug: the shutdown took its timeout plus 4 s (a 2 s forced stop, a 2 s join)
    before it killed the blocked worker, and named none of its tasks. Now SIGTERM, then
    SIGKILL for a worker that ignores SIGTERM, all within the timeout + 0.5 s."""
    ref = await runtime.spawn("node", worker=1)
    pids = [await runtime.run_on_worker(w, pid_of) for w in range(2)]
    ignoring = tmp_path / "ignoring"
    runtime.send_nowait(ref, (block, 30, str(ignoring)))  # the shutdown queues behind it
    if block == "sleep-through-sigterm":

        async def ignores() -> bool:
            return ignoring.exists()

        await until(ignores)
    t0 = time.monotonic()
    with pytest.raises(ShutdownTimeout) as info:
        await runtime.shutdown(timeout=0.3)
    took = time.monotonic() - t0
    assert took < 0.3 + STOP_SLACK + 0.5, took  # the slack, and a margin for a busy machine
    assert info.value.stuck_workers == [1]
    assert "workers that would not stop (killed): [1]" in str(info.value)
    assert info.value.unfinished == [ref]  # what the controller placed on it
    assert "unfinished tasks: node#0@w1" in str(info.value)
    assert not any(_exists(pid) for pid in pids)


def _children() -> list[Any]:
    import multiprocessing

    return multiprocessing.active_children()


async def test_shutdown_reaps_every_child() -> None:
    async with Runtime(KINDS, workers=2, mode="process") as rt:
        await rt.spawn("node")
        names = {p.name for p in _children()}
        assert {"sansio-worker-0", "sansio-worker-1"} <= names
    assert not any(p.name.startswith("sansio-worker") for p in _children())
    events = rt.poll_events()
    assert all(isinstance(e, TaskEnded) for e in events)


@pytest.mark.sansio_runtime(kinds=KINDS, workers=1)
@pytest.mark.parametrize("runtime", PROC, indirect=True)
async def test_an_output_that_cannot_cross_is_dropped_alone(
    runtime: RuntimeAPI, caplog: pytest.LogCaptureFixture
) -> None:
    ref = await runtime.spawn("node")
    runtime.send_nowait(ref, "unpicklable")
    runtime.send_nowait(ref, "next")
    got = await outputs(runtime, 2)
    assert got[0] == "after" and got[1][1] == "next"


CHILDREN_OF_A_KILLED_PARENT = """
import asyncio, multiprocessing, sys
from sansio_aio import Runtime
from tests.core.test_process import KINDS

async def main():
    async with Runtime(KINDS, workers=2, mode="process"):
        print(" ".join(str(p.pid) for p in multiprocessing.active_children()
                       if p.name.startswith("sansio-worker")), flush=True)
        await asyncio.sleep(60)

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_worker_processes_die_with_their_parent(tmp_path: Any) -> None:
    import subprocess
    import sys

    from tests.helpers import ROOT

    script = tmp_path / "parent.py"
    script.write_text(CHILDREN_OF_A_KILLED_PARENT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen(
        [sys.executable, str(script)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, line
        parent.kill()
        parent.wait(T)
        deadline = time.monotonic() + T
        alive = pids
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if _exists(p)]
            time.sleep(0.02)  # polling interval of a bounded wait for the kernel
        assert alive == [], "worker processes outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(T)
        if parent.stdout is not None:
            parent.stdout.close()


def _exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie waits for init to reap it: it is dead


@pytest.mark.sansio_runtime(kinds=KINDS, workers=2)
@pytest.mark.parametrize("runtime", PROC, indirect=True)
async def test_a_task_waiting_on_a_spawn_hears_when_that_worker_dies(
    runtime: RuntimeAPI,
) -> None:
    """Bug: a Spawn a task asked for, placed on a worker that died before answering,
    never got its Spawned answer."""
    parent = await runtime.spawn("parent", worker=0)
    await runtime.spawn("node", worker=0)  # worker 0 is the busier: the spawn goes to 1
    busy = await runtime.spawn("node", worker=1)
    pid = await runtime.run_on_worker(1, pid_of)
    runtime.send_nowait(busy, ("sleep", 30))  # the spawn waits behind this
    runtime.send_nowait(parent, "spawn")
    await runtime.run_on_worker(0, pid_of)  # the parent has asked (its report came first)
    os.kill(pid, signal.SIGKILL)
    events = await until_event(runtime, WorkerExited)
    outs = [e.msg for e in events if isinstance(e, TaskOutput)]
    outs += await outputs(runtime, 1) if not outs else []
    (answer,) = outs
    assert answer[0] == "spawned" and answer[1] is None
    assert "worker 1 died: killed by SIGKILL" in answer[2]


async def test_a_cancelled_shutdown_still_reaps_every_child() -> None:
    rt = Runtime(KINDS, workers=2, mode="process")
    await rt.start()
    pids = [await rt.run_on_worker(w, pid_of) for w in range(2)]
    stopping = asyncio.ensure_future(rt.shutdown())
    await asyncio.sleep(0)  # the shutdown has begun
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    await asyncio.wait_for(rt.shutdown(), T)  # waits for the shielded stop to finish
    assert not any(_exists(pid) for pid in pids)
    assert rt.state.value == "closed"
