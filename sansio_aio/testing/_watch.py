"""A transparent wrapper that traces a hosted task and checks the protocol.

Theory of operation
-------------------
The simulated runtime hosts tasks in the real :class:`~sansio_aio._core.WorkerCore`,
which knows nothing of tests. To trace every input and output and to catch protocol
violations without changing the core, each task built by the simulation is wrapped in a
:class:`Watched` object that forwards every call to the task and records it.

* ``on_event``/``on_tick``/``on_shutdown`` record the input and its time;
* ``pop_output`` records each output; when the task returns ``None``, a strict wrapper
  asks once more, and after ``is_empty``/``next_deadline`` too: an answer is a
  violation (the output is kept and handed out, so nothing is lost);
* ``next_deadline`` (only on :class:`WatchedDeadline`, used when the task defines one,
  so the core's "no deadline" fast path is kept) rejects deadlines in the past and a
  task woken three times at one instant that still asks for that instant: the core
  would spin, so the wrapper reports the violation and answers ``None``.

Violations are reported to a callback (the simulation raises them at its next
checkpoint); the trace gets a line either way.
This module imports no asyncio.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .._task import Task
from ._errors import ProtocolViolation
from ._trace import Trace, describe

__all__ = ["Watched", "WatchedDeadline", "watch"]

Report = Callable[[ProtocolViolation], None]


class Watched:
    """Forwards the task protocol to ``task``, recording calls in ``trace``."""

    __slots__ = (
        "_last_tick",
        "_report",
        "_stash",
        "_strict",
        "_ticks_here",
        "label",
        "now",
        "task",
        "trace",
    )

    def __init__(self, task: Any, label: str, trace: Trace, report: Report, strict: bool) -> None:
        self.task = task
        self.label = label
        self.trace = trace
        self._report = report
        self._strict = strict
        self.now = -math.inf
        self._last_tick = -math.inf
        self._ticks_here = 0
        self._stash: list[Any] = []

    def on_tick(self, now: float) -> None:
        """Forward ``on_tick``."""
        self.now = now
        if now == self._last_tick:
            self._ticks_here += 1
        else:
            self._last_tick = now
            self._ticks_here = 1
        self.trace.record(now, self.label, "tick")
        self.task.on_tick(now)

    def on_event(self, now: float, event: Any) -> None:
        """Forward ``on_event``."""
        self.now = now
        self.trace.record(now, self.label, "in", event)
        self.task.on_event(now, event)

    def pop_output(self, now: float) -> Any | None:
        """Forward ``pop_output``; a strict wrapper double-checks the final ``None``."""
        # an output found stranded earlier is handed out first
        out = self._stash.pop(0) if self._stash else self.task.pop_output(now)
        if out is None:
            if self._strict:
                extra = self.task.pop_output(now)
                if extra is not None:
                    self._stranded(extra, "pop_output returned None")
                    self._stash.pop()
                    self.trace.record(now, self.label, "out", extra)
                    return extra
            return None
        self.trace.record(now, self.label, "out", out)
        return out

    def _stranded(self, extra: Any, when: str) -> None:
        self._violate(
            f"{self.label}.pop_output returned {describe(extra)} after returning None "
            f"(an output that appeared after {when}, t={self.now!r}): outputs must appear "
            "only while handling an input, or the runtime leaves them stranded"
        )
        self._stash.append(extra)

    def _probe(self, when: str) -> None:
        """Strict: an output queued by ``is_empty``/``next_deadline`` would be stranded."""
        extra = self.task.pop_output(self.now)
        if extra is not None:
            self._stranded(extra, when)

    def on_shutdown(self, now: float) -> None:
        """Forward ``on_shutdown``."""
        self.now = now
        self.trace.record(now, self.label, "shutdown")
        self.task.on_shutdown(now)

    def is_empty(self) -> bool:
        """Forward ``is_empty`` (a strict wrapper then checks nothing was queued)."""
        empty = bool(self.task.is_empty())
        if self._strict:
            self._probe("is_empty()")
        return empty

    def _violate(self, message: str) -> None:
        self.trace.record(self.now, self.label, "VIOLATION", message)
        self._report(ProtocolViolation(message, task=self.label, now=self.now))

    def __repr__(self) -> str:
        return f"<Watched {self.label} {self.task!r}>"


class WatchedDeadline(Watched):
    """A :class:`Watched` task that defines ``next_deadline``."""

    __slots__ = ()

    def next_deadline(self) -> float | None:
        """Forward ``next_deadline``, refusing values that would make the worker spin."""
        when = self.task.next_deadline()
        if self._strict:
            self._probe("next_deadline()")
        if when is None:
            return None
        now = self.now
        if isinstance(when, bool) or not isinstance(when, int | float) or not math.isfinite(when):
            self._violate(f"{self.label}.next_deadline() returned {when!r}, not a finite time")
            return None
        if when < now:
            self._violate(f"{self.label}.next_deadline() is in the past: {when!r} < {now!r}")
            return None if self._strict else now
        if when <= now and self._ticks_here >= 3 and self._last_tick == now:
            self._violate(
                f"{self.label} was woken {self._ticks_here} times at t={now!r} and still "
                "asks to be woken at that instant: the worker would spin"
            )
            return None
        return float(when)


def watch(task: Any, label: str, trace: Trace, report: Report, strict: bool) -> Watched:
    """Wrap ``task``; the wrapper has ``next_deadline`` only if the task asks for wake-ups."""
    fn = getattr(type(task), "next_deadline", None)
    cls = Watched if fn is None or fn is Task.next_deadline else WatchedDeadline
    return cls(task, label, trace, report, strict)
