"""A worker thread: one OS thread, one event loop built by a backend, one worker core.

Theory of operation
-------------------
The controller builds a ``Worker`` per worker id and starts its thread. The thread
builds its event loop with the backend's factory, starts its drivers and the
:class:`~sansio_aio._core.WorkerCore`, reports ``StartReport`` and runs the loop until
the core reports that every task has ended after a shutdown.

Everything the worker shares with the simulated worker (the inbox lanes, the core's
sink, the hand-off to the controller, driver deliveries, the stats snapshot) lives in
:class:`~sansio_aio._shell.WorkerShell`; this module is the scheduler. A producer that
makes one of our inbox lanes non-empty calls :meth:`Worker.wake`, which schedules one
``_on_wake`` on this loop; ``_on_wake`` drains what it finds and reschedules itself if
producers kept up. Three timers drive the rest: the periodic tick (on absolute times
``start + k * period``, so it never drifts; missed ticks are skipped, not bunched), the
earliest task deadline (one handle, re-armed when an earlier deadline appears), and
the stats snapshot, sent to the controller every ``stats_interval``.

Time is ``time.monotonic()`` everywhere (uvloop's ``loop.time()`` has millisecond
resolution); timers are armed with ``call_later`` from it. Busy time (the share of
wall time spent in the runtime's callbacks) and thread CPU time are measured per stats
window.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._backends import LoopFactory, close_loop
from ._bus import BusHub
from ._core import DEFAULT_MAX_OUTPUTS, WorkerCore, next_tick
from ._driver import DriverFactory
from ._events import TaskRef
from ._shell import ShellContext, Timer, WorkerShell
from ._stats import WorkerStats
from ._wire import HostFactory, StartReport, StatsReport, StopReport, TaskFactory

__all__ = ["Worker"]

log = logging.getLogger("sansio_aio")

_monotonic = time.monotonic
_perf = time.perf_counter


class Worker(WorkerShell):
    """One worker thread. Built and owned by the controller; not a public constructor."""

    def __init__(
        self,
        worker_id: int,
        *,
        n_workers: int,
        kinds: Mapping[str, TaskFactory],
        host: HostFactory | None,
        hub: BusHub,
        loop_factory: LoopFactory,
        drivers: Sequence[DriverFactory],
        tick: float,
        stats_interval: float,
        inbox_capacity: int,
        name: str,
        incarnation: int = 0,
        max_outputs: int = DEFAULT_MAX_OUTPUTS,
    ) -> None:
        super().__init__(worker_id, n_workers, inbox_capacity, self.wake)
        self._incarnation = incarnation
        self._max_outputs = max_outputs
        self._n_workers = n_workers
        self._kinds = kinds
        self._host = host
        self._hub = hub
        self._loop_factory = loop_factory
        self._driver_factories = drivers
        self._tick_period = tick
        self._stats_interval = stats_interval
        self.loop: asyncio.AbstractEventLoop | None = None
        # a daemon: a thread blocked for good in a task cannot be killed, and must not
        # keep the interpreter from exiting (the controller abandons it, see ``abandon``)
        self.thread = threading.Thread(target=self._main, name=f"{name}-worker-{worker_id}")
        self.thread.daemon = True
        #: True once the controller gave up on this thread at shutdown (it would not stop).
        self.abandoned = False
        self._finished = threading.Event()  # set when the thread's work is over
        self._on_finished: list[Callable[[], None]] = []  # then called, on the thread
        # stats accumulators (written by this thread only)
        self._busy = 0.0
        self._lag = 0.0
        self._lag_max = 0.0
        self._win_start = 0.0
        self._win_busy = 0.0
        self._win_cpu = 0.0
        self._tick_due = 0.0
        self._cur_start: float | None = None  # perf_counter() at the start of a callback

    # ------------------------------------------------------------------ the thread

    def start(self) -> None:
        """Start the thread (the controller then waits for its ``StartReport``)."""
        self.thread.start()

    def join(self, timeout: float) -> None:
        """Wait at most ``timeout`` seconds for the thread to end."""
        self.thread.join(timeout)

    def is_alive(self) -> bool:
        """True while the thread runs."""
        return self.thread.is_alive()

    async def wait_exit(self, timeout: float) -> None:
        """Wait at most ``timeout`` seconds for the thread to end.

        The thread tells the caller's loop when its work is over (drivers and loop
        closed), so no executor thread is tied up in a ``join``: many workers are waited
        for at once, and a thread that never ends keeps nothing else waiting.
        """
        if not self.thread.is_alive():
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finished() -> None:  # on the worker thread, as its last act
            try:
                loop.call_soon_threadsafe(_set_if_pending, done)
            except RuntimeError:
                pass  # that loop is closed: nobody waits any more

        self._on_finished.append(finished)
        if not self._finished.is_set():  # set first by the thread: it may not call us
            try:
                await asyncio.wait_for(asyncio.shield(done), timeout)
            except TimeoutError:
                return
        self.thread.join(0.1)  # its work is over: it is returning from ``_main`` now

    def terminate(self) -> bool:
        """A thread cannot be stopped from outside: False."""
        return False

    def kill(self) -> bool:
        """A thread cannot be killed: False."""
        return False

    def abandon(self) -> None:
        """Shutdown gave up on this thread (blocked in a task, it would not stop).

        A Python thread cannot be killed: it stays a daemon thread (it does not keep the
        interpreter from exiting), renamed ``... (abandoned)``. Its inbox holds the
        shutdown and the forced stop, so if it ever returns to its loop it drops its
        tasks, closes its drivers and ends; the controller ignores what it still sends.
        """
        self.abandoned = True
        self.thread.name = f"{self.thread.name} (abandoned)"

    def close(self) -> None:
        """Nothing to release: the thread's loop closed itself."""

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
        try:
            self._run()
        finally:
            self._finished.set()
            for finished in list(self._on_finished):
                finished()

    def _run(self) -> None:
        try:
            loop = self._loop_factory()
        except Exception as exc:
            self._report_start(StartReport(self.worker_id, f"backend failed: {exc!r}"))
            return
        asyncio.set_event_loop(loop)
        try:
            self.loop = loop
            self._loop_ready(loop)
            ctx = ShellContext(self)
            drivers = [factory() for factory in self._driver_factories]
            for driver in drivers:
                driver.start(ctx)
                self.drivers.append(driver)  # started: closed by _close, even on failure
            core = WorkerCore(
                self.worker_id,
                self._kinds,
                self._hub,
                self,
                n_workers=self._n_workers,
                host=self._host,
                drivers=drivers,
                incarnation=self._incarnation,
                max_outputs=self._max_outputs,
            )
            self.core = core
            now = _monotonic()
            core.start(now)
            self._win_start = now
            self._win_cpu = time.thread_time()
            self._tick_due = now + self._tick_period
            loop.call_later(self._tick_period, self._on_tick)
            loop.call_later(self._stats_interval, self._on_stats)
            loop.call_soon(self._on_wake)
            # the start first: a controller that sees the host task's first outputs must
            # already count this worker as up (a replacement worker rejoins on it)
            self._report_start(StartReport(self.worker_id, None))
            self.to_app(StatsReport(self.take_snapshot(now)))
            self.flush_app()
        except Exception as exc:
            log.exception("worker %d failed to start", self.worker_id)
            self._report_start(StartReport(self.worker_id, f"worker start failed: {exc!r}"))
            self._close(loop)  # the drivers that did start, their loop tasks, the loop
            return
        try:
            loop.run_forever()
        except BaseException:
            log.exception("worker %d loop crashed", self.worker_id)
        finally:
            self._close(loop)

    def _loop_ready(self, loop: asyncio.AbstractEventLoop) -> None:
        """The worker's loop exists (a hook: the process worker registers its socket)."""

    def _report_start(self, report: StartReport) -> None:
        """Tell the controller the worker runs, or why it could not start."""
        assert self.outbox is not None
        self.outbox.push_force(report)

    def _close(self, loop: asyncio.AbstractEventLoop) -> None:
        for driver in self.drivers:
            try:
                driver.close()
            except Exception:
                log.exception("driver %r failed to close", driver)
        try:
            close_loop(loop)
        except Exception:
            log.exception("worker %d: error while closing its loop", self.worker_id)
        finally:
            if self.core is not None:
                self.flush_app()
            if not self._stop_reported:
                self._stop_reported = True
                assert self.outbox is not None
                self.outbox.push_force(StopReport(self.worker_id, []))

    # ------------------------------------------------------------------ scheduler hooks

    def now(self) -> float:
        """The worker's clock, ``time.monotonic()``."""
        return _monotonic()

    def _call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        assert self.loop is not None
        return self.loop.call_later(max(0.0, when - _monotonic()), callback)

    def _delivered(self) -> None:
        assert self.core is not None
        if self.core.app_buffer or self._pending_wakes:
            self.flush_app()

    def _halt(self) -> None:
        if self.loop is not None:
            self.loop.call_soon(self.loop.stop)

    def driver_loop(self) -> asyncio.AbstractEventLoop:
        """The worker's event loop."""
        assert self.loop is not None
        return self.loop

    def feeder(self, task: TaskRef) -> Callable[[Any], bool]:
        """DriverContext: a fast ``deliver`` bound to ``task`` (``WorkerCore.feeder``)."""
        core = self.core
        if core is None:
            return lambda event: False
        return core.feeder(task, _monotonic, self.flush_app, self._pending_wakes)

    def batch_feeder(self, task: TaskRef) -> Callable[[list[Any]], None]:
        """DriverContext: ``feed_all(events)`` bound to ``task`` (``WorkerCore.batch_feeder``)."""
        core = self.core
        if core is None:
            return lambda events: None
        return core.batch_feeder(task, _monotonic, self.flush_app, self._pending_wakes)

    def timed(self, callback: Callable[[], None]) -> Callable[[], None]:
        """DriverContext: wrap a callback so its run time counts as busy time."""

        def run() -> None:
            t0 = _perf()
            try:
                callback()
            finally:
                self._busy += _perf() - t0

        return run

    # ------------------------------------------------------------------ loop callbacks

    def _on_wake(self) -> None:
        if self.core is None or self.loop is None:
            return  # still starting: the startup drain follows
        t0 = self._cur_start = _perf()
        _, again = self.drain_inbox(_monotonic())
        if again:
            self.loop.call_soon(self._on_wake)
        self.flush_app()
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
        self.flush_app()
        due = self._tick_due = next_tick(self._tick_due, now, self._tick_period)
        if not self.core.stopped:
            self.loop.call_later(due - _monotonic(), self._on_tick)
        self._busy += _perf() - t0

    def _on_deadline(self) -> None:
        t0 = _perf()
        self.fire_deadlines()
        self.flush_app()
        self._busy += _perf() - t0

    def _on_stats(self) -> None:
        assert self.loop is not None and self.core is not None
        self.snapshot()
        self.flush_app()
        if not self.core.stopped:
            self.loop.call_later(self._stats_interval, self._on_stats)

    def take_snapshot(self, now: float) -> WorkerStats:
        """The stats of the window since the last snapshot (then a new window starts)."""
        wall = now - self._win_start
        busy = self._busy - self._win_busy
        if self._cur_start is not None:  # called from inside a callback: count it so far
            busy += _perf() - self._cur_start
        cpu_now = time.thread_time()
        cpu = cpu_now - self._win_cpu
        snap = self.build_stats(
            now,
            utilisation=min(1.0, max(0.0, cpu / wall)) if wall > 0 else 0.0,
            runtime_busy=min(1.0, max(0.0, busy / wall)) if wall > 0 else 0.0,
            loop_lag=max(0.0, self._lag),
            loop_lag_max=max(0.0, self._lag_max),
        )
        self._win_start = now
        self._win_cpu = cpu_now
        self._win_busy = self._busy
        if self._cur_start is not None:
            self._win_busy += _perf() - self._cur_start
        self._lag_max = 0.0
        return snap


def _set_if_pending(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
