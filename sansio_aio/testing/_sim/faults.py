"""Faults over simulated time, drawn from the seed: clogs, swizzles, partitions, crashes.

Theory of operation
-------------------
The network and the runtime already know how to misbehave on demand
(:meth:`SimNetwork.hold`, :meth:`SimNetwork.partition`, :meth:`SimRuntime.kill_worker`).
:class:`Faults` decides *when* and *to whom*, from a generator of its own (seeded from the
run's seed, so the fault schedule does not shift when a task draws one more random
number from the network's generator), and schedules it as timers on the fake clock:

* :meth:`Faults.clog` holds everything between a host and the rest of the network from
  ``at`` for ``duration`` seconds (FoundationDB's clogging: packets are late, not lost);
* :meth:`Faults.swizzle_clog` is FoundationDB's swizzle-clogging: a random subset of the
  hosts is clogged one by one, a random gap apart, then unclogged in a random order, a
  random gap apart. Each unclog releases that host's packets in their order (those
  still covered by another clog stay held there until it lifts too);
* :meth:`Faults.partition` cuts and heals at chosen times (datagrams are lost);
* :meth:`Faults.crash_workers` kills workers of a runtime as a Poisson process of
  ``rate`` kills per simulated second, a random live worker each time, keeping at least
  ``n - max_down`` workers up (VOPR caps faults the same way, so that the system can
  still make progress); with ``SimRuntime(restart="on-failure")`` they come back.

Each helper returns a :class:`FaultPlan` whose ``events`` list what happened so far
(:class:`FaultEvent`: time, action, target), and which :meth:`FaultPlan.cancel` stops.
Every event is also a ``fault`` line of the trace, so the trace tells the story of a
failing seed. This module imports no asyncio.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

from .._clock import Timer
from .._errors import HarnessError
from .net import Endpoint, Hold, Partition, SimNetwork

if TYPE_CHECKING:
    from .engine import SimEngine

__all__ = ["FaultEvent", "FaultPlan", "Faults"]


@final
@dataclass(frozen=True, slots=True)
class FaultEvent:
    """One fault that happened: at simulated time ``at``, ``action`` on ``target``."""

    at: float
    #: ``"clog"``, ``"unclog"``, ``"partition"``, ``"heal"``, ``"kill"``.
    action: str
    #: The host, the sides of a partition, or ``"w<worker>"``.
    target: str


@final
class FaultPlan:
    """Faults scheduled by one :class:`Faults` helper; ``events`` lists those that
    happened so far, oldest first."""

    __slots__ = ("_cleanup", "_faults", "_ran", "_timers", "cancelled", "events", "kind")

    def __init__(self, faults: Faults, kind: str) -> None:
        self._faults = faults
        self.kind = kind
        self.events: list[FaultEvent] = []
        self.cancelled = False
        self._timers: list[Timer] = []
        self._ran = 0
        self._cleanup: list[Callable[[], None]] = []

    def _at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        self._timers.append(self._faults.net.clock.call_at(when, self._run, fn, args))

    def _run(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        self._ran += 1
        if not self.cancelled:
            fn(*args)

    def _happened(self, action: str, target: str) -> None:
        net = self._faults.net
        event = FaultEvent(net.clock.now(), action, target)
        self.events.append(event)
        net.trace.record(event.at, "fault", action, f"{target} ({self.kind})")

    @property
    def pending(self) -> int:
        """Scheduled steps that have not happened yet."""
        return 0 if self.cancelled else len(self._timers) - self._ran

    def cancel(self, *, lift: bool = True) -> None:
        """Stop: nothing more happens; with ``lift`` (the default) the clogs and
        partitions this plan put in place are lifted now."""
        if self.cancelled:
            return
        self.cancelled = True
        for timer in self._timers:
            timer.cancel()
        if lift:
            for undo in self._cleanup:
                undo()
        self._cleanup.clear()

    def count(self, action: str) -> int:
        """How many events of ``action`` happened."""
        return sum(1 for e in self.events if e.action == action)

    def __repr__(self) -> str:
        return f"<FaultPlan {self.kind} events={len(self.events)} cancelled={self.cancelled}>"


def _label(side: Iterable[Endpoint]) -> str:
    return ",".join(sorted(str(e) for e in side))


class Faults:
    """Fault helpers for one simulated run (see the module docs).

    Args:
        net: the simulated network the clogs and partitions act on (and whose clock
            schedules everything).
        seed: seeds :attr:`rng` (``random.Random(f"faults:{seed}")``); default: the
            network's seed.
    """

    def __init__(self, net: SimNetwork, *, seed: int | None = None) -> None:
        self.net = net
        #: The generator every random fault decision draws from.
        self.rng = random.Random(f"faults:{net.seed if seed is None else seed}")
        #: Every plan made here, in order.
        self.plans: list[FaultPlan] = []

    def _plan(self, kind: str) -> FaultPlan:
        plan = FaultPlan(self, kind)
        self.plans.append(plan)
        return plan

    def _start(self, at: float | None) -> float:
        now = self.net.clock.now()
        if at is None:
            return now
        if at < now:
            raise HarnessError(f"at={at!r} is in the past: now={now!r}")
        return at

    # ------------------------------------------------------------------ network

    def hold(
        self,
        side_a: Iterable[Endpoint],
        side_b: Iterable[Endpoint] | None = None,
        **kwargs: Any,
    ) -> Hold:
        """:meth:`SimNetwork.hold`, for symmetry: keep packets until released."""
        return self.net.hold(side_a, side_b, **kwargs)

    def clog(
        self,
        host: Endpoint,
        *,
        at: float | None = None,
        duration: float | None = None,
        shuffle: bool = False,
    ) -> FaultPlan:
        """Hold everything between ``host`` and the rest of the network from ``at``
        (default: now) for ``duration`` seconds (default: until the plan is cancelled);
        then the held packets arrive, in order (``shuffle=True``: shuffled by the
        network's generator, TCP streams still in order)."""
        plan = self._plan("clog")
        start = self._start(at)
        holds: list[Hold] = []

        def clog() -> None:
            holds.append(self.net.hold([host], shuffle=shuffle))
            plan._happened("clog", str(host))

        def unclog() -> None:
            if holds and holds[-1].active:
                holds[-1].release()
                plan._happened("unclog", str(host))

        plan._cleanup.append(unclog)
        plan._at(start, clog)
        if duration is not None:
            plan._at(start + duration, unclog)
        return plan

    def swizzle_clog(
        self,
        hosts: Sequence[Endpoint],
        *,
        at: float | None = None,
        gap: float = 1.0,
        fraction: float = 0.5,
        shuffle: bool = False,
    ) -> FaultPlan:
        """FoundationDB's swizzle-clogging over ``hosts``.

        A random subset (each host with probability ``fraction``, at least one) is
        clogged one by one from ``at`` (default: now), ``uniform(0, gap)`` seconds apart,
        then unclogged in a random order, ``uniform(0, gap)`` seconds apart. The whole
        schedule is drawn at once (see :attr:`FaultPlan.events` as it happens). A host
        is unclogged at most ``2 * len(subset) * gap`` seconds after ``at``.
        """
        if not hosts:
            raise HarnessError("swizzle_clog needs at least one host")
        rng = self.rng
        plan = self._plan("swizzle")
        t = self._start(at)
        chosen = [h for h in hosts if rng.random() < fraction] or [rng.choice(list(hosts))]
        holds: dict[int, Hold] = {}

        def clog(i: int, host: Endpoint) -> None:
            holds[i] = self.net.hold([host], shuffle=shuffle)
            plan._happened("clog", str(host))

        def unclog(i: int, host: Endpoint) -> None:
            h = holds.get(i)
            if h is not None and h.active:
                h.release()
                plan._happened("unclog", str(host))

        for i, host in enumerate(chosen):
            plan._at(t, clog, i, host)
            t += rng.uniform(0.0, gap)
        order = list(range(len(chosen)))
        rng.shuffle(order)
        for i in order:
            plan._at(t, unclog, i, chosen[i])
            t += rng.uniform(0.0, gap)

        def lift() -> None:
            for i in order:
                unclog(i, chosen[i])

        plan._cleanup.append(lift)
        return plan

    def partition(
        self,
        side_a: Iterable[Endpoint],
        side_b: Iterable[Endpoint] | None = None,
        *,
        at: float | None = None,
        duration: float | None = None,
    ) -> FaultPlan:
        """Cut ``side_a`` off (from ``side_b``, default everyone else) at ``at`` (default:
        now) for ``duration`` seconds (default: until the plan is cancelled)."""
        a, b = list(side_a), None if side_b is None else list(side_b)
        plan = self._plan("partition")
        start = self._start(at)
        cuts: list[Partition] = []
        target = _label(a) + " | " + ("the rest" if b is None else _label(b))

        def cut() -> None:
            cuts.append(self.net.partition(a, b))
            plan._happened("partition", target)

        def heal() -> None:
            if cuts and cuts[-1].active:
                cuts[-1].heal()
                plan._happened("heal", target)

        plan._cleanup.append(heal)
        plan._at(start, cut)
        if duration is not None:
            plan._at(start + duration, heal)
        return plan

    # ------------------------------------------------------------------ workers

    def crash_workers(
        self,
        rt: SimEngine,
        *,
        rate: float,
        at: float | None = None,
        until: float | None = None,
        workers: Iterable[int] | None = None,
        max_down: int | None = None,
        max_kills: int | None = None,
    ) -> FaultPlan:
        """Kill workers of ``rt`` at random: ``rate`` kills per simulated second on average
        (exponential gaps), from ``at`` (default: now) until ``until`` (default: until the
        runtime stops or the plan is cancelled).

        Each kill picks one of ``workers`` (default: all) that is up, as
        :meth:`SimRuntime.kill_worker` does; it is skipped when ``max_down`` workers
        (default: all but one) are already dead or restarting. ``max_kills`` bounds the
        total. Run the runtime with ``restart="on-failure"`` to have them come back.
        """
        if not rate > 0:
            raise HarnessError(f"rate must be > 0 kills per second, got {rate!r}")
        rng = self.rng
        if rt.clock is not self.net.clock:
            raise HarnessError("crash_workers: the runtime is not on this network's clock")
        n = int(rt.config["workers"])
        pool = sorted(set(range(n) if workers is None else workers))
        if not pool or not all(0 <= w < n for w in pool):
            raise HarnessError(f"workers must be worker ids in [0, {n}), got {pool!r}")
        limit = n - 1 if max_down is None else max_down
        plan = self._plan("crash")
        start = self._start(at)

        def schedule(after: float) -> None:
            when = after + rng.expovariate(rate)
            if until is None or when <= until:
                plan._at(when, kill)

        def kill() -> None:
            from ..._api import RuntimeState

            if rt._state is not RuntimeState.RUNNING:
                return  # the runtime stopped: so does the plan
            if max_kills is not None and plan.count("kill") >= max_kills:
                return
            up = rt.workers_up()
            down = n - len(up)
            candidates = [w for w in pool if w in up]
            if candidates and down < limit:
                w = rng.choice(candidates)
                plan._happened("kill", f"w{w}")
                rt.kill_worker(w)
            schedule(self.net.clock.now())

        schedule(start)
        return plan

    # ------------------------------------------------------------------ report

    def summary(self) -> str:
        """One line: what every plan did so far."""
        if not self.plans:
            return "none"
        counts: dict[str, int] = {}
        for plan in self.plans:
            for e in plan.events:
                counts[e.action] = counts.get(e.action, 0) + 1
        kills = [
            f"{e.target}@{e.at:.3f}" for p in self.plans for e in p.events if e.action == "kill"
        ]
        text = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing happened yet"
        if kills:
            text += " (" + " ".join(kills[:8]) + (" ..." if len(kills) > 8 else "") + ")"
        return text
