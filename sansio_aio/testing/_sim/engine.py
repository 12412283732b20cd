"""The engine of the simulated runtime: real worker cores, one thread, simulated time.

Theory of operation
-------------------
:class:`SimEngine` is the synchronous half of :class:`~sansio_aio.testing.SimRuntime`
(which adds the awaitable API of :class:`sansio_aio.Runtime`): no threads, no event
loops, no sockets. Each worker is the real
:class:`~sansio_aio._core.WorkerCore` (the same task host, drain rule, bus routing and
failure isolation the worker threads run), fed from the real bounded
:class:`~sansio_aio._lane.Lane` inboxes (one per producer) and wired to the real
:class:`~sansio_aio._bus.BusHub`. What the threads and the controller do is done here in
one deterministic loop:

* **the instant.** :meth:`SimEngine.settle` runs the current simulated instant to
  completion: workers drain their lanes in worker order (lanes in producer order, as
  ``Worker._on_wake`` does), messages for the application are dispatched as the
  controller would, and timers due now (zero-latency packets, deadlines) fire, until
  nothing is left. A ping-pong that never ends at one instant raises
  :class:`~sansio_aio.testing.SimulationStalled`.
* **time.** Ticks (``start + k * tick`` per worker), task deadlines (one timer per
  worker, re-armed as ``Worker.arm_deadline`` does) and packet arrivals are timers on
  the :class:`~sansio_aio.testing.FakeClock`; every timer callback is followed by a
  settle. Awaiting a result that is not ready steps the clock to the next timer when
  the clock autojumps (the default); with a manual clock it waits for the test to
  advance it from another coroutine.
* **the controller.** The real controller's rules, shared with ``Runtime``: placement
  and routing by the :class:`~sansio_aio._ledger.Ledger` (least loaded by its own
  count, ties round-robin, task-emitted spawns through the same balancer) and the
  workers' reports handled by the :class:`~sansio_aio._dispatch.Dispatcher`, whose
  decisions land in the trace. Every waiter is a synchronous ``Result``.

The worker shell is the real one (``_shell.WorkerShell``) with the fake clock as its
scheduler (``worker.py``). Every task is wrapped (``_watch.py``) so each input and output
lands in the trace with its simulated time; a protocol violation is raised at the next
checkpoint when ``strict`` is on. Drivers get a context whose ``deliver`` feeds the core
and whose ``loop`` does not exist: only simulated drivers (``SimNetwork``'s) make sense
here. The only asyncio used is the futures of the manual-clock wait.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

from ..._api import RuntimeState
from ..._bus import BusHub
from ..._control import ControllerBase
from ..._core import WorkerCore
from ..._dispatch import Result
from ..._driver import DriverFactory
from ..._errors import ConfigError, QueueFull, RuntimeClosed, ShutdownTimeout
from ..._events import AppEvent, TaskRef
from ..._lane import Lane
from ..._ledger import check_runtime_args
from ..._shell import ShellContext
from ..._task import TaskProtocol
from ..._wire import ForceStopCmd, HostFactory, ShutdownCmd, SpawnCmd, TaskFactory
from .._clock import FakeClock
from .._errors import ProtocolViolation, SimulationStalled
from .._trace import Trace
from .._watch import Watched, watch
from .net import SimNetwork
from .worker import SimWorker

__all__ = ["SimEngine"]


def _no_wake() -> None:
    """The simulated controller polls the outbox when it settles: no wake-up needed."""


class SimEngine(ControllerBase):
    """The synchronous engine of :class:`~sansio_aio.testing.SimRuntime` (see its
    arguments there); use ``SimRuntime``, which adds the awaitable API."""

    def __init__(
        self,
        kinds: Mapping[str, TaskFactory],
        *,
        workers: int = 1,
        tick: float = 1.0,
        host: HostFactory | None = None,
        drivers: Sequence[DriverFactory] | None = None,
        net: SimNetwork | None = None,
        clock: FakeClock | None = None,
        seed: int = 0,
        trace: Trace | bool = True,
        strict: bool = True,
        inbox_capacity: int = 65536,
        event_capacity: int = 1 << 20,
        max_time: float = 3600.0,
    ) -> None:
        check_runtime_args(kinds, workers, tick, inbox_capacity, event_capacity, drivers or ())
        super().__init__(
            kinds,
            workers=workers,
            host=host,
            event_capacity=event_capacity,
            record=self._record_app,
        )
        if net is None:
            tr = trace if isinstance(trace, Trace) else Trace(seed, enabled=bool(trace))
            net = SimNetwork(seed=seed, clock=clock, trace=tr)
        elif clock is not None and clock is not net.clock:
            raise ConfigError("pass either net= or clock=: the network already has a clock")
        self.net = net
        self.clock = net.clock
        self.seed = net.seed
        if isinstance(trace, Trace):
            self.trace = trace
        elif trace is False:
            self.trace = Trace(net.seed, enabled=False)
        else:
            self.trace = net.trace
        self.strict = strict
        self.max_time = max_time
        self._tick = tick
        self._driver_factories = tuple(drivers) if drivers is not None else tuple(net.drivers())
        self._inbox_capacity = inbox_capacity
        self._hub = BusHub()
        self._workers: list[SimWorker] = []
        # One outbox for every worker: the controller handles reports in the order the
        # workers handed them over (single-threaded, so one lane is enough).
        self._outbox = Lane(1 << 62, _no_wake)
        self._settling = False
        self._serial = itertools.count()
        #: Protocol violations seen so far (raised at the next checkpoint if strict).
        self.violations: list[ProtocolViolation] = []
        self._raised = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._t0 = self.clock.now()

    # ------------------------------------------------------------------ lifecycle

    @property
    def now(self) -> float:
        """The simulated time."""
        return self.clock.now()

    def _record_app(self, kind: str, detail: Any) -> None:
        self.trace.record(self.clock.now(), "app", kind, detail)

    def start_now(self) -> Self:
        """Start the simulated workers (synchronous form of :meth:`start`)."""
        if self._state is not RuntimeState.NEW:
            raise RuntimeClosed(f"runtime already {self._state.value}; build a new SimRuntime")
        now = self.clock.now()
        self._t0 = now
        n = self._n
        kinds = {k: self._wrap(k, f) for k, f in self._kinds.items()}
        host = self._wrap_host(self._host) if self._host is not None else None
        for w in range(n):
            self._workers.append(
                SimWorker(
                    w,
                    n,
                    self._inbox_capacity,
                    clock=self.clock,
                    outbox=self._outbox,
                    settle=self.settle,
                    delivered=self._delivered,
                    t0=now,
                    tick=self._tick,
                )
            )
        for w, sw in enumerate(self._workers):
            sw.set_peers([other.inbox[w] for other in self._workers])
            self._ledger.lanes.append(sw.inbox[n])
            self._dispatch.stopped[w] = Result()
        w = 0
        try:
            for w, sw in enumerate(self._workers):
                drivers = [factory() for factory in self._driver_factories]
                ctx = ShellContext(sw)
                for driver in drivers:
                    driver.start(ctx)
                    sw.drivers.append(driver)  # started: closed by close(), even on failure
                sw.core = WorkerCore(
                    w, kinds, self._hub, sw, n_workers=n, host=host, drivers=drivers
                )
            self.trace.record(now, "rt", "start", f"workers={n} tick={self._tick}")
            self._set_state(RuntimeState.RUNNING)
            for sw in self._workers:
                w = sw.worker_id
                assert sw.core is not None
                sw.core.start(now)
                sw.start_ticks()
        except Exception as exc:
            # as Runtime.start: the drivers that started are closed, the runtime is closed
            self.trace.record(now, "rt", "start failed", f"worker {w}: {exc!r}")
            self.close()
            raise ConfigError(f"worker {w} failed to start: {exc!r}") from exc
        self.settle()
        return self

    def _wrap(self, kind: str, factory: TaskFactory) -> TaskFactory:
        def build(cfg: Any) -> TaskProtocol:
            task = factory(cfg)
            label = f"{kind}:{next(self._serial)}"
            self.trace.record(self.clock.now(), label, "created", cfg)
            wrapped = watch(task, label, self.trace, self._violation, self.strict)
            return wrapped

        return build

    def _wrap_host(self, factory: HostFactory) -> HostFactory:
        def build(worker: int) -> TaskProtocol:
            task = factory(worker)
            label = f"host@w{worker}"
            self.trace.record(self.clock.now(), label, "created")
            return watch(task, label, self.trace, self._violation, self.strict)

        return build

    def _violation(self, exc: ProtocolViolation) -> None:
        self.violations.append(exc)

    def _check(self) -> None:
        if self.strict and len(self.violations) > self._raised:
            exc = self.violations[self._raised]
            self._raised = len(self.violations)
            raise exc

    # ------------------------------------------------------------------ the instant

    def settle(self) -> None:
        """Run the current instant to completion (inboxes, controller, due timers)."""
        if self._settling:
            return
        self._settling = True
        try:
            for _ in range(1_000_000):
                if not self._pump_once() and not self.clock.fire_due():
                    break
            else:
                raise SimulationStalled(
                    f"the simulation never settles at t={self.clock.now()!r}: "
                    "messages keep bouncing at one instant"
                )
        finally:
            self._settling = False
        self._check()
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def _pump_once(self) -> bool:
        now = self.clock.now()
        progressed = False
        for sw in self._workers:
            progressed |= sw.pump(now)
        q = self._outbox.q
        if q:
            progressed = True
            handle = self._dispatch.handle
            while q:
                handle(q.popleft())
        return progressed

    def _delivered(self) -> None:
        # As Worker.deliver: a driver delivering from inside ``handle`` (a core mid-drain,
        # e.g. a tick or deadline fired while the clock moved) had its input queued; the
        # running callback settles at its end. Settling now would run inboxes, the
        # controller and timers inside that drain (tasks re-entered, the depth reset).
        if not any(w.core is not None and w.core.draining for w in self._workers):
            self.settle()

    # ------------------------------------------------------------------ moving time

    def advance(self, seconds: float) -> None:
        """Move simulated time forward, running everything that falls due."""
        self.settle()
        self.clock.advance(seconds)
        self.settle()

    def advance_to(self, when: float) -> None:
        """Move simulated time to ``when``; see :meth:`advance`."""
        self.settle()
        self.clock.advance_to(when)
        self.settle()

    def step(self) -> bool:
        """Jump to the next timer and run that instant; False if nothing is scheduled."""
        self.settle()
        moved = self.clock.step()
        self.settle()
        return moved

    def run_until(self, predicate: Callable[[], bool], *, within: float | None = None) -> bool:
        """Step time until ``predicate()`` holds; False if ``within`` seconds pass first.

        Raises :class:`SimulationStalled` if nothing is left to run.
        """
        self.settle()
        limit = self.clock.now() + (self.max_time if within is None else within)
        while not predicate():
            nxt = self.clock.next_deadline()
            if nxt is None:
                raise SimulationStalled(
                    f"waiting at t={self.clock.now()!r} but nothing is scheduled"
                )
            if nxt > limit:
                self.clock.advance_to(limit)
                self.settle()
                return predicate()
            self.clock.step()
            self.settle()
        return True

    # ------------------------------------------------------------------ spawning

    def spawn_now(self, kind: str, cfg: Any = None, *, worker: int | None = None) -> TaskRef:
        """Start a task at the current instant and return its reference (synchronous)."""
        self._check_running()
        worker = self._ledger.place(kind, worker)
        sid = next(self._ids)
        fut = self._pending[sid] = Result()
        self.trace.record(self.clock.now(), "rt", "spawn", (kind, cfg, worker))
        self._ledger.lanes[worker].push_force(SpawnCmd(sid, kind, cfg, None, None))
        self.settle()
        self._pending.pop(sid, None)
        assert fut.done(), "spawn did not complete at its instant"
        ref: TaskRef = fut.result()
        return ref

    # ------------------------------------------------------------------ messages

    def send_nowait(self, target: TaskRef | int, msg: Any) -> None:
        """Send ``msg`` to a task or a worker's host; it is handled at the current instant.

        Raises :class:`QueueFull` if the worker's inbox lane is full, as the runtime does.
        """
        self._check_running()
        lane, item = self._ledger.route(target, msg)
        self.trace.record(self.clock.now(), "rt", "send", (target, msg))
        if not lane.push(item):
            raise QueueFull(f"inbox of the target worker is full ({lane.capacity} messages)")
        self.settle()

    def send_force(self, target: TaskRef | int, msg: Any) -> None:
        """Send ``msg`` even past the inbox bound."""
        self._check_running()
        lane, item = self._ledger.route(target, msg)
        self.trace.record(self.clock.now(), "rt", "send", (target, msg))
        lane.push_force(item)
        self.settle()

    def lookup(self, ref: TaskRef) -> Any:
        """The live task object behind ``ref`` (unwrapped), or ``None``: for white-box checks."""
        if not 0 <= ref.worker < len(self._workers):
            return None
        core = self._workers[ref.worker].core
        task = core.lookup(ref) if core is not None else None
        return task.task if isinstance(task, Watched) else task

    # ------------------------------------------------------------------ events

    def poll_events(self) -> list[AppEvent]:
        """Every event received so far (possibly none), oldest first, without waiting."""
        self.settle()
        out = list(self._events)
        self._events.clear()
        return out

    # ------------------------------------------------------------------ shutdown

    def shutdown_now(self, timeout: float = 5.0) -> None:
        """The synchronous form of :meth:`shutdown`."""
        if self._state in (RuntimeState.NEW, RuntimeState.CLOSED):
            self._set_state(RuntimeState.CLOSED)
            return
        self._set_state(RuntimeState.CLOSING)
        self.trace.record(self.clock.now(), "rt", "shutdown")
        stopped = self._dispatch.stopped
        for lane in self._ledger.lanes:
            lane.push_force(ShutdownCmd())

        def all_stopped() -> bool:
            return all(result.done() for result in stopped.values())

        try:
            self.run_until(all_stopped, within=timeout)
        except SimulationStalled:
            pass
        unfinished: list[TaskRef] = []
        if not all_stopped():
            for w, result in stopped.items():
                if not result.done():
                    self._ledger.lanes[w].push_force(ForceStopCmd())
            self.settle()
            for result in stopped.values():
                if result.done():
                    assert isinstance(result, Result)
                    unfinished.extend(result.result())
        self.close()
        if unfinished:
            names = ", ".join(str(r) for r in unfinished)
            raise ShutdownTimeout(
                f"{len(unfinished)} task(s) did not finish within {timeout} simulated s: {names}",
                unfinished,
            )
        self._check()

    def close(self) -> None:
        """Stop at once without a graceful shutdown: cancel timers, close the drivers."""
        if self._state is RuntimeState.CLOSED:
            return
        self._set_state(RuntimeState.CLOSED)
        for sw in self._workers:
            sw.cancel_timers()
            sw.done = True
            for driver in sw.drivers:
                driver.close()
        self._dispatch.fail_all(RuntimeClosed("the runtime has shut down"))
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    def __repr__(self) -> str:
        return (
            f"<SimRuntime {self._state.value} workers={self._n} t={self.clock.now()!r} "
            f"seed={self.seed} live={len(self._ledger.live)}>"
        )
