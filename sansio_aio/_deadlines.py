"""Task deadlines: one heap per worker, one armed timer.

Theory of operation
-------------------
A task may ask to be woken at a time (``next_deadline()``); the worker arms a single
timer for the earliest one (aioquic's ``get_timer`` contract). :class:`DeadlineHeap`
keeps the rule in one place:

* :meth:`DeadlineHeap.set` records a task's new deadline. Entries are never removed from
  the heap when a deadline moves or a task ends: they go stale (the owner's current
  deadline no longer equals the entry's time, or the owner is dead) and are skipped when
  they reach the top. So that sliding timers cannot grow the heap without bound, it is
  compacted when it holds more than ``64 + 2 * live`` entries. ``set`` returns the time
  the timer must now be armed for, when that is earlier than what is armed.
* :meth:`DeadlineHeap.pop_due` takes every live entry due at ``now`` (the timer fired);
  the caller fires them after the pops, so a task that sets a deadline in the past again
  waits for the next timer instead of looping here forever.
* :meth:`DeadlineHeap.rearm` tells the next time to arm after a firing.

The owner objects need two attributes: ``alive`` (bool) and ``deadline`` (the time the
owner wants now, or ``None``); the heap sets ``deadline`` itself. Pure: no clock, no
loop, no asyncio.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Generic, Protocol, TypeVar

__all__ = ["DeadlineHeap", "HasDeadline"]


class HasDeadline(Protocol):
    """What the heap needs of an owner."""

    alive: bool
    deadline: float | None


E = TypeVar("E", bound=HasDeadline)


class DeadlineHeap(Generic[E]):
    """Deadlines of the tasks of one worker (see the module docs)."""

    __slots__ = ("_armed", "_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, E]] = []
        self._seq = itertools.count()
        self._armed: float | None = None

    def __len__(self) -> int:
        """Entries in the heap, stale ones included (what compaction bounds)."""
        return len(self._heap)

    def set(self, owner: E, when: float | None, live: int) -> float | None:
        """Record ``owner``'s deadline ``when``; return a time to arm, or None.

        ``live`` is the number of live owners (the compaction bound). The returned time
        is earlier than anything armed; the caller arms its timer for it.
        """
        if when == owner.deadline:
            return None
        owner.deadline = when
        if when is None:
            return None
        heap = self._heap
        if len(heap) > 64 + 2 * live:
            heap[:] = [h for h in heap if h[2].alive and h[2].deadline == h[0]]
            heapq.heapify(heap)
        heapq.heappush(heap, (when, next(self._seq), owner))
        if self._armed is None or when < self._armed:
            self._armed = when
            return when
        return None

    def pop_due(self, now: float) -> list[E]:
        """The timer fired: take every live owner due at ``now`` (their deadline cleared)."""
        self._armed = None
        heap = self._heap
        due = []
        while heap and heap[0][0] <= now:
            when, _, owner = heapq.heappop(heap)
            if owner.alive and owner.deadline == when:
                owner.deadline = None
                due.append(owner)
        return due

    def earliest(self) -> float | None:
        """The earliest live deadline, or None (stale entries at the top are dropped)."""
        heap = self._heap
        while heap and (not heap[0][2].alive or heap[0][2].deadline != heap[0][0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def rearm(self) -> float | None:
        """After a firing: the time to arm next (earlier than anything armed), or None."""
        when = self.earliest()
        if when is not None and (self._armed is None or when < self._armed):
            self._armed = when
            return when
        return None
