"""The public interface of I/O drivers.

A driver lives on one worker's event loop. It owns OS or library resources on behalf of
tasks (sockets, devices, peer connections), turns the task outputs it declares in
``output_types`` into I/O, and reports results back as task inputs through
:meth:`DriverContext.deliver`. The runtime tells it when a task ends so it can release
what the task held. Wrapping an asyncio library is natural: ``handle`` may start
coroutines on ``ctx.loop`` and deliver their results when they complete.

Drivers are given to the runtime as factories (a class or any zero-argument callable);
each worker builds its own instance, so a driver never needs a lock.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ._events import TaskRef

if TYPE_CHECKING:
    import asyncio

__all__ = ["Driver", "DriverContext", "DriverFactory"]


class DriverContext(Protocol):
    """What a worker offers its drivers."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The worker's event loop (the driver's only loop)."""

    @property
    def worker_id(self) -> int:
        """The id of the worker this driver serves."""

    def now(self) -> float:
        """The worker's clock (``time.monotonic``), the ``now`` tasks see."""

    def deliver(self, task: TaskRef, event: Any) -> bool:
        """Feed ``event`` to ``task`` (drained at once, or right after the current drain).

        Returns False if the task no longer exists (the input is counted as orphaned).
        """

    def timed(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Wrap a loop callback so its run time counts as the worker's busy time."""

    def feeder(self, task: TaskRef) -> Callable[[Any], bool]:
        """A fast ``deliver`` bound to ``task``: ``feed(event) -> bool``.

        Same semantics as ``deliver(task, event)`` (drained at once, or right after the
        current drain; False once the task has ended), one call instead of three. Build
        it once per socket or queue and use it on the per-packet path.
        """

    def batch_feeder(self, task: TaskRef) -> Callable[[list[Any]], None]:
        """``feed_all(events)``: feed each event to ``task`` in order, as ``feed`` would.

        For the inputs of one read (a ``recvmmsg``): one clock reading and one hand-over
        for the list, each event still drained on its own. Clearing ``events`` while
        they are fed (from ``handle``, when the task closes their socket) stops the rest.
        """


class Driver(ABC):
    """Base class of I/O drivers. Subclass it and list your output types."""

    #: The task output types this driver handles (routed by exact type).
    output_types: ClassVar[tuple[type, ...]] = ()

    @abstractmethod
    def start(self, ctx: DriverContext) -> None:
        """Called once on the worker's loop thread before any task runs."""

    @abstractmethod
    def handle(self, task: TaskRef, output: Any) -> None:
        """Perform one output of ``task``. Never raise for bad input: deliver an error."""

    @abstractmethod
    def release(self, task: TaskRef) -> None:
        """``task`` ended: close everything it held."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """The worker is stopping: close everything (tasks were already released)."""

    def stats(self) -> Mapping[str, int]:
        """Counters merged into the worker's stats (name -> value)."""
        return {}


#: What ``Runtime(drivers=[...])`` takes: a driver class, or any zero-argument callable
#: that builds a driver (``functools.partial(UdpDriver, batch=128)``).
DriverFactory = Callable[[], Driver]
