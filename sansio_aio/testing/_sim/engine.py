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

* **a worker that dies.** :meth:`SimEngine.kill_worker` kills a worker as a signal kills
  a worker process, in two steps as in ``Runtime(mode="process")``. The worker dies at
  once (or at ``at``): its core and tasks are dropped without ``on_shutdown``, its
  drivers closed (its sockets vanish), and what reaches its inbox from then on is lost.
  The controller notices in a callback of its own, at the same instant (the next
  settle): it dispatches every report handed over before the death, then runs the real
  runtime's rule (``ControllerBase._fail_worker``: ``TaskFailed`` for each of its tasks,
  host included, waiters failed, ``WorkerExited``), drops its bus routes, and with
  ``restart="on-failure"`` starts a replacement (a new core, new drivers, a new host task)
  after the real back-off, in simulated seconds. Between death and notice the worker is
  not yet down for the ledger, so a spawn, call or request sent then is lost with it and
  fails when the death is noticed, as with a real process; messages other workers send
  it once it is down are counted as ``RuntimeStats.relay_drops``, as the real
  controller counts what it cannot relay.

* **fault points.** With ``buggify=`` the run's :class:`~sansio_aio.testing.Buggify` is
  made current (a context variable) around every entry into task code: the instant
  (:meth:`SimEngine.settle`), start-up and restarts here, and the workers' timer
  callbacks and driver deliveries (``worker.py``), so ``buggify()`` in a task fires by
  the seed, and is inert again as soon as control returns to the test.
* **status.** :meth:`SimEngine.status_lines` describes each worker in one line (state,
  tasks, inbox depth and peak, inputs, outputs, drops), as TigerBeetle's VOPR prints its
  replicas; :attr:`SimEngine.config` is the construction, for the configuration hash of
  a sweep.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import Token
from typing import Any, Self

from ..._api import RuntimeState
from ..._bus import BusHub
from ..._control import ControllerBase, exit_reason
from ..._core import DEFAULT_MAX_OUTPUTS, WorkerCore, check_max_outputs
from ..._dispatch import Result
from ..._driver import DriverFactory
from ..._errors import ConfigError, QueueFull, RuntimeClosed, ShutdownTimeout
from ..._events import AppEvent, TaskRef, WorkerExited
from ..._lane import Lane
from ..._ledger import check_runtime_args
from ..._shell import ShellContext
from ..._stats import WorkerStats
from ..._task import TaskProtocol
from ..._wire import ForceStopCmd, HostFactory, ShutdownCmd, SpawnCmd, TaskFactory
from .._buggify import Buggify
from .._clock import FakeClock, Timer
from .._errors import HarnessError, ProtocolViolation, SimulationStalled
from .._trace import Trace
from .._watch import Watched, watch
from .net import SimNetwork
from .worker import SimWorker

__all__ = ["SimEngine"]


def _no_wake() -> None:
    """The simulated controller polls the outbox when it settles: no wake-up needed."""


def _name(obj: Any) -> str:
    """A stable name for a factory (no address): ``module.qualname``."""
    fn = getattr(obj, "__func__", obj)  # a bound method: its function
    qual = getattr(fn, "__qualname__", None) or type(obj).__qualname__
    return f"{getattr(fn, '__module__', '?')}.{qual}"


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
        restart: str = "never",
        buggify: Buggify | bool = False,
        max_outputs: int = DEFAULT_MAX_OUTPUTS,
    ) -> None:
        self._max_outputs = check_max_outputs(max_outputs)
        check_runtime_args(kinds, workers, tick, inbox_capacity, event_capacity, drivers or ())
        if restart not in ("never", "on-failure"):
            raise ConfigError(f"restart must be 'never' or 'on-failure', got {restart!r}")
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
        self._restart = restart
        self._restart_timers: dict[int, Timer] = {}
        self._relay_drops = 0
        #: The last stats of each dead worker (the real controller keeps the last
        #: snapshot a dead worker sent).
        self._last_stats: dict[int, WorkerStats] = {}
        self._task_kinds: dict[str, TaskFactory] = {}
        self._task_host: HostFactory | None = None
        self._final_status: list[str] | None = None
        #: The fault points of this run (``None``: ``buggify()`` stays inert in its tasks).
        self.buggify: Buggify | None
        if isinstance(buggify, Buggify):
            self.buggify = buggify
            if buggify.trace is None:  # given bare: it records into this run's trace
                buggify.trace, buggify.clock = self.trace, self.clock.now
        elif buggify:
            self.buggify = Buggify(self.seed, trace=self.trace, clock=self.clock.now)
        else:
            self.buggify = None
        #: How this runtime was built (names, not objects): part of a sweep's config hash.
        self.config: dict[str, Any] = {
            "kinds": {k: _name(f) for k, f in sorted(kinds.items())},
            "workers": workers,
            "tick": tick,
            "host": _name(host) if host is not None else None,
            "drivers": [_name(f) for f in self._driver_factories],
            "inbox_capacity": inbox_capacity,
            "event_capacity": event_capacity,
            "max_time": max_time,
            "restart": restart,
            "strict": strict,
            "buggify": self.buggify is not None and self.buggify.enabled,
            "max_outputs": self._max_outputs,
        }

    # ------------------------------------------------------------------ lifecycle

    def _enter(self) -> Token[Buggify | None] | None:
        """Make this run's fault points current (None: nothing to undo)."""
        b = self.buggify
        if b is None or Buggify.current() is b:
            return None
        return b.activate()

    @staticmethod
    def _leave_points(token: Token[Buggify | None] | None) -> None:
        if token is not None:
            Buggify.deactivate(token)

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
        token = self._enter()
        try:
            return self._start()
        finally:
            self._leave_points(token)

    def _start(self) -> Self:
        now = self.clock.now()
        self._t0 = now
        n = self._n
        self._task_kinds = {k: self._wrap(k, f) for k, f in self._kinds.items()}
        self._task_host = self._wrap_host(self._host) if self._host is not None else None
        for w in range(n):
            self._workers.append(self._new_shell(w, now))
        for w, sw in enumerate(self._workers):
            sw.set_peers([other.inbox[w] for other in self._workers])
            self._ledger.lanes.append(sw.inbox[n])
            self._dispatch.stopped[w] = Result()
        w = 0
        try:
            for sw in self._workers:
                w = sw.worker_id  # named in the error if it fails
                self._build_core(sw)
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

    def _new_shell(self, w: int, now: float) -> SimWorker:
        """Worker ``w``'s shell (its inbox lanes, its ticks from ``now``), without a core."""
        return SimWorker(
            w,
            self._n,
            self._inbox_capacity,
            clock=self.clock,
            outbox=self._outbox,
            settle=self.settle,
            delivered=self._delivered,
            t0=now,
            tick=self._tick,
            enter=self._enter if self.buggify is not None else None,
        )

    def _build_core(self, sw: SimWorker) -> None:
        """Start ``sw``'s drivers and build its core (not started: no host task yet)."""
        drivers = [factory() for factory in self._driver_factories]
        ctx = ShellContext(sw)
        for driver in drivers:
            driver.start(ctx)
            sw.drivers.append(driver)  # started: closed by close(), even on failure
        sw.core = WorkerCore(
            sw.worker_id,
            self._task_kinds,
            self._hub,
            sw,
            n_workers=self._n,
            host=self._task_host,
            drivers=drivers,
            incarnation=self._restarts[sw.worker_id],
            max_outputs=self._max_outputs,
        )

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
        token = self._enter() if self.buggify is not None else None
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
            if token is not None:
                Buggify.deactivate(token)
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
            if sw.dead:
                dropped = sw.discard_inbox()
                if sw.noticed:
                    self._relay_drops += dropped
            else:
                progressed |= sw.pump(now)
        return self._dispatch_outbox() or progressed

    def _dispatch_outbox(self) -> bool:
        """The controller handles what the workers handed over, in order."""
        q = self._outbox.q
        if not q:
            return False
        handle = self._dispatch.handle
        while q:
            handle(q.popleft())
        return True

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
        self._waiting_on[sid] = worker  # failed with WorkerDied if the worker died
        self.trace.record(self.clock.now(), "rt", "spawn", (kind, cfg, worker))
        self._ledger.lanes[worker].push_force(SpawnCmd(sid, kind, cfg, None, None))
        try:
            self.settle()
        finally:
            self._pending.pop(sid, None)
            self._waiting_on.pop(sid, None)
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

    def send_many(self, target: TaskRef | int, msgs: Iterable[Any]) -> None:
        """Send every message of ``msgs`` to one target, in order, all or none (as the
        runtime does: :class:`QueueFull` and nothing sent if the lane has no room)."""
        self._check_running()
        batch = list(msgs)
        lane, _ = self._ledger.route(target, batch[0] if batch else None)
        if len(lane.q) + len(batch) > lane.capacity:
            raise QueueFull(
                f"inbox of the target worker has no room for {len(batch)} messages "
                f"({lane.capacity} messages); nothing was sent"
            )
        for msg in batch:
            _, item = self._ledger.route(target, msg)
            self.trace.record(self.clock.now(), "rt", "send", (target, msg))
            lane.push_force(item)
        if batch:
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

    # ------------------------------------------------------------------ a worker dies

    def kill_worker(
        self,
        worker: int,
        *,
        at: float | None = None,
        exitcode: int = -9,  # -SIGKILL, as multiprocessing reports it
        reason: str | None = None,
    ) -> None:
        """Kill worker ``worker`` now (or at simulated time ``at``), as a signal kills a
        worker process of ``Runtime(mode="process")``.

        The worker dies at once: its tasks are dropped without ``on_shutdown``, its drivers
        closed (its sockets vanish from the network), and what is sent to it from then on
        is lost. The controller notices at the same instant, in a callback of its own (the
        next settle: the next call or wait on the runtime): the reports the worker handed
        over before dying come first, then every task it hosted (host task included) ends
        with ``TaskFailed`` whose traceback is ``"sansio_aio.WorkerDied: <reason>"``,
        requests waiting on them fail with ``TaskFailedError``, spawns and
        ``run_on_worker`` calls waiting on it with ``WorkerDied``, its bus routes are
        dropped, nothing is placed there (``UnknownTarget``), and a ``WorkerExited``
        event follows. With ``restart="on-failure"`` a replacement (new core, drivers and
        host task) joins after the real runtime's back-off (0.1 s, doubling, at most
        5 s, in simulated time) and ``stats().restarts`` counts it.

        ``reason`` is the real runtime's wording for ``exitcode`` (negative: the signal):
        ``"worker 1 died: killed by SIGKILL"`` by default, ``"worker 1 died: its process
        exited with code 3"`` for ``exitcode=3``; pass ``reason`` to say something else.
        A kill that falls due once the worker is already dead, or the runtime is closed,
        does nothing.
        """
        self._check_running()
        self._ledger.check_worker(worker)
        now = self.clock.now()
        if at is not None and at < now:
            raise HarnessError(f"kill_worker(at={at!r}) is in the past: now={now!r}")
        if reason is None:
            reason = exit_reason(worker, exitcode)
        inside = self._settling or any(
            sw.core is not None and sw.core.draining for sw in self._workers
        )
        if at is None and not inside:
            self._die(worker, reason)
        else:  # later, or from inside the instant (a task, a driver): as a timer of its own
            self.trace.record(now, "rt", "kill at", (worker, now if at is None else at))
            self.clock.call_at(now if at is None else at, self._die_then_settle, worker, reason)

    def _die_then_settle(self, w: int, reason: str) -> None:
        self._die(w, reason)
        self.settle()

    def _die(self, w: int, reason: str) -> None:
        """Worker ``w`` dies (the process side); the controller notices in ``_lost``."""
        sw = self._workers[w]
        stopped = self._dispatch.stopped.get(w)
        if (
            sw.dead
            or sw.core is None
            or self._state not in (RuntimeState.RUNNING, RuntimeState.CLOSING)
            or (stopped is not None and stopped.done())  # it had stopped: a normal end
        ):
            return
        now = self.clock.now()
        self._last_stats[w] = sw.build_stats(now)
        self.trace.record(now, "rt", "kill", (w, reason))
        sw.kill()
        self.clock.call_at(now, self._lost, w, reason)

    def _lost(self, w: int, reason: str) -> None:
        """The controller notices that worker ``w`` died (as ``Runtime._worker_lost``)."""
        sw = self._workers[w]
        if self._state is RuntimeState.CLOSED or sw.noticed:
            return
        now = self.clock.now()
        self._dispatch_outbox()  # what it handed over before it died comes first
        sw.discard_inbox()  # lost with the process (not counted: it was not known dead)
        sw.noticed = True
        if self._state is not RuntimeState.RUNNING:  # died while stopping
            self.trace.record(now, "rt", "worker lost", (w, reason, "while stopping"))
            self._resolve_stopped(w)
            self.settle()
            return
        restarting = self._restart == "on-failure"
        self.trace.record(now, "rt", "worker lost", (w, reason, restarting))
        self._fail_worker(w, reason, restarting)
        self._record_app("exited", (w, reason, restarting))
        self._hub.drop_worker(w)
        if restarting:
            delay = self._restart_delay(w, now)
            self._restart_timers[w] = self.clock.call_at(now + delay, self._restart_worker, w)
        else:
            self._resolve_stopped(w)
        self.settle()

    def _resolve_stopped(self, w: int) -> None:
        stopped = self._dispatch.stopped.get(w)
        if stopped is not None and not stopped.done():
            stopped.set_result([])

    def _restart_worker(self, w: int) -> None:
        """Start a replacement for dead worker ``w``; it rejoins as soon as it runs."""
        token = self._enter()
        try:
            self._rejoin(w)
        finally:
            self._leave_points(token)

    def _rejoin(self, w: int) -> None:
        self._restart_timers.pop(w, None)
        if self._state is not RuntimeState.RUNNING:
            self._resolve_stopped(w)
            return
        now = self.clock.now()
        old = self._workers[w]
        self._relay_drops += old.discard_inbox()
        sw = self._new_shell(w, now)
        for v, other in enumerate(self._workers):
            if v != w:
                other.set_peer(w, sw.inbox[v])
        sw.set_peers([sw.inbox[w] if v == w else o.inbox[w] for v, o in enumerate(self._workers)])
        self._workers[w] = sw
        self._ledger.lanes[w] = sw.inbox[self._n]
        self.trace.record(now, "rt", "restart", (w, self._restarts[w]))
        try:
            self._build_core(sw)
        except Exception as exc:
            # it stays down (the real runtime's replacement that cannot start stays
            # down too); the application is told why
            reason = f"worker {w} could not be restarted: {exc!r}"
            self.trace.record(now, "rt", "restart failed", reason)
            sw.kill()
            sw.noticed = True
            self._dispatch.push_event(WorkerExited(w, reason, False))
            self._resolve_stopped(w)
            self.settle()
            return
        assert sw.core is not None
        sw.core.start(now)
        sw.start_ticks()
        self._ledger.down.discard(w)
        self._up_since[w] = now
        self.settle()

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
        for w, timer in list(self._restart_timers.items()):  # dead: nothing to wait for
            timer.cancel()
            del self._restart_timers[w]
            self._resolve_stopped(w)
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
        if self._state is not RuntimeState.NEW:
            try:
                lines = self._status()
                lines[-1] += f"  (closed at t={self.clock.now():.6f})"
                self._final_status = lines
            except Exception:  # a status line must never stop a close
                self._final_status = None
        self._set_state(RuntimeState.CLOSED)
        for timer in self._restart_timers.values():
            timer.cancel()
        self._restart_timers.clear()
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

    # ------------------------------------------------------------------ status

    def worker_state(self, w: int) -> str:
        """``"up"``, ``"dead"`` (killed, not yet noticed), ``"restarting"`` (a replacement
        is due), ``"down"`` (dead for good), ``"stopped"`` (it stopped) or ``"new"``."""
        if not 0 <= w < len(self._workers):
            return "new"
        sw = self._workers[w]
        if sw.dead:
            if not sw.noticed:
                return "dead"
            return "restarting" if w in self._restart_timers else "down"
        if sw.done or sw.core is None:
            return "stopped"
        return "up"

    def workers_up(self) -> list[int]:
        """The workers that are up now."""
        return [w for w in range(len(self._workers)) if self.worker_state(w) == "up"]

    def worker_stats(self) -> list[WorkerStats | None]:
        """Each worker's stats now (synchronous; a dead worker's last, else ``None``)."""
        now = self.clock.now()
        out: list[WorkerStats | None] = []
        for sw in self._workers:
            if sw.core is not None:
                out.append(sw.build_stats(now))
            else:
                out.append(self._last_stats.get(sw.worker_id))
        return out

    def status_lines(self, prefix: str = "") -> list[str]:
        """One line per worker, in the style of TigerBeetle's VOPR: state, tasks, inbox
        depth (and peak), inputs, outputs, bus drops, orphans, failures, restarts; then
        the controller's line.

        Once the runtime is closed, the lines are those of the moment :meth:`close` ran
        (a scenario that fails inside ``async with`` closes it on the way out: the lines
        still show the workers as the failure found them), marked ``closed at t=...``.
        """
        if self._state is RuntimeState.CLOSED and self._final_status is not None:
            return [prefix + line for line in self._final_status]
        return [prefix + line for line in self._status()]

    def _status(self) -> list[str]:
        prefix = ""
        lines = []
        for w, st in enumerate(self.worker_stats()):
            state = self.worker_state(w)
            restarts = self._restarts[w] if w < len(self._restarts) else 0
            head = f"{prefix}w{w:<2} {state:<10}"
            if st is None:
                lines.append(f"{head} (no stats) restarts {restarts}")
                continue
            lines.append(
                f"{head} tasks {st.tasks:>4}  inbox {st.inbox_depth:>4} (peak {st.inbox_peak:>4})"
                f"  in {st.msgs_in:>7}  out {st.msgs_out:>6}  drops {st.drops:>3}"
                f"  orphans {st.orphans:>3}  failures {st.failures:>2}  restarts {restarts}"
            )
        lines.append(
            f"{prefix}ctl state {self._state.value}  live tasks {len(self._ledger.live)}"
            f"  events pending {len(self._events)}  dropped {self._dispatch.events_dropped}"
            f"  relay drops {self._relay_drops}"
        )
        return lines

    def __repr__(self) -> str:
        return (
            f"<SimRuntime {self._state.value} workers={self._n} t={self.clock.now()!r} "
            f"seed={self.seed} live={len(self._ledger.live)}>"
        )
