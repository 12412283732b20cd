"""The simulated runtime: the API of ``sansio_aio.Runtime`` on simulated time.

Theory of operation
-------------------
:class:`SimRuntime` is :class:`~sansio_aio.testing._sim.engine.SimEngine` (the real worker
cores driven in one thread on a fake clock and a simulated network; see its module for
how an instant is run and how time moves) plus the awaitable face of
:class:`sansio_aio.Runtime`: ``async with``, ``spawn``, ``send``, ``request``,
``next_event``/``next_events``/``events``, ``stats``, ``run_on_worker``, ``shutdown``.

Awaiting something that is not ready yet waits in *simulated* time: with an autojump
clock (the default) the wait steps the clock from timer to timer until the result is
there (or ``max_time`` / the timeout passes); with a manual clock it parks on a future
that the next :meth:`SimEngine.settle` resolves, so another coroutine of the test can
advance the clock. Timeouts (``request``, ``shutdown``) are in simulated seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..._api import RuntimeState
from ..._core import WorkerCore
from ..._dispatch import Result
from ..._errors import RequestTimeout, RuntimeClosed
from ..._events import AppEvent, TaskRef
from ..._stats import RuntimeStats, WorkerStats
from ..._wire import CallCmd, RequestCmd
from .._errors import SimulationStalled
from .engine import SimEngine

if TYPE_CHECKING:
    from ..._api import RuntimeAPI

__all__ = ["SimRuntime"]

R = TypeVar("R")


class SimRuntime(SimEngine):
    """Run tasks on simulated workers, a fake clock and a simulated network.

    The arguments ``kinds``, ``workers``, ``tick``, ``host``, ``inbox_capacity`` and
    ``event_capacity`` mean what they mean for :class:`sansio_aio.Runtime`; both
    runtimes satisfy :class:`sansio_aio.RuntimeAPI`.

    Args:
        drivers: driver factories; default: the simulated network's (UDP, TCP).
        net: the :class:`SimNetwork` (default: a new one with ``seed`` and ``clock``).
        clock: the :class:`FakeClock` (default: the network's, or a new autojump clock).
        seed: seeds the network's random generator when it is created here.
        trace: a :class:`Trace`, ``True`` (the network's) or ``False`` (no tracing).
        strict: raise :class:`ProtocolViolation` when a task breaks the protocol.
        max_time: simulated seconds an autojumping wait may run before it gives up.
        restart: ``"never"`` (the default) or ``"on-failure"``: a worker killed by
            :meth:`kill_worker` is replaced after the real runtime's back-off (as
            ``Runtime(mode="process", restart="on-failure")`` replaces a dead process).
        buggify: the fault points of the tasks (:func:`~sansio_aio.testing.buggify`):
            ``False`` (the default: inert), ``True`` (enabled by ``seed``) or a
            :class:`Buggify` shared with other runtimes (what :meth:`Sim.runtime` passes).
        max_outputs: outputs one drain may pop before the task is failed, as
            ``Runtime(max_outputs=...)`` (default 100,000).
    """

    async def start(self) -> SimRuntime:
        """Start the simulated workers."""
        return self.start_now()

    async def _leave(self, failed: bool) -> None:
        if failed:
            self.close()  # don't mask the test's own failure with a shutdown error
        else:
            await self.shutdown()

    async def _wait(self, predicate: Callable[[], bool], timeout: float | None, what: str) -> bool:
        """Wait in simulated time; True when ``predicate()`` holds, False on timeout."""
        self.settle()
        if predicate():
            return True
        if self.clock.autojump:
            try:
                return self.run_until(predicate, within=timeout)
            except SimulationStalled as exc:
                raise SimulationStalled(f"{what}: {exc}") from None
        limit = None if timeout is None else self.clock.now() + timeout
        loop = asyncio.get_running_loop()
        while not predicate():
            if limit is not None and self.clock.now() >= limit:
                return False
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            await fut
        return True

    async def spawn(self, kind: str, cfg: Any = None, *, worker: int | None = None) -> TaskRef:
        """Start a task of ``kind`` (least-loaded worker unless ``worker``); its reference."""
        return self.spawn_now(kind, cfg, worker=worker)

    async def send(self, target: TaskRef | int, msg: Any) -> None:
        """Send ``msg`` (the inbox always drains within the instant, so it never waits)."""
        self.send_force(target, msg)

    async def request(self, task: TaskRef, msg: Any, *, timeout: float | None = 5.0) -> Any:
        """Send ``Request(id, msg)`` to ``task`` and wait (simulated time) for its reply.

        Raises :class:`RequestTimeout` after ``timeout`` simulated seconds,
        :class:`TaskFailedError` if the task ends first, :class:`UnknownTarget` if it
        does not exist.
        """
        self._check_running()
        ledger = self._ledger
        lane = ledger.live_lane(task)
        rid = next(self._ids)
        fut = self._pending[rid] = Result()
        ledger.track(task, rid)
        self.trace.record(self.clock.now(), "rt", "request", (task, rid, msg))
        lane.push_force(RequestCmd(task, rid, msg))
        try:
            if not await self._wait(fut.done, timeout, f"request to {task}"):
                raise RequestTimeout(f"{task} did not reply within {timeout} simulated s")
            return fut.result()
        finally:
            self._pending.pop(rid, None)
            ledger.untrack(task, rid)

    async def run_on_worker(self, worker: int, fn: Callable[[WorkerCore], R]) -> R:
        """Run ``fn(core)`` on worker ``worker`` (at the current instant); its result."""
        self._check_running()
        self._ledger.check_worker(worker)
        cid = next(self._ids)
        fut = self._pending[cid] = Result()
        self._waiting_on[cid] = worker  # failed with WorkerDied if the worker died
        self._ledger.lanes[worker].push_force(CallCmd(cid, fn))
        try:
            if not await self._wait(fut.done, None, f"run_on_worker({worker})"):
                raise SimulationStalled(f"worker {worker} did not run the call")
            value: R = fut.result()
            return value
        finally:
            self._pending.pop(cid, None)
            self._waiting_on.pop(cid, None)

    async def next_events(self) -> list[AppEvent]:
        """Wait (simulated time) for at least one event; return every pending one.

        Returns ``[]`` once the runtime has shut down and every event was read.
        """
        if not self._events and self._state is RuntimeState.CLOSED:
            return []
        await self._wait_event()
        return self.poll_events()

    async def next_event(self) -> AppEvent:
        """Wait (simulated time) for the next event; raises :class:`RuntimeClosed` after
        shutdown, :class:`SimulationStalled` if no event can come."""
        if not self._events and self._state is RuntimeState.CLOSED:
            raise RuntimeClosed("the runtime has shut down and every event was read")
        await self._wait_event()
        return self._events.popleft()

    async def _wait_event(self) -> None:
        if not await self._wait(lambda: bool(self._events), None, "waiting for an event"):
            raise SimulationStalled(
                f"no event within {self.max_time} simulated seconds (t={self.clock.now()!r})"
            )

    async def events(self) -> AsyncIterator[AppEvent]:
        """Every event as an async iterator; ends after shutdown once drained."""
        while True:
            if not self._events and self._state is RuntimeState.CLOSED:
                return
            yield await self.next_event()

    async def stats(self, *, fresh: bool = False, timeout: float = 1.0) -> RuntimeStats:
        """Worker snapshots built from the cores' counters, always fresh (``fresh`` and
        ``timeout`` are accepted for :class:`sansio_aio.RuntimeAPI`; utilisation, busy
        share and lag are 0: simulated time is not measured). A dead worker's is the one
        taken when it died; ``restarts`` and ``relay_drops`` count as in process mode."""
        self.settle()
        now = self.clock.now()
        snaps: list[WorkerStats] = []
        for sw in self._workers:
            if sw.core is not None:
                snaps.append(sw.build_stats(now))
            elif sw.worker_id in self._last_stats:
                snaps.append(self._last_stats[sw.worker_id])
        return RuntimeStats(
            workers=tuple(snaps),
            placed=tuple(self._ledger.load),
            events_dropped=self._dispatch.events_dropped,
            events_pending=len(self._events),
            restarts=tuple(self._restarts),
            relay_drops=self._relay_drops,
        )

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Stop gracefully, in simulated time (the clock jumps even if manual).

        Every task gets ``on_shutdown`` and drains; outputs emitted meanwhile are still
        delivered. Raises :class:`ShutdownTimeout` naming the tasks still running after
        ``timeout`` simulated seconds; they are dropped and the runtime stopped anyway.
        """
        self.shutdown_now(timeout)


if TYPE_CHECKING:

    def _conforms(rt: SimRuntime) -> RuntimeAPI:
        return rt  # mypy checks that SimRuntime satisfies RuntimeAPI
