"""What the controller does with the workers' reports, shared by the real and simulated runtime.

Theory of operation
-------------------
Workers report to the controller through their outbox lanes (``_wire``'s reports, task
outputs). :class:`Dispatcher` handles each one, in arrival order, with one rule per
report type:

* task outputs (one ``TaskOutput`` or a ``list`` of them) go to the bounded event buffer
  the application reads; past ``event_capacity`` they are dropped and counted;
* replies, spawn answers and ``run_on_worker`` results resolve the waiter registered under
  their id in :attr:`Dispatcher.pending`;
* a task that ends (``EndReport``) is forgotten by the :class:`~sansio_aio._ledger.Ledger`,
  fails the requests still waiting on it, and becomes a ``TaskEnded``/``TaskFailed`` event;
* a task's ``Spawn`` is placed by the ledger's balancer;
* start and stop reports resolve the per-worker waiters in :attr:`started` and
  :attr:`stopped`; stats reports replace the worker's snapshot.

A waiter is anything with ``done``/``set_result``/``set_exception``: ``Runtime`` registers
``asyncio`` futures, ``SimRuntime`` the synchronous :class:`Result`. That is the whole
difference between the two controllers' dispatch, so it is written once here. The
optional ``record`` hook lets the simulated runtime trace each decision. This module
imports no asyncio.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ._errors import ConfigError, RuntimeClosed, TaskFailedError, UnknownKind, UnknownTarget
from ._events import AppEvent, TaskEnded, TaskFailed, TaskOutput, TaskRef
from ._ledger import Ledger
from ._stats import WorkerStats
from ._wire import (
    CallResult,
    EndReport,
    ReplyReport,
    RequestFailed,
    SpawnFailure,
    SpawnReport,
    SpawnRequest,
    StartReport,
    StatsReport,
    StopReport,
    Undelivered,
)

__all__ = ["Dispatcher", "Resolvable", "Result", "ended_error", "spawn_error"]

log = logging.getLogger("sansio_aio")


class Resolvable(Protocol):
    """A waiter: an ``asyncio.Future`` or a :class:`Result`."""

    def done(self) -> bool:
        """True once resolved."""
        ...

    def set_result(self, value: Any, /) -> None:
        """Resolve with a value."""

    def set_exception(self, exc: BaseException, /) -> None:
        """Resolve with an exception."""


class Result:
    """A synchronous waiter (the simulated runtime's future)."""

    __slots__ = ("_exc", "_set", "_value")

    def __init__(self) -> None:
        self._set = False
        self._value: Any = None
        self._exc: BaseException | None = None

    def done(self) -> bool:
        """True once resolved."""
        return self._set

    def set_result(self, value: Any, /) -> None:
        """Resolve with ``value``."""
        self._set, self._value = True, value

    def set_exception(self, exc: BaseException, /) -> None:
        """Resolve with ``exc``."""
        self._set, self._exc = True, exc

    def result(self) -> Any:
        """The value, or raise the exception (the result must be done)."""
        assert self._set, "result() of a pending Result"
        if self._exc is not None:
            raise self._exc
        return self._value


def spawn_error(failure: SpawnFailure | None, error: str | None) -> Exception:
    """The exception ``spawn`` raises for a worker's spawn failure."""
    message = error or "spawn failed"
    if failure is SpawnFailure.UNKNOWN_KIND:
        return UnknownKind(message)
    if failure is SpawnFailure.CLOSING:
        return RuntimeClosed(message)
    return TaskFailedError(message, None)


def ended_error(ref: TaskRef, tb: str | None) -> TaskFailedError:
    """The error of a request whose task failed (``tb`` set) or ended before replying."""
    if tb:
        lines = tb.strip().splitlines()
        return TaskFailedError(f"{ref} failed: {lines[-1] if lines else 'unknown error'}", ref, tb)
    return TaskFailedError(f"{ref} ended without replying", ref, "")


class Dispatcher:
    """The controller's handling of worker reports (see the module docs)."""

    def __init__(
        self,
        ledger: Ledger,
        event_capacity: int,
        record: Callable[[str, Any], None] | None = None,
    ) -> None:
        self.ledger = ledger
        #: Waiters by id (spawns, requests, calls share one id space).
        self.pending: dict[int, Resolvable] = {}
        #: Per worker: resolved when it runs (or fails to start).
        self.started: dict[int, Resolvable] = {}
        #: Per worker: resolved with the tasks a forced stop dropped when it stops.
        self.stopped: dict[int, Resolvable] = {}
        #: The latest stats snapshot of each worker.
        self.snapshots: dict[int, WorkerStats] = {}
        #: Events for the application, oldest first.
        self.events: deque[AppEvent] = deque()
        self.event_capacity = event_capacity
        #: Events dropped because the buffer was full.
        self.events_dropped = 0
        #: Messages that arrived for tasks that had ended.
        self.undelivered = 0
        self._record = record
        self._handlers: dict[type, Callable[[Any], bool]] = {
            TaskOutput: self._output,
            list: self._outputs,
            ReplyReport: self._reply,
            SpawnReport: self._spawned,
            EndReport: self._ended,
            SpawnRequest: self._spawn_request,
            RequestFailed: self._request_failed,
            StartReport: self._start,
            StopReport: self._stop,
            StatsReport: self._stats,
            CallResult: self._call_result,
            Undelivered: self._undelivered,
        }

    def handle(self, item: Any) -> bool:
        """Handle one report; True if it added an event for the application."""
        handler = self._handlers.get(type(item))
        if handler is None:
            log.error("controller: unknown report %r", item)
            return False
        return handler(item)

    def push_event(self, event: AppEvent) -> bool:
        """Buffer an event for the application; count it as dropped past the bound."""
        if len(self.events) < self.event_capacity:
            self.events.append(event)
            return True
        self.events_dropped += 1
        return False

    def fail_all(self, exc: BaseException) -> None:
        """Fail every waiter still pending (the runtime closed)."""
        waiters = list(self.pending.values())
        self.pending.clear()
        self.ledger.req_by_task.clear()
        for fut in waiters:
            if not fut.done():
                fut.set_exception(exc)

    # ------------------------------------------------------------------ handlers

    def _resolve(self, key: int, value: Any) -> Resolvable | None:
        fut = self.pending.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(value)
            return fut
        return None

    def _fail(self, key: int, exc: BaseException) -> None:
        fut = self.pending.pop(key, None)
        if fut is not None and not fut.done():
            if isinstance(exc, StopIteration | StopAsyncIteration):
                # a Future refuses these (they would end the awaiting coroutine's frame
                # silently); before this the waiter hung for good
                wrapped = RuntimeError(f"{type(exc).__name__} raised on the worker: {exc!r}")
                wrapped.__cause__ = exc
                exc = wrapped
            fut.set_exception(exc)

    def _output(self, item: TaskOutput) -> bool:
        if self._record is not None:
            self._record("event", item)
        return self.push_event(item)

    def _outputs(self, items: list[TaskOutput]) -> bool:
        if self._record is not None:
            for item in items:
                self._record("event", item)
        events = self.events
        room = self.event_capacity - len(events)
        if len(items) <= room:
            events.extend(items)
        else:
            events.extend(items[: max(room, 0)])
            self.events_dropped += len(items) - max(room, 0)
        return room > 0

    def _reply(self, item: ReplyReport) -> bool:
        if self._resolve(item.rid, item.msg) is not None and self._record is not None:
            self._record("reply", (item.rid, item.msg))
        return False

    def _spawned(self, item: SpawnReport) -> bool:
        self.ledger.spawned(item.ref, item.worker)
        if item.sid == -1:  # a spawn a task asked for
            self.ledger.answered(item.worker)
        if self._record is not None:
            self._record("spawned", (item.ref, item.error))
        if item.ref is not None:
            self._resolve(item.sid, item.ref)
        else:
            self._fail(item.sid, spawn_error(item.failure, item.error))
        return False

    def _ended(self, item: EndReport) -> bool:
        ref, tb = item
        for rid in self.ledger.ended(ref):
            self._fail(rid, ended_error(ref, tb))
        if self._record is not None:
            self._record("ended" if tb is None else "failed", ref)
        return self.push_event(TaskFailed(ref, tb) if tb else TaskEnded(ref))

    def _spawn_request(self, item: SpawnRequest) -> bool:
        error = self.ledger.spawn_for_task(item.kind, item.cfg, item.requester, item.tag)
        if error is not None and item.tag is None:
            log.warning("spawn of %r requested by %s failed: %s", item.kind, item.requester, error)
        return False

    def _request_failed(self, item: RequestFailed) -> bool:
        self._fail(item.rid, UnknownTarget(item.message))
        return False

    def _start(self, item: StartReport) -> bool:
        fut = self.started.get(item.worker)
        if fut is not None and not fut.done():
            if item.error is None:
                fut.set_result(None)
            else:
                fut.set_exception(ConfigError(item.error))
                stopped = self.stopped.get(item.worker)
                if stopped is not None and not stopped.done():
                    stopped.set_result([])
        return False

    def _stop(self, item: StopReport) -> bool:
        fut = self.stopped.get(item.worker)
        if fut is not None and not fut.done():
            fut.set_result(list(item.unfinished))
        return False

    def _stats(self, item: StatsReport) -> bool:
        self.snapshots[item.snapshot.worker] = item.snapshot
        return False

    def _call_result(self, item: CallResult) -> bool:
        if item.ok:
            self._resolve(item.cid, item.value)
        else:
            self._fail(item.cid, item.value)
        return False

    def _undelivered(self, item: Undelivered) -> bool:
        self.undelivered += 1
        log.debug("undelivered: %s", item.description)
        return False
