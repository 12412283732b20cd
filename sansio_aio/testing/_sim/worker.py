"""One simulated worker: the shell around a real ``WorkerCore``, minus thread and loop.

Theory of operation
-------------------
A :class:`SimWorker` plays the part of ``sansio_aio._worker.Worker`` for the simulated
runtime. It owns the worker's inbox (one real :class:`~sansio_aio._lane.Lane` per
producer: every worker, then the controller), implements the core's ``CoreSink``
(application-bound messages go into the core's ``app_buffer``, after the task outputs
it holds, exactly as the real shell does; messages for a worker go into that worker's
lane from this producer) and keeps the worker's two timers on the fake clock:

* the periodic tick, on the grid ``start + k * tick`` (no drift, no bunching);
* the earliest task deadline, one timer re-armed only for an earlier deadline, as
  ``Worker.arm_deadline`` does.

Each timer callback runs the core and then ``settle`` (the runtime's "run this instant
to completion"). :class:`SimDriverContext` is the ``DriverContext`` of a simulated
worker: ``deliver`` feeds the core (and settles), ``now`` reads the fake clock, and
``loop`` does not exist. This module imports no asyncio beyond the type of ``loop``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from ..._core import WorkerCore
from ..._driver import Driver
from ..._events import TaskRef
from ..._lane import Lane
from ..._stats import WorkerStats
from ..._wire import APP_STOPPED
from .._clock import FakeClock, Timer
from .._errors import HarnessError

__all__ = ["SimDriverContext", "SimWorker"]


def _no_wake() -> None:
    """Lanes need a wake-up callback; the simulation polls every lane when it settles."""


class SimWorker:
    """One simulated worker (see the module docs). Built by ``SimRuntime``."""

    def __init__(
        self,
        wid: int,
        n: int,
        capacity: int,
        *,
        clock: FakeClock,
        outbox: deque[Any],
        settle: Callable[[], None],
        t0: float,
        tick: float,
    ) -> None:
        self.id = wid
        self.inbox = [Lane(capacity, _no_wake) for _ in range(n + 1)]
        self.peers: list[SimWorker] = []  # every worker, set once all exist
        self.core: WorkerCore | None = None
        self.drivers: list[Driver] = []
        self.done = False
        self.wakeups = 0
        self.inbox_peak = 0
        self._clock = clock
        self._outbox = outbox
        self._settle = settle
        self._t0 = t0
        self._tick = tick
        self._tick_k = 0
        self.tick_timer: Timer | None = None
        self.deadline_timer: Timer | None = None
        self._deadline_at: float | None = None

    # ------------------------------------------------------------------ CoreSink

    def to_app(self, item: tuple[Any, ...]) -> None:
        """Queue a message for the controller after the task outputs already buffered."""
        assert self.core is not None
        self.core.app_buffer.append(item)

    def to_worker(self, worker: int, item: tuple[Any, ...], safe: bool) -> bool:
        """Push into ``worker``'s lane from this worker; False if full and not safe."""
        lane = self.peers[worker].inbox[self.id]
        if safe:
            lane.push_force(item)
            return True
        return lane.push(item)

    def arm_deadline(self, when: float) -> None:
        """Make sure the core's ``on_deadline`` runs at ``when``."""
        if self._deadline_at is not None and self._deadline_at <= when:
            return
        if self.deadline_timer is not None:
            self.deadline_timer.cancel()
        self._deadline_at = when
        self.deadline_timer = self._clock.call_at(when, self._on_deadline)

    def stopped(self, unfinished: list[TaskRef]) -> None:
        """Every task ended (or was dropped): report once, stop the timers."""
        if not self.done:
            self.done = True
            # behind the task outputs and ends already buffered, as the real worker does
            if self.core is not None:
                self.core.app_buffer.append((APP_STOPPED, self.id, unfinished))
            else:
                self._outbox.append((APP_STOPPED, self.id, unfinished))
        self.cancel_timers()

    # ------------------------------------------------------------------ work

    def drain_inbox(self, now: float) -> bool:
        """Handle what the lanes hold, lane by lane; move app messages to the outbox."""
        core = self.core
        if core is None:
            return False
        total = 0
        if not self.done:  # a stopped worker reads no more, but hands over what it holds
            for lane in self.inbox:
                q = lane.q
                n = len(q)
                if n:
                    total += n
                    core.handle_from(q, n, now)
        if total:
            self.wakeups += 1
            self.inbox_peak = max(self.inbox_peak, total)
        if core.app_buffer:
            self._outbox.extend(core.app_buffer)
            core.app_buffer = []
        return total > 0

    def start_ticks(self) -> None:
        """Arm the first periodic tick."""
        self._tick_k += 1
        when = self._t0 + self._tick_k * self._tick
        self.tick_timer = self._clock.call_at(when, self._on_tick)

    def cancel_timers(self) -> None:
        """Cancel the tick and deadline timers."""
        for timer in (self.tick_timer, self.deadline_timer):
            if timer is not None:
                timer.cancel()

    def _on_deadline(self) -> None:
        self.deadline_timer = None
        self._deadline_at = None
        if self.core is not None and not self.done:
            self.core.on_deadline(self._clock.now())
        self._settle()

    def _on_tick(self) -> None:
        if self.core is None or self.done:
            return
        self.start_ticks()
        self.core.tick(self._clock.now())
        self._settle()

    def snapshot(self, now: float) -> WorkerStats:
        """Stats from the core's counters (no real time: utilisation and lag are 0)."""
        core = self.core
        assert core is not None
        c = core.counters
        drv: dict[str, int] = {}
        for driver in self.drivers:
            drv.update(driver.stats())
        return WorkerStats(
            worker=self.id,
            tasks=core.task_count(),
            utilisation=0.0,
            runtime_busy=0.0,
            loop_lag=0.0,
            loop_lag_max=0.0,
            inbox_depth=sum(len(lane) for lane in self.inbox),
            inbox_peak=self.inbox_peak,
            wakeups=self.wakeups,
            msgs_in=c.inputs,
            msgs_out=c.outputs,
            drops=c.bus_dropped,
            orphans=c.orphans,
            failures=c.failures,
            ticks=c.ticks,
            last_seen=now,
            drivers=drv,
        )


class SimDriverContext:
    """The ``DriverContext`` of a simulated worker (no event loop)."""

    __slots__ = ("_clock", "_deliver", "_wid")

    def __init__(
        self, wid: int, clock: FakeClock, deliver: Callable[[int, TaskRef, Any], bool]
    ) -> None:
        self._wid = wid
        self._clock = clock
        self._deliver = deliver

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """Not available: simulated workers have no event loop."""
        raise HarnessError(
            "a driver under SimRuntime asked for ctx.loop: simulated workers have no "
            "event loop; use a simulated driver (SimNetwork.udp_driver / tcp_driver)"
        )

    @property
    def worker_id(self) -> int:
        """The worker's id."""
        return self._wid

    def now(self) -> float:
        """The simulated time."""
        return self._clock.now()

    def deliver(self, task: TaskRef, event: Any) -> bool:
        """Feed ``event`` to ``task`` under the drain rule."""
        return self._deliver(self._wid, task, event)

    def timed(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Identity: simulated time is not measured."""
        return callback

    def feeder(self, task: TaskRef) -> Callable[[Any], bool]:
        """``deliver`` bound to ``task`` (the simulation has no faster path to offer)."""
        deliver, wid = self._deliver, self._wid
        return lambda event: deliver(wid, task, event)
