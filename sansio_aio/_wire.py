"""The messages between the controller and the workers, and the core's outlet.

Inbox messages (controller or another worker -> a worker) are tuples whose first item is
an ``OP_*`` code; application-bound messages (a worker -> the controller) are tuples
starting with an ``APP_*`` code, except task outputs, which travel as the
``TaskOutput`` event itself. Everything is plain data, so a later process-based
transport can pickle it. This module imports no asyncio.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ._events import TaskRef
from ._task import TaskProtocol

__all__ = ["HOST_KIND", "CoreSink", "HostFactory", "TaskFactory"]

#: The kind name of each worker's host task (receives worker messages and broadcasts).
HOST_KIND = "host"

TaskFactory = Callable[[Any], TaskProtocol]
HostFactory = Callable[[int], TaskProtocol]

# Inbox operations (controller or another worker -> this worker).
OP_EXT = 0  # (OP_EXT, ref, msg)
OP_HOST = 1  # (OP_HOST, msg)
OP_REQUEST = 2  # (OP_REQUEST, ref, request_id, msg)
OP_SPAWN = 3  # (OP_SPAWN, spawn_id, kind, cfg, requester | None, tag)
OP_BUS = 4  # (OP_BUS, channel, source, msg)
OP_BCAST = 5  # (OP_BCAST, source_worker, msg)
OP_DIRECT = 6  # (OP_DIRECT, target, source, msg)
OP_SPAWNED = 7  # (OP_SPAWNED, requester, tag, ref | None, error | None)
OP_SHUTDOWN = 8  # (OP_SHUTDOWN,)
OP_FORCE_STOP = 9  # (OP_FORCE_STOP,)
OP_CALL = 10  # (OP_CALL, fn): run fn(core) on the worker (introspection, tests)

# Application-bound messages (this worker -> controller).
# A task's ExtOut travels as the ``TaskOutput`` event itself (no tuple around it).
APP_REPLY = 1  # (APP_REPLY, request_id, msg)
APP_SPAWNED = 2  # (APP_SPAWNED, spawn_id, ref | None, error | None, worker)
APP_SPAWN_REQ = 3  # (APP_SPAWN_REQ, kind, cfg, requester, tag)
APP_ENDED = 4  # (APP_ENDED, ref, traceback | None)
APP_REQ_FAILED = 5  # (APP_REQ_FAILED, request_id, message)
APP_STOPPED = 6  # (APP_STOPPED, worker, [unfinished refs])
APP_STARTED = 7  # (APP_STARTED, worker, error | None)
APP_UNKNOWN = 8  # (APP_UNKNOWN, description): a message for a task that is gone


class CoreSink(Protocol):
    """Where a ``WorkerCore`` sends what leaves it. Implemented by the worker shell."""

    def to_app(self, item: tuple[Any, ...]) -> None:
        """Hand one message to the controller (never blocks, never drops)."""

    def to_worker(self, worker: int, item: tuple[Any, ...], safe: bool) -> bool:
        """Hand one message to another worker; False if refused (full and not safe)."""

    def arm_deadline(self, when: float) -> None:
        """Make sure ``on_deadline`` runs at ``when`` (earlier than anything armed)."""

    def stopped(self, unfinished: list[TaskRef]) -> None:
        """The worker is done: every task ended (or, on a forced stop, ``unfinished``
        were dropped). The shell reports it and stops the worker."""
