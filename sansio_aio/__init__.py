"""sansio_aio: a runtime for Sans-I/O tasks built into asyncio.

Tasks are pure state machines (``on_tick``, ``on_event``, ``pop_output``,
``on_shutdown``, ``is_empty``). A :class:`Runtime` on the application's loop runs them
on worker threads, each with its own event loop, does their I/O through drivers,
routes a pub/sub bus between them, and reports stats. ``sansio_aio.testing`` runs the
same tasks on a fake clock and a simulated network.

The public namespaces (every other module is private, and may change):

* ``sansio_aio``: the task protocol, the core events, the runtime, stats and errors;
* ``sansio_aio.driver``: the interface for writing I/O drivers;
* ``sansio_aio.net``: the UDP, TCP and TUN/TAP drivers and their events;
* ``sansio_aio.testing``: the harness, fake clock, simulated network and runtime;
* ``sansio_aio.webrtc``: the WHIP/WHEP server;
* ``sansio_aio.lowlevel``: the worker core and the pieces it is built from, for
  ``Runtime.run_on_worker`` callbacks and for building a runtime of your own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._api import RuntimeAPI, RuntimeState
from ._errors import (
    ConfigError,
    QueueFull,
    RequestTimeout,
    RuntimeClosed,
    SansioAioError,
    ShutdownTimeout,
    TaskFailedError,
    UnknownKind,
    UnknownTarget,
    WorkerDied,
)
from ._events import (
    AppEvent,
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
    WorkerExited,
)
from ._stats import RuntimeStats, WorkerStats
from ._task import Task, TaskProtocol

if TYPE_CHECKING:  # the asyncio side, imported on first use (see __getattr__)
    from ._backends import available_backends
    from ._runtime import Runtime

#: The package version.
__version__ = "0.1.0"

# Importing a task module must not import asyncio: the names below live in modules that
# do, so they are loaded when first used.
_LAZY = {
    "Runtime": "._runtime",
    "available_backends": "._backends",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sansio_aio' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AppEvent",
    "Broadcast",
    "BroadcastMessage",
    "BusMessage",
    "ConfigError",
    "Direct",
    "Ext",
    "ExtOut",
    "Publish",
    "QueueFull",
    "Reply",
    "Request",
    "RequestTimeout",
    "Runtime",
    "RuntimeAPI",
    "RuntimeClosed",
    "RuntimeState",
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
    "TaskOutput",
    "TaskProtocol",
    "TaskRef",
    "UnknownKind",
    "UnknownTarget",
    "Unsubscribe",
    "WorkerDied",
    "WorkerExited",
    "WorkerStats",
    "__version__",
    "available_backends",
]
