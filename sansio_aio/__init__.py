"""sansio_aio: a runtime for Sans-I/O tasks built into asyncio.

Tasks are pure state machines (``on_tick``, ``on_event``, ``pop_output``,
``on_shutdown``, ``is_empty``). A :class:`Runtime` on the application's loop runs them
on worker threads, each with its own event loop, does their I/O through drivers,
routes a pub/sub bus between them, and reports stats. ``sansio_aio.testing`` runs the
same tasks on a fake clock and a simulated network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigError,
    QueueFull,
    RequestTimeout,
    RuntimeClosed,
    SansioAioError,
    ShutdownTimeout,
    TaskFailedError,
    UnknownKind,
    UnknownTarget,
)
from .events import (
    Broadcast,
    BroadcastMessage,
    BusMessage,
    Direct,
    Ext,
    ExtOut,
    Publish,
    Reply,
    Request,
    SendTo,
    Spawn,
    Spawned,
    Subscribe,
    TaskEnded,
    TaskFailed,
    TaskOutput,
    TaskRef,
    Unsubscribe,
)
from .stats import RuntimeStats, WorkerStats
from .task import Task, TaskGroup, TaskProtocol

if TYPE_CHECKING:  # the asyncio side, imported on first use (see __getattr__)
    from .backends import available_backends
    from .controller import AppEvent, Runtime
    from .driver import Driver, DriverContext

__version__ = "0.1.0"

# Importing a task module must not import asyncio: the names below live in modules that
# do, so they are loaded when first used.
_LAZY = {
    "AppEvent": ".controller",
    "Runtime": ".controller",
    "Driver": ".driver",
    "DriverContext": ".driver",
    "available_backends": ".backends",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sansio_aio' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "AppEvent",
    "Broadcast",
    "BroadcastMessage",
    "BusMessage",
    "ConfigError",
    "Direct",
    "Driver",
    "DriverContext",
    "Ext",
    "ExtOut",
    "Publish",
    "QueueFull",
    "Reply",
    "Request",
    "RequestTimeout",
    "Runtime",
    "RuntimeClosed",
    "RuntimeStats",
    "SansioAioError",
    "SendTo",
    "ShutdownTimeout",
    "Spawn",
    "Spawned",
    "Subscribe",
    "Task",
    "TaskEnded",
    "TaskFailed",
    "TaskFailedError",
    "TaskGroup",
    "TaskOutput",
    "TaskProtocol",
    "TaskRef",
    "UnknownKind",
    "UnknownTarget",
    "Unsubscribe",
    "WorkerStats",
    "__version__",
    "available_backends",
]
