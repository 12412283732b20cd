"""A worker: one OS thread, one event loop built by a backend, one task host.

Theory of operation
-------------------
The controller builds a ``Worker`` per worker id and starts its thread. The thread
builds its event loop with the backend's factory, starts its drivers and the
:class:`~sansio_aio._core.WorkerCore`, and runs the loop until the core reports that
every task has ended after a shutdown.

Everything that reaches the worker from another thread arrives through its inbox: one
:class:`~sansio_aio._lane.Lane` per producer (the controller, then each worker). A
producer that makes a lane non-empty calls :meth:`Worker.wake`, which schedules one
``_on_wake`` on this loop; ``_on_wake`` drains what it finds, lane by lane, and
reschedules itself if producers kept up. Three timers drive the rest: the periodic tick
(scheduled on absolute times ``start + k * period``, so it never drifts; missed ticks are
skipped, not bunched), the earliest task deadline (one handle, re-armed when an earlier
deadline appears), and the stats snapshot.

Time is ``time.monotonic()`` everywhere (uvloop's ``loop.time()`` has millisecond
resolution); timers are armed with ``call_later`` from it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._backends import LoopFactory
from ._bus import BusHub
from ._core import WorkerCore, next_tick
from ._driver import Driver, DriverFactory
from ._events import TaskRef
from ._lane import Lane
from ._stats import WorkerStats
from ._wire import APP_STARTED, APP_STOPPED, HostFactory, TaskFactory

__all__ = ["Worker"]

log = logging.getLogger("sansio_aio")

_monotonic = time.monotonic
_perf = time.perf_counter


class Worker:
    """One worker thread. Built and owned by the controller; not a public constructor."""

    def __init__(
        self,
        worker_id: int,
        *,
        workers: int,
        kinds: Mapping[str, TaskFactory],
        host: HostFactory | None,
        hub: BusHub,
        loop_factory: LoopFactory,
        drivers: Sequence[DriverFactory],
        tick: float,
        stats_interval: float,
        inbox_capacity: int,
        name: str,
    ) -> None:
        self.worker_id = worker_id
        self._workers = workers
        self._kinds = kinds
        self._host = host
        self._hub = hub
        self._loop_factory = loop_factory
        self._driver_factories = drivers
        self._tick_period = tick
        self._stats_interval = stats_interval
        self.loop: asyncio.AbstractEventLoop | None = None
        self.core: WorkerCore | None = None
        self.drivers: list[Driver] = []
        # inbox[p]: lane from producer p (0..workers-1 = workers, workers = controller)
        self.inbox = [Lane(inbox_capacity, self.wake) for _ in range(workers + 1)]
        self.peers: list[Lane] = []  # peers[v]: my lane into worker v's inbox
        self.outbox: Lane | None = None  # my lane to the controller (set by the controller)
        self.thread = threading.Thread(target=self._main, name=f"{name}-worker-{worker_id}")
        self.thread.daemon = True
        self._pending_wakes: set[Callable[[], None]] = set()
        self._app_mixed = False  # app_buffer holds more than TaskOutput events
        self.snapshot: WorkerStats | None = None
        self._stop_reported = False
        self._wake_handle_pending = False
        # stats accumulators (written by this thread only)
        self._busy = 0.0
        self._wakeups = 0
        self._inbox_peak = 0
        self._lag = 0.0
        self._lag_max = 0.0
        self._win_start = 0.0
        self._win_busy = 0.0
        self._win_cpu = 0.0
        self._tick_due = 0.0
        self._cur_start: float | None = None  # perf_counter() at the start of a callback
        self._deadline_handle: asyncio.TimerHandle | None = None
        self._deadline_at: float | None = None

    # ------------------------------------------------------------------ threads

    def start(self) -> None:
        """Start the thread (the controller then waits for ``APP_STARTED``)."""
        self.thread.start()

    def wake(self) -> None:
        """Called by a producer (any thread) when one of our lanes went non-empty."""
        loop = self.loop
        if loop is None:
            return  # not started yet: the startup drain will see the item
        try:
            loop.call_soon_threadsafe(self._on_wake)
        except RuntimeError:
            pass  # loop closed: the worker has stopped

    def _main(self) -> None:
        assert self.outbox is not None
        outbox = self.outbox
        try:
            loop = self._loop_factory()
        except Exception as exc:
            outbox.push_force((APP_STARTED, self.worker_id, f"backend failed: {exc!r}"))
            return
        asyncio.set_event_loop(loop)
        try:
            self.loop = loop
            ctx = _Context(self, loop)
            drivers = [factory() for factory in self._driver_factories]
            for driver in drivers:
                driver.start(ctx)
                self.drivers.append(driver)  # started: closed by _close, even on failure
            core = WorkerCore(
                self.worker_id,
                self._kinds,
                self._hub,
                self,
                workers=self._workers,
                host=self._host,
                drivers=drivers,
            )
            self.core = core
            core.request_snapshot = self._snapshot_now
            now = _monotonic()
            core.start(now)
            self._win_start = now
            self._win_cpu = time.thread_time()
            self._tick_due = now + self._tick_period
            loop.call_later(self._tick_period, self._on_tick)
            loop.call_later(self._stats_interval, self._on_stats)
            loop.call_soon(self._on_wake)
            self._take_snapshot(now)
            self._flush_app()
            outbox.push_force((APP_STARTED, self.worker_id, None))
        except Exception as exc:
            log.exception("worker %d failed to start", self.worker_id)
            outbox.push_force((APP_STARTED, self.worker_id, f"worker start failed: {exc!r}"))
            self._close(loop)  # the drivers that did start, their loop tasks, the loop
            return
        try:
            loop.run_forever()
        except BaseException:
            log.exception("worker %d loop crashed", self.worker_id)
        finally:
            self._close(loop)

    def _close(self, loop: asyncio.AbstractEventLoop) -> None:
        for driver in self.drivers:
            try:
                driver.close()
            except Exception:
                log.exception("driver %r failed to close", driver)
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        except Exception:
            log.exception("worker %d: error while closing its loop", self.worker_id)
        finally:
            loop.close()
            if self.core is not None:
                self._flush_app()
            if not self._stop_reported:
                self._stop_reported = True
                assert self.outbox is not None
                self.outbox.push_force((APP_STOPPED, self.worker_id, []))

    # ------------------------------------------------------------------ loop callbacks

    def _on_wake(self) -> None:
        core = self.core
        if core is None or self.loop is None:
            return  # still starting: the startup drain follows
        t0 = self._cur_start = _perf()
        now = _monotonic()
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
        if again:
            self.loop.call_soon(self._on_wake)
        if total:
            self._wakeups += 1
            if total > self._inbox_peak:
                self._inbox_peak = total
        self._flush_app()
        self._cur_start = None
        self._busy += _perf() - t0

    def _on_tick(self) -> None:
        t0 = _perf()
        assert self.core is not None and self.loop is not None
        now = _monotonic()
        lag = now - self._tick_due
        self._lag = lag
        if lag > self._lag_max:
            self._lag_max = lag
        try:
            self.core.tick(now)
        except Exception:
            log.exception("worker %d: internal error in tick", self.worker_id)
        self._flush_app()
        due = self._tick_due = next_tick(self._tick_due, now, self._tick_period)
        if not self.core.stopped:
            self.loop.call_later(due - _monotonic(), self._on_tick)
        self._busy += _perf() - t0

    def _on_deadline(self) -> None:
        t0 = _perf()
        assert self.core is not None
        self._deadline_handle = None
        self._deadline_at = None
        try:
            self.core.on_deadline(_monotonic())
        except Exception:
            log.exception("worker %d: internal error in deadline", self.worker_id)
        self._flush_app()
        self._busy += _perf() - t0

    def _on_stats(self) -> None:
        assert self.loop is not None
        now = _monotonic()
        self._take_snapshot(now)
        if self.core is not None and not self.core.stopped:
            self.loop.call_later(self._stats_interval, self._on_stats)

    def _snapshot_now(self) -> None:
        self._take_snapshot(_monotonic())

    def _take_snapshot(self, now: float) -> None:
        core = self.core
        assert core is not None
        wall = now - self._win_start
        busy = self._busy - self._win_busy
        if self._cur_start is not None:  # called from inside a callback: count it so far
            busy += _perf() - self._cur_start
        cpu_now = time.thread_time()
        cpu = cpu_now - self._win_cpu
        util = min(1.0, max(0.0, cpu / wall)) if wall > 0 else 0.0
        busy_share = min(1.0, max(0.0, busy / wall)) if wall > 0 else 0.0
        driver_stats: dict[str, int] = {}
        for driver in self.drivers:
            try:
                driver_stats.update(driver.stats())
            except Exception:
                log.exception("driver %r stats failed", driver)
        c = core.counters
        self.snapshot = WorkerStats(
            worker=self.worker_id,
            tasks=core.task_count(),
            utilisation=util,
            runtime_busy=busy_share,
            loop_lag=max(0.0, self._lag),
            loop_lag_max=max(0.0, self._lag_max),
            inbox_depth=sum(len(lane) for lane in self.inbox),
            inbox_peak=self._inbox_peak,
            wakeups=self._wakeups,
            msgs_in=c.inputs,
            msgs_out=c.outputs,
            drops=c.bus_dropped,
            orphans=c.orphans,
            failures=c.failures,
            ticks=c.ticks,
            last_seen=now,
            drivers=driver_stats,
        )
        self._win_start = now
        self._win_cpu = cpu_now
        self._win_busy = self._busy
        if self._cur_start is not None:
            self._win_busy += _perf() - self._cur_start
        self._lag_max = 0.0

    def set_peers(self, lanes: list[Lane]) -> None:
        """Install my lanes into every worker's inbox (``lanes[v]`` goes to worker v).

        Their wake-ups are deferred to the end of the current callback, so one callback
        wakes each peer at most once however many bus messages it sent.
        """
        for lane in lanes:
            lane.wake = functools.partial(self._defer_wake, lane.wake)
        self.peers = lanes

    def _defer_wake(self, wake: Callable[[], None]) -> None:
        self._pending_wakes.add(wake)

    def _flush_app(self) -> None:
        """Hand the core's buffered application messages over in one batch, and run the
        deferred wake-ups of other workers."""
        core = self.core
        assert core is not None and self.outbox is not None
        buf = core.app_buffer
        if buf:
            core.app_buffer = []
            if self._app_mixed:  # control messages among them: one lane item each
                self._app_mixed = False
                self.outbox.push_many(buf)
            else:  # only task outputs: the list travels as one item (extend on arrival)
                self.outbox.push_force(buf)
        pending = self._pending_wakes
        if pending:
            # emptied in place, never replaced: feeders hold this very set
            wakes = tuple(pending)
            pending.clear()
            for wake in wakes:
                wake()

    # ------------------------------------------------------------------ CoreSink

    def to_app(self, item: tuple[Any, ...]) -> None:
        """CoreSink: hand a message to the controller (after what is buffered)."""
        assert self.core is not None
        self._app_mixed = True
        self.core.app_buffer.append(item)

    def to_worker(self, worker: int, item: tuple[Any, ...], safe: bool) -> bool:
        """CoreSink: hand a message to another worker."""
        lane = self.peers[worker]
        if safe:
            lane.push_force(item)
            return True
        return lane.push(item)

    def arm_deadline(self, when: float) -> None:
        """CoreSink: run ``core.on_deadline`` at ``when``."""
        loop = self.loop
        if loop is None:
            return
        if self._deadline_at is not None and self._deadline_at <= when:
            return
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
        self._deadline_at = when
        self._deadline_handle = loop.call_later(max(0.0, when - _monotonic()), self._on_deadline)

    def stopped(self, unfinished: list[TaskRef]) -> None:
        """CoreSink: every task ended; report and stop the loop."""
        if not self._stop_reported:
            self._stop_reported = True
            self.to_app((APP_STOPPED, self.worker_id, unfinished))
        if self.loop is not None:
            self.loop.call_soon(self.loop.stop)

    # ------------------------------------------------------------------ DriverContext

    def deliver(self, task: TaskRef, event: Any) -> bool:
        """DriverContext: feed ``event`` to ``task`` under the drain rule."""
        core = self.core
        if core is None:
            return False
        try:
            ok = core.deliver(task, event, _monotonic())
        except Exception:
            log.exception("worker %d: internal error delivering to %s", self.worker_id, task)
            return False
        # Inside a drain (a driver delivering from ``handle``) the input was queued and
        # the running callback flushes at its end: flushing now would hand over the
        # buffer that callback is still appending to.
        if not core._depth and (core.app_buffer or self._pending_wakes):
            self._flush_app()
        return ok

    def feeder(self, task: TaskRef) -> Callable[[Any], bool]:
        """DriverContext: a fast ``deliver`` bound to ``task`` (see ``WorkerCore.feeder``)."""
        core = self.core
        if core is None:
            return lambda event: False
        return core.feeder(task, _monotonic, self._flush_app, self._pending_wakes)

    def timed(self, callback: Callable[[], None]) -> Callable[[], None]:
        """DriverContext: wrap a callback so its run time counts as busy time."""

        def run() -> None:
            t0 = _perf()
            try:
                callback()
            finally:
                self._busy += _perf() - t0

        return run


class _Context:
    """The DriverContext a worker hands its drivers."""

    __slots__ = ("_loop", "_worker", "deliver")

    def __init__(self, worker: Worker, loop: asyncio.AbstractEventLoop) -> None:
        self._worker = worker
        self._loop = loop
        #: Feed an input to a task under the drain rule (the worker's own method, bound
        #: here so a driver's per-packet call costs no extra layer).
        self.deliver: Callable[[TaskRef, Any], bool] = worker.deliver

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The worker's event loop."""
        return self._loop

    @property
    def worker_id(self) -> int:
        """The worker's id."""
        return self._worker.worker_id

    def now(self) -> float:
        """The worker's clock (``time.monotonic()``)."""
        return _monotonic()

    def timed(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Wrap a callback so its run time counts as the worker's busy time."""
        return self._worker.timed(callback)

    def feeder(self, task: TaskRef) -> Callable[[Any], bool]:
        """A fast ``deliver`` bound to one task, for per-packet paths."""
        return self._worker.feeder(task)
