"""Cross-thread hand-off: single-producer single-consumer lanes with batched wake-ups.

Theory of operation
-------------------
Every queue that crosses a thread has exactly one producer thread and one consumer
thread (a worker's inbox is a set of lanes, one per producer: the controller and each
worker). A lane is a ``collections.deque`` bounded by a capacity the producer checks.

* The producer appends, then, if the deque now holds exactly one item, calls ``wake``:
  the lane went empty -> non-empty, so the consumer may be asleep.
* The consumer, once woken, pops the items it saw (a bounded batch) and reschedules
  itself if more arrived, so one wake-up carries a batch and a flooding producer cannot
  starve the consumer's other work.

Why this is safe without the GIL: it uses only ``append``, ``popleft`` and ``len`` on a
deque, which CPython documents as thread-safe and which the free-threaded build makes
atomic with a per-object lock. With one producer, "len == 1 after my append" can only be
observed if the consumer had emptied the deque (or is about to pop my item), so no item
is ever left without a pending wake-up; the worst case is a spurious extra wake-up.
Counters are written by one side only. The rare "wait for room" path (``Lane.on_room``)
uses a real lock, taken once per drained batch, never per item.
This module imports no asyncio.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["Lane"]


class Lane:
    """One bounded single-producer single-consumer queue with an empty->non-empty wake."""

    __slots__ = ("_lock", "_room_waiters", "capacity", "q", "wake")

    def __init__(self, capacity: int, wake: Callable[[], None]) -> None:
        self.q: deque[Any] = deque()
        self.capacity = capacity
        self.wake = wake
        self._lock = threading.Lock()
        self._room_waiters: list[Callable[[], None]] = []

    def push(self, item: Any) -> bool:
        """Append unless full; wake the consumer on empty -> non-empty. False when full."""
        q = self.q
        if len(q) >= self.capacity:
            return False
        q.append(item)
        if len(q) == 1:
            self.wake()
        return True

    def push_force(self, item: Any) -> None:
        """Append even past the capacity (the "safe" send)."""
        q = self.q
        q.append(item)
        if len(q) == 1:
            self.wake()

    def push_many(self, items: list[Any]) -> None:
        """Append a batch past any bound; wake the consumer if the lane was empty.

        With one producer, ``len <= len(items)`` right after the ``extend`` means the lane
        was empty before it (or the consumer is draining it now): a wake-up is due.
        """
        q = self.q
        q.extend(items)
        k = len(items)
        if len(q) <= k:
            self.wake()

    def on_room(self, callback: Callable[[], None]) -> bool:
        """Register ``callback`` for the consumer's next drain; False if there is room now.

        The consumer calls it (from its own thread) after it drained this lane.
        """
        with self._lock:
            self._room_waiters.append(callback)
        if len(self.q) < self.capacity:
            with self._lock:
                try:
                    self._room_waiters.remove(callback)
                except ValueError:
                    pass  # the consumer already took it; a spare call is harmless
            return False
        return True

    def notify_room(self) -> None:
        """Consumer side, after draining: run the room callbacks registered so far."""
        with self._lock:
            waiters = self._room_waiters
            if not waiters:
                return
            self._room_waiters = []
        error: Exception | None = None
        for cb in waiters:  # every waiter runs, even if one of them fails
            try:
                cb()
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    def __len__(self) -> int:
        return len(self.q)
