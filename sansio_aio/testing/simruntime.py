"""The simulated runtime: the real worker cores, one thread, a fake clock, a fake network.

Theory of operation
-------------------
:class:`SimRuntime` has the public face of :class:`sansio_aio.Runtime` (``spawn``,
``send_nowait``, ``request``, ``next_event``, ``stats``, ``shutdown``, ``async with``)
but no threads, no event loops and no sockets. Each worker is the real
:class:`~sansio_aio.core.WorkerCore` (the same task host, drain rule, bus routing and
failure isolation the worker threads run), fed from the real bounded
:class:`~sansio_aio.handoff.Lane` inboxes (one per producer) and wired to the real
:class:`~sansio_aio.bus.BusHub`. What the threads and the controller do is done here in
one deterministic loop:

* **the instant.** :meth:`SimRuntime.settle` runs the current simulated instant to
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

Every task is wrapped (``watch.py``) so each input and output lands in the trace with
its simulated time; a protocol violation is raised at the next checkpoint when
``strict`` is on. Drivers get a context whose ``deliver`` feeds the core and whose
``loop`` does not exist: only simulated drivers (``SimNetwork``'s) make sense here.
This module imports no asyncio at runtime beyond the futures of the manual-clock wait.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from ..bus import BusHub
from ..core import (
    APP_ENDED,
    APP_REPLY,
    APP_REQ_FAILED,
    APP_SPAWN_REQ,
    APP_SPAWNED,
    APP_STOPPED,
    APP_UNKNOWN,
    HOST_KIND,
    OP_EXT,
    OP_FORCE_STOP,
    OP_HOST,
    OP_REQUEST,
    OP_SHUTDOWN,
    OP_SPAWN,
    OP_SPAWNED,
    HostFactory,
    TaskFactory,
    WorkerCore,
)
from ..driver import Driver, DriverFactory
from ..errors import (
    ConfigError,
    QueueFull,
    RequestTimeout,
    RuntimeClosed,
    ShutdownTimeout,
    TaskFailedError,
    UnknownKind,
    UnknownTarget,
)
from ..events import TaskEnded, TaskFailed, TaskOutput, TaskRef
from ..handoff import Lane
from ..stats import RuntimeStats, WorkerStats
from ..task import TaskProtocol
from .clock import FakeClock, Timer
from .errors import HarnessError, ProtocolViolation, SimulationStalled
from .simnet import SimNetwork
from .trace import Trace
from .watch import Watched, watch

__all__ = ["SimRuntime"]

AppEvent = TaskOutput | TaskEnded | TaskFailed
R = TypeVar("R")
_PENDING = object()


class _SimWorker:
    """One simulated worker: a real core, its lanes, its timers (the CoreSink)."""

    def __init__(self, sim: SimRuntime, wid: int, n: int, capacity: int) -> None:
        self.sim = sim
        self.id = wid
        self.inbox = [Lane(capacity, _no_wake) for _ in range(n + 1)]
        self.core: WorkerCore | None = None
        self.drivers: list[Driver] = []
        self.tick_timer: Timer | None = None
        self.deadline_timer: Timer | None = None
        self.deadline_at: float | None = None
        self.tick_k = 0
        self.done = False
        self.wakeups = 0
        self.inbox_peak = 0

    # CoreSink
    def to_app(self, item: tuple[Any, ...]) -> None:
        # after the task outputs the core buffered, as the worker shell does
        assert self.core is not None
        self.core.app_buffer.append(item)

    def to_worker(self, worker: int, item: tuple[Any, ...], safe: bool) -> bool:
        lane = self.sim._workers[worker].inbox[self.id]
        if safe:
            lane.push_force(item)
            return True
        return lane.push(item)

    def arm_deadline(self, when: float) -> None:
        if self.deadline_at is not None and self.deadline_at <= when:
            return
        if self.deadline_timer is not None:
            self.deadline_timer.cancel()
        self.deadline_at = when
        self.deadline_timer = self.sim.clock.call_at(when, self._on_deadline)

    def stopped(self, unfinished: list[TaskRef]) -> None:
        if not self.done:
            self.done = True
            self.sim._outbox.append((APP_STOPPED, self.id, unfinished))
        for timer in (self.tick_timer, self.deadline_timer):
            if timer is not None:
                timer.cancel()

    # timers
    def _on_deadline(self) -> None:
        self.deadline_timer = None
        self.deadline_at = None
        if self.core is not None and not self.done:
            self.core.on_deadline(self.sim.clock.now())
        self.sim.settle()

    def arm_tick(self) -> None:
        sim = self.sim
        self.tick_k += 1
        self.tick_timer = sim.clock.call_at(sim._t0 + self.tick_k * sim._tick, self._on_tick)

    def _on_tick(self) -> None:
        if self.core is None or self.done:
            return
        self.arm_tick()
        self.core.tick(self.sim.clock.now())
        self.sim.settle()


class _Context:
    """The DriverContext of a simulated worker (no event loop)."""

    __slots__ = ("_sim", "_wid")

    def __init__(self, sim: SimRuntime, wid: int) -> None:
        self._sim = sim
        self._wid = wid

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """Not available: simulated workers have no event loop."""
        raise HarnessError(
            "a driver under SimRuntime asked for ctx.loop: simulated workers have no "
            "event loop; use a simulated driver (SimNetwork.udp_driver / tcp_driver)"
        )

    @property
    def worker_id(self) -> int:
        """The worker's id."""
        return self._wid

    def now(self) -> float:
        """The simulated time."""
        return self._sim.clock.now()

    def deliver(self, task: TaskRef, event: Any) -> bool:
        """Feed ``event`` to ``task`` under the drain rule."""
        return self._sim._deliver(self._wid, task, event)

    def timed(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Identity: simulated time is not measured."""
        return callback


def _no_wake() -> None:
    pass


class SimRuntime:
    """Run tasks on simulated workers, a fake clock and a simulated network.

    The arguments ``kinds``, ``workers``, ``tick``, ``host``, ``inbox_capacity`` and
    ``event_capacity`` mean what they mean for :class:`sansio_aio.Runtime`.

    Args:
        drivers: driver factories; default: the simulated network's (UDP, TCP).
        net: the :class:`SimNetwork` (default: a new one with ``seed`` and ``clock``).
        clock: the :class:`FakeClock` (default: the network's, or a new autojump clock).
        seed: seeds the network's random generator when it is created here.
        trace: a :class:`Trace`, ``True`` (the network's) or ``False`` (no tracing).
        strict: raise :class:`ProtocolViolation` when a task breaks the protocol.
        max_time: simulated seconds an autojumping wait may run before it gives up.
    """

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
        if not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers must be an int >= 1, got {workers!r}")
        if not tick > 0:
            raise ConfigError(f"tick must be > 0 seconds, got {tick!r}")
        if inbox_capacity < 1 or event_capacity < 1:
            raise ConfigError("inbox_capacity and event_capacity must be >= 1")
        for kind, factory in kinds.items():
            if not isinstance(kind, str) or not kind:
                raise ConfigError(f"task kind names must be non-empty strings, got {kind!r}")
            if kind == HOST_KIND:
                raise ConfigError(f"{HOST_KIND!r} is reserved for the host task; rename it")
            if not callable(factory):
                raise ConfigError(f"kind {kind!r}: the factory must be callable (cfg) -> task")
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
        self._event_capacity = event_capacity
        self._hub = BusHub()
        self._workers: list[_SimWorker] = []
        self._outbox: deque[Any] = deque()
        self._state = "new"
        self._load = [0] * workers
        self._rr = 0
        self._live: set[TaskRef] = set()
        self._ids = itertools.count(1)
        self._results: dict[int, Any] = {}  # spawn and request ids -> value or exception
        self._req_by_task: dict[TaskRef, set[int]] = {}
        self._events: deque[AppEvent] = deque()
        self._events_dropped = 0
        self._undelivered = 0
        self._stopped: dict[int, list[TaskRef]] = {}
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

    def start_now(self) -> SimRuntime:
        """Start the simulated workers (synchronous form of :meth:`start`)."""
        if self._state != "new":
            raise RuntimeClosed(f"runtime already {self._state}; build a new SimRuntime")
        now = self.clock.now()
        self._t0 = now
        n = self._n
        kinds = {k: self._wrap(k, f) for k, f in self._kinds.items()}
        host = self._wrap_host(self._host) if self._host is not None else None
        for w in range(n):
            self._workers.append(_SimWorker(self, w, n, self._inbox_capacity))
        for w, sw in enumerate(self._workers):
            sw.drivers = [factory() for factory in self._driver_factories]
            ctx = _Context(self, w)
            for driver in sw.drivers:
                driver.start(ctx)
            sw.core = WorkerCore(w, kinds, self._hub, sw, workers=n, host=host, drivers=sw.drivers)
        self.trace.record(now, "rt", "start", f"workers={n} tick={self._tick}")
        self._state = "running"
        for sw in self._workers:
            assert sw.core is not None
            sw.core.start(now)
            sw.arm_tick()
        self.settle()
        return self

    async def start(self) -> SimRuntime:
        """Start the simulated workers."""
        return self.start_now()

    async def __aenter__(self) -> SimRuntime:
        return self.start_now()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.shutdown()
        else:
            self.close()  # don't mask the test's own failure with a shutdown error

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
        progressed = False
        now = self.clock.now()
        for sw in self._workers:
            core = sw.core
            if core is None or sw.done:
                continue
            total = 0
            for lane in sw.inbox:
                q = lane.q
                n = len(q)
                if n:
                    total += n
                    core.handle_from(q, n, now)
            if total:
                progressed = True
                sw.wakeups += 1
                sw.inbox_peak = max(sw.inbox_peak, total)
            if core.app_buffer:
                self._outbox.extend(core.app_buffer)
                core.app_buffer = []
        if self._outbox:
            progressed = True
            self._dispatch()
        return progressed

    def _deliver(self, wid: int, task: TaskRef, event: Any) -> bool:
        sw = self._workers[wid]
        if sw.core is None or sw.done:
            return False
        ok = sw.core.deliver(task, event, self.clock.now())
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

    async def _wait(self, predicate: Callable[[], bool], timeout: float | None, what: str) -> bool:
        """Wait in simulated time; True when ``predicate()`` holds, False on timeout."""
        self.settle()
        if predicate():
            return True
        if self.clock.autojump:
            try:
                return self.run_until(predicate, within=timeout)
            except SimulationStalled as exc:
                raise SimulationStalled(f"{what}: {exc}") from None
        limit = None if timeout is None else self.clock.now() + timeout
        loop = asyncio.get_running_loop()
        while not predicate():
            if limit is not None and self.clock.now() >= limit:
                return False
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            await fut
        return True

    # ------------------------------------------------------------------ spawning

    def _check_running(self) -> None:
        if self._state != "running":
            raise RuntimeClosed(
                f"the runtime is {self._state}: use 'async with SimRuntime(...)' or start()"
            )

    def _pick(self) -> int:
        load = self._load
        best = min(load)
        n = self._n
        for i in range(n):
            w = (self._rr + i) % n
            if load[w] == best:
                self._rr = (w + 1) % n
                return w
        return 0  # pragma: no cover

    def spawn_now(self, kind: str, cfg: Any = None, *, worker: int | None = None) -> TaskRef:
        """Start a task at the current instant and return its reference (synchronous)."""
        self._check_running()
        if kind not in self._kinds:
            raise UnknownKind(f"unknown task kind {kind!r}; registered: {sorted(self._kinds)}")
        if worker is None:
            worker = self._pick()
        elif not 0 <= worker < self._n:
            raise UnknownTarget(f"no worker {worker}; workers are 0..{self._n - 1}")
        sid = next(self._ids)
        self._results[sid] = _PENDING
        self._load[worker] += 1
        self.trace.record(self.clock.now(), "rt", "spawn", (kind, cfg, worker))
        self._workers[worker].inbox[self._n].push_force((OP_SPAWN, sid, kind, cfg, None, None))
        self.settle()
        result = self._results.pop(sid)
        if isinstance(result, BaseException):
            raise result
        assert isinstance(result, TaskRef), "spawn did not complete at its instant"
        return result

    async def spawn(self, kind: str, cfg: Any = None, *, worker: int | None = None) -> TaskRef:
        """Start a task of ``kind`` (least-loaded worker unless ``worker``); its reference."""
        return self.spawn_now(kind, cfg, worker=worker)

    # ------------------------------------------------------------------ messages

    def _route(self, target: TaskRef | int, msg: Any) -> tuple[Lane, tuple[Any, ...]]:
        n = self._n
        if isinstance(target, int):
            if not 0 <= target < n:
                raise UnknownTarget(f"no worker {target}; workers are 0..{n - 1}")
            if self._host is None:
                raise UnknownTarget(
                    "messages to a worker go to its host task; pass host=... to SimRuntime"
                )
            return self._workers[target].inbox[n], (OP_HOST, msg)
        if target not in self._live:
            if target.kind == HOST_KIND and self._host and 0 <= target.worker < n:
                return self._workers[target.worker].inbox[n], (OP_HOST, msg)
            raise UnknownTarget(f"no live task {target!r}")
        return self._workers[target.worker].inbox[n], (OP_EXT, target, msg)

    def send_nowait(self, target: TaskRef | int, msg: Any) -> None:
        """Send ``msg`` to a task or a worker's host; it is handled at the current instant.

        Raises :class:`QueueFull` if the worker's inbox lane is full, as the runtime does.
        """
        self._check_running()
        lane, item = self._route(target, msg)
        self.trace.record(self.clock.now(), "rt", "send", (target, msg))
        if not lane.push(item):
            raise QueueFull(f"inbox of the target worker is full ({lane.capacity} messages)")
        self.settle()

    def send_force(self, target: TaskRef | int, msg: Any) -> None:
        """Send ``msg`` even past the inbox bound."""
        self._check_running()
        lane, item = self._route(target, msg)
        self.trace.record(self.clock.now(), "rt", "send", (target, msg))
        lane.push_force(item)
        self.settle()

    async def send(self, target: TaskRef | int, msg: Any) -> None:
        """Send ``msg`` (the inbox always drains within the instant, so it never waits)."""
        self.send_force(target, msg)

    async def request(self, task: TaskRef, msg: Any, *, timeout: float | None = 5.0) -> Any:
        """Send ``Request(id, msg)`` to ``task`` and wait (simulated time) for its reply.

        Raises :class:`RequestTimeout` after ``timeout`` simulated seconds,
        :class:`TaskFailedError` if the task ends first, :class:`UnknownTarget` if it
        does not exist.
        """
        self._check_running()
        if task not in self._live:
            raise UnknownTarget(f"no live task {task!r}")
        rid = next(self._ids)
        self._results[rid] = _PENDING
        self._req_by_task.setdefault(task, set()).add(rid)
        self.trace.record(self.clock.now(), "rt", "request", (task, rid, msg))
        self._workers[task.worker].inbox[self._n].push_force((OP_REQUEST, task, rid, msg))
        try:
            done = await self._wait(
                lambda: self._results.get(rid) is not _PENDING, timeout, f"request to {task}"
            )
            if not done:
                raise RequestTimeout(f"{task} did not reply within {timeout} simulated s")
            result = self._results.get(rid)
            if isinstance(result, BaseException):
                raise result
            return result
        finally:
            self._results.pop(rid, None)
            rids = self._req_by_task.get(task)
            if rids is not None:
                rids.discard(rid)
                if not rids:
                    del self._req_by_task[task]

    async def run_on_worker(self, worker: int, fn: Callable[[WorkerCore], R]) -> R:
        """Run ``fn(core)`` on worker ``worker`` (at once) and return its result."""
        self._check_running()
        if not 0 <= worker < self._n:
            raise UnknownTarget(f"no worker {worker}; workers are 0..{self._n - 1}")
        core = self._workers[worker].core
        assert core is not None
        return fn(core)

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

    async def next_events(self) -> list[AppEvent]:
        """Wait (simulated time) for at least one event; return every pending one.

        Returns ``[]`` once the runtime has shut down and every event was read.
        """
        if not self._events and self._state == "closed":
            return []
        await self._wait_event()
        return self.poll_events()

    async def next_event(self) -> AppEvent:
        """Wait (simulated time) for the next event; raises :class:`RuntimeClosed` after
        shutdown, :class:`SimulationStalled` if no event can come."""
        if not self._events and self._state == "closed":
            raise RuntimeClosed("the runtime has shut down and every event was read")
        await self._wait_event()
        return self._events.popleft()

    async def _wait_event(self) -> None:
        if not await self._wait(lambda: bool(self._events), None, "waiting for an event"):
            raise SimulationStalled(
                f"no event within {self.max_time} simulated seconds (t={self.clock.now()!r})"
            )

    async def events(self) -> AsyncIterator[AppEvent]:
        """Every event as an async iterator; ends after shutdown once drained."""
        while True:
            if not self._events and self._state == "closed":
                return
            yield await self.next_event()

    # ------------------------------------------------------------------ stats

    async def stats(self) -> RuntimeStats:
        """Worker snapshots built from the cores' counters (utilisation is 0: no real time)."""
        self.settle()
        now = self.clock.now()
        snaps = []
        for sw in self._workers:
            core = sw.core
            assert core is not None
            c = core.counters
            drv: dict[str, int] = {}
            for driver in sw.drivers:
                drv.update(driver.stats())
            snaps.append(
                WorkerStats(
                    worker=sw.id,
                    tasks=core.task_count(),
                    utilisation=0.0,
                    loop_lag=0.0,
                    loop_lag_max=0.0,
                    inbox_depth=sum(len(lane) for lane in sw.inbox),
                    inbox_peak=sw.inbox_peak,
                    wakeups=sw.wakeups,
                    msgs_in=c.inputs,
                    msgs_out=c.outputs,
                    drops=c.bus_dropped,
                    orphans=c.orphans,
                    failures=c.failures,
                    ticks=c.ticks,
                    last_seen=now,
                    drivers=drv,
                )
            )
        return RuntimeStats(
            workers=tuple(snaps),
            placed=tuple(self._load),
            events_dropped=self._events_dropped,
            events_pending=len(self._events),
        )

    # ------------------------------------------------------------------ shutdown

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Stop gracefully, in simulated time (the clock jumps even if manual).

        Every task gets ``on_shutdown`` and drains; outputs emitted meanwhile are still
        delivered. Raises :class:`ShutdownTimeout` naming the tasks still running after
        ``timeout`` simulated seconds; they are dropped and the runtime stopped anyway.
        """
        self.shutdown_now(timeout)

    def shutdown_now(self, timeout: float = 5.0) -> None:
        """The synchronous form of :meth:`shutdown`."""
        if self._state in ("new", "closed"):
            self._state = "closed"
            return
        self._state = "closing"
        self.trace.record(self.clock.now(), "rt", "shutdown")
        n = self._n
        for sw in self._workers:
            sw.inbox[n].push_force((OP_SHUTDOWN,))
        try:
            self.run_until(lambda: len(self._stopped) == n, within=timeout)
        except SimulationStalled:
            pass
        unfinished: list[TaskRef] = []
        if len(self._stopped) < n:
            for sw in self._workers:
                if sw.id not in self._stopped:
                    sw.inbox[n].push_force((OP_FORCE_STOP,))
            self.settle()
            for refs in self._stopped.values():
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
        for sw in self._workers:
            for timer in (sw.tick_timer, sw.deadline_timer):
                if timer is not None:
                    timer.cancel()
            sw.done = True
            for driver in sw.drivers:
                driver.close()
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    # ------------------------------------------------------------------ the controller

    def _dispatch(self) -> None:
        out = self._outbox
        now = self.clock.now()
        trace = self.trace
        while out:
            item = out.popleft()
            if type(item) is TaskOutput:
                trace.record(now, "app", "event", item)
                self._push_event(item)
                continue
            op = item[0]
            if op == APP_REPLY:
                rid = item[1]
                if self._results.get(rid) is _PENDING:
                    self._results[rid] = item[2]
                    trace.record(now, "app", "reply", (rid, item[2]))
            elif op == APP_SPAWNED:
                _, sid, ref, error, w = item
                if ref is not None:
                    self._live.add(ref)
                elif self._load[w] > 0:
                    self._load[w] -= 1
                trace.record(now, "app", "spawned", (ref, error))
                if self._results.get(sid) is _PENDING:
                    self._results[sid] = ref if ref is not None else _spawn_error(str(error))
            elif op == APP_ENDED:
                _, ref, tb = item
                if ref.kind != HOST_KIND:
                    self._live.discard(ref)
                    if 0 <= ref.worker < self._n and self._load[ref.worker] > 0:
                        self._load[ref.worker] -= 1
                for rid in self._req_by_task.pop(ref, ()):
                    if self._results.get(rid) is _PENDING:
                        msg = f"{ref} failed" if tb else f"{ref} ended without replying"
                        self._results[rid] = TaskFailedError(msg, ref, tb or "")
                event = TaskFailed(ref, tb) if tb else TaskEnded(ref)
                trace.record(now, "app", "ended" if tb is None else "failed", ref)
                self._push_event(event)
            elif op == APP_SPAWN_REQ:
                _, kind, cfg, requester, tag = item
                self._spawn_for_task(kind, cfg, requester, tag)
            elif op == APP_REQ_FAILED:
                _, rid, message = item
                if self._results.get(rid) is _PENDING:
                    self._results[rid] = UnknownTarget(message)
            elif op == APP_STOPPED:
                _, w, unfinished = item
                self._stopped[w] = list(unfinished)
            elif op == APP_UNKNOWN:
                self._undelivered += 1

    def _push_event(self, event: AppEvent) -> None:
        if len(self._events) < self._event_capacity:
            self._events.append(event)
        else:
            self._events_dropped += 1

    def _spawn_for_task(self, kind: str, cfg: Any, requester: TaskRef, tag: Hashable) -> None:
        n = self._n
        if self._state != "running" or kind not in self._kinds:
            error = f"unknown task kind {kind!r}" if kind not in self._kinds else "runtime closing"
            if tag is not None and 0 <= requester.worker < n:
                self._workers[requester.worker].inbox[n].push_force(
                    (OP_SPAWNED, requester, tag, None, error)
                )
            return
        worker = self._pick()
        self._load[worker] += 1
        self._workers[worker].inbox[n].push_force((OP_SPAWN, -1, kind, cfg, requester, tag))

    def __repr__(self) -> str:
        return (
            f"<SimRuntime {self._state} workers={self._n} t={self.clock.now()!r} "
            f"seed={self.seed} live={len(self._live)}>"
        )


def _spawn_error(error: str) -> Exception:
    if error.startswith("unknown task kind"):
        return UnknownKind(error)
    if "shutting down" in error:
        return RuntimeClosed(error)
    return TaskFailedError(error, None)
