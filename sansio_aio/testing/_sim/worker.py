"""One simulated worker: the real worker shell around a real ``WorkerCore``, on a fake clock.

Theory of operation
-------------------
A :class:`SimWorker` is :class:`~sansio_aio._shell.WorkerShell` (the inbox lanes, the
core's sink, the hand-off to the controller, driver deliveries and the stats snapshot,
exactly as the thread worker has them) with the fake clock as its scheduler:

* the periodic tick, on the grid ``start + k * tick`` (no drift, no bunching);
* the earliest task deadline, one timer re-armed only for an earlier deadline (the
  shell's rule);
* a driver input fed from the top of the stack asks the engine to settle the instant.

Every timer callback runs the core and then ``settle`` (the engine's "run this instant
to completion"). Inbox lanes are polled by the engine, so their wake-up does nothing.

A worker can be killed (:meth:`SimWorker.kill`, what ``SimRuntime.kill_worker`` does to
it), as a worker process is by a signal: what its finished callbacks produced is handed
over (a real worker writes it at the end of each callback), then its core and tasks are
dropped without ``on_shutdown``, its drivers are closed as the kernel closes a dead
process's sockets (UDP ports are free again; a TCP connection ends with FIN, so the peer
reads end-of-file, or with RST when data it had received was left unread; listeners
vanish, so connects are refused) and it reads nothing more: what reaches its inbox from
then on is discarded (:meth:`SimWorker.discard_inbox`).
The timer callbacks and driver deliveries run task code from the clock, outside the
engine's instant: with fault points on (``enter``) each makes the run's
:class:`~sansio_aio.testing.Buggify` current while it runs.
This module imports no asyncio beyond the type of ``DriverContext.loop``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from contextvars import Token
from typing import TYPE_CHECKING, Any

from ..._events import TaskRef
from ..._lane import Lane
from ..._shell import Timer, WorkerShell
from .._clock import FakeClock
from .._errors import HarnessError
from .tcp import SimTcpDriver

if TYPE_CHECKING:
    import asyncio

    from ..._driver import Driver
    from .._buggify import Buggify

    Enter = Callable[[], Token[Buggify | None] | None]

__all__ = ["SimWorker"]

log = logging.getLogger("sansio_aio")


def _no_wake() -> None:
    """Lanes need a wake-up callback; the simulation polls every lane when it settles."""


class SimWorker(WorkerShell):
    """One simulated worker (see the module docs). Built by ``SimRuntime``."""

    def __init__(
        self,
        worker_id: int,
        n_workers: int,
        capacity: int,
        *,
        clock: FakeClock,
        outbox: Lane,
        settle: Callable[[], None],
        delivered: Callable[[], None],
        t0: float,
        tick: float,
        enter: Enter | None = None,
    ) -> None:
        super().__init__(worker_id, n_workers, capacity, _no_wake)
        self.outbox = outbox
        #: True once the worker stopped (or the runtime closed): it reads no more input.
        self.done = False
        #: True once the worker was killed: no core, no drivers, its inbox discarded.
        self.dead = False
        #: True once the controller knows it is dead (messages to it are then counted
        #: as the controller's relay drops, as in process mode).
        self.noticed = False
        self._clock = clock
        self._settle = settle
        self._after_delivery = delivered
        self._t0 = t0
        self._tick = tick
        self._tick_k = 0
        self._tick_timer: Timer | None = None
        #: Makes the run's fault points current (``None``: they are off).
        self._enter = enter

    # ------------------------------------------------------------------ scheduler hooks

    def now(self) -> float:
        """The simulated time."""
        return self._clock.now()

    def _call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        return self._clock.call_at(when, callback)

    def _delivered(self) -> None:
        self._after_delivery()

    def _halt(self) -> None:
        self.done = True
        self.cancel_timers()

    def driver_loop(self) -> asyncio.AbstractEventLoop:
        """Not available: simulated workers have no event loop."""
        raise HarnessError(
            "a driver under SimRuntime asked for ctx.loop: simulated workers have no "
            "event loop; use a simulated driver (SimNetwork.udp_driver / tcp_driver)"
        )

    def deliver(self, task: TaskRef, event: Any) -> bool:
        """DriverContext: feed ``event`` to ``task`` (False once the worker stopped)."""
        if self.done:
            return False
        enter = self._enter
        if enter is None:
            return super().deliver(task, event)
        token = enter()
        try:
            return super().deliver(task, event)
        finally:
            if token is not None:
                token.var.reset(token)

    # ------------------------------------------------------------------ work

    def pump(self, now: float) -> bool:
        """Handle what the lanes hold and hand the results over; True if there was any."""
        if self.core is None:
            return False
        total = 0
        if not self.done:  # a stopped worker reads no more, but hands over what it holds
            total, _ = self.drain_inbox(now)
        self.flush_app()
        return total > 0

    def start_ticks(self) -> None:
        """Arm the next periodic tick."""
        self._tick_k += 1
        when = self._t0 + self._tick_k * self._tick
        self._tick_timer = self._clock.call_at(when, self._on_tick)

    def set_peer(self, worker: int, lane: Lane) -> None:
        """Replace this worker's lane into worker ``worker`` (a replacement worker's inbox),
        its wake-up deferred as :meth:`set_peers` does."""
        lane.wake = functools.partial(self._pending_wakes.add, lane.wake)
        self.peers[worker] = lane

    def kill(self) -> None:
        """Die as a killed process: hand over what finished callbacks produced, then drop
        the core and its tasks (no ``on_shutdown``, no per-task release), close the
        drivers and read nothing more."""
        if self.dead:
            return
        if self.core is not None:
            self.flush_app()  # a real worker wrote this at the end of each callback
        self.dead = True
        self.done = True
        self.cancel_timers()
        self._deadline_timer = self._deadline_at = None
        self.core = None
        drivers, self.drivers = self.drivers, []
        for driver in drivers:
            try:
                _process_died(driver)
            except Exception:
                log.exception("driver %r failed to close", driver)

    def discard_inbox(self) -> int:
        """Drop what reached a dead worker's inbox; how many of those came from workers."""
        from_peers = 0
        last = len(self.inbox) - 1
        for producer, lane in enumerate(self.inbox):
            q = lane.q
            if q:
                if producer != last:
                    from_peers += len(q)
                q.clear()
        return from_peers

    def cancel_timers(self) -> None:
        """Cancel the tick and deadline timers."""
        for timer in (self._tick_timer, self._deadline_timer):
            if timer is not None:
                timer.cancel()

    def _on_deadline(self) -> None:
        token = self._enter() if self._enter is not None else None
        try:
            if self.core is not None and not self.done:
                self.fire_deadlines()
            else:
                self._deadline_timer = self._deadline_at = None
            self._settle()
        finally:
            if token is not None:
                token.var.reset(token)

    def _on_tick(self) -> None:
        if self.core is None or self.done:
            return
        token = self._enter() if self._enter is not None else None
        try:
            self.start_ticks()
            self.core.tick(self._clock.now())
            self._settle()
        finally:
            if token is not None:
                token.var.reset(token)


def _process_died(driver: Driver) -> None:
    """Close what ``driver`` holds as the kernel closes the sockets of a dead process
    (``close()`` is a runtime closing its drivers: the simulated TCP driver would reset
    every connection; a killed process's connections end as :meth:`SimTcpDriver.crash`
    says)."""
    if isinstance(driver, SimTcpDriver):
        driver.crash()
    driver.close()  # the rest: UDP sockets (their ports free again), other drivers
