"""A fake clock with a timer queue, manual advance and an autojump mode.

Theory of operation
-------------------
Simulated time only moves when the test (or an autojumping wait) moves it. Everything
that should happen "later" (periodic ticks, task deadlines, packet arrivals, scheduled
inputs) is a :class:`Timer` in one heap ordered by ``(when, sequence)``: two timers for
the same instant fire in the order they were scheduled, so a run is fully deterministic.

* :meth:`FakeClock.advance` / :meth:`FakeClock.advance_to` fire every timer that falls
  due up to the target, in order, with the clock set to each timer's own time while its
  callback runs, then leave the clock at the target.
* :meth:`FakeClock.step` jumps straight to the next timer and fires everything due then.
* ``autojump`` is a flag the *waiters* read (``SimRuntime.next_event``,
  ``TaskHarness.wait_for``): when what they wait for is not there yet and nothing else
  can run at the current instant, they step the clock to the next timer instead of
  giving up. It is trio's ``MockClock(autojump_threshold=0)`` for a world where "idle"
  is known exactly.

A callback that keeps scheduling timers at the current instant would loop forever; the
clock counts timers fired without time moving and raises
:class:`~sansio_aio.testing.SimulationStalled` past ``max_same_instant``.
This module imports no asyncio.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any, final

from ._errors import HarnessError, SimulationStalled

__all__ = ["FakeClock", "Timer"]


@final
class Timer:
    """A scheduled callback; :meth:`cancel` it to stop it from firing."""

    __slots__ = ("args", "callback", "cancelled", "seq", "when")

    def __init__(self, when: float, seq: int, callback: Callable[..., None], args: tuple[Any, ...]):
        self.when = when
        self.seq = seq
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        """Do not fire (idempotent)."""
        self.cancelled = True

    def __lt__(self, other: Timer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    def __repr__(self) -> str:
        state = " cancelled" if self.cancelled else ""
        name = getattr(self.callback, "__qualname__", repr(self.callback))
        return f"<Timer at {self.when:.6f} {name}{state}>"


@final
class FakeClock:
    """Simulated monotonic time with a deterministic timer queue.

    Args:
        start: the initial time (``now()`` before any advance).
        autojump: if true, waits on simulated things jump time to the next timer
            instead of failing when nothing is due now.
        max_same_instant: how many timers may fire without time moving before the
            clock declares a busy loop (:class:`SimulationStalled`).
    """

    __slots__ = (
        "_fired_here",
        "_heap",
        "_last_instant",
        "_max_same",
        "_now",
        "_seq",
        "autojump",
        "fired",
    )

    def __init__(
        self, start: float = 0.0, *, autojump: bool = False, max_same_instant: int = 1_000_000
    ) -> None:
        if not math.isfinite(start):
            raise HarnessError(f"start must be a finite time, got {start!r}")
        self._now = float(start)
        self._heap: list[tuple[float, int, Timer]] = []  # tuples compare in C
        self._seq = itertools.count()
        self.autojump = autojump
        #: Timers fired since the clock was made.
        self.fired = 0
        self._fired_here = 0
        self._last_instant = self._now
        self._max_same = max_same_instant

    # ------------------------------------------------------------------ reading

    def now(self) -> float:
        """The current simulated time."""
        return self._now

    __call__ = now

    @property
    def time(self) -> float:
        """The current simulated time (same as :meth:`now`)."""
        return self._now

    def next_deadline(self) -> float | None:
        """When the earliest pending timer fires, or ``None`` if none is pending."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pending(self) -> int:
        """Number of pending (not cancelled) timers."""
        return sum(1 for _, _, t in self._heap if not t.cancelled)

    # ------------------------------------------------------------------ scheduling

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> Timer:
        """Run ``callback(*args)`` at time ``when`` (at once, in order, if already due)."""
        if not math.isfinite(when):
            raise HarnessError(f"cannot schedule a timer at {when!r}")
        at = max(float(when), self._now)
        seq = next(self._seq)
        timer = Timer(at, seq, callback, args)
        heapq.heappush(self._heap, (at, seq, timer))
        return timer

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> Timer:
        """Run ``callback(*args)`` ``delay`` seconds from now."""
        if delay < 0:
            raise HarnessError(f"delay must be >= 0, got {delay!r}")
        return self.call_at(self._now + delay, callback, *args)

    # ------------------------------------------------------------------ moving time

    def advance(self, seconds: float) -> int:
        """Move time forward by ``seconds``, firing every timer due on the way.

        Returns the number of timers fired.
        """
        if seconds < 0:
            raise HarnessError(f"time only moves forward; advance({seconds!r})")
        return self.advance_to(self._now + seconds)

    def advance_to(self, when: float) -> int:
        """Move time to ``when`` (not backwards), firing every timer due up to it."""
        if when < self._now:
            raise HarnessError(f"time only moves forward: now={self._now!r}, asked {when!r}")
        fired = 0
        heap = self._heap
        while heap and heap[0][0] <= when:
            timer = heapq.heappop(heap)[2]
            if timer.cancelled:
                continue
            self._fire(timer)
            fired += 1
        self._set(when)
        return fired

    def step(self) -> bool:
        """Jump to the next timer and fire every timer due at that instant.

        Returns False (and leaves time alone) if no timer is pending.
        """
        when = self.next_deadline()
        if when is None:
            return False
        self.advance_to(when)
        return True

    def fire_due(self) -> int:
        """Fire the timers due at the current instant (time does not move)."""
        return self.advance_to(self._now)

    def _set(self, when: float) -> None:
        if when != self._last_instant:
            self._last_instant = when
            self._fired_here = 0
        self._now = when

    def _fire(self, timer: Timer) -> None:
        self._set(timer.when)
        self._fired_here += 1
        if self._fired_here > self._max_same:
            raise SimulationStalled(
                f"{self._fired_here} timers fired at t={self._now!r} without time moving "
                f"(last: {timer!r}): something reschedules itself at the same instant"
            )
        self.fired += 1
        timer.callback(*timer.args)

    def __repr__(self) -> str:
        return f"<FakeClock t={self._now!r} pending={self.pending()} autojump={self.autojump}>"
