"""The controller's bookkeeping for the simulated runtime.

Theory of operation
-------------------
:class:`SimController` does for ``SimRuntime`` what ``sansio_aio.controller.Runtime``
does on the application's loop, with the same rules, minus futures and threads:

* **placement**: each worker's count of tasks placed and not yet ended, updated at once
  when a task is placed (so a burst of spawns spreads before any report) and when it
  ends; the least loaded worker wins, ties go round-robin; spawns emitted by tasks go
  through the same balancer;
* **routing**: a message for a live task goes to its worker's controller lane, a
  message for a worker id to that worker's host task; anything else is
  :class:`~sansio_aio.errors.UnknownTarget`;
* **dispatch**: what the workers report (``TaskOutput`` events, replies, spawn results,
  task ends, stop reports) is handled in order: events go to the bounded buffer the
  application reads, results go to ``results`` (by request or spawn id), and a task
  that ends fails the requests still waiting on it.

Every decision is recorded in the trace. This module imports no asyncio.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Hashable
from typing import Any

from ..core import (
    APP_ENDED,
    APP_REPLY,
    APP_REQ_FAILED,
    APP_SPAWN_REQ,
    APP_SPAWNED,
    APP_STOPPED,
    APP_UNKNOWN,
    HOST_KIND,
    OP_EXT,
    OP_HOST,
    OP_SPAWN,
    OP_SPAWNED,
)
from ..errors import RuntimeClosed, TaskFailedError, UnknownKind, UnknownTarget
from ..events import TaskEnded, TaskFailed, TaskOutput, TaskRef
from ..handoff import Lane
from .clock import FakeClock
from .simworker import SimWorker
from .trace import Trace

__all__ = ["PENDING", "AppEvent", "SimController"]

AppEvent = TaskOutput | TaskEnded | TaskFailed

#: The value of a result that has not arrived yet.
PENDING: Any = object()


class SimController:
    """Placement, routing and dispatch of application-bound messages (see module docs)."""

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
        self.n = n
        self.kinds = kinds
        self.has_host = has_host
        self.workers: list[SimWorker] = []
        self.accepting = False  # spawns emitted by tasks are refused unless running
        self.load = [0] * n
        self.rr = 0
        self.live: set[TaskRef] = set()
        self.ids = itertools.count(1)
        #: Spawn and request results by id: a TaskRef, a value, an exception, or PENDING.
        self.results: dict[int, Any] = {}
        self.req_by_task: dict[TaskRef, set[int]] = {}
        self.events: deque[AppEvent] = deque()
        self.event_capacity = event_capacity
        self.events_dropped = 0
        self.undelivered = 0
        #: Workers that reported they stopped, with the tasks they dropped.
        self.stopped: dict[int, list[TaskRef]] = {}
        self._clock = clock
        self._trace = trace

    # ------------------------------------------------------------------ placement

    def pick(self) -> int:
        """The least-loaded worker; ties round-robin (the controller's rule)."""
        load = self.load
        best = min(load)
        for i in range(self.n):
            w = (self.rr + i) % self.n
            if load[w] == best:
                self.rr = (w + 1) % self.n
                return w
        return 0  # pragma: no cover

    def lane(self, worker: int) -> Lane:
        """The controller's lane into ``worker``'s inbox."""
        return self.workers[worker].inbox[self.n]

    def route(self, target: TaskRef | int, msg: Any) -> tuple[Lane, tuple[Any, ...]]:
        """The lane and inbox message for ``msg`` to a task or a worker's host task."""
        n = self.n
        if isinstance(target, int):
            if not 0 <= target < n:
                raise UnknownTarget(f"no worker {target}; workers are 0..{n - 1}")
            if not self.has_host:
                raise UnknownTarget(
                    "messages to a worker go to its host task; pass host=... to SimRuntime"
                )
            return self.lane(target), (OP_HOST, msg)
        if target not in self.live:
            if target.kind == HOST_KIND and self.has_host and 0 <= target.worker < n:
                return self.lane(target.worker), (OP_HOST, msg)
            raise UnknownTarget(f"no live task {target!r}")
        return self.lane(target.worker), (OP_EXT, target, msg)

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
                if ref is not None:
                    self.live.add(ref)
                elif self.load[w] > 0:
                    self.load[w] -= 1  # the placement did not happen
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
        if ref.kind != HOST_KIND:
            self.live.discard(ref)
            if 0 <= ref.worker < self.n and self.load[ref.worker] > 0:
                self.load[ref.worker] -= 1
        for rid in self.req_by_task.pop(ref, ()):
            if self.results.get(rid) is PENDING:
                msg = f"{ref} failed" if tb else f"{ref} ended without replying"
                self.results[rid] = TaskFailedError(msg, ref, tb or "")
        self._trace.record(now, "app", "ended" if tb is None else "failed", ref)
        self.push_event(TaskFailed(ref, tb) if tb else TaskEnded(ref))

    def push_event(self, event: AppEvent) -> None:
        """Buffer an event for the application; count it as dropped past the bound."""
        if len(self.events) < self.event_capacity:
            self.events.append(event)
        else:
            self.events_dropped += 1

    def spawn_for_task(self, kind: str, cfg: Any, requester: TaskRef, tag: Hashable) -> None:
        """A ``Spawn`` emitted by a task: place it like any spawn, or answer the error."""
        if not self.accepting or kind not in self.kinds:
            error = f"unknown task kind {kind!r}" if kind not in self.kinds else "runtime closing"
            if tag is not None and 0 <= requester.worker < self.n:
                self.lane(requester.worker).push_force((OP_SPAWNED, requester, tag, None, error))
            return
        worker = self.pick()
        self.load[worker] += 1
        self.lane(worker).push_force((OP_SPAWN, -1, kind, cfg, requester, tag))


def spawn_error(error: str) -> Exception:
    """The exception ``spawn`` raises for a worker's spawn error message."""
    if error.startswith("unknown task kind"):
        return UnknownKind(error)
    if "shutting down" in error:
        return RuntimeClosed(error)
    return TaskFailedError(error, None)
