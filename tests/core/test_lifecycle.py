"""The runtime's lifecycle: start (and a failed start), backends, shutdown (graceful,
timed out, concurrent, cancelled, with work in flight), and what is left after it.

Tests whose docstring starts with "Bug:" failed before their fix: it is their
regression note.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from sansio_aio import (
    ConfigError,
    Ext,
    ExtOut,
    Runtime,
    RuntimeClosed,
    RuntimeState,
    ShutdownTimeout,
    Spawn,
    Spawned,
    Task,
    TaskEnded,
    TaskOutput,
    WorkerExited,
)
from sansio_aio._runtime import STOP_SLACK
from sansio_aio.lowlevel import WorkerCore
from tests.drivers import FailsOnWorker1, Recorded
from tests.helpers import T, Variant
from tests.tasks import KINDS, Echo, Graceful, Host, Silent

# ------------------------------------------------------- backends and arguments


async def test_a_custom_loop_factory_runs_the_workers() -> None:
    made: list[asyncio.AbstractEventLoop] = []

    def factory() -> asyncio.AbstractEventLoop:
        loop = asyncio.SelectorEventLoop()
        made.append(loop)
        return loop

    async with Runtime(KINDS, backend=factory) as rt:
        ref = await rt.spawn("echo")
        assert await rt.request(ref, ("double", 4)) == 8
    assert len(made) == 1 and made[0].is_closed()


def test_bad_arguments_fail_fast() -> None:
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


# --------------------------------------------------------------- a failed start


async def test_failed_start_closes_started_drivers_and_stops_quickly(
    backend: str,
) -> None:
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


# ------------------------------------------------------------ graceful shutdown


async def test_graceful_shutdown_delivers_the_drain(variant: Variant) -> None:
    rt = Runtime(KINDS, workers=2, **variant, host=Host)
    await rt.start()
    refs = [await rt.spawn("graceful") for _ in range(4)]
    await rt.shutdown(timeout=2)
    assert not any(w.is_alive() for w in rt._workers)
    events = rt.poll_events()
    byes = [e.task for e in events if isinstance(e, TaskOutput) and e.msg == "bye"]
    assert sorted(byes, key=repr) == sorted(refs, key=repr)
    assert await rt.next_events() == []  # the stream ends after shutdown


async def test_shutdown_timeout_names_the_stuck_task(variant: Variant) -> None:
    rt = Runtime(KINDS, **variant)
    await rt.start()
    stuck = await rt.spawn("stuck")
    await rt.spawn("graceful")
    with pytest.raises(ShutdownTimeout, match="unfinished tasks: stuck#0@w0") as info:
        await rt.shutdown(timeout=0.3)
    assert info.value.unfinished == [stuck]
    assert not any(w.is_alive() for w in rt._workers)


# ------------------------------------------------------ a worker that will not stop


async def test_shutdown_keeps_its_timeout_with_a_blocked_worker_thread(backend: str) -> None:
    """Bug: with a worker thread blocked in a task, ``shutdown(timeout=0.5)`` waited the
    timeout, 2 s for the forced stop and 2 s for the join (4.5 s), said "unfinished
    tasks: none", and did not raise at all if the task returned within those 4.5 s."""
    entered, release = threading.Event(), threading.Event()
    rt = Runtime({"gate": Gate, "graceful": Graceful}, workers=2, backend=backend)
    await rt.start()
    try:
        gate = await rt.spawn("gate", (entered, release), worker=0)
        graceful = await rt.spawn("graceful", worker=1)
        rt.send_nowait(gate, "block")
        assert await asyncio.to_thread(entered.wait, T)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(ShutdownTimeout) as info:
            await rt.shutdown(timeout=0.5)
        took = loop.time() - t0
        # the timeout, plus at most the documented slack (and a margin for a busy machine)
        assert 0.5 <= took < 0.5 + STOP_SLACK + 0.5, took
        assert info.value.unfinished == [gate]  # what the controller placed there
        assert info.value.stuck_workers == [0]
        text = str(info.value)
        assert "unfinished tasks: gate#0@w0; workers that would not stop: [0]" in text
        assert "left running as a daemon thread" in text
        assert rt.state is RuntimeState.CLOSED
        # the other worker stopped gracefully: its task's goodbye was delivered
        got = [(type(e), getattr(e, "task", None)) for e in rt.poll_events()]
        assert got == [(TaskOutput, graceful), (TaskEnded, graceful)]
        (left,) = [t for t in threading.enumerate() if t.name.startswith("sansio-worker-")]
        assert left.name == "sansio-worker-0 (abandoned)" and left.daemon
    finally:
        release.set()
    # Once it returns to its loop, the abandoned worker runs the forced stop and ends;
    # what it still produced (its task's end) is discarded.
    await asyncio.to_thread(left.join, T)
    assert not left.is_alive()
    assert rt.poll_events() == []


BLOCKED_AT_EXIT = """
import asyncio, threading, time
from sansio_aio import Ext, Runtime, ShutdownTimeout, Task

class Blocker(Task):
    def on_event(self, now, event):
        if type(event) is Ext:
            self.cfg.set()
            time.sleep(60)

async def main():
    entered = threading.Event()
    rt = await Runtime({"b": Blocker}).start()
    rt.send_nowait(await rt.spawn("b", entered), "block")
    assert await asyncio.to_thread(entered.wait, 10)
    try:
        await rt.shutdown(timeout=0.2)
    except ShutdownTimeout as exc:
        print("stuck", exc.stuck_workers, flush=True)

asyncio.run(main())
print("exiting", flush=True)
"""


def test_a_blocked_worker_thread_does_not_hold_the_interpreter_at_exit(tmp_path: Any) -> None:
    import subprocess
    import sys
    import time

    from tests.helpers import ROOT

    script = tmp_path / "blocked.py"
    script.write_text(BLOCKED_AT_EXIT)
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["stuck [0]", "exiting"]
    assert time.monotonic() - t0 < 30  # not the task's 60 s


# ------------------------------------------------------------------- edge cases


async def test_shutdown_while_starting_wins(variant: Variant) -> None:
    """Bug: a shutdown that ran while ``start`` was waiting for its workers was undone
    when ``start`` resumed: the runtime said it was running with its workers gone."""
    rt = Runtime({"echo": Echo}, workers=2, **variant)
    starting = asyncio.create_task(rt.start())
    await asyncio.sleep(0)  # start() is now waiting for the workers
    await asyncio.wait_for(rt.shutdown(), T)
    with pytest.raises(RuntimeClosed):
        await asyncio.wait_for(starting, T)
    assert not rt.running
    with pytest.raises(RuntimeClosed):
        await rt.spawn("echo")
    assert not [t for t in threading.enumerate() if t.name.startswith("sansio-worker-")]


async def test_shutdown_twice_concurrently_and_after(variant: Variant) -> None:
    rt = Runtime({"echo": Echo}, workers=2, **variant)
    await rt.shutdown()  # before start: a no-op that closes it
    with pytest.raises(RuntimeClosed):
        await rt.start()
    rt = await Runtime({"echo": Echo}, workers=2, **variant).start()
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
        await rt.run_on_worker(0, worker_id)


async def test_waiting_consumer_wakes_at_shutdown(variant: Variant) -> None:
    async with Runtime({"echo": Echo}, workers=1, **variant) as rt:
        consumer = asyncio.create_task(rt.next_events())
        await asyncio.sleep(0)
    assert await asyncio.wait_for(consumer, T) == []


# -------------------------------------------------------- in flight at shutdown


async def test_spawn_and_run_on_worker_in_flight_at_shutdown(variant: Variant) -> None:
    rt = await Runtime({"echo": Echo}, workers=2, **variant).start()
    spawning = asyncio.create_task(rt.spawn("echo"))
    calling = asyncio.create_task(rt.run_on_worker(1, worker_id))
    await asyncio.sleep(0)  # both are in their lanes, ahead of the shutdown
    await rt.shutdown()
    ref = await asyncio.wait_for(spawning, T)
    assert await asyncio.wait_for(calling, T) == 1
    assert [getattr(e, "task", None) for e in await rt.next_events()] == [ref]
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


async def test_task_spawn_during_shutdown_is_refused(variant: Variant) -> None:
    rt = Runtime({"echo": Echo, "spawner": Spawner}, workers=2, **variant)
    async with rt:
        await rt.spawn("spawner", worker=0)
    got = await rt.next_events()
    assert [type(e) for e in got] == [TaskOutput, TaskEnded]
    assert got[0].msg == (None, "runtime closing")  # type: ignore[union-attr]


# ------------------------------------------------- waiting for room at shutdown


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


# --------------------------------------------------------- a cancelled shutdown


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
    assert sorted(e.task for e in got if not isinstance(e, WorkerExited)) == sorted([gate, silent])
    assert await asyncio.wait_for(rt.next_events(), T) == []


# ----------------------------------------------------------- fds after shutdown


def _fds() -> set[str]:
    import os

    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/fd"), reason="needs /proc")
async def test_no_fds_left_after_shutdown_or_failed_start(variant: Variant) -> None:
    async with Runtime({}, workers=1, **variant):  # warm up lazy imports
        pass
    before = _fds()
    for _ in range(3):
        async with Runtime({"echo": Echo}, workers=3, **variant) as rt:
            await rt.spawn("echo")
        with pytest.raises(ConfigError):
            async with Runtime({}, workers=2, **variant, drivers=[FailsOnWorker1]):
                pass
    assert _fds() - before == set()


def worker_id(core: WorkerCore) -> int:
    """Run on a worker (a module-level function: it crosses to worker processes too)."""
    return core.worker_id


# ------------------------------------------- Task's own methods, or the task's overrides


class PopCounter(Task):
    """Overrides pop_output (counts the calls): the core must call it, not read the deque."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.calls = {"pop_output": 0, "is_empty": 0}
        if cfg == "instance":  # patched on the instance instead of the class
            self.pop_output = self._pop  # type: ignore[method-assign]
            self.is_empty = self._empty  # type: ignore[method-assign]

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext and event.msg == "stop":
            self.closing = True
            return
        self.emit(ExtOut(("a", event.msg)))
        self.emit(ExtOut(("b", event.msg)))

    def _pop(self, now: float) -> Any:
        self.calls["pop_output"] += 1
        return super().pop_output(now)

    def _empty(self) -> bool:
        self.calls["is_empty"] += 1
        return super().is_empty()


class ClassPopCounter(PopCounter):
    def pop_output(self, now: float) -> Any:
        return self._pop(now)

    def is_empty(self) -> bool:
        return self._empty()


class PlainTask(Task):
    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext and event.msg == "stop":
            self.on_shutdown(now)
            self.emit(ExtOut("last words"))
            return
        self.emit(ExtOut(("a", event.msg)))
        self.emit(ExtOut(("b", event.msg)))


@pytest.mark.parametrize("kind", ["class", "instance", "plain"])
async def test_overridden_pop_output_and_is_empty_are_called(backend: str, kind: str) -> None:
    """The core drains a plain ``Task``'s output deque itself; a task that overrides
    ``pop_output``/``is_empty`` (in its class or on the instance) gets its calls, and
    both behave the same: every output in order, the end when closing and drained."""
    kinds = {"class": ClassPopCounter, "instance": PopCounter, "plain": PlainTask}
    async with Runtime(kinds, backend=backend) as rt:
        ref = await rt.spawn(kind, "instance" if kind == "instance" else None)
        rt.send_many(ref, [1, 2])
        got = [await asyncio.wait_for(rt.next_event(), T) for _ in range(4)]
        assert [e.msg for e in got] == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]  # type: ignore[union-attr]

        def calls(core: WorkerCore) -> Any:
            task = core.lookup(ref)
            return getattr(task, "calls", None)

        if kind == "plain":
            assert await rt.run_on_worker(0, calls) is None
        else:
            # the spawn's drain (1 pop, the None), then two inputs of 2 outputs + the None
            # each; one is_empty per drain
            assert await rt.run_on_worker(0, calls) == {"pop_output": 7, "is_empty": 3}
        rt.send_nowait(ref, "stop")
        ended = [await asyncio.wait_for(rt.next_event(), T) for _ in range(1 + (kind == "plain"))]
        assert isinstance(ended[-1], TaskEnded) and ended[-1].task == ref
        if kind == "plain":
            assert ended[0] == TaskOutput(ref, "last words")
