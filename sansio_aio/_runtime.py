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
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from ._api import RuntimeState
from ._backends import LoopFactory, resolve_backend
from ._bus import BusHub
from ._control import ControllerBase
from ._core import WorkerCore
from ._driver import DriverFactory
from ._errors import ConfigError, QueueFull, RequestTimeout, RuntimeClosed, ShutdownTimeout
from ._events import AppEvent, TaskRef
from ._lane import Lane
from ._ledger import check_runtime_args
from ._stats import RuntimeStats, WorkerStats
from ._wire import (
    CallCmd,
    ForceStopCmd,
    HostFactory,
    RequestCmd,
    ShutdownCmd,
    SpawnCmd,
    TaskFactory,
)
from ._worker import Worker

if TYPE_CHECKING:
    from ._api import RuntimeAPI

__all__ = ["Runtime"]

log = logging.getLogger("sansio_aio")

R = TypeVar("R")


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
        name: prefix of the worker thread names.
    """

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
    ) -> None:
        check_runtime_args(kinds, workers, tick, inbox_capacity, event_capacity, drivers)
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

        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[Worker] = []
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
            self._workers.append(
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
                )
            )
        for w, worker in enumerate(self._workers):
            worker.outbox = Lane(1 << 62, self._wake)
            self._outboxes.append(worker.outbox)
            lane = worker.inbox[n]
            lane.wake = functools.partial(self._defer_wake, worker.wake)
            self._lanes.append(lane)
            self._ledger.lanes.append(lane)
            worker.set_peers([other.inbox[w] for other in self._workers])
            self._started[w] = self._dispatch.started[w] = loop.create_future()
            self._stopped[w] = self._dispatch.stopped[w] = loop.create_future()
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

    async def _leave(self, failed: bool) -> None:
        await self.shutdown()

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Stop gracefully: every task gets ``on_shutdown`` and drains; threads joined.

        Outputs emitted while draining are still delivered to the event buffer.
        Raises :class:`ShutdownTimeout` naming the tasks that were still running after
        ``timeout`` seconds; they are dropped and the runtime is stopped anyway.
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
        for lane in self._lanes:
            lane.push_force(ShutdownCmd())
        # A task of its own, shielded: a cancelled shutdown still finishes closing.
        stopping = self._stopping = asyncio.ensure_future(
            self._stop_workers(timeout=timeout, raise_timeout=True)
        )
        stopping.add_done_callback(_retrieve)
        await asyncio.shield(stopping)

    async def _stop_workers(self, timeout: float, raise_timeout: bool) -> None:
        pending = [f for f in self._stopped.values() if not f.done()]
        unfinished: list[TaskRef] = []
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            if still:
                for w, fut in self._stopped.items():
                    if not fut.done():
                        self._lanes[w].push_force(ForceStopCmd())
                await asyncio.wait(still, timeout=2.0)
        stuck = []
        for w, fut in self._stopped.items():
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                unfinished.extend(fut.result())
            else:
                stuck.append(w)
        joins = [
            asyncio.to_thread(worker.join, 2.0) for worker in self._workers if worker.is_alive()
        ]
        if joins:
            await asyncio.gather(*joins)
        stuck = sorted(set(stuck) | {w.worker_id for w in self._workers if w.is_alive()})
        self._on_outbox()  # collect what arrived last
        self._set_state(RuntimeState.CLOSED)
        closed = RuntimeClosed("the runtime has shut down")
        self._dispatch.fail_all(closed)
        for pfut in list(self._parked):
            if not pfut.done():
                pfut.set_exception(closed)
        self._wake_events()
        if raise_timeout and (unfinished or stuck):
            names = ", ".join(str(r) for r in unfinished) or "none"
            raise ShutdownTimeout(
                f"shutdown timed out; unfinished tasks: {names}"
                + (f"; workers that would not stop: {stuck}" if stuck else ""),
                unfinished,
                stuck,
            )

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
        self._lanes[worker].push_force(SpawnCmd(sid, kind, cfg, None, None))
        return await fut

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
        self._lanes[worker].push_force(CallCmd(cid, fn))
        try:
            return await fut
        finally:
            self._pending.pop(cid, None)

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
