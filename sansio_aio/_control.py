"""The controller's state, shared by the real and the simulated runtime.

Theory of operation
-------------------
:class:`ControllerBase` is what ``Runtime`` (worker threads, asyncio futures) and
``testing.SimRuntime`` (simulated workers, synchronous results) have in common, so
their rules cannot drift apart:

* the :class:`~sansio_aio._ledger.Ledger` (placement, routing, requests per task) and
  the :class:`~sansio_aio._dispatch.Dispatcher` (what the workers report), with the ids
  that tie a waiter to its report;
* the life cycle, one :class:`~sansio_aio.RuntimeState`, moved only by
  :meth:`ControllerBase._set_state`, which derives the rest from it: the ledger takes
  task-emitted spawns only while running, and the route table of the send hot path is
  the ledger's only while running (an empty one otherwise, so a send outside
  ``RUNNING`` falls to the checked path and gets :class:`~sansio_aio.RuntimeClosed`);
* ``async with``: enter starts, exit shuts down (each runtime says what a failing body
  does, :meth:`ControllerBase._leave`);
* what a lost worker means to the application (:meth:`ControllerBase._fail_worker`):
  its tasks end with ``TaskFailed`` naming the cause, what waited on it fails, nothing is
  placed there, and a ``WorkerExited`` event follows. The real runtime calls it when a
  worker process dies; the simulated one when a test kills a worker.

This module imports no asyncio.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self

from ._api import RuntimeState
from ._dispatch import Dispatcher
from ._errors import RuntimeClosed, WorkerDied
from ._events import TaskRef, WorkerExited
from ._lane import Lane
from ._ledger import Ledger
from ._wire import HOST_KIND, EndReport, HostFactory, TaskFactory

__all__ = ["ControllerBase", "exit_reason"]

_NOT_RUNNING: dict[TaskRef, Lane] = {}  # the hot path's route table outside RUNNING

#: Seconds a replacement worker must stay up for its back-off to start over.
BACKOFF_RESET = 10.0


class ControllerBase:
    """The state both runtimes keep (see the module docs). Not a public class."""

    def __init__(
        self,
        kinds: Mapping[str, TaskFactory],
        *,
        workers: int,
        host: HostFactory | None,
        event_capacity: int,
        record: Callable[[str, Any], None] | None = None,
    ) -> None:
        self._kinds = dict(kinds)
        self._n = workers
        self._host = host
        self._ledger = Ledger(workers, set(self._kinds), has_host=host is not None)
        self._dispatch = Dispatcher(self._ledger, event_capacity, record)
        self._events = self._dispatch.events
        self._pending = self._dispatch.pending
        self._ids = itertools.count(1)
        self._state = RuntimeState.NEW
        self._live = _NOT_RUNNING  # live task -> the lane to its worker (the hot path)
        #: Spawn and call ids -> the worker that answers them (failed if it dies).
        self._waiting_on: dict[int, int] = {}
        #: Per worker: times its process was replaced (stats), the back-off step, and
        #: when its current process came up (the back-off starts over after a while up).
        self._restarts = [0] * workers
        self._backoff = [0] * workers
        self._up_since = [0.0] * workers

    @property
    def workers(self) -> int:
        """Number of workers."""
        return self._n

    @property
    def state(self) -> RuntimeState:
        """Where the runtime is in its life cycle."""
        return self._state

    @property
    def running(self) -> bool:
        """True between a successful ``start`` and ``shutdown``."""
        return self._state is RuntimeState.RUNNING

    def _set_state(self, state: RuntimeState) -> None:
        """The one place the life cycle moves; everything that depends on it follows."""
        self._state = state
        running = state is RuntimeState.RUNNING
        self._ledger.accepting = running
        self._live = self._ledger.live if running else _NOT_RUNNING

    def _fail_worker(self, w: int, reason: str, restarting: bool) -> bool:
        """Worker ``w`` is lost: end its tasks, fail what waited on it, tell the application.

        Returns True if events were added for the application (wake its readers).
        """
        ledger = self._ledger
        ledger.down.add(w)
        tb = f"sansio_aio.WorkerDied: {reason}"
        refs = self._placed_on(w)
        got_event = False
        for ref in refs:
            got_event |= self._dispatch.handle(EndReport(ref, tb))
        ledger.load[w] = 0
        ledger.unanswered(w, reason)
        died = WorkerDied(reason)
        for key, on in list(self._waiting_on.items()):
            if on == w:
                del self._waiting_on[key]
                fut = self._pending.pop(key, None)
                if fut is not None and not fut.done():
                    fut.set_exception(died)
        got_event |= self._dispatch.push_event(WorkerExited(w, reason, restarting))
        return got_event

    def _placed_on(self, w: int) -> list[TaskRef]:
        """The live tasks the controller knows on worker ``w`` (its host task last)."""
        refs = [ref for ref in self._ledger.live if ref.worker == w]
        if self._host is not None:
            refs.append(TaskRef(w, HOST_KIND, 0, 0))
        return refs

    def _restart_delay(self, w: int, now: float) -> float:
        """Worker ``w`` died at ``now`` and will be replaced: after how long.

        0.1 s, doubling with each death up to 5 s; a worker that stayed up for
        ``BACKOFF_RESET`` seconds since its last start starts over at 0.1 s.
        """
        if now - self._up_since[w] >= BACKOFF_RESET:
            self._backoff[w] = 0
        self._backoff[w] += 1
        self._restarts[w] += 1
        return float(min(5.0, 0.1 * 2 ** (self._backoff[w] - 1)))

    def _check_running(self) -> None:
        if self._state is not RuntimeState.RUNNING:
            raise RuntimeClosed(
                f"the runtime is {self._state.value}: "
                f"use 'async with {type(self).__name__}(...)' or 'await start()'"
            )

    async def start(self) -> Self:
        """Start the workers; the runtime is ``RUNNING`` when this returns."""
        raise NotImplementedError

    async def _leave(self, failed: bool) -> None:
        """Leave an ``async with`` block (``failed``: the block raised)."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._leave(exc_type is not None)


def exit_reason(worker: int, exitcode: int | None) -> str:
    """Why worker ``worker``'s process ended, in words."""
    if exitcode is None:
        return f"worker {worker} died"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"worker {worker} died: killed by {name}"
    return f"worker {worker} died: its process exited with code {exitcode}"
