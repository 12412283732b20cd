"""Drive one task by hand: inputs at chosen times, a fake clock, strict protocol checks.

Theory of operation
-------------------
:class:`TaskHarness` is the single-task driver of the test kit, what h11's
``ConnectionPair`` and aioquic's ``roundtrip`` helpers are to their libraries. It hosts
one task the way a worker does and nothing else: no bus, no drivers. Every output comes
back to the test as the object the task emitted.

It calls the task exactly as ``sansio_aio._core.WorkerCore`` does: each input, each
periodic tick (on the grid ``start + k * tick``) and each deadline wake-up is followed by
``pop_output`` until ``None``, then ``is_empty()`` (a task that reports empty has ended;
the runtime would drop it), then ``next_deadline()`` (one timer armed for it). Timers
live on a :class:`~sansio_aio.testing.FakeClock`, so ticks, deadlines and inputs that
the test scheduled fire in time order, ties in scheduling order.

On top of the runtime's behaviour the harness is strict (``strict=True``); it raises
:class:`~sansio_aio.testing.ProtocolViolation` when a task

* hands out an output after ``pop_output`` returned ``None`` (the runtime would leave it
  stranded until the next input; the harness calls ``pop_output`` once more to see);
* never returns ``None`` from ``pop_output`` (``max_outputs`` per drain);
* reports a deadline in the past, or the same instant again right after being woken for
  it (the worker would spin);
* is fed after it ended;

and :class:`~sansio_aio.testing.TaskCrashed` when a task method raises (the runtime
would end the task and report the traceback). Outputs seen before a violation are kept.
This module imports no asyncio.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, cast, final

from .._task import TaskProtocol
from ._clock import FakeClock, Timer
from ._errors import HarnessError, ProtocolViolation, SimulationStalled, TaskCrashed
from ._trace import Trace, describe

__all__ = ["TaskHarness"]

_REQUIRED = ("on_tick", "on_event", "pop_output", "on_shutdown", "is_empty")

Match = type | tuple[type, ...] | Callable[[Any], bool]


def _matcher(match: Match) -> Callable[[Any], bool]:
    if isinstance(match, type | tuple):
        types = match

        def by_type(out: Any) -> bool:
            return isinstance(out, types)

        return by_type
    return match


@final
class TaskHarness:
    """Host one task on a fake clock and collect what it emits.

    Args:
        task: a task instance, or a factory (such as the task class) called as
            ``factory(cfg)``, exactly as the runtime builds a spawned task.
        cfg: the configuration passed to the factory.
        clock: the clock to use (default: a new :class:`FakeClock` at ``start``).
        start: the initial time of a new clock.
        tick: the periodic tick in seconds (the runtime's default is 1.0); ``None``
            turns periodic ticks off (deadlines still fire).
        strict: check the protocol (the rules are in docs/testing.md) and raise on
            violations.
        trace: a :class:`Trace` to record into, ``True`` for a new one, ``False`` for none.
        name: how the task is named in traces and errors (default: its class name).
        max_outputs: outputs allowed in one drain before ``pop_output`` is declared
            endless.
    """

    def __init__(
        self,
        task: TaskProtocol | Callable[[Any], TaskProtocol],
        cfg: Any = None,
        *,
        clock: FakeClock | None = None,
        start: float = 0.0,
        tick: float | None = 1.0,
        strict: bool = True,
        trace: Trace | bool = True,
        name: str | None = None,
        max_outputs: int = 100_000,
    ) -> None:
        if tick is not None and not tick > 0:
            raise HarnessError(f"tick must be > 0 seconds or None, got {tick!r}")
        self.clock = clock if clock is not None else FakeClock(start)
        if isinstance(trace, Trace):
            self.trace = trace
        else:
            self.trace = Trace(enabled=bool(trace))
        self.strict = strict
        self.max_outputs = max_outputs
        #: Every output so far as ``(time, output)``, oldest first.
        self.log: list[tuple[float, Any]] = []
        #: Outputs not yet taken with :meth:`take`.
        self.outputs: list[Any] = []
        #: Inputs fed so far (events, ticks, deadline wake-ups, shutdown).
        self.calls = 0
        #: True once the task reported ``is_empty()`` (the runtime would drop it).
        self.ended = False
        #: When the task ended, or ``None``.
        self.ended_at: float | None = None
        self._deadline: float | None = None
        self._deadline_timer: Timer | None = None
        self._tick = tick
        self._tick_start = self.clock.now()
        self._tick_k = 0
        self._tick_timer: Timer | None = None
        self._scheduled: set[Timer] = set()
        self._in_call = False

        if _is_factory(task):
            self.task: Any = cast(Callable[[Any], Any], task)(cfg)
        else:
            self.task = task
        missing = [m for m in _REQUIRED if not callable(getattr(self.task, m, None))]
        if missing:
            raise ProtocolViolation(
                f"{type(self.task).__name__} is not a task: missing {', '.join(missing)} "
                "(subclass sansio_aio.Task or implement sansio_aio.TaskProtocol)",
                task=type(self.task).__name__,
            )
        self.name = name or type(self.task).__name__
        self._deadline_fn: Callable[[], float | None] | None = getattr(
            self.task, "next_deadline", None
        )
        self.trace.record(self.now, self.name, "created")
        # Outputs queued by the constructor are drained at once, as on spawn.
        self._run("spawn", None, None)
        if tick is not None and not self.ended:
            self._arm_tick()

    # ------------------------------------------------------------------ reading

    @property
    def now(self) -> float:
        """The current simulated time."""
        return self.clock.now()

    @property
    def deadline(self) -> float | None:
        """The task's pending wake-up, as last reported by ``next_deadline()``."""
        return self._deadline

    def take(self, match: Match | None = None) -> list[Any]:
        """Remove and return the collected outputs (only those that ``match``, if given).

        ``match`` is a type, a tuple of types, or a predicate.
        """
        if match is None:
            out, self.outputs = self.outputs, []
            return out
        pred = _matcher(match)
        taken = [o for o in self.outputs if pred(o)]
        self.outputs = [o for o in self.outputs if not pred(o)]
        return taken

    # ------------------------------------------------------------------ inputs

    def feed(self, event: Any, *, at: float | None = None) -> list[Any]:
        """Feed one input (moving the clock to ``at`` first, if given).

        Returns the outputs of this input; they are also appended to :attr:`outputs`.
        Timers that fall due while moving to ``at`` fire first.
        """
        if at is not None:
            self.clock.advance_to(at)
        return self._run("on_event", self.task.on_event, event)

    def feed_all(self, events: Iterable[Any], *, every: float = 0.0) -> list[Any]:
        """Feed each of ``events``, ``every`` seconds apart; return all their outputs."""
        outs: list[Any] = []
        for i, event in enumerate(events):
            if i and every:
                self.clock.advance(every)
            outs.extend(self.feed(event))
        return outs

    def schedule(self, at: float, event: Any) -> Timer:
        """Feed ``event`` when the clock reaches ``at`` (cancel the returned timer to undo)."""
        timer: Timer

        def fire() -> None:
            self._scheduled.discard(timer)
            if not self.ended:
                self._run("on_event", self.task.on_event, event)

        timer = self.clock.call_at(at, fire)
        self._scheduled.add(timer)
        return timer

    def tick(self) -> list[Any]:
        """Call ``on_tick`` now (besides the periodic ones) and drain it."""
        return self._run("on_tick", self.task.on_tick, None)

    def shutdown(self, *, within: float = 10.0) -> list[Any]:
        """Call ``on_shutdown``, then let time run until the task is empty.

        Raises :class:`ProtocolViolation` if it is not empty ``within`` simulated seconds.
        Returns every output emitted from the shutdown call until the end.
        """
        first = len(self.log)
        self._run("on_shutdown", self.task.on_shutdown, None)
        limit = self.now + within
        while not self.ended:
            nxt = self.clock.next_deadline()
            if nxt is None or nxt > limit:
                raise ProtocolViolation(
                    f"{self.name} did not become empty within {within} s of on_shutdown "
                    f"(is_empty() still False at t={self.now!r})",
                    task=self.name,
                    now=self.now,
                )
            self.clock.step()
        return [out for _, out in self.log[first:]]

    # ------------------------------------------------------------------ time

    def advance(self, seconds: float) -> list[Any]:
        """Move time forward, firing ticks, deadlines and scheduled inputs in order.

        Returns the outputs they produced.
        """
        first = len(self.log)
        self.clock.advance(seconds)
        return [out for _, out in self.log[first:]]

    def advance_to(self, when: float) -> list[Any]:
        """Move time to ``when``; see :meth:`advance`."""
        first = len(self.log)
        self.clock.advance_to(when)
        return [out for _, out in self.log[first:]]

    def run_until_idle(self, *, within: float = 60.0) -> list[Any]:
        """Jump from timer to timer until the task has no deadline and no input is scheduled.

        Periodic ticks fire on the way but do not keep the task busy. Raises
        :class:`SimulationStalled` if it is still busy after ``within`` simulated seconds.
        """
        first = len(self.log)
        limit = self.now + within
        while not self.ended and (self._deadline is not None or self._scheduled):
            pending = [t.when for t in self._scheduled]
            if self._deadline is not None:
                pending.append(self._deadline)
            nxt = min(pending)
            if nxt > limit:
                raise SimulationStalled(
                    f"{self.name} still busy after {within} simulated seconds "
                    f"(next wake-up at {nxt!r}, now {self.now!r})"
                )
            self.clock.advance_to(nxt)
        return [out for _, out in self.log[first:]]

    def wait_for(self, match: Match, *, within: float = 10.0) -> Any:
        """Return (and take) the first collected output that matches, jumping time if needed.

        Looks at :attr:`outputs` first; then steps the clock from timer to timer until
        such an output appears. Raises :class:`SimulationStalled` after ``within``
        simulated seconds, or when nothing is scheduled.
        """
        pred = _matcher(match)
        limit = self.now + within
        while True:
            for i, out in enumerate(self.outputs):
                if pred(out):
                    del self.outputs[i]
                    return out
            nxt = self.clock.next_deadline()
            if nxt is None or nxt > limit or self.ended:
                why = (
                    "the task ended"
                    if self.ended
                    else ("nothing is scheduled" if nxt is None else f"waited {within} s")
                )
                raise SimulationStalled(
                    f"no output matching {match!r} from {self.name} ({why}; t={self.now!r})"
                )
            self.clock.step()

    # ------------------------------------------------------------------ the drain rule

    def _run(self, call: str, method: Callable[..., None] | None, event: Any) -> list[Any]:
        if self.ended:
            raise ProtocolViolation(
                f"{self.name} ended at t={self.ended_at!r} (is_empty() returned True); "
                f"the runtime dropped it, so it cannot take {call}"
                + (f"({describe(event)})" if call == "on_event" else ""),
                task=self.name,
                now=self.now,
            )
        if self._in_call:
            raise HarnessError("re-entrant call: feed inputs from the test, not from a task")
        now = self.clock.now()
        task = self.task
        self.calls += 1
        trace = self.trace
        if call == "on_event":
            trace.record(now, self.name, "in", event)
        elif call != "spawn":
            trace.record(now, self.name, call)
        self._in_call = True
        first = len(self.log)
        try:
            try:
                if method is not None:
                    if call == "on_event":
                        method(now, event)
                    else:
                        method(now)
                self._drain(now, call)
                empty = task.is_empty()
                deadline = self._deadline_fn() if self._deadline_fn is not None else None
                if self.strict:
                    extra = task.pop_output(now)
                    if extra is not None:
                        self._collect(now, extra)
                        raise ProtocolViolation(
                            f"{self.name}.pop_output returned {describe(extra)} after "
                            f"returning None (during {call} at t={now!r}): outputs must "
                            "appear only while handling an input, or the runtime leaves "
                            "them stranded until the next one",
                            task=self.name,
                            now=now,
                        )
            except HarnessError:
                raise
            except Exception as exc:
                what = f"{call}({describe(event)})" if call == "on_event" else call
                raise TaskCrashed(
                    f"{self.name} raised {exc!r} in {what} at t={now!r}",
                    task=self.name,
                    now=now,
                    call=what,
                ) from exc
        finally:
            self._in_call = False
        if empty:
            self._end(now)
        else:
            self._set_deadline(now, deadline, woke=call == "deadline")
        return [out for _, out in self.log[first:]]

    def _drain(self, now: float, call: str) -> None:
        pop = self.task.pop_output
        for _ in range(self.max_outputs):
            out = pop(now)
            if out is None:
                return
            self._collect(now, out)
        raise ProtocolViolation(
            f"{self.name}.pop_output did not return None after {self.max_outputs} "
            f"outputs (during {call} at t={now!r})",
            task=self.name,
            now=now,
        )

    def _collect(self, now: float, out: Any) -> None:
        self.log.append((now, out))
        self.outputs.append(out)
        self.trace.record(now, self.name, "out", out)

    def _end(self, now: float) -> None:
        self.ended = True
        self.ended_at = now
        self.trace.record(now, self.name, "ended")
        for timer in (self._tick_timer, self._deadline_timer, *self._scheduled):
            if timer is not None:
                timer.cancel()
        self._scheduled.clear()
        self._deadline = None

    # ------------------------------------------------------------------ timers

    def _arm_tick(self) -> None:
        assert self._tick is not None
        self._tick_k += 1
        self._tick_timer = self.clock.call_at(
            self._tick_start + self._tick_k * self._tick, self._on_tick_timer
        )

    def _on_tick_timer(self) -> None:
        if self.ended:
            return
        self._arm_tick()
        self._run("tick", self.task.on_tick, None)

    def _set_deadline(self, now: float, when: Any, *, woke: bool) -> None:
        if when is not None:
            if (
                isinstance(when, bool)
                or not isinstance(when, int | float)
                or not math.isfinite(when)
            ):
                raise ProtocolViolation(
                    f"{self.name}.next_deadline() returned {when!r}: expected a finite "
                    "loop time or None",
                    task=self.name,
                    now=now,
                )
            if self.strict and when < now:
                raise ProtocolViolation(
                    f"{self.name}.next_deadline() is in the past: {when!r} < now {now!r}",
                    task=self.name,
                    now=now,
                )
            if self.strict and woke and when <= now:
                raise ProtocolViolation(
                    f"{self.name} was woken for its deadline at t={now!r} and asks to be "
                    f"woken again at {when!r}: the worker would spin. Clear the deadline "
                    "or move it forward in on_tick",
                    task=self.name,
                    now=now,
                )
        if when == self._deadline:
            return
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._deadline = when
        if when is not None:
            self._deadline_timer = self.clock.call_at(when, self._on_deadline_timer, when)

    def _on_deadline_timer(self, when: float) -> None:
        if self.ended or self._deadline != when:
            return
        self._deadline_timer = None
        self._deadline = None
        self._run("deadline", self.task.on_tick, None)

    def __repr__(self) -> str:
        state = "ended" if self.ended else "live"
        return f"<TaskHarness {self.name} {state} t={self.now!r} outputs={len(self.outputs)}>"


def _is_factory(obj: Any) -> bool:
    """A class, or a callable that is not itself a task (a task instance is used as is)."""
    return isinstance(obj, type) or (callable(obj) and not hasattr(obj, "on_event"))
