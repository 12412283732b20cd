"""The messages that cross between the controller and the workers, as types.

Theory of operation
-------------------
Everything that crosses a :class:`~sansio_aio._lane.Lane` is plain, picklable data, so
that a process transport can carry the same messages as the in-process deques:

* **to a worker** (from the controller, or from another worker): the commands below,
  each a ``NamedTuple`` the worker core dispatches on by exact type. The one hot path,
  an application message to a task, travels as a bare ``(ref, msg)`` tuple: building a
  ``NamedTuple`` costs a Python-level ``__new__`` per message, a tuple display costs
  nothing (``bench/controller_echo.py``), and ``type(item) is tuple`` tells it apart
  from every command.
* **to the controller** (from a worker): the reports below, again ``NamedTuple``\\ s, and
  the task outputs, which travel as the public :class:`~sansio_aio.TaskOutput` event
  itself, or as a plain ``list`` of them when a worker callback produced nothing else
  (one lane item for a whole batch).

Nothing here holds a closure, a future or a lock: results come back as reports that
name the id the controller is waiting on (spawns, requests, calls). ``CallCmd.fn`` is a
callable the application chose to run on the worker; across a process boundary it must
be picklable (a module-level function), in threads any callable does.

This module imports no asyncio.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from ._events import TaskRef
from ._task import TaskProtocol

if TYPE_CHECKING:
    from ._stats import WorkerStats

__all__ = [
    "HOST_KIND",
    "BroadcastCmd",
    "BusCmd",
    "CallCmd",
    "CallResult",
    "CoreSink",
    "Credit",
    "DirectCmd",
    "EndReport",
    "ForceStopCmd",
    "HostCmd",
    "HostFactory",
    "HubCmd",
    "HubUpdate",
    "Relay",
    "ReplyReport",
    "RequestCmd",
    "RequestFailed",
    "ShutdownCmd",
    "SpawnCmd",
    "SpawnFailure",
    "SpawnReport",
    "SpawnRequest",
    "SpawnedCmd",
    "StartReport",
    "StatsReport",
    "StopReport",
    "TaskFactory",
    "Undelivered",
]

#: The kind name of each worker's host task (receives worker messages and broadcasts).
HOST_KIND = "host"

TaskFactory = Callable[[Any], TaskProtocol]
HostFactory = Callable[[int], TaskProtocol]


class SpawnFailure(enum.Enum):
    """Why a spawn did not happen (carried next to the human-readable message)."""

    #: No factory is registered under the kind's name.
    UNKNOWN_KIND = "unknown-kind"
    #: The runtime is shutting down and takes no new task.
    CLOSING = "closing"
    #: The kind's factory raised.
    CONSTRUCTOR_RAISED = "constructor-raised"


# ----------------------------------------------------------------- to a worker


class HostCmd(NamedTuple):
    """An application message for the worker's host task."""

    msg: Any


class RequestCmd(NamedTuple):
    """An application request to a task; answered by a :class:`ReplyReport`."""

    ref: TaskRef
    rid: int
    msg: Any


class SpawnCmd(NamedTuple):
    """Create a task of ``kind`` from ``cfg``.

    ``sid`` is the controller's id for the answer (``-1`` when a task asked for it);
    ``requester`` and ``tag`` are the asking task and its tag (answered with a
    ``Spawned`` input when ``tag`` is not ``None``).
    """

    sid: int
    kind: str
    cfg: Any
    requester: TaskRef | None
    tag: Hashable


class SpawnedCmd(NamedTuple):
    """Tell ``requester`` (on this worker) how its ``Spawn(tag=...)`` went."""

    requester: TaskRef
    tag: Hashable
    ref: TaskRef | None
    error: str | None


class BusCmd(NamedTuple):
    """A bus message for this worker's subscribers of ``channel``."""

    channel: Hashable
    source: TaskRef
    msg: Any


class BroadcastCmd(NamedTuple):
    """A broadcast from worker ``source`` for this worker's host task."""

    source: int
    msg: Any


class DirectCmd(NamedTuple):
    """A task-to-task message for ``target`` (``SendTo``)."""

    target: TaskRef
    source: TaskRef
    msg: Any


class ShutdownCmd(NamedTuple):
    """Begin a graceful stop: ``on_shutdown`` on every task, stop once all are empty."""


class ForceStopCmd(NamedTuple):
    """Stop now: drop every task (their resources are still released)."""


class CallCmd(NamedTuple):
    """Run ``fn(core)`` on the worker and answer with a :class:`CallResult`."""

    cid: int
    fn: Callable[[Any], Any]


# ----------------------------------------------------------- to the controller


class ReplyReport(NamedTuple):
    """A task's ``Reply`` to request ``rid``."""

    rid: int
    msg: Any


class RequestFailed(NamedTuple):
    """Request ``rid`` reached no task (it had ended)."""

    rid: int
    message: str


class SpawnReport(NamedTuple):
    """The answer to ``SpawnCmd(sid, ...)``: ``ref``, or ``failure`` with ``error``."""

    sid: int
    ref: TaskRef | None
    failure: SpawnFailure | None
    error: str | None
    worker: int


class SpawnRequest(NamedTuple):
    """Task ``requester`` emitted ``Spawn(kind, cfg, tag)``: the controller places it."""

    kind: str
    cfg: Any
    requester: TaskRef
    tag: Hashable


class EndReport(NamedTuple):
    """Task ``ref`` ended; ``traceback`` is set when it raised."""

    ref: TaskRef
    traceback: str | None


class Undelivered(NamedTuple):
    """A message arrived for a task that is gone (counted by the controller)."""

    description: str


class StartReport(NamedTuple):
    """Worker ``worker`` is running (``error`` is None) or could not start."""

    worker: int
    error: str | None


class StopReport(NamedTuple):
    """Worker ``worker`` stopped; ``unfinished`` tasks were dropped by a forced stop."""

    worker: int
    unfinished: list[TaskRef]


class StatsReport(NamedTuple):
    """A fresh stats snapshot of one worker."""

    snapshot: WorkerStats


class CallResult(NamedTuple):
    """The outcome of ``CallCmd(cid, fn)``: ``fn``'s value, or the exception it raised."""

    cid: int
    ok: bool
    value: Any


# ------------------------------------------------- between processes (process mode)


class Relay(NamedTuple):
    """Commands for another worker, sent through the controller (process mode).

    ``payload`` is the pickled list of ``n`` commands for worker ``dest``: the
    controller forwards it as it is (it never unpickles them), and the receiver unpickles
    and handles them in order. ``safe``: past the receiver's bound rather than dropped.
    """

    dest: int
    payload: bytes
    n: int
    safe: bool


class HubUpdate(NamedTuple):
    """``worker`` gained (``add``) or lost its first/last subscriber of ``channel``."""

    channel: Hashable
    worker: int
    add: bool


class HubCmd(NamedTuple):
    """Apply a route change to this worker's copy of the bus routes.

    ``channel`` ``None`` with ``add`` false drops every route of ``worker`` (it died).
    """

    channel: Hashable
    worker: int
    add: bool


class Credit(NamedTuple):
    """The sender handled ``n`` more of the items the controller sent it."""

    n: int


class CoreSink(Protocol):
    """Where a ``WorkerCore`` sends what leaves it. Implemented by the worker shell."""

    def to_app(self, item: Any) -> None:
        """Hand one report to the controller (never blocks, never drops)."""

    def to_worker(self, worker: int, item: Any, safe: bool) -> bool:
        """Hand one command to another worker; False if refused (full and not safe)."""

    def arm_deadline(self, when: float) -> None:
        """Make sure ``on_deadline`` runs at ``when`` (earlier than anything armed)."""

    def stopped(self, unfinished: list[TaskRef]) -> None:
        """The worker is done: every task ended (or, on a forced stop, ``unfinished``
        were dropped). The shell reports it and stops the worker."""

    def snapshot(self) -> None:
        """Send a fresh stats snapshot to the controller now."""
