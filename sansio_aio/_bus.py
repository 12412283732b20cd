"""The bus: which tasks, and which workers, subscribe to a channel.

Theory of operation
-------------------
Two tables, one per scope:

* :class:`LocalSubscriptions` (one per worker, touched only by that worker's thread):
  channel -> the tasks of this worker subscribed to it, and per task its channels, so a
  task that ends leaves every channel. The first local subscriber of a channel
  registers the worker in the hub; the last one to leave removes it.
* :class:`BusHub` (one per runtime, shared by every worker): channel -> the workers that
  have at least one subscriber. A publish reads it to know which workers to send to.

The table is copy-on-write: writers (subscribe/unsubscribe, rare) build a new dict under
a lock and publish it with one reference assignment; readers (publish, per message)
read the current dict without a lock. A reader sees either the old or the new table,
both consistent, which is safe with or without the GIL.
This module imports no asyncio.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["BusHub", "LocalSubscriptions"]

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

    def drop_worker(self, worker: int) -> None:
        """Forget every route to ``worker`` (it is gone)."""
        with self._lock:
            routes: dict[Hashable, tuple[int, ...]] = {}
            for channel, workers in self._routes.items():
                rest = tuple(w for w in workers if w != worker)
                if rest:
                    routes[channel] = rest
            self._routes = routes

    def routes(self) -> dict[Hashable, tuple[int, ...]]:
        """A copy of the whole table (channel -> workers)."""
        return dict(self._routes)

    def workers(self, channel: Hashable) -> tuple[int, ...]:
        """Workers that currently have a subscriber for ``channel`` (lock-free read)."""
        return self._routes.get(channel, _NONE)

    def channels(self) -> int:
        """Number of channels with at least one subscriber."""
        return len(self._routes)


S = TypeVar("S")


class LocalSubscriptions(Generic[S]):
    """Channel -> subscribers on one worker, in subscription order (see module docs).

    ``S`` is the worker's handle of a task. Not thread-safe: one worker's thread owns it.
    """

    __slots__ = ("_by_channel", "_by_sub", "_hub", "_worker")

    def __init__(self, hub: BusHub, worker: int) -> None:
        self._hub = hub
        self._worker = worker
        self._by_channel: dict[Hashable, list[S]] = {}
        self._by_sub: dict[S, set[Hashable]] = {}

    def subscribe(self, sub: S, channel: Hashable) -> None:
        """Add ``sub`` to ``channel`` (no-op if it is already there)."""
        channels = self._by_sub.get(sub)
        if channels is None:
            channels = self._by_sub[sub] = set()
        elif channel in channels:
            return
        channels.add(channel)
        subs = self._by_channel.get(channel)
        if subs is None:
            self._by_channel[channel] = [sub]
            self._hub.register(channel, self._worker)
        else:
            subs.append(sub)

    def unsubscribe(self, sub: S, channel: Hashable) -> None:
        """Remove ``sub`` from ``channel`` (no-op if it is not there)."""
        channels = self._by_sub.get(sub)
        if not channels or channel not in channels:
            return
        channels.discard(channel)
        if not channels:
            del self._by_sub[sub]
        self._leave(sub, channel)

    def drop(self, sub: S) -> None:
        """``sub`` ended: remove it from every channel."""
        channels = self._by_sub.pop(sub, None)
        if channels:
            for channel in channels:
                self._leave(sub, channel)

    def subscribers(self, channel: Hashable) -> list[S]:
        """A copy of ``channel``'s subscribers here (safe to iterate while feeding them)."""
        subs = self._by_channel.get(channel)
        return list(subs) if subs else []

    def _leave(self, sub: S, channel: Hashable) -> None:
        subs = self._by_channel.get(channel)
        if subs is None:
            return
        try:
            subs.remove(sub)
        except ValueError:
            return
        if not subs:
            del self._by_channel[channel]
            self._hub.unregister(channel, self._worker)
