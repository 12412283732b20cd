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
* **the controller.** Placement is the controller's: least loaded by its own count,
  ties round-robin, task-emitted spawns through the same balancer; events, replies,
  spawn results and task ends are handled as ``Runtime._on_control`` handles them.

The worker shell lives in ``simworker.py``, the controller's bookkeeping in
``simcontrol.py``. Every task is wrapped (``watch.py``) so each input and output lands
in the trace with its simulated time; a protocol violation is raised at the next
checkpoint when ``strict`` is on. Drivers get a context whose ``deliver`` feeds the core
and whose ``loop`` does not exist: only simulated drivers (``SimNetwork``'s) make sense
here. The only asyncio used is the futures of the manual-clock wait.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

from ..._bus import BusHub
from ..._core import WorkerCore
from ..._driver import DriverFactory
from ..._errors import (
    ConfigError,
    QueueFull,
    RuntimeClosed,
    ShutdownTimeout,
)
from ..._events import AppEvent, TaskRef
from ..._ledger import check_runtime_args
from ..._task import TaskProtocol
from ..._wire import OP_FORCE_STOP, OP_SHUTDOWN, OP_SPAWN, HostFactory, TaskFactory
from .._clock import FakeClock
from .._errors import ProtocolViolation, SimulationStalled
from .._trace import Trace
from .._watch import Watched, watch
from .control import PENDING, SimController
from .net import SimNetwork
from .worker import SimDriverContext, SimWorker

__all__ = ["SimEngine"]


class SimEngine:
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
        self._kinds = dict(kinds)
        self._n = workers
        self._tick = tick
        self._host = host
        self._driver_factories = tuple(drivers) if drivers is not None else tuple(net.drivers())
        self._inbox_capacity = inbox_capacity
        self._hub = BusHub()
        self._workers: list[SimWorker] = []
        self._outbox: deque[Any] = deque()
        self._state = "new"
        self._ctl = SimController(
            workers,
            set(self._kinds),
            has_host=host is not None,
            event_capacity=event_capacity,
            clock=self.clock,
            trace=self.trace,
        )
        self._events = self._ctl.events
        self._settling = False
        self._serial = itertools.count()
        #: Protocol violations seen so far (raised at the next checkpoint if strict).
        self.violations: list[ProtocolViolation] = []
        self._raised = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._t0 = self.clock.now()

    # ------------------------------------------------------------------ lifecycle

    @property
    def workers(self) -> int:
        """Number of workers."""
        return self._n

    @property
    def running(self) -> bool:
        """True between start and shutdown."""
        return self._state == "running"

    @property
    def now(self) -> float:
        """The simulated time."""
        return self.clock.now()

    def start_now(self) -> Self:
        """Start the simulated workers (synchronous form of :meth:`start`)."""
        if self._state != "new":
            raise RuntimeClosed(f"runtime already {self._state}; build a new SimRuntime")
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
                    t0=now,
                    tick=self._tick,
                )
            )
        self._ctl.workers = self._workers
        w = 0
        try:
            for w, sw in enumerate(self._workers):
                sw.peers = self._workers
                drivers = [factory() for factory in self._driver_factories]
                ctx = SimDriverContext(w, self.clock, self._deliver)
                for driver in drivers:
                    driver.start(ctx)
                    sw.drivers.append(driver)  # started: closed by close(), even on failure
                sw.core = WorkerCore(w, kinds, self._hub, sw, workers=n, host=host, drivers=drivers)
            self.trace.record(now, "rt", "start", f"workers={n} tick={self._tick}")
            self._state = "running"
            self._ctl.accepting = True
            for sw in self._workers:
                w = sw.id
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
            progressed |= sw.drain_inbox(now)
        if self._outbox:
            progressed = True
            self._ctl.dispatch(self._outbox)
        return progressed

    def _deliver(self, wid: int, task: TaskRef, event: Any) -> bool:
        sw = self._workers[wid]
        if sw.core is None or sw.done:
            return False
        ok = sw.core.deliver(task, event, self.clock.now())
        # As Worker.deliver: a driver delivering from inside ``handle`` (a core mid-drain,
        # e.g. a tick or deadline fired while the clock moved) had its input queued; the
        # running callback settles at its end. Settling now would run inboxes, the
        # controller and timers inside that drain (tasks re-entered, the depth reset).
        if not any(w.core is not None and w.core._depth for w in self._workers):
            self.settle()
        return ok

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

    def _check_running(self) -> None:
        if self._state != "running":
            raise RuntimeClosed(
                f"the runtime is {self._state}: use 'async with SimRuntime(...)' or start()"
            )

    def spawn_now(self, kind: str, cfg: Any = None, *, worker: int | None = None) -> TaskRef:
        """Start a task at the current instant and return its reference (synchronous)."""
        self._check_running()
        ctl = self._ctl
        worker = ctl.place(kind, worker)
        sid = next(ctl.ids)
        ctl.results[sid] = PENDING
        self.trace.record(self.clock.now(), "rt", "spawn", (kind, cfg, worker))
        ctl.lane(worker).push_force((OP_SPAWN, sid, kind, cfg, None, None))
        self.settle()
        result = ctl.results.pop(sid)
        if isinstance(result, BaseException):
            raise result
        assert isinstance(result, TaskRef), "spawn did not complete at its instant"
        return result

    # ------------------------------------------------------------------ messages

    def send_nowait(self, target: TaskRef | int, msg: Any) -> None:
        """Send ``msg`` to a task or a worker's host; it is handled at the current instant.

        Raises :class:`QueueFull` if the worker's inbox lane is full, as the runtime does.
        """
        self._check_running()
        lane, item = self._ctl.route(target, msg)
        self.trace.record(self.clock.now(), "rt", "send", (target, msg))
        if not lane.push(item):
            raise QueueFull(f"inbox of the target worker is full ({lane.capacity} messages)")
        self.settle()

    def send_force(self, target: TaskRef | int, msg: Any) -> None:
        """Send ``msg`` even past the inbox bound."""
        self._check_running()
        lane, item = self._ctl.route(target, msg)
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

    # ------------------------------------------------------------------ stats

    # ------------------------------------------------------------------ shutdown

    def shutdown_now(self, timeout: float = 5.0) -> None:
        """The synchronous form of :meth:`shutdown`."""
        if self._state in ("new", "closed"):
            self._state = "closed"
            return
        self._state = "closing"
        self._ctl.accepting = False
        self.trace.record(self.clock.now(), "rt", "shutdown")
        n = self._n
        stopped = self._ctl.stopped
        for sw in self._workers:
            sw.inbox[n].push_force((OP_SHUTDOWN,))
        try:
            self.run_until(lambda: len(stopped) == n, within=timeout)
        except SimulationStalled:
            pass
        unfinished: list[TaskRef] = []
        if len(stopped) < n:
            for sw in self._workers:
                if sw.id not in stopped:
                    sw.inbox[n].push_force((OP_FORCE_STOP,))
            self.settle()
            for refs in stopped.values():
                unfinished.extend(refs)
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
        if self._state == "closed":
            return
        self._state = "closed"
        self._ctl.accepting = False
        for sw in self._workers:
            sw.cancel_timers()
            sw.done = True
            for driver in sw.drivers:
                driver.close()
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    def __repr__(self) -> str:
        return (
            f"<SimRuntime {self._state} workers={self._n} t={self.clock.now()!r} "
            f"seed={self.seed} live={len(self._ctl.live)}>"
        )
