"""Per-client token buckets for the HTTP layer (pure: time is an argument).

Each client address has a bucket of ``burst`` tokens refilled at ``rate`` per second; a
request takes one token, or is refused with the seconds until one is there. The table is
bounded: past ``max_clients`` entries, the buckets that are full again (idle clients)
are dropped, and if that is not enough, the oldest entries go.
"""

from __future__ import annotations

import math
from typing import final

from .._errors import ConfigError

__all__ = ["TokenBuckets"]


@final
class TokenBuckets:
    """Token buckets keyed by client; see the module doc."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000) -> None:
        if rate <= 0 or burst < 1 or max_clients < 1:
            raise ConfigError("rate must be > 0, burst and max_clients >= 1")
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def take(self, key: str, now: float) -> int | None:
        """Take a token for ``key``: ``None`` if allowed, else whole seconds to wait."""
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self.rate))
        self._buckets.pop(key, None)  # re-insert: the dict stays in least-recent order
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_clients:
            self._prune(now)
        return None

    def _prune(self, now: float) -> None:
        rate, burst = self.rate, self.burst
        full = [k for k, (t, w) in self._buckets.items() if t + (now - w) * rate >= burst]
        for key in full:
            del self._buckets[key]
        while len(self._buckets) > self.max_clients:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)
