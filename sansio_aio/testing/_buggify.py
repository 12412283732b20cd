"""BUGGIFY-style fault points: rare code paths that fire only inside a simulated run.

Theory of operation
-------------------
A task marks a place where something unusual could legitimately happen (a datagram the
socket buffer dropped, a cache miss, a slow path, a tiny timeout) with
``if buggify(0.05): ...``. Outside the simulator :func:`buggify` is always ``False``: it
reads one context variable, finds nothing, and returns, so the point can stay in
production code (this module imports nothing but the standard library, and no asyncio).

Inside a simulated run a :class:`Buggify` is *current*: ``SimRuntime(buggify=...)`` sets
the context variable around every call into task code (its instant, its timers, driver
deliveries) and resets it on the way out, and :func:`~sansio_aio.testing.run_seed` sets it
around the whole scenario. Nothing global survives a run, and another thread (a real
runtime's worker) never sees the simulation's points, because a context variable is
per thread (and per asyncio task).

As in FoundationDB, each point is decided per run: the first time a point is reached it
is *enabled* with probability ``activation`` (0.25 by default); a disabled point never
fires in that run, an enabled one fires with its own probability each time it is
reached. Both draws come from a generator private to that point, seeded with the run's
seed and the point's name, so a point's firings depend only on the seed and on how
often it is reached, never on other points (adding a point elsewhere changes nothing
here). A point is named explicitly (``buggify("rx.drop", 0.05)``) or by its call site
(``module:line``). The trace gets a line when a point is first reached (enabled or not)
and one per firing.
"""

from __future__ import annotations

import random
import sys
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any, Protocol, final

__all__ = ["Buggify", "buggify"]

#: The probability of a point that does not give its own.
DEFAULT_FIRE = 0.25
#: The probability that a point is enabled in a run (FoundationDB's default).
DEFAULT_ACTIVATION = 0.25


class _Recorder(Protocol):
    def record(self, now: float, who: str, what: str, detail: Any = None) -> None: ...


@dataclass(slots=True)
class _Point:
    rng: random.Random
    enabled: bool
    reached: int = 0
    fired: int = 0


@final
class Buggify:
    """The fault points of one simulated run (see the module docs).

    Args:
        seed: the run's seed; with a point's name, it seeds that point's generator.
        enabled: if false, no point ever fires (the points are still counted).
        activation: the probability that a point is enabled in this run.
        trace: where first sightings and firings are recorded (a :class:`Trace`).
        clock: a callable returning the simulated time for the trace lines.
    """

    __slots__ = ("_points", "activation", "clock", "enabled", "seed", "trace")

    def __init__(
        self,
        seed: int,
        *,
        enabled: bool = True,
        activation: float = DEFAULT_ACTIVATION,
        trace: _Recorder | None = None,
        clock: Any = None,
    ) -> None:
        if not 0.0 <= activation <= 1.0:
            raise ValueError(f"activation is a probability in [0, 1], got {activation!r}")
        self.seed = seed
        self.enabled = enabled
        self.activation = activation
        self.trace = trace
        self.clock = clock
        self._points: dict[str, _Point] = {}

    def fire(self, name: str, p: float) -> bool:
        """Whether point ``name`` fires now (with probability ``p`` if it is enabled)."""
        point = self._points.get(name)
        if point is None:
            rng = random.Random(f"buggify:{self.seed}:{name}")
            enabled = self.enabled and rng.random() < self.activation
            point = self._points[name] = _Point(rng, enabled)
            self._record(name, "enabled" if enabled else "disabled")
        point.reached += 1
        if not point.enabled or not point.rng.random() < p:
            return False
        point.fired += 1
        self._record(name, "fired")
        return True

    def _record(self, name: str, what: str) -> None:
        if self.trace is not None:
            now = float(self.clock()) if self.clock is not None else 0.0
            self.trace.record(now, "buggify", what, name)

    def points(self) -> dict[str, tuple[bool, int, int]]:
        """Every point reached so far: ``name -> (enabled, times reached, times fired)``."""
        return {n: (p.enabled, p.reached, p.fired) for n, p in sorted(self._points.items())}

    def summary(self) -> str:
        """One line: how many points are enabled, and which fired how often."""
        pts = self._points
        if not pts:
            return "no point reached" if self.enabled else "off"
        on = sum(1 for p in pts.values() if p.enabled)
        fired = [f"{n} x{p.fired}" for n, p in sorted(pts.items()) if p.fired]
        text = f"{on}/{len(pts)} points enabled"
        if not self.enabled:
            text = f"off ({len(pts)} points reached)"
        return text + ("; fired " + ", ".join(fired) if fired else "; none fired")

    def activate(self) -> Token[Buggify | None]:
        """Make this the current run's points (in this thread / asyncio task); pass the
        token to :meth:`deactivate` (``SimRuntime`` and ``run_seed`` do this)."""
        return _CURRENT.set(self)

    @staticmethod
    def deactivate(token: Token[Buggify | None]) -> None:
        """Undo :meth:`activate`."""
        _CURRENT.reset(token)

    @staticmethod
    def current() -> Buggify | None:
        """The points of the simulated run this code runs in, or ``None``."""
        return _CURRENT.get()

    def __repr__(self) -> str:
        return f"<Buggify seed={self.seed} {self.summary()}>"


_CURRENT: ContextVar[Buggify | None] = ContextVar("sansio_aio_buggify", default=None)


def buggify(name: str | float | None = None, p: float | None = None) -> bool:
    """A fault point: ``True`` only inside a simulated run, where it is enabled per run
    and then fires with probability ``p`` (0.25 by default).

    ``buggify()``, ``buggify(0.05)``, ``buggify("name")`` and ``buggify("name", 0.05)``
    all work; an unnamed point is named after its call site (``module:line``). Outside a
    simulation it returns ``False`` at once. Use it for things that may really happen
    and that the code must survive::

        if buggify("rx.drop", 0.05):
            return  # as if the socket buffer had been full
    """
    current = _CURRENT.get()
    if current is None:
        return False
    if not isinstance(name, str):
        if name is not None:
            p = float(name)
        frame = sys._getframe(1)
        name = f"{frame.f_globals.get('__name__', '?')}:{frame.f_lineno}"
    if p is None:
        p = DEFAULT_FIRE
    return current.fire(name, p)
