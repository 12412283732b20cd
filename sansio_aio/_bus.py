"""Bus routing: which workers have subscribers for a channel.

Theory of operation
-------------------
Each worker keeps its own table of local subscribers (in ``core``). This module keeps
the one thing that is shared between workers: for each channel, the set of workers
that have at least one subscriber. The first local subscriber registers its worker,
the last unsubscribe removes it.

The table is copy-on-write: writers (subscribe/unsubscribe, rare) build a new dict under
a lock and publish it with one reference assignment; readers (publish, per message)
read the current dict without a lock. A reader sees either the old or the new table,
both consistent, which is safe with or without the GIL.
This module imports no asyncio.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

__all__ = ["BusHub"]

_NONE: tuple[int, ...] = ()


class BusHub:
    """Channel -> workers with subscribers, shared by every worker of one runtime."""

    __slots__ = ("_lock", "_routes")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: dict[Hashable, tuple[int, ...]] = {}

    def register(self, channel: Hashable, worker: int) -> None:
        """Record that ``worker`` has a subscriber for ``channel``."""
        with self._lock:
            current = self._routes.get(channel, _NONE)
            if worker in current:
                return
            routes = dict(self._routes)
            routes[channel] = tuple(sorted((*current, worker)))
            self._routes = routes

    def unregister(self, channel: Hashable, worker: int) -> None:
        """Record that ``worker`` has no subscriber left for ``channel``."""
        with self._lock:
            current = self._routes.get(channel, _NONE)
            if worker not in current:
                return
            routes = dict(self._routes)
            rest = tuple(w for w in current if w != worker)
            if rest:
                routes[channel] = rest
            else:
                del routes[channel]
            self._routes = routes

    def workers(self, channel: Hashable) -> tuple[int, ...]:
        """Workers that currently have a subscriber for ``channel`` (lock-free read)."""
        return self._routes.get(channel, _NONE)

    def channels(self) -> int:
        """Number of channels with at least one subscriber."""
        return len(self._routes)
