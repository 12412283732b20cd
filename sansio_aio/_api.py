"""The runtime's public face as types: its life cycle and the API both runtimes offer.

:class:`RuntimeAPI` is what :class:`sansio_aio.Runtime` (worker threads) and
:class:`sansio_aio.testing.SimRuntime` (simulated workers on a fake clock) both provide,
checked by mypy, so application code and fixtures can be written once against it.
:class:`RuntimeState` is the one life cycle both follow. This module imports no asyncio.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

from ._events import AppEvent, TaskRef
from ._stats import RuntimeStats

if TYPE_CHECKING:
    from ._core import WorkerCore

__all__ = ["RuntimeAPI", "RuntimeState"]

R = TypeVar("R")


class RuntimeState(enum.Enum):
    """The life cycle of a runtime: ``NEW -> STARTING -> RUNNING -> CLOSING -> CLOSED``.

    A runtime is used once: ``start`` is accepted only in ``NEW``; ``shutdown`` from any
    state ends in ``CLOSED``. Spawns, sends and requests are accepted only in ``RUNNING``
    (anything else raises :class:`~sansio_aio.RuntimeClosed`).
    """

    #: Built, not started.
    NEW = "new"
    #: ``start`` is running: workers are being built.
    STARTING = "starting"
    #: Accepting spawns, messages and requests.
    RUNNING = "running"
    #: ``shutdown`` is running: tasks drain, nothing new is accepted.
    CLOSING = "closing"
    #: Stopped; every worker has ended. The events still buffered can be read.
    CLOSED = "closed"


class RuntimeAPI(Protocol):
    """The API of a runtime, real or simulated (see :class:`sansio_aio.Runtime`).

    Every method means the same on both; times are real seconds for ``Runtime`` and
    simulated seconds for ``SimRuntime``.
    """

    @property
    def workers(self) -> int:
        """Number of workers."""
        ...

    @property
    def state(self) -> RuntimeState:
        """Where the runtime is in its life cycle."""
        ...

    @property
    def running(self) -> bool:
        """True while the state is ``RUNNING``."""
        ...

    async def start(self) -> Self:
        """Start the workers; the runtime is ``RUNNING`` when this returns."""
        ...

    async def __aenter__(self) -> Self:
        """``start()``."""
        ...

    # The Protocol restates the signature that ControllerBase.__aexit__ implements.
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """``shutdown()``."""

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Stop gracefully; :class:`~sansio_aio.ShutdownTimeout` names what did not finish."""

    async def spawn(self, kind: str, cfg: Any = None, *, worker: int | None = None) -> TaskRef:
        """Start a task of ``kind`` built with ``cfg``; return its reference."""
        ...

    def send_nowait(self, target: TaskRef | int, msg: Any) -> None:
        """Send ``msg`` to a task or a worker's host task; raise if the inbox is full."""

    def send_many(self, target: TaskRef | int, msgs: Iterable[Any]) -> None:
        """Send every message of ``msgs`` to one target, in order; all or none (QueueFull)."""

    def send_force(self, target: TaskRef | int, msg: Any) -> None:
        """Send ``msg`` even past the inbox bound."""

    async def send(self, target: TaskRef | int, msg: Any) -> None:
        """Send ``msg``, waiting for room in the inbox if it is full."""

    async def request(self, task: TaskRef, msg: Any, *, timeout: float | None = 5.0) -> Any:
        """Send ``Request(id, msg)`` to ``task`` and await its ``Reply(id, value)``."""
        ...

    async def run_on_worker(self, worker: int, fn: Callable[[WorkerCore], R]) -> R:
        """Run ``fn(core)`` on worker ``worker`` and return its result."""
        ...

    def poll_events(self) -> list[AppEvent]:
        """Every event received so far, oldest first, without waiting."""
        ...

    async def next_events(self) -> list[AppEvent]:
        """Wait for at least one event; return all pending ones (``[]`` once closed)."""
        ...

    async def next_event(self) -> AppEvent:
        """Wait for the next event."""
        ...

    def events(self) -> AsyncIterator[AppEvent]:
        """Every event, as an async iterator that ends after shutdown."""
        ...

    async def stats(self, *, fresh: bool = False, timeout: float = 1.0) -> RuntimeStats:
        """Every worker's snapshot plus the controller's counters."""
        ...
