"""The controller: the runtime's async face on the application's event loop.

Theory of operation
-------------------
``Runtime`` starts N :class:`~sansio_aio._worker.Worker` threads and wires them: every
worker has an inbox lane from the controller and from each other worker, and one lane
back to the controller. All controller methods run on the application's loop (they are
not thread-safe; call them from that loop).

The controller talks to a worker only through those lanes, which carry the plain-data
messages of ``_wire``, plus the thread's life cycle (``start``, ``is_alive``, ``join``) and
the depth of its inbox for stats. Results come back as reports naming the id the
controller waits on: spawns, requests and ``run_on_worker`` calls park an
``asyncio.Future`` in the shared :class:`~sansio_aio._dispatch.Dispatcher`; the only
other crossing is the "room in a full inbox" notice of ``await send``, which is part of
the :class:`~sansio_aio._lane.Lane` interface.

Workers report through their outbox lanes; a lane going non-empty schedules one
``_on_outbox`` on the application's loop, which drains every lane and hands each report
to the dispatcher (shared with the simulated runtime): task outputs go to the bounded
event buffer the application reads (``events()``, ``next_events()``), replies, spawn
answers and call results resolve their futures, task ends fail the requests still
waiting on that task, and stop reports complete ``shutdown``.

Sends from one application callback are batched: a lane going non-empty defers its
worker's wake-up to the end of the callback (``_defer_wake``), so the worker is woken
once however many messages the callback sent.

Placement (``spawn``) uses the controller's own counts (the shared
:class:`~sansio_aio._ledger.Ledger`), updated at once when it places a task and when a
task ends, so a burst of spawns spreads before any stats arrive. Ties go round-robin.
Spawn requests emitted by tasks go through the same balancer.

The life cycle is one :class:`~sansio_aio.RuntimeState`; ``_set_state`` derives the rest
from it (the ledger accepts task-emitted spawns only while running, and the hot path's
route table is the ledger's only while running).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ._api import RuntimeState
from ._backends import LoopFactory, resolve_backend
from ._bus import BusHub
from ._control import ControllerBase, exit_reason
from ._core import DEFAULT_MAX_OUTPUTS, WorkerCore, check_max_outputs
from ._driver import DriverFactory
from ._errors import (
    ConfigError,
    QueueFull,
    RequestTimeout,
    RuntimeClosed,
    ShutdownTimeout,
    WorkerDied,
)
from ._events import AppEvent, TaskRef
from ._ipc import ProcLane
from ._lane import Lane
from ._ledger import check_runtime_args
from ._process import WorkerProcess, check_picklable
from ._procworker import WorkerSpec
from ._stats import RuntimeStats, WorkerStats
from ._wire import (
    CallCmd,
    ForceStopCmd,
    HostCmd,
    HostFactory,
    HubCmd,
    HubUpdate,
    Relay,
    RequestCmd,
    ShutdownCmd,
    SpawnCmd,
    TaskFactory,
)
from ._worker import Worker

if TYPE_CHECKING:
    from ._api import RuntimeAPI

__all__ = ["STOP_SLACK", "Runtime"]

log = logging.getLogger("sansio_aio")

#: Seconds past its ``timeout`` that ``shutdown`` may take: the forced stop, the joins,
#: and for a worker process that would not stop, SIGTERM then SIGKILL.
STOP_SLACK = 0.5
_FORCE_WAIT = 0.2  # for the workers' answers to the forced stop
_TERM_GRACE = 0.1  # SIGTERM -> SIGKILL
_KILL_WAIT = 0.1  # for a killed process to be reaped

R = TypeVar("R")


class WorkerHandle(Protocol):
    """What the controller holds for a worker: a thread (``Worker``) or a process."""

    worker_id: int

    def start(self) -> None:
        """Start the worker (it reports ``StartReport`` when it runs)."""

    def is_alive(self) -> bool:
        """True while the thread or process runs."""
        ...

    async def wait_exit(self, timeout: float) -> None:
        """Wait at most ``timeout`` seconds for the worker to end."""

    def terminate(self) -> bool:
        """Ask the worker to end now if that is possible (a process: SIGTERM); False for a
        thread."""
        ...

    def kill(self) -> bool:
        """End the worker now if that is possible (a process: SIGKILL); False for a thread."""
        ...

    def abandon(self) -> None:
        """Shutdown gives up on the worker (it would not stop): a thread is left to itself."""

    def close(self) -> None:
        """Release what the controller holds for the worker (after it ended)."""

    def inbox_depth(self) -> int:
        """Messages waiting for the worker."""
        ...


class Runtime(ControllerBase):
    """Runs Sans-I/O tasks on worker threads; use it as ``async with Runtime(...) as rt``.

    Args:
        kinds: task kind name -> factory ``(cfg) -> task``. Spawns name a kind.
        workers: number of worker threads (>= 1).
        backend: ``"uvloop"``, ``"epoll"``, ``"poll"``, ``"select"``, ``"asyncio"``, or a
            zero-argument callable returning an event loop. Default: ``"uvloop"`` if
            installed, else ``"epoll"`` (Linux), else ``"asyncio"``.
        tick: period of ``on_tick`` in seconds.
        host: optional factory ``(worker_id) -> task`` for one host task per worker; it
            receives the messages sent to a worker id (as ``Ext``) and every
            ``Broadcast`` a task emits (as ``BroadcastMessage``).
        drivers: I/O driver factories; every worker builds one instance of each.
        inbox_capacity: bound of each inbox lane (per producer) of each worker.
        event_capacity: bound of the application's event buffer; events past it are
            dropped and counted in ``stats().events_dropped``.
        stats_interval: how often each worker refreshes its stats snapshot, in seconds.
        name: prefix of the worker thread (or process) names.
        mode: ``"thread"`` (the default: every worker a thread of this process) or
            ``"process"`` (every worker a process of its own, so workers use every core;
            task kinds, configs, drivers and messages must then be picklable).
        restart: ``"never"`` (the default) or ``"on-failure"``: in process mode, a worker
            whose process dies is replaced (with back-off) under the same id.
        max_outputs: outputs one drain may pop (``pop_output`` until ``None``); a task
            that returns more without ``None`` would hold its worker for good: it fails
            instead (``TaskFailed``), and the worker serves its other tasks.
    """

    def __new__(cls, *args: Any, mode: str = "thread", **kwargs: Any) -> Runtime:
        # process mode checks what crosses to a worker: the same API, another class
        if mode == "process" and cls is Runtime:
            cls = _ProcessRuntime
        return super().__new__(cls)

    def __init__(
        self,
        kinds: Mapping[str, TaskFactory],
        *,
        workers: int = 1,
        backend: str | LoopFactory | None = None,
        tick: float = 1.0,
        host: HostFactory | None = None,
        drivers: Sequence[DriverFactory] = (),
        inbox_capacity: int = 65536,
        event_capacity: int = 1 << 20,
        stats_interval: float = 0.5,
        name: str = "sansio",
        mode: str = "thread",
        restart: str = "never",
        max_outputs: int = DEFAULT_MAX_OUTPUTS,
    ) -> None:
        check_runtime_args(kinds, workers, tick, inbox_capacity, event_capacity, drivers)
        self._max_outputs = check_max_outputs(max_outputs)
        if mode not in ("thread", "process"):
            raise ConfigError(f"mode must be 'thread' or 'process', got {mode!r}")
        if restart not in ("never", "on-failure"):
            raise ConfigError(f"restart must be 'never' or 'on-failure', got {restart!r}")
        if restart != "never" and mode != "process":
            raise ConfigError("restart='on-failure' needs mode='process' (threads do not die)")
        super().__init__(kinds, workers=workers, host=host, event_capacity=event_capacity)
        if not stats_interval > 0:
            raise ConfigError(f"stats_interval must be > 0 seconds, got {stats_interval!r}")
        backend_name, self._loop_factory = resolve_backend(backend)
        #: The backend's name (``"uvloop"``, ``"epoll"``, ... or the factory's name).
        self.backend_name = backend_name
        self._tick = tick
        self._drivers = tuple(drivers)
        self._inbox_capacity = inbox_capacity
        self._stats_interval = stats_interval
        self._name = name
        #: ``"thread"`` or ``"process"``.
        self.mode = mode
        self._restart = restart
        self._backend = backend
        if mode == "process":
            _check_process_args(self._kinds, host, self._drivers, backend)
        self._restart_timers: dict[int, asyncio.TimerHandle] = {}  # pending replacements
        self._relay_drops = 0

        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[WorkerHandle] = []
        self._lanes: list[Lane] = []  # controller -> worker w
        self._outboxes: list[Lane] = []  # worker w -> controller
        self._hub = BusHub()
        self._started: dict[int, asyncio.Future[None]] = {}
        self._stopped: dict[int, asyncio.Future[list[TaskRef]]] = {}
        self._event_waiter: asyncio.Future[None] | None = None
        self._pending_wakes: set[Callable[[], None]] = set()
        #: Futures resolved by a room notice (``await send``): failed at close, so
        #: nothing waits for ever on a worker that was force-stopped.
        self._parked: set[asyncio.Future[Any]] = set()
        self._stopping: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> Runtime:
        """Start the worker threads and wait until each one's loop runs."""
        if self._state is not RuntimeState.NEW:
            raise RuntimeClosed(f"runtime already {self._state.value}; build a new Runtime")
        self._set_state(RuntimeState.STARTING)
        loop = asyncio.get_running_loop()
        self._loop = loop
        n = self._n
        for w in range(n):
            self._started[w] = self._dispatch.started[w] = loop.create_future()
            self._stopped[w] = self._dispatch.stopped[w] = loop.create_future()
        if self.mode == "process":
            self._wire_processes(loop)
        else:
            self._wire_threads()
        errors = []
        for worker in self._workers:
            try:
                worker.start()
            except Exception as exc:  # e.g. "can't start new thread"
                errors.append(f"worker {worker.worker_id}: {exc!r}")
                self._started[worker.worker_id].cancel()
                self._stopped[worker.worker_id].set_result([])
        for w in range(n):
            if self._started[w].cancelled():
                continue
            try:
                await asyncio.wait_for(self._started[w], 10.0)
            except Exception as exc:
                errors.append(f"worker {w}: {exc!r}")
        if self.state is not RuntimeState.STARTING:  # shutdown() ran meanwhile
            raise RuntimeClosed("the runtime was shut down while it was starting")
        if errors:
            self._set_state(RuntimeState.CLOSING)
            for lane in self._lanes:  # the workers that did start stop now
                lane.push_force(ShutdownCmd())
            await self._stop_workers(timeout=2.0, raise_timeout=False)
            raise ConfigError("runtime failed to start: " + "; ".join(errors))
        self._set_state(RuntimeState.RUNNING)
        return self

    def _wire_threads(self) -> None:
        n = self._n
        threads = [
            Worker(
                w,
                n_workers=n,
                kinds=self._kinds,
                host=self._host,
                hub=self._hub,
                loop_factory=self._loop_factory,
                drivers=self._drivers,
                tick=self._tick,
                stats_interval=self._stats_interval,
                inbox_capacity=self._inbox_capacity,
                name=self._name,
                max_outputs=self._max_outputs,
            )
            for w in range(n)
        ]
        for w, worker in enumerate(threads):
            worker.outbox = Lane(1 << 62, self._wake)
            self._outboxes.append(worker.outbox)
            lane = worker.inbox[n]
            lane.wake = functools.partial(self._defer_wake, worker.wake)
            self._lanes.append(lane)
            self._ledger.lanes.append(lane)
            worker.set_peers([other.inbox[w] for other in threads])
            self._workers.append(worker)

    def _wire_processes(self, loop: asyncio.AbstractEventLoop) -> None:
        for w in range(self._n):
            proc = self._new_process(w, loop)
            self._workers.append(proc)
            self._outboxes.append(proc.outbox)
            self._lanes.append(proc.inbox_lane)
            self._ledger.lanes.append(proc.inbox_lane)

    def _new_process(self, w: int, loop: asyncio.AbstractEventLoop) -> WorkerProcess:
        spec = WorkerSpec(
            worker_id=w,
            n_workers=self._n,
            kinds=self._kinds,
            host=self._host,
            backend=self._backend if self._backend is not None else self.backend_name,
            drivers=self._drivers,
            tick=self._tick,
            stats_interval=self._stats_interval,
            inbox_capacity=self._inbox_capacity,
            name=self._name,
            routes=self._hub.routes(),
            incarnation=self._restarts[w],
            max_outputs=self._max_outputs,
        )
        proc = WorkerProcess(spec, self._inbox_capacity, loop, self)
        proc.inbox_lane.wake = functools.partial(self._defer_wake, proc.inbox_lane.flush)
        return proc

    async def _leave(self, failed: bool) -> None:
        await self.shutdown()

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Stop gracefully: every task gets ``on_shutdown`` and drains; threads joined.

        Outputs emitted while draining are still delivered to the event buffer. Returns
        (or raises) within ``timeout`` + 0.5 seconds (``STOP_SLACK``), whatever the
        tasks do. Raises :class:`ShutdownTimeout` naming the tasks that were still running
        after ``timeout`` seconds; they are dropped and the runtime is stopped anyway. A
        worker blocked in a task cannot drop them: a worker process is killed (SIGTERM,
        then SIGKILL); a worker thread cannot be, so it is left running as a daemon
        thread (it does not keep the interpreter from exiting), whatever it still
        produces is discarded, and the error names it and the tasks placed on it.
        """
        if self._state in (RuntimeState.NEW, RuntimeState.CLOSED):
            self._set_state(RuntimeState.CLOSED)
            return
        if self._state is RuntimeState.CLOSING:
            if self._stopping is not None:  # another shutdown runs it: wait for its end
                await asyncio.wait([self._stopping])
            else:  # a failed start is stopping the workers
                await asyncio.gather(*self._stopped.values(), return_exceptions=True)
            return
        self._set_state(RuntimeState.CLOSING)
        for w, timer in list(self._restart_timers.items()):  # no replacement is due now
            timer.cancel()
            del self._restart_timers[w]
            stopped = self._stopped.get(w)
            if stopped is not None and not stopped.done():
                stopped.set_result([])
        for lane in self._lanes:
            lane.push_force(ShutdownCmd())
        # A task of its own, shielded: a cancelled shutdown still finishes closing.
        stopping = self._stopping = asyncio.ensure_future(
            self._stop_workers(timeout=timeout, raise_timeout=True)
        )
        stopping.add_done_callback(_retrieve)
        await asyncio.shield(stopping)

    async def _stop_workers(self, timeout: float, raise_timeout: bool) -> None:
        """Stop every worker within ``timeout + STOP_SLACK`` seconds (see ``shutdown``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout + STOP_SLACK
        pending = [f for f in self._stopped.values() if not f.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            if still:  # a forced stop drops their tasks, if they can still run it
                for w, fut in self._stopped.items():
                    if not fut.done():
                        self._lanes[w].push_force(ForceStopCmd())
                await asyncio.wait(still, timeout=_FORCE_WAIT)
        # Join: each worker's drivers and loop are closed once it ends. Worker processes
        # keep time for the signals below.
        reserve = _TERM_GRACE + _KILL_WAIT if self.mode == "process" else 0.0
        running = [worker for worker in self._workers if worker.is_alive()]
        if running:
            left = max(0.0, deadline - reserve - loop.time())
            await asyncio.gather(*(worker.wait_exit(left) for worker in running))
        # What each worker that stopped reported it dropped (its forced stop); the others
        # are stuck, blocked in a task: the tasks placed there are named instead.
        self._on_outbox()  # the reports already in the lanes first
        unfinished: list[TaskRef] = []
        stuck: set[int] = set()
        for w, fut in self._stopped.items():
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                unfinished.extend(fut.result())
            else:
                stuck.add(w)
                unfinished.extend(self._placed_on(w))
        alive = [worker for worker in self._workers if worker.is_alive()]
        # A worker process still running: SIGTERM, then SIGKILL (one that stopped its
        # tasks and is only slow to exit is not stuck). A thread cannot be stopped: one
        # that has not ended is stuck, even if it reported its stop (its drivers are not
        # closed yet).
        termed = [worker for worker in alive if worker.terminate()]
        stuck |= {worker.worker_id for worker in alive if worker not in termed}
        if termed:
            await asyncio.gather(*(worker.wait_exit(_TERM_GRACE) for worker in termed))
        killed = [worker for worker in termed if worker.is_alive() and worker.kill()]
        if killed:
            await asyncio.gather(*(worker.wait_exit(_KILL_WAIT) for worker in killed))
        self._on_outbox()  # collect what arrived last
        abandoned = [w for w in alive if w not in termed and w.is_alive()]
        for worker in abandoned:
            self._abandon(worker)
        for worker in self._workers:
            worker.close()
        self._set_state(RuntimeState.CLOSED)
        closed = RuntimeClosed("the runtime has shut down")
        self._dispatch.fail_all(closed)
        for pfut in list(self._parked):
            if not pfut.done():
                pfut.set_exception(closed)
        self._wake_events()
        if raise_timeout and (unfinished or stuck):
            names = ", ".join(str(r) for r in unfinished) or "none"
            message = f"shutdown timed out after {timeout} s; unfinished tasks: {names}"
            if stuck:
                how = " (killed)" if any(w.worker_id in stuck for w in termed) else ""
                message += f"; workers that would not stop{how}: {sorted(stuck)}"
            if abandoned:
                message += (
                    f"; worker threads {[w.worker_id for w in abandoned]} are blocked (in a "
                    "task?) and a thread cannot be killed: each is left running as a daemon "
                    "thread and whatever its tasks still produce is discarded"
                )
            raise ShutdownTimeout(message, unfinished, sorted(stuck))

    def _abandon(self, worker: WorkerHandle) -> None:
        """Give up on a worker that would not stop: ignore whatever it still reports."""
        w = worker.worker_id
        log.warning(
            "worker %d would not stop (blocked in a task?): its thread is left running as a "
            "daemon thread, and whatever it still produces is discarded",
            w,
        )
        worker.abandon()
        outbox = self._outboxes[w]
        outbox.wake = _nothing
        outbox.q.clear()
        self._outboxes[w] = Lane(1, _nothing)  # never read again

    # ------------------------------------------------------------------ spawning

    async def spawn(self, kind: str, cfg: Any = None, *, worker: int | None = None) -> TaskRef:
        """Start a task of ``kind`` built with ``cfg``; return its reference.

        The task goes to ``worker`` if given, else to the least-loaded worker. Outputs the
        task queues in its constructor are drained at once.
        """
        self._check_running()
        worker = self._ledger.place(kind, worker)
        assert self._loop is not None
        sid = next(self._ids)
        fut: asyncio.Future[TaskRef] = self._loop.create_future()
        self._pending[sid] = fut
        self._waiting_on[sid] = worker
        self._lanes[worker].push_force(SpawnCmd(sid, kind, cfg, None, None))
        try:
            return await fut
        finally:
            self._waiting_on.pop(sid, None)

    # ------------------------------------------------------------------ messages

    def send_nowait(self, target: TaskRef | int, msg: Any) -> None:
        """Send ``msg`` to a task (``TaskRef``) or a worker's host task (worker id).

        Raises :class:`QueueFull` if the worker's inbox is full,
        :class:`UnknownTarget` if the target does not exist.
        """
        try:
            lane = self._live.get(target)  # type: ignore[arg-type]
        except TypeError:  # unhashable: not a target (the slow path says why)
            lane = None
        if lane is not None:  # the hot path, inlined
            q = lane.q
            if len(q) < lane.capacity:
                q.append((target, msg))
                if len(q) == 1:
                    lane.wake()
                return
        self._check_running()
        lane, item = self._ledger.route(target, msg)
        if not lane.push(item):
            raise QueueFull(
                f"inbox of worker {_worker_of(target)} is full "
                f"({lane.capacity} messages); use 'await send()' to wait for room"
            )

    def send_many(self, target: TaskRef | int, msgs: Iterable[Any]) -> None:
        """Send every message of ``msgs`` to one target, in order: all of them or none.

        The batch form of :meth:`send_nowait` for high rates: one route lookup and at
        most one wake-up for the whole batch; the task still gets one ``Ext`` per
        message. Raises :class:`QueueFull` (nothing sent) if the inbox has no room for
        all of them, :class:`UnknownTarget` if the target does not exist.
        """
        batch = msgs if type(msgs) is list else list(msgs)
        try:
            lane = self._live.get(target)  # type: ignore[arg-type]
        except TypeError:
            lane = None
        if lane is not None:  # the hot path, as send_nowait's
            if len(lane.q) + len(batch) <= lane.capacity:
                if batch:
                    lane.push_many([(target, m) for m in batch])
                return
        else:
            self._check_running()
            lane, item = self._ledger.route(target, batch[0] if batch else None)
            if not batch:
                return
            if type(item) is HostCmd:
                items: list[Any] = [HostCmd(m) for m in batch]
            else:
                items = [(target, m) for m in batch]
            if len(lane.q) + len(items) <= lane.capacity:
                lane.push_many(items)
                return
        raise QueueFull(
            f"inbox of worker {_worker_of(target)} has no room for {len(batch)} messages "
            f"({len(lane.q)} of {lane.capacity} taken); nothing was sent"
        )

    def send_force(self, target: TaskRef | int, msg: Any) -> None:
        """Send ``msg`` even if the inbox is past its bound (never fails for room)."""
        self._check_running()
        lane, item = self._ledger.route(target, msg)
        lane.push_force(item)

    async def send(self, target: TaskRef | int, msg: Any) -> None:
        """Send ``msg``, waiting for room in the worker's inbox if it is full."""
        self._check_running()
        lane, item = self._ledger.route(target, msg)
        if lane.push(item):
            return
        loop = asyncio.get_running_loop()
        while True:
            fut: asyncio.Future[None] = loop.create_future()

            def room(fut: asyncio.Future[None] = fut) -> None:
                loop.call_soon_threadsafe(_set_if_pending, fut)

            if lane.on_room(room):
                self._parked.add(fut)
                try:
                    await fut
                finally:
                    self._parked.discard(fut)
            self._check_running()
            if lane.push(item):
                return

    async def request(self, task: TaskRef, msg: Any, *, timeout: float | None = 5.0) -> Any:
        """Send ``Request(id, msg)`` to ``task`` and await its ``Reply(id, value)``.

        Raises :class:`RequestTimeout` after ``timeout`` seconds, :class:`TaskFailedError`
        if the task ends or fails first, :class:`UnknownTarget` if it does not exist.
        """
        self._check_running()
        lane = self._ledger.live_lane(task)
        assert self._loop is not None
        rid = next(self._ids)
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._pending[rid] = fut
        self._ledger.track(task, rid)
        lane.push_force(RequestCmd(task, rid, msg))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise RequestTimeout(f"{task} did not reply within {timeout} s") from None
        finally:
            self._pending.pop(rid, None)
            self._ledger.untrack(task, rid)

    async def run_on_worker(self, worker: int, fn: Callable[[WorkerCore], R]) -> R:
        """Run ``fn(core)`` on worker ``worker``'s thread and return its result.

        ``fn`` receives the worker's :class:`~sansio_aio.lowlevel.WorkerCore`; it must not
        block. It travels to the worker as a message and its result (or exception) comes
        back as one, in order with the worker's other reports: to work with worker
        processes too, make ``fn`` picklable (a module-level function, or a
        ``functools.partial`` of one). For introspection and tests.
        """
        self._check_running()
        self._ledger.check_worker(worker)
        assert self._loop is not None
        cid = next(self._ids)
        fut: asyncio.Future[R] = self._loop.create_future()
        self._pending[cid] = fut
        self._waiting_on[cid] = worker
        self._lanes[worker].push_force(CallCmd(cid, fn))
        try:
            return await fut
        finally:
            self._pending.pop(cid, None)
            self._waiting_on.pop(cid, None)

    # ------------------------------------------------------------------ events

    def poll_events(self) -> list[AppEvent]:
        """Every event received so far (possibly none), oldest first, without waiting."""
        events = self._events
        out = list(events)
        events.clear()
        return out

    async def next_events(self) -> list[AppEvent]:
        """Wait for at least one event and return all that are pending, oldest first.

        Returns ``[]`` once the runtime has shut down and every event was read.
        """
        while not self._events:
            if self._state is RuntimeState.CLOSED:
                return []
            await self._wait_events()
        return self.poll_events()

    async def next_event(self) -> AppEvent:
        """Wait for the next event; raises :class:`RuntimeClosed` after shutdown."""
        while not self._events:
            if self._state is RuntimeState.CLOSED:
                raise RuntimeClosed("the runtime has shut down and every event was read")
            await self._wait_events()
        return self._events.popleft()

    async def events(self) -> AsyncIterator[AppEvent]:
        """Every event, as an async iterator; it ends after shutdown once drained."""
        while True:
            batch = await self.next_events()
            if not batch:
                return
            for event in batch:
                yield event

    async def _wait_events(self) -> None:
        """Wait for the next ``_wake_events`` (also before ``start``).

        Consumers share one future; each awaits it through ``shield`` so that a consumer
        that is cancelled (a ``wait_for`` timing out) does not cancel it for the others.
        """
        waiter = self._event_waiter
        if waiter is None or waiter.done():
            waiter = self._event_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(waiter)

    def _wake_events(self) -> None:
        waiter = self._event_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ stats

    async def stats(self, *, fresh: bool = False, timeout: float = 1.0) -> RuntimeStats:
        """The latest snapshot of every worker plus the controller's own counters.

        Workers send a snapshot every ``stats_interval``; with ``fresh=True`` each worker
        is asked for one now (waiting at most ``timeout`` for each; a worker that does not
        answer in time keeps its old snapshot). A worker's ``age`` tells how stale its
        snapshot is: a blocked worker stops sending them.
        """
        if fresh and self._state is RuntimeState.RUNNING:
            calls = [
                asyncio.wait_for(self.run_on_worker(w, _refresh), timeout) for w in range(self._n)
            ]
            await asyncio.gather(*calls, return_exceptions=True)
        now = time.monotonic()
        snaps: list[WorkerStats] = []
        for worker in self._workers:
            snap = self._dispatch.snapshots.get(worker.worker_id)
            if snap is None:
                continue
            age = max(0.0, now - snap.last_seen)
            snaps.append(replace(snap, age=age, inbox_depth=worker.inbox_depth()))
        return RuntimeStats(
            workers=tuple(snaps),
            placed=tuple(self._ledger.load),
            events_dropped=self._dispatch.events_dropped,
            events_pending=len(self._events),
            restarts=tuple(self._restarts),
            relay_drops=self._relay_drops,
        )

    # ------------------------------------------------------------------ outbox

    def _defer_wake(self, wake: Callable[[], None]) -> None:
        """A lane to a worker went non-empty: wake that worker once this callback ends.

        Every send made by one application callback then costs the worker one wake-up
        (one syscall), however many messages it carries.
        """
        wakes = self._pending_wakes
        if not wakes:
            assert self._loop is not None
            self._loop.call_soon(self._flush_wakes)
        wakes.add(wake)

    def _flush_wakes(self) -> None:
        wakes = self._pending_wakes
        self._pending_wakes = set()
        for wake in wakes:
            wake()

    def _wake(self) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._on_outbox)
        except RuntimeError:
            pass  # the application's loop is closed

    def _on_outbox(self) -> None:
        handle = self._dispatch.handle
        again = False
        got_event = False
        for lane in self._outboxes:
            q = lane.q
            n = len(q)
            if not n:
                continue
            pop = q.popleft
            for _ in range(n):
                got_event |= handle(pop())
            if q:
                again = True
        if got_event:
            self._wake_events()
        if again and self._loop is not None:
            self._loop.call_soon(self._on_outbox)

    # ------------------------------------------------------------------ worker processes

    def relay(self, relay: Relay) -> None:
        """ProcessHooks: a worker's commands for worker ``dest`` (bus, spawn answers),
        forwarded as one pickled blob; it counts ``n`` items against the bound."""
        dest, n = relay.dest, relay.n
        if dest in self._ledger.down or not 0 <= dest < self._n:
            self._relay_drops += n
            return
        lane = self._lanes[dest]
        assert isinstance(lane, ProcLane)
        if not relay.safe and lane.capacity - len(lane.q) < n:
            self._relay_drops += n  # the receiver's inbox has no room for them
            return
        lane.push_weighted(relay, n)

    def hub_update(self, update: HubUpdate) -> None:
        """ProcessHooks: a worker's bus routes changed; tell every other worker."""
        if update.add:
            self._hub.register(update.channel, update.worker)
        else:
            self._hub.unregister(update.channel, update.worker)
        cmd = HubCmd(update.channel, update.worker, update.add)
        for w, lane in enumerate(self._lanes):
            if w != update.worker and w not in self._ledger.down:
                lane.push_force(cmd)

    def reports_arrived(self) -> None:
        """ProcessHooks: a worker process's reports are in its outbox."""
        self._on_outbox()

    def worker_exited(self, worker: int, exitcode: int | None) -> None:
        """ProcessHooks: worker ``worker``'s process ended (normally, or it died)."""
        stopped = self._stopped.get(worker)
        if stopped is not None and stopped.done() and not stopped.cancelled():
            return  # it reported its stop: a normal end
        if self._state in (RuntimeState.CLOSING, RuntimeState.CLOSED):
            if stopped is not None and not stopped.done():
                stopped.set_result([])  # died while stopping: nothing left to wait for
            self._on_outbox()
            return
        reason = exit_reason(worker, exitcode)
        started = self._started.get(worker)
        if started is not None and not started.done():
            reason += " before it started (its error is on stderr)"
        log.warning("%s", reason)
        self._worker_lost(worker, reason)

    def _worker_lost(self, w: int, reason: str) -> None:
        """A worker process died: what the application sees (``_fail_worker``), then drop
        its routes everywhere, and restart it or let shutdown stop waiting for it."""
        restarting = self._restart == "on-failure" and self._state is RuntimeState.RUNNING
        self._on_outbox()  # what it reported before it died comes first
        got_event = self._fail_worker(w, reason, restarting)
        started = self._started.get(w)
        if started is not None and not started.done():
            started.set_exception(WorkerDied(reason))
        self._hub.drop_worker(w)
        drop = HubCmd(None, w, False)
        for v, lane in enumerate(self._lanes):
            if v != w and v not in self._ledger.down:
                lane.push_force(drop)
        self._workers[w].close()
        if got_event:
            self._wake_events()
        if restarting:
            assert self._loop is not None
            delay = self._restart_delay(w, time.monotonic())
            self._restart_timers[w] = self._loop.call_later(delay, self._restart_worker, w)
        else:
            stopped = self._stopped.get(w)
            if stopped is not None and not stopped.done():
                stopped.set_result([])

    def _restart_worker(self, w: int) -> None:
        """Start a replacement process for worker ``w`` (it rejoins once it reports)."""
        self._restart_timers.pop(w, None)
        if self._state is not RuntimeState.RUNNING:
            stopped = self._stopped.get(w)
            if stopped is not None and not stopped.done():
                stopped.set_result([])
            return
        assert self._loop is not None
        proc = self._new_process(w, self._loop)
        self._workers[w] = proc
        self._outboxes[w] = proc.outbox
        self._lanes[w] = proc.inbox_lane
        self._ledger.lanes[w] = proc.inbox_lane
        started = self._started[w] = self._dispatch.started[w] = self._loop.create_future()
        started.add_done_callback(functools.partial(self._restarted, w))
        try:
            proc.start()
        except Exception as exc:
            self._worker_lost(w, f"worker {w} could not be restarted: {exc!r}")

    def _restarted(self, w: int, fut: asyncio.Future[None]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return  # its death was handled (and maybe another restart scheduled)
        self._ledger.down.discard(w)
        self._up_since[w] = time.monotonic()
        log.info("worker %d restarted (%d restarts)", w, self._restarts[w])


def _nothing() -> None:
    pass


def _worker_of(target: TaskRef | int) -> int:
    """The worker id a send target lives on."""
    return target if isinstance(target, int) else target.worker


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a background future's exception as seen (its awaiter may be cancelled)."""
    if not fut.cancelled():
        fut.exception()


def _refresh(core: WorkerCore) -> None:
    """Run on a worker: send a fresh stats snapshot (module level: picklable)."""
    core.report_stats()


def _set_if_pending(fut: asyncio.Future[Any], value: Any = None) -> None:
    if not fut.done():
        fut.set_result(value)


if TYPE_CHECKING:

    def _conforms(rt: Runtime) -> RuntimeAPI:
        return rt  # mypy checks that Runtime satisfies RuntimeAPI


def _check_process_args(
    kinds: Mapping[str, TaskFactory],
    host: HostFactory | None,
    drivers: Sequence[DriverFactory],
    backend: str | LoopFactory | None,
) -> None:
    fix = "define it at module level (not inside a function, not a lambda)"
    named: list[tuple[str, Any]] = [(f"task kind {k!r} ({f!r})", f) for k, f in kinds.items()]
    if host is not None:
        named.append((f"the host factory {host!r}", host))
    named += [(f"the driver factory {d!r}", d) for d in drivers]
    if backend is not None and not isinstance(backend, str):
        named.append((f"the loop factory {backend!r}", backend))
    for what, obj in named:
        check_picklable(what, obj, fix)
        module = getattr(getattr(obj, "func", obj), "__module__", None)
        if isinstance(module, str) and not _importable(module):
            raise ConfigError(
                f"{what} lives in module {module!r}, which a worker process cannot import "
                "(it was loaded from a file path, not found on sys.path): move it to an "
                "importable module"
            )


def _importable(module: str) -> bool:
    """Whether a fresh interpreter (a worker process) could import ``module``'s package:
    what the import system finds without looking at ``sys.modules``."""
    top = module.partition(".")[0]
    if top == "__main__" or top in sys.builtin_module_names:
        return True  # spawn re-runs the main script in the child
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        try:
            if find(top, None) is not None:
                return True
        except Exception:
            continue
    return False


class _ProcessRuntime(Runtime):
    """``Runtime(mode="process")``: what crosses to a worker is checked for pickling first,
    so an unpicklable config or message is a ConfigError at the call, not a lost batch.
    Plain messages (str, bytes, numbers, None) are not checked."""

    async def spawn(self, kind: str, cfg: Any = None, *, worker: int | None = None) -> TaskRef:
        _check_message("the spawn's cfg", cfg)
        return await super().spawn(kind, cfg, worker=worker)

    def send_nowait(self, target: TaskRef | int, msg: Any) -> None:
        _check_message("a message", msg)
        super().send_nowait(target, msg)

    def send_many(self, target: TaskRef | int, msgs: Iterable[Any]) -> None:
        batch = list(msgs)
        for msg in batch:
            _check_message("a message", msg)
        super().send_many(target, batch)

    def send_force(self, target: TaskRef | int, msg: Any) -> None:
        _check_message("a message", msg)
        super().send_force(target, msg)

    async def send(self, target: TaskRef | int, msg: Any) -> None:
        _check_message("a message", msg)
        await super().send(target, msg)

    async def request(self, task: TaskRef, msg: Any, *, timeout: float | None = 5.0) -> Any:
        _check_message("a request", msg)
        return await super().request(task, msg, timeout=timeout)

    async def run_on_worker(self, worker: int, fn: Callable[[WorkerCore], R]) -> R:
        check_picklable(
            f"run_on_worker's function {fn!r}",
            fn,
            "pass a module-level function (or a functools.partial of one), not a lambda",
        )
        return await super().run_on_worker(worker, fn)


_PLAIN = frozenset({str, bytes, int, float, bool, type(None)})


def _check_message(what: str, msg: Any) -> None:
    if type(msg) not in _PLAIN:
        check_picklable(what, msg, "send plain data (no lambdas, sockets, locks or loops)")
