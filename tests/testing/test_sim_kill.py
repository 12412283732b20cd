"""``SimRuntime.kill_worker``: what only the simulator can pin down exactly.

The same behaviour is compared with a real worker process in ``test_sim_crash.py``; here
the simulator's own guarantees: the instant of a death and what comes before it, the
restart back-off in simulated seconds, a death during shutdown, misuse, a replacement
that cannot start, and determinism (same seed, same trace).
"""

from __future__ import annotations

import signal
from typing import Any

import pytest

from sansio_aio import (
    ConfigError,
    Ext,
    ExtOut,
    Request,
    RuntimeClosed,
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
from sansio_aio.driver import DriverContext
from sansio_aio.testing import HarnessError, LinkConditions, SimRuntime
from tests.drivers import SyncDriver
from tests.testing.tutorial import tutorial


class Node(Task):
    """Echoes; "arm" sets a deadline 0.5 s later that says "due"; replies to requests
    (not to "never"); says "bye" in ``on_shutdown``."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.due: float | None = None

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext and event.msg == "arm":
            self.due = now + 0.5
        elif type(event) is Ext:
            self.emit(ExtOut(event.msg))
        elif type(event) is Request and event.msg != "never":
            self.emit(ExtOut(("replying", event.msg)))

    def on_tick(self, now: float) -> None:
        if self.due is not None and now >= self.due:
            self.due = None
            self.emit(ExtOut("due"))

    def next_deadline(self) -> float | None:
        return self.due

    def on_shutdown(self, now: float) -> None:
        super().on_shutdown(now)
        self.emit(ExtOut("bye"))


class Lingers(Task):
    """On shutdown ends only 2 s later (a deadline)."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.until: float | None = None

    def on_shutdown(self, now: float) -> None:
        self.emit(ExtOut("closing"))
        self.until = now + 2.0

    def on_tick(self, now: float) -> None:
        if self.until is not None and now >= self.until:
            self.emit(ExtOut("gone"))
            self.closing = True

    def next_deadline(self) -> float | None:
        return self.until


class Host(Task):
    """Says it is up (each replacement's host says it again)."""

    def __init__(self, worker: int) -> None:
        super().__init__(worker)
        self.emit(ExtOut(("host up", worker)))


KINDS = {"node": Node, "lingers": Lingers}
REASON = "worker 1 died: killed by SIGKILL"
WHY = f"sansio_aio.WorkerDied: {REASON}"


def failed(events: list[Any]) -> list[TaskRef]:
    return [e.task for e in events if isinstance(e, TaskFailed)]


def exited(events: list[Any]) -> list[WorkerExited]:
    return [e for e in events if isinstance(e, WorkerExited)]


# ------------------------------------------------------------------ the instant of a death


async def test_what_a_worker_handed_over_before_it_died_comes_first() -> None:
    """Two timers at one instant fire in the order they were scheduled: a deadline
    armed before the kill was scheduled fires first, and its output reaches the
    application before the death; armed after, it never fires."""
    async with SimRuntime(KINDS, workers=2) as rt:
        a = await rt.spawn("node", worker=1)
        rt.send_nowait(a, "arm")  # due at 0.5
        rt.kill_worker(1, at=0.5)
        events = await rt.next_events()
        assert rt.now == 0.5
        assert events == [
            TaskOutput(a, "due"),
            TaskFailed(a, WHY),
            WorkerExited(1, REASON, False),
        ]
    async with SimRuntime(KINDS, workers=2) as rt:
        b = await rt.spawn("node", worker=1)
        rt.kill_worker(1, at=0.5)
        rt.send_nowait(b, "arm")  # due at 0.5 too, scheduled after the kill
        events = await rt.next_events()
        assert events == [TaskFailed(b, WHY), WorkerExited(1, REASON, False)]


async def test_between_the_death_and_the_notice_what_is_sent_is_lost() -> None:
    """The worker dies at once; the controller notices at the next settle. Whatever was
    sent to the worker between the two is lost with it, and its waiters fail."""
    async with SimRuntime(KINDS, workers=2) as rt:
        a = await rt.spawn("node", worker=1)
        rt.kill_worker(1)
        rt.send_nowait(a, "lost")  # accepted: the worker is not known dead yet
        events = rt.poll_events()
        assert failed(events) == [a] and not [e for e in events if isinstance(e, TaskOutput)]
        with pytest.raises(UnknownTarget, match="worker 1 is down"):
            rt.send_nowait(a, "refused")  # now it is
    async with SimRuntime(KINDS, workers=2) as rt:
        b = await rt.spawn("node", worker=1)
        rt.kill_worker(1)
        with pytest.raises(TaskFailedError, match="worker 1 died: killed by SIGKILL"):
            await rt.request(b, "x")
    for call in ("spawn", "run_on_worker"):
        async with SimRuntime(KINDS, workers=2) as rt:
            rt.kill_worker(1, exitcode=3)
            waiting = (
                rt.spawn("node", worker=1)
                if call == "spawn"
                else rt.run_on_worker(1, lambda core: core.task_count())
            )
            with pytest.raises(WorkerDied, match="worker 1 died: its process exited with code 3"):
                await waiting
            assert (await rt.stats()).placed == (0, 0)


async def test_a_killed_task_never_shuts_down_and_the_other_worker_loses_nothing() -> None:
    async with SimRuntime(KINDS, workers=2, host=Host) as rt:
        a = await rt.spawn("node", worker=0)
        b = await rt.spawn("node", worker=1)
        rt.kill_worker(1, at=1.0, reason="worker 1 died: unplugged")
        for i in range(5):
            rt.send_nowait(a, i)
        rt.advance(1.0)
        stats = await rt.stats()
        assert stats.workers[1].tasks == 1  # its snapshot when it died
        assert stats.placed == (1, 0)
        assert rt.lookup(b) is None and rt.lookup(a) is not None
        await rt.shutdown()
    events = rt.poll_events()
    tail = [e for e in events if not isinstance(e, TaskOutput) or e.task.kind != "host"]
    assert tail == [
        *(TaskOutput(a, i) for i in range(5)),
        TaskFailed(b, "sansio_aio.WorkerDied: worker 1 died: unplugged"),
        TaskFailed(TaskRef(1, "host", 0, 0), "sansio_aio.WorkerDied: worker 1 died: unplugged"),
        WorkerExited(1, "worker 1 died: unplugged", False),
        TaskOutput(a, "bye"),
        TaskEnded(a),
        TaskEnded(TaskRef(0, "host", 0, 0)),
    ]


async def test_a_kill_from_inside_the_instant_waits_for_its_own_timer() -> None:
    """From a callback of the worker itself (here a ``run_on_worker`` function) the kill
    cannot drop the core under its feet: it becomes a timer at the same instant."""
    async with SimRuntime(KINDS, workers=2) as rt:
        a = await rt.spawn("node", worker=1)
        await rt.run_on_worker(1, lambda core: rt.kill_worker(1))
        events = await rt.next_events()
        assert failed(events) == [a] and rt.now == 0.0
        assert " rt kill at (1, 0.0)" in rt.trace.text()


# ------------------------------------------------------------------ restarts


async def test_the_replacement_joins_after_the_real_back_off_in_simulated_time() -> None:
    async with SimRuntime(KINDS, workers=2, host=Host, restart="on-failure") as rt:
        await rt.next_events()  # both hosts are up
        delays = []
        for i in range(8):
            rt.kill_worker(1)
            died = rt.now
            while True:
                events = await rt.next_events()
                if TaskOutput(TaskRef(1, "host", 0, 0), ("host up", 1)) in events:
                    break
            delays.append(round(rt.now - died, 9))
            ref = await rt.spawn("node", worker=1)  # it is up at once
            # a new core: slot 0, its generations past every one its predecessors used
            assert ref == TaskRef(1, "node", 0, (i + 1) << 32)
        assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
        stats = await rt.stats()
        assert stats.restarts == (0, 8)
        assert [w.tasks for w in stats.workers] == [0, 1]


async def test_the_back_off_starts_over_after_a_while_up() -> None:
    """Bug: the back-off only grew: a worker that crashed now and then, hours apart,
    waited 5 s from its seventh crash on. After 10 s up it starts over at 0.1 s."""
    async with SimRuntime(KINDS, workers=2, host=Host, restart="on-failure") as rt:
        await rt.next_events()

        async def kill_and_time() -> float:
            rt.kill_worker(1)
            died = rt.now
            while True:
                events = await rt.next_events()
                if TaskOutput(TaskRef(1, "host", 0, 0), ("host up", 1)) in events:
                    return round(rt.now - died, 9)

        assert [await kill_and_time() for _ in range(3)] == [0.1, 0.2, 0.4]
        rt.advance(10.0)  # up for 10 s: the next death starts the back-off over
        assert [await kill_and_time() for _ in range(2)] == [0.1, 0.2]
        assert (await rt.stats()).restarts == (0, 5)


async def test_shutdown_during_the_back_off_stops_at_once() -> None:
    async with SimRuntime(KINDS, workers=2, host=Host, restart="on-failure") as rt:
        rt.kill_worker(1)
        rt.settle()
    assert rt.now == 0.0  # the restart due at 0.1 was cancelled, not waited for
    assert exited(rt.poll_events()) == [WorkerExited(1, "worker 1 died: killed by SIGKILL", True)]
    assert "rt restart" not in rt.trace.text()


async def test_a_replacement_that_cannot_start_stays_down() -> None:
    starts = []

    class Fragile(SyncDriver):
        """Its third instance (the replacement's) cannot start."""

        def start(self, ctx: DriverContext) -> None:
            starts.append(self)
            if len(starts) > 2:
                raise OSError("no more sockets")
            super().start(ctx)

    async with SimRuntime(KINDS, workers=2, restart="on-failure", drivers=[Fragile]) as rt:
        rt.kill_worker(1)
        rt.advance(1.0)
        assert exited(rt.poll_events()) == [
            WorkerExited(1, "worker 1 died: killed by SIGKILL", True),
            WorkerExited(1, "worker 1 could not be restarted: OSError('no more sockets')", False),
        ]
        with pytest.raises(UnknownTarget, match="worker 1 is down"):
            await rt.spawn("node", worker=1)
        assert (await rt.spawn("node")).worker == 0


# ------------------------------------------------------------------ shutdown and misuse


async def test_a_death_during_shutdown_is_only_the_end_of_that_worker() -> None:
    """As the real runtime: a worker that dies while the runtime stops is not reported
    (no TaskFailed, no WorkerExited), and the shutdown stops waiting for it."""
    async with SimRuntime(KINDS, workers=2) as rt:
        a = await rt.spawn("lingers", worker=0)
        b = await rt.spawn("lingers", worker=1)
        rt.kill_worker(1, at=1.0)
        await rt.shutdown()  # no ShutdownTimeout: worker 1 is gone, worker 0 ends at 2 s
    assert rt.now == 2.0
    events = rt.poll_events()
    assert [e for e in events if not isinstance(e, TaskOutput)] == [TaskEnded(a)]
    assert [e for e in events if isinstance(e, TaskOutput) and e.task == b] == [
        TaskOutput(b, "closing")
    ]


async def test_kill_worker_misuse() -> None:
    async with SimRuntime(KINDS, workers=2) as rt:
        rt.advance(1.0)
        with pytest.raises(HarnessError, match="in the past"):
            rt.kill_worker(1, at=0.5)
        with pytest.raises(UnknownTarget, match="no worker 2"):
            rt.kill_worker(2)
        with pytest.raises(ConfigError, match="a worker id is an int"):
            rt.kill_worker("1")  # type: ignore[arg-type]
        rt.kill_worker(1, at=2.0)
        rt.kill_worker(1, at=2.0, exitcode=-signal.SIGTERM)  # falls due on a dead worker
        rt.kill_worker(0, at=10.0)  # falls due after the shutdown
        rt.advance(1.0)
        assert exited(rt.poll_events()) == [
            WorkerExited(1, "worker 1 died: killed by SIGKILL", False)
        ]
        with pytest.raises(UnknownTarget, match="worker 1 is down"):
            rt.kill_worker(1)
    assert rt.now == 2.0
    with pytest.raises(RuntimeClosed):
        rt.kill_worker(0)
    with pytest.raises(ConfigError, match="restart must be"):
        SimRuntime(KINDS, restart="always")


# ------------------------------------------------------------------ determinism


async def crash_during_a_transfer(seed: int) -> str:
    """The tutorial's lossy transfer, its receiver's worker killed and restarted midway."""
    kinds = {"rx": tutorial.Receiver, "tx": tutorial.Sender}
    async with SimRuntime(kinds, workers=2, seed=seed, restart="on-failure") as rt:
        rt.net.set_default(LinkConditions(latency=0.02, jitter=0.01, loss=0.2))
        await rt.spawn("rx", {"addr": ("127.0.0.1", 5000)}, worker=1)
        messages = [b"message %d" % i for i in range(200)]
        await rt.spawn("tx", {"peer": ("127.0.0.1", 5000), "messages": messages}, worker=0)
        rt.kill_worker(1, at=0.3)
        rt.advance(1.0)  # the sender retransmits into the void, the receiver is back
        await rt.spawn("rx", {"addr": ("127.0.0.1", 5000)}, worker=1)  # its port is free
        rt.advance(1.0)
        assert rt.net.stats.unreachable > 0
        assert (await rt.stats()).restarts == (0, 1)
    return rt.trace.digest()


async def test_a_crash_keeps_the_simulation_deterministic() -> None:
    assert await crash_during_a_transfer(1) == await crash_during_a_transfer(1)
    assert await crash_during_a_transfer(1) != await crash_during_a_transfer(2)


# ------------------------------------------------------------------ bugs found by the simulator


async def test_a_down_workers_host_task_by_ref_is_refused() -> None:
    """Bug: ``send_nowait(1, msg)`` raised UnknownTarget once worker 1 was down, but the
    same host task addressed by its TaskRef was accepted and lost, and a request to it
    waited for its whole timeout (the real runtime did the same: the rule is shared)."""
    async with SimRuntime(KINDS, workers=2, host=Host) as rt:
        rt.kill_worker(1)
        rt.settle()
        with pytest.raises(UnknownTarget):
            rt.send_nowait(TaskRef(1, "host", 0, 0), "lost")


async def test_a_stale_ref_never_reaches_the_replacements_task() -> None:
    """Bug: a replacement worker's core started its slots and generations afresh, so its
    first task got the reference of the dead worker's first task, and a message sent with
    the stale reference reached the new task (docs/architecture.md: "a TaskRef to an ended
    task never reaches the slot's next occupant"). Same in the real runtime."""
    async with SimRuntime(KINDS, workers=2, restart="on-failure") as rt:
        old = await rt.spawn("node", worker=1)
        rt.kill_worker(1)
        rt.advance(0.1)
        await rt.spawn("node", worker=1)
        rt.poll_events()
        with pytest.raises(UnknownTarget):
            rt.send_nowait(old, "for the dead task")
