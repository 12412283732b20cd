"""The controller's bookkeeping for the simulated runtime.

Theory of operation
-------------------
:class:`SimController` does for ``SimRuntime`` what ``sansio_aio._runtime.Runtime``
does on the application's loop, with the same rules, minus futures and threads:

* **placement**: each worker's count of tasks placed and not yet ended, updated at once
  when a task is placed (so a burst of spawns spreads before any report) and when it
  ends; the least loaded worker wins, ties go round-robin; spawns emitted by tasks go
  through the same balancer;
* **routing**: a message for a live task goes to its worker's controller lane, a
  message for a worker id to that worker's host task; anything else is
  :class:`~sansio_aio._errors.UnknownTarget`;
* **dispatch**: what the workers report (``TaskOutput`` events, replies, spawn results,
  task ends, stop reports) is handled in order: events go to the bounded buffer the
  application reads, results go to ``results`` (by request or spawn id), and a task
  that ends fails the requests still waiting on it.

Every decision is recorded in the trace. This module imports no asyncio.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any

from ..._errors import UnknownTarget
from ..._events import AppEvent, TaskEnded, TaskFailed, TaskOutput, TaskRef
from ..._lane import Lane
from ..._ledger import Ledger, ended_error, spawn_error
from ..._wire import (
    APP_ENDED,
    APP_REPLY,
    APP_REQ_FAILED,
    APP_SPAWN_REQ,
    APP_SPAWNED,
    APP_STOPPED,
    APP_UNKNOWN,
)
from .._clock import FakeClock
from .._trace import Trace
from .worker import SimWorker

__all__ = ["PENDING", "SimController"]

#: The value of a result that has not arrived yet.
PENDING: Any = object()


class SimController(Ledger):
    """Placement, routing and dispatch of application-bound messages (see module docs).

    Placement, routing and per-task requests are the real controller's own
    :class:`~sansio_aio._ledger.Ledger`; this class adds the dispatch and the trace.
    """

    def __init__(
        self,
        n: int,
        kinds: set[str],
        *,
        has_host: bool,
        event_capacity: int,
        clock: FakeClock,
        trace: Trace,
    ) -> None:
        super().__init__(n, kinds, has_host=has_host)
        self._workers: list[SimWorker] = []
        self.ids = itertools.count(1)
        #: Spawn and request results by id: a TaskRef, a value, an exception, or PENDING.
        self.results: dict[int, Any] = {}
        self.events: deque[AppEvent] = deque()
        self.event_capacity = event_capacity
        self.events_dropped = 0
        self.undelivered = 0
        #: Workers that reported they stopped, with the tasks they dropped.
        self.stopped: dict[int, list[TaskRef]] = {}
        self._clock = clock
        self._trace = trace

    # ------------------------------------------------------------------ placement

    @property
    def workers(self) -> list[SimWorker]:
        """The simulated workers (setting them installs the controller's lanes)."""
        return self._workers

    @workers.setter
    def workers(self, workers: list[SimWorker]) -> None:
        self._workers = workers
        self.lanes = [w.inbox[self.n] for w in workers]

    def lane(self, worker: int) -> Lane:
        """The controller's lane into ``worker``'s inbox."""
        return self.lanes[worker]

    # ------------------------------------------------------------------ dispatch

    def dispatch(self, out: deque[Any]) -> None:
        """Handle every message the workers reported, in order."""
        now = self._clock.now()
        trace = self._trace
        results = self.results
        while out:
            item = out.popleft()
            if type(item) is TaskOutput:
                trace.record(now, "app", "event", item)
                self.push_event(item)
                continue
            op = item[0]
            if op == APP_REPLY:
                rid = item[1]
                if results.get(rid) is PENDING:
                    results[rid] = item[2]
                    trace.record(now, "app", "reply", (rid, item[2]))
            elif op == APP_SPAWNED:
                _, sid, ref, error, w = item
                self.spawned(ref, w)
                trace.record(now, "app", "spawned", (ref, error))
                if results.get(sid) is PENDING:
                    results[sid] = ref if ref is not None else spawn_error(str(error))
            elif op == APP_ENDED:
                self._ended(now, item[1], item[2])
            elif op == APP_SPAWN_REQ:
                _, kind, cfg, requester, tag = item
                self.spawn_for_task(kind, cfg, requester, tag)
            elif op == APP_REQ_FAILED:
                _, rid, message = item
                if results.get(rid) is PENDING:
                    results[rid] = UnknownTarget(message)
            elif op == APP_STOPPED:
                _, w, unfinished = item
                self.stopped[w] = list(unfinished)
            elif op == APP_UNKNOWN:
                self.undelivered += 1

    def _ended(self, now: float, ref: TaskRef, tb: str | None) -> None:
        for rid in self.ended(ref):
            if self.results.get(rid) is PENDING:
                self.results[rid] = ended_error(ref, tb)
        self._trace.record(now, "app", "ended" if tb is None else "failed", ref)
        self.push_event(TaskFailed(ref, tb) if tb else TaskEnded(ref))

    def push_event(self, event: AppEvent) -> None:
        """Buffer an event for the application; count it as dropped past the bound."""
        if len(self.events) < self.event_capacity:
            self.events.append(event)
        else:
            self.events_dropped += 1
