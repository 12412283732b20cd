"""The worker shell: what every worker does around its core, whatever schedules it.

Theory of operation
-------------------
A worker is a :class:`~sansio_aio._core.WorkerCore` (the tasks and their rules) inside a
shell that connects it to the rest of the runtime. Two shells exist, with one
scheduler each: ``_worker.Worker`` (an OS thread running an asyncio loop) and
``testing._sim.worker.SimWorker`` (timers on a fake clock, one thread for the whole
simulated runtime). Everything they share is written once, here, in
:class:`WorkerShell`:

* **the inbox**: one :class:`~sansio_aio._lane.Lane` per producer (``inbox[p]`` for
  worker ``p``, ``inbox[n]`` for the controller), drained lane by lane with one clock
  reading (:meth:`WorkerShell.drain_inbox`), room waiters told after each lane;
* **the core's sink** (:class:`~sansio_aio._wire.CoreSink`): reports go into the core's
  ``app_buffer`` behind the task outputs already there, commands into the peer lanes
  (their wake-ups deferred to the end of the current callback, so one callback wakes
  each peer at most once), the single deadline timer is re-armed only for an earlier
  deadline, and the stop is reported once;
* **the hand-off** (:meth:`WorkerShell.flush_app`): at the end of each callback the
  buffer crosses to the controller as one lane item when it holds only task outputs
  (a ``list``), item by item otherwise; then the deferred peer wake-ups run;
* **driver inputs** (:meth:`WorkerShell.deliver`): fed under the drain rule; after one
  fed from the top of the stack the shell hands over what it produced;
* **stats** (:meth:`WorkerShell.build_stats`): the snapshot built from the core's
  counters; the shell supplies the timing figures it can measure.

A subclass provides the scheduler: the clock (``now``), timers (``_call_at``), what
happens after a top-level delivery (``_delivered``), and how the worker halts
(``_halt``). This module imports no asyncio.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ._events import TaskRef
from ._lane import Lane
from ._stats import WorkerStats
from ._wire import StatsReport, StopReport

if TYPE_CHECKING:
    import asyncio

    from ._core import WorkerCore
    from ._driver import Driver

__all__ = ["ShellContext", "Timer", "WorkerShell"]

log = logging.getLogger("sansio_aio")


class Timer(Protocol):
    """A scheduled callback that can be cancelled (asyncio's handles, FakeClock's timers)."""

    def cancel(self) -> None:
        """Do not run it."""


class WorkerShell:
    """What both worker shells share (see the module docs). Not a public constructor."""

    def __init__(
        self,
        worker_id: int,
        n_workers: int,
        inbox_capacity: int,
        wake: Callable[[], None],
    ) -> None:
        #: This worker's id.
        self.worker_id = worker_id
        #: ``inbox[p]``: the lane from producer ``p`` (workers ``0..n-1``, then the controller).
        self.inbox = [Lane(inbox_capacity, wake) for _ in range(n_workers + 1)]
        #: ``peers[v]``: this worker's lane into worker ``v``'s inbox.
        self.peers: list[Lane] = []
        #: This worker's lane to the controller (set by the controller).
        self.outbox: Lane | None = None
        self.core: WorkerCore | None = None
        self.drivers: list[Driver] = []
        #: Inbox wake-ups that found messages, and the largest batch one of them found.
        self.wakeups = 0
        self.inbox_peak = 0
        self._pending_wakes: set[Callable[[], None]] = set()
        self._app_mixed = False  # app_buffer holds reports, not only task outputs
        self._stop_reported = False
        self._deadline_timer: Timer | None = None
        self._deadline_at: float | None = None

    # ------------------------------------------------------------------ scheduler hooks

    def now(self) -> float:
        """The worker's clock: the ``now`` its tasks see."""
        raise NotImplementedError

    def _call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` at ``when`` on this worker's scheduler."""
        raise NotImplementedError

    def _delivered(self) -> None:
        """A driver input was fed from the top of the stack: hand over what it produced."""
        raise NotImplementedError

    def _halt(self) -> None:
        """Every task ended: stop scheduling this worker."""
        raise NotImplementedError

    def _on_deadline(self) -> None:
        """The deadline timer fired (the scheduler wraps :meth:`fire_deadlines`)."""
        raise NotImplementedError

    def driver_loop(self) -> asyncio.AbstractEventLoop:
        """The loop drivers run on (``DriverContext.loop``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ wiring

    def set_peers(self, lanes: list[Lane]) -> None:
        """Install this worker's lanes into every worker's inbox (``lanes[v]`` to worker v).

        Their wake-ups are deferred to the end of the current callback, so one callback
        wakes each peer at most once however many bus messages it sent.
        """
        for lane in lanes:
            lane.wake = functools.partial(self._pending_wakes.add, lane.wake)
        self.peers = lanes

    # ------------------------------------------------------------------ CoreSink

    def to_app(self, item: Any) -> None:
        """CoreSink: hand a report to the controller, after what is buffered."""
        assert self.core is not None
        self._app_mixed = True
        self.core.app_buffer.append(item)

    def to_worker(self, worker: int, item: Any, safe: bool) -> bool:
        """CoreSink: hand a command to another worker (False: full and not ``safe``)."""
        lane = self.peers[worker]
        if safe:
            lane.push_force(item)
            return True
        return lane.push(item)

    def arm_deadline(self, when: float) -> None:
        """CoreSink: make sure the core's ``on_deadline`` runs at ``when``."""
        if self._deadline_at is not None and self._deadline_at <= when:
            return
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_at = when
        self._deadline_timer = self._call_at(when, self._on_deadline)

    def stopped(self, unfinished: list[TaskRef]) -> None:
        """CoreSink: every task ended (or was dropped); report it once and halt."""
        if not self._stop_reported:
            self._stop_reported = True
            self.to_app(StopReport(self.worker_id, list(unfinished)))
        self._halt()

    def snapshot(self) -> None:
        """CoreSink: send a fresh stats snapshot to the controller."""
        self.to_app(StatsReport(self.take_snapshot(self.now())))

    # ------------------------------------------------------------------ work

    def drain_inbox(self, now: float) -> tuple[int, bool]:
        """Handle what the lanes hold, lane by lane; ``(messages, more_arrived)``."""
        core = self.core
        assert core is not None
        total = 0
        again = False
        for lane in self.inbox:
            q = lane.q
            n = len(q)
            if n:
                total += n
                try:
                    core.handle_from(q, n, now)
                except Exception:
                    log.exception("worker %d: internal error handling inbox", self.worker_id)
                try:
                    lane.notify_room()
                except Exception:  # e.g. the waiter's loop is closed: never strand the batch
                    log.exception("worker %d: room callback failed", self.worker_id)
                if q:
                    again = True
        if total:
            self.wakeups += 1
            if total > self.inbox_peak:
                self.inbox_peak = total
        return total, again

    def fire_deadlines(self) -> None:
        """The deadline timer fired: run the core's due deadlines."""
        self._deadline_timer = None
        self._deadline_at = None
        assert self.core is not None
        try:
            self.core.on_deadline(self.now())
        except Exception:
            log.exception("worker %d: internal error in deadline", self.worker_id)

    def flush_app(self) -> None:
        """Hand the core's buffered messages to the controller in one batch, then run the
        deferred wake-ups of other workers."""
        core = self.core
        assert core is not None and self.outbox is not None
        buf = core.app_buffer
        if buf:
            core.app_buffer = []
            if self._app_mixed:  # reports among them: one lane item each
                self._app_mixed = False
                self.outbox.push_many(buf)
            else:  # only task outputs: the list travels as one item
                self.outbox.push_force(buf)
        pending = self._pending_wakes
        if pending:
            # emptied in place, never replaced: feeders hold this very set
            wakes = tuple(pending)
            pending.clear()
            for wake in wakes:
                wake()

    def deliver(self, task: TaskRef, event: Any) -> bool:
        """DriverContext: feed ``event`` to ``task`` under the drain rule."""
        core = self.core
        if core is None:
            return False
        try:
            ok = core.deliver(task, event, self.now())
        except Exception:
            log.exception("worker %d: internal error delivering to %s", self.worker_id, task)
            return False
        # Inside a drain (a driver delivering from ``handle``) the input was queued and
        # the running callback hands over at its end: doing it now would hand over the
        # buffer that callback is still appending to.
        if not core.draining:
            self._delivered()
        return ok

    def feeder(self, task: TaskRef) -> Callable[[Any], bool]:
        """DriverContext: ``deliver`` bound to ``task`` (shells may offer a faster one)."""
        deliver = self.deliver
        return lambda event: deliver(task, event)

    def batch_feeder(self, task: TaskRef) -> Callable[[list[Any]], None]:
        """DriverContext: feed each event in order (stops if the list is cleared)."""
        deliver = self.deliver

        def feed_all(events: list[Any]) -> None:
            for event in events:
                deliver(task, event)

        return feed_all

    def timed(self, callback: Callable[[], None]) -> Callable[[], None]:
        """DriverContext: wrap a callback so its run time counts as busy time."""
        return callback

    # ------------------------------------------------------------------ stats

    def take_snapshot(self, now: float) -> WorkerStats:
        """This worker's stats now (shells with a real clock add timing figures)."""
        return self.build_stats(now)

    def build_stats(
        self,
        now: float,
        *,
        utilisation: float = 0.0,
        runtime_busy: float = 0.0,
        loop_lag: float = 0.0,
        loop_lag_max: float = 0.0,
    ) -> WorkerStats:
        """A :class:`WorkerStats` from the core's counters plus the given timing figures."""
        core = self.core
        assert core is not None
        driver_stats: dict[str, int] = {}
        for driver in self.drivers:
            try:
                driver_stats.update(driver.stats())
            except Exception:
                log.exception("driver %r stats failed", driver)
        c = core.counters
        return WorkerStats(
            worker=self.worker_id,
            tasks=core.task_count(),
            utilisation=utilisation,
            runtime_busy=runtime_busy,
            loop_lag=loop_lag,
            loop_lag_max=loop_lag_max,
            inbox_depth=self.inbox_depth(),
            inbox_peak=self.inbox_peak,
            wakeups=self.wakeups,
            msgs_in=c.inputs,
            msgs_out=c.outputs,
            drops=c.bus_dropped,
            orphans=c.orphans,
            failures=c.failures,
            unrouted=c.unrouted,
            ticks=c.ticks,
            last_seen=now,
            drivers=driver_stats,
        )

    def inbox_depth(self) -> int:
        """Messages waiting in this worker's inbox now (every lane)."""
        return sum(len(lane) for lane in self.inbox)


class ShellContext:
    """The :class:`~sansio_aio.driver.DriverContext` a worker shell hands its drivers."""

    __slots__ = ("_shell", "deliver")

    def __init__(self, shell: WorkerShell) -> None:
        self._shell = shell
        #: Feed an input to a task under the drain rule (the shell's own method, bound
        #: here so a driver's per-packet call costs no extra layer).
        self.deliver: Callable[[TaskRef, Any], bool] = shell.deliver

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The worker's event loop."""
        return self._shell.driver_loop()

    @property
    def worker_id(self) -> int:
        """The worker's id."""
        return self._shell.worker_id

    def now(self) -> float:
        """The worker's clock."""
        return self._shell.now()

    def timed(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Wrap a callback so its run time counts as the worker's busy time."""
        return self._shell.timed(callback)

    def feeder(self, task: TaskRef) -> Callable[[Any], bool]:
        """A fast ``deliver`` bound to one task, for per-packet paths."""
        return self._shell.feeder(task)

    def batch_feeder(self, task: TaskRef) -> Callable[[list[Any]], None]:
        """``feed_all(events)`` bound to one task, for the inputs of one read."""
        return self._shell.batch_feeder(task)
