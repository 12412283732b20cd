"""The task protocol, a convenience base class, and task groups.

Theory of operation
-------------------
A task is a pure state machine. The runtime calls it with the current time and never
lets it touch a socket, a clock or a thread:

* ``on_tick(now)``: the periodic tick (and the wake-up asked for by ``next_deadline``);
* ``on_event(now, event)``: one input (a packet, a bus message, an application message);
* ``pop_output(now)``: called until it returns ``None`` after *every* input, before the
  next input is fed (the drain rule);
* ``on_shutdown(now)``: begin a graceful stop; drain, then report ``is_empty()``;
* ``is_empty()``: nothing left to do. The worker checks it after each drain and drops a
  task that reports it, releasing everything the task held.
* ``next_deadline()`` (optional): the loop time at which the task wants ``on_tick``
  called next, or ``None``. The worker arms one timer for the earliest deadline.

A :class:`TaskGroup` holds the tasks of one kind on one worker, in slots reused lowest
first, with a generation per slot so a stale reference never reaches a new occupant.
This module imports no asyncio.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

__all__ = ["Task", "TaskGroup", "TaskProtocol"]


@runtime_checkable
class TaskProtocol(Protocol):
    """What the runtime needs from a task. Subclassing :class:`Task` is optional."""

    def on_tick(self, now: float) -> None:
        """Periodic tick (and requested wake-ups). Drain ``pop_output`` afterwards."""

    def on_event(self, now: float, event: Any) -> None:
        """Feed one input. Drain ``pop_output`` afterwards."""

    def pop_output(self, now: float) -> Any | None:
        """Return the next output, or ``None`` when there is none left."""

    def on_shutdown(self, now: float) -> None:
        """Start a graceful stop. Drain ``pop_output`` afterwards."""

    def is_empty(self) -> bool:
        """True when the task has nothing left to do and may be dropped."""


class Task:
    """A convenient base for tasks: an output queue, no-op hooks, a shutdown flag.

    The runtime builds a task with ``factory(cfg)``, so a subclass can be registered
    directly as its kind's factory; its ``__init__`` takes the spawn's ``cfg``.
    Subclasses override ``on_event`` (and usually ``on_tick``) and call :meth:`emit`.
    By default a task is empty once ``on_shutdown`` was called and every output popped;
    override :meth:`is_empty` for tasks that finish by themselves.
    """

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg
        self._outputs: deque[Any] = deque()
        self.closing = False
        if type(self).emit is Task.emit:  # not overridden: the deque's own append (C)
            self.emit = self._outputs.append  # type: ignore[method-assign, assignment]

    def emit(self, output: Any) -> None:
        """Queue one output for the runtime to pop."""
        self._outputs.append(output)

    def on_tick(self, now: float) -> None:
        """Periodic tick; the default does nothing."""

    def on_event(self, now: float, event: Any) -> None:
        """One input; the default ignores it."""

    def pop_output(self, now: float) -> Any | None:
        """Pop the next queued output, or ``None``."""
        out = self._outputs
        return out.popleft() if out else None

    def on_shutdown(self, now: float) -> None:
        """Mark the task as closing; it becomes empty once its outputs are popped."""
        self.closing = True

    def is_empty(self) -> bool:
        """Empty once closing and drained."""
        return self.closing and not self._outputs

    def next_deadline(self) -> float | None:
        """Loop time of the next wake-up this task wants, or ``None`` (the default)."""
        return None


T = TypeVar("T")


class TaskGroup(Generic[T]):
    """The tasks of one kind on one worker, in reusable slots.

    * :meth:`add` takes the lowest free slot and returns ``(index, gen)``;
    * :meth:`get` returns the occupant only if its generation matches;
    * :meth:`pop_became_empty` is true once per transition from "has tasks" to "empty".
    """

    __slots__ = ("_became_empty", "_count", "_free", "_gens", "_slots", "first_gen", "kind")

    def __init__(self, kind: str, first_gen: int = 0) -> None:
        self.kind = kind
        #: The generation of a slot's first occupant (a replacement worker starts its
        #: groups past every generation its predecessor could have used).
        self.first_gen = first_gen
        self._slots: list[T | None] = []
        self._gens: list[int] = []
        self._free: list[int] = []
        self._count = 0
        self._became_empty = False

    def add(self, item: T) -> tuple[int, int]:
        """Store ``item`` in the lowest free slot; return ``(index, generation)``."""
        if self._free:
            index = heapq.heappop(self._free)
            self._slots[index] = item
        else:
            index = len(self._slots)
            self._slots.append(item)
            self._gens.append(self.first_gen)
        self._count += 1
        self._became_empty = False
        return index, self._gens[index]

    def get(self, index: int, gen: int | None = None) -> T | None:
        """The occupant of ``index`` (of generation ``gen`` if given), or ``None``."""
        if 0 <= index < len(self._slots) and (gen is None or self._gens[index] == gen):
            return self._slots[index]
        return None

    def remove(self, index: int) -> T | None:
        """Free slot ``index``; return what it held. Bumps the slot's generation."""
        if not 0 <= index < len(self._slots):
            return None
        item = self._slots[index]
        if item is None:
            return None
        self._slots[index] = None
        self._gens[index] += 1
        heapq.heappush(self._free, index)
        self._count -= 1
        if self._count == 0:
            self._became_empty = True
        return item

    def pop_became_empty(self) -> bool:
        """True exactly once after the group's last task was removed."""
        fired = self._became_empty
        self._became_empty = False
        return fired

    def is_empty(self) -> bool:
        """True when the group holds no task."""
        return self._count == 0

    def __len__(self) -> int:
        return self._count

    def items(self) -> Iterator[tuple[int, int, T]]:
        """Yield ``(index, generation, occupant)`` for every live slot, lowest first."""
        for index, item in enumerate(self._slots):
            if item is not None:
                yield index, self._gens[index], item
