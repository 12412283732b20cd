"""The package's exceptions.

Every exception sansio_aio raises at its public API derives from :class:`SansioAioError`.
Inside a worker, failures are values (events delivered to the task or to the application);
exceptions are only raised to the caller of a controller method.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ConfigError",
    "QueueFull",
    "RequestTimeout",
    "RuntimeClosed",
    "SansioAioError",
    "ShutdownTimeout",
    "TaskFailedError",
    "UnknownKind",
    "UnknownTarget",
    "WorkerDied",
]


class SansioAioError(Exception):
    """Base class of every exception raised by sansio_aio."""


class ConfigError(SansioAioError, ValueError):
    """A bad argument or configuration value; the message names the fix."""


class UnknownTarget(SansioAioError, LookupError):
    """A message or request names a worker or task that does not exist (or has ended)."""


class UnknownKind(SansioAioError, LookupError):
    """A spawn names a task kind that was not registered with the runtime."""


class QueueFull(SansioAioError):
    """A bounded queue is full and the caller asked not to wait.

    Use the awaitable send to wait for room, or the forced send to enqueue anyway.
    """


class RuntimeClosed(SansioAioError):
    """The runtime is not running (not started yet, or shut down)."""


class RequestTimeout(SansioAioError, TimeoutError):
    """A request got no reply within its timeout."""


class TaskFailedError(SansioAioError):
    """A task raised (or ended) while the caller was waiting on it.

    Attributes:
        task: the task's reference.
        traceback: the formatted traceback of the failure, or ``""`` if the task ended
            cleanly without replying.
    """

    def __init__(self, message: str, task: object, traceback: str = "") -> None:
        super().__init__(message)
        self.task = task
        self.traceback = traceback


class ShutdownTimeout(SansioAioError, TimeoutError):
    """Graceful shutdown did not finish in time; ``unfinished`` names the tasks left.

    The runtime has still been stopped, within the timeout plus a slack of 0.5 s: the
    tasks left were dropped and their resources released. ``stuck_workers`` lists the
    worker ids that would not stop at all (blocked in a task); for them ``unfinished``
    names every task the controller had placed there. A worker process that would not
    stop was killed (SIGTERM, then SIGKILL); a worker thread cannot be killed, so it was
    left running as a daemon thread (it does not keep the interpreter from exiting),
    and whatever its tasks still produce is discarded.
    """

    def __init__(
        self, message: str, unfinished: Sequence[object], stuck_workers: Sequence[int] = ()
    ) -> None:
        super().__init__(message)
        self.unfinished = list(unfinished)
        self.stuck_workers = list(stuck_workers)


class WorkerDied(SansioAioError):
    """The worker process that was to answer (a spawn, a call) died first.

    Requests to its tasks fail with :class:`TaskFailedError`, whose traceback names the
    death, as for any task that fails.
    """
