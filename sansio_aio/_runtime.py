"""The controller: the runtime's async face on the application's event loop.

Theory of operation
-------------------
``Runtime`` starts N :class:`~sansio_aio._worker.Worker` threads and wires them: every
worker has an inbox lane from the controller and from each other worker, and one lane
back to the controller. All controller methods run on the application's loop (they are
not thread-safe; call them from that loop).

Workers report through their outbox lanes; a lane going non-empty schedules one
``_on_outbox`` on the application's loop, which drains every lane and dispatches:
task outputs go to the bounded event buffer the application reads (``events()``,
``next_events()``), replies resolve ``request`` futures, spawn results resolve ``spawn``
futures and keep the placement counts, task ends fail the requests still waiting on
that task, and stop reports complete ``shutdown``.

Placement (``spawn``) uses the controller's own counts, updated at once when it places
a task and when a task ends, so a burst of spawns spreads before any stats arrive. Ties
go round-robin. Spawn requests emitted by tasks go through the same balancer.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, TypeVar

from ._backends import LoopFactory, resolve_backend
from ._bus import BusHub
from ._core import WorkerCore
from ._driver import DriverFactory
from ._errors import (
    ConfigError,
    QueueFull,
    RequestTimeout,
    RuntimeClosed,
    ShutdownTimeout,
    UnknownTarget,
)
from ._events import AppEvent, TaskEnded, TaskFailed, TaskOutput, TaskRef
from ._lane import Lane
from ._ledger import Ledger, check_runtime_args, ended_error, spawn_error
from ._stats import RuntimeStats, WorkerStats
from ._wire import (
    APP_ENDED,
    APP_REPLY,
    APP_REQ_FAILED,
    APP_SPAWN_REQ,
    APP_SPAWNED,
    APP_STARTED,
    APP_STOPPED,
    APP_UNKNOWN,
    OP_CALL,
    OP_EXT,
    OP_FORCE_STOP,
    OP_REQUEST,
    OP_SHUTDOWN,
    OP_SPAWN,
    HostFactory,
    TaskFactory,
)
from ._worker import Worker

__all__ = ["Runtime"]

log = logging.getLogger("sansio_aio")

R = TypeVar("R")


class Runtime:
    """Runs Sans-I/O tasks on worker threads; use it as ``async with Runtime(...) as rt``.

    Args:
        kinds: task kind name -> factory ``(cfg) -> task``. Spawns name a kind.
        workers: number of worker threads (>= 1).
        backend: ``"uvloop"``, ``"epoll"``, ``"poll"``, ``"select"``, ``"asyncio"``, or a
            zero-argument callable returning an event loop. Default: uvloop if installed.
        tick: period of ``on_tick`` in seconds.
        host: optional factory ``(worker_id) -> task`` for one host task per worker; it
            receives messages sent to a worker id and bus broadcasts.
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
        if not stats_interval > 0:
            raise ConfigError(f"stats_interval must be > 0 seconds, got {stats_interval!r}")
        self.backend_name, self._loop_factory = resolve_backend(backend)
        self._kinds = dict(kinds)
        self._n = workers
        self._tick = tick
        self._host = host
        self._drivers = tuple(drivers)
        self._inbox_capacity = inbox_capacity
        self._event_capacity = event_capacity
        self._stats_interval = stats_interval
        self._name = name

        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[Worker] = []
        self._lanes: list[Lane] = []  # controller -> worker w
        self._outboxes: list[Lane] = []  # worker w -> controller
        self._hub = BusHub()
        self._state = "new"
        self._running = False
        self._ledger = Ledger(workers, self._kinds, has_host=host is not None)
        self._live = self._ledger.live  # live task -> the lane to its worker (hot path)
        self._ids = itertools.count(1)
        self._spawns: dict[int, asyncio.Future[TaskRef]] = {}
        self._requests: dict[int, tuple[asyncio.Future[Any], TaskRef]] = {}
        self._started: dict[int, asyncio.Future[None]] = {}
        self._stopped: dict[int, asyncio.Future[list[TaskRef]]] = {}
        self._events: deque[AppEvent] = deque()
        self._event_waiter: asyncio.Future[None] | None = None
        self._events_dropped = 0
        self._pending_wakes: set[Callable[[], None]] = set()
        #: Futures resolved by a worker (room to send, run_on_worker results): failed at
        #: close, so nothing waits for ever on a worker that was force-stopped.
        self._parked: set[asyncio.Future[Any]] = set()
        self._undelivered = 0
        self._stopping: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def workers(self) -> int:
        """Number of workers."""
        return self._n

    @property
    def running(self) -> bool:
        """True between a successful ``start`` and ``shutdown``."""
        return self._state == "running"

    async def start(self) -> Runtime:
        """Start the worker threads and wait until each one's loop runs."""
        if self._state != "new":
            raise RuntimeClosed(f"runtime already {self._state}; build a new Runtime")
        self._state = "starting"
        loop = asyncio.get_running_loop()
        self._loop = loop
        n = self._n
        for w in range(n):
            self._workers.append(
                Worker(
                    w,
                    workers=n,
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
        wake_app = self._wake
        for w, worker in enumerate(self._workers):
            worker.outbox = Lane(1 << 62, wake_app)
            self._outboxes.append(worker.outbox)
            lane = worker.inbox[n]
            lane.wake = functools.partial(self._defer_wake, worker.wake)
            self._lanes.append(lane)
            self._ledger.lanes.append(lane)
            worker.set_peers([other.inbox[w] for other in self._workers])
            self._started[w] = loop.create_future()
            self._stopped[w] = loop.create_future()
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
        if self._state != "starting":  # shutdown() ran meanwhile and stops the workers
            raise RuntimeClosed("the runtime was shut down while it was starting")
        if errors:
            self._state = "closing"
            self._running = False
            for lane in self._lanes:  # the workers that did start stop now
                lane.push_force((OP_SHUTDOWN,))
            await self._stop_workers(timeout=2.0, raise_timeout=False)
            raise ConfigError("runtime failed to start: " + "; ".join(errors))
        self._state = "running"
        self._running = True
        self._ledger.accepting = True
        return self

    async def __aenter__(self) -> Runtime:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Stop gracefully: every task gets ``on_shutdown`` and drains; threads joined.

        Outputs emitted while draining are still delivered to the event buffer.
        Raises :class:`ShutdownTimeout` naming the tasks that were still running after
        ``timeout`` seconds; they are dropped and the runtime is stopped anyway.
        """
        if self._state in ("new", "closed"):
            self._state = "closed"
            return
        if self._state == "closing":
            if self._stopping is not None:  # another shutdown runs it: wait for its end
                await asyncio.wait([self._stopping])
            else:  # a failed start is stopping the workers
                await asyncio.gather(*self._stopped.values(), return_exceptions=True)
            return
        self._state = "closing"
        self._running = False
        self._ledger.accepting = False
        for lane in self._lanes:
            lane.push_force((OP_SHUTDOWN,))
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
                        self._lanes[w].push_force((OP_FORCE_STOP,))
                await asyncio.wait(still, timeout=2.0)
        stuck = []
        for w, fut in self._stopped.items():
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                unfinished.extend(fut.result())
            else:
                stuck.append(w)
        joins = [
            asyncio.to_thread(worker.thread.join, 2.0)
            for worker in self._workers
            if worker.thread.is_alive()
        ]
        if joins:
            await asyncio.gather(*joins)
        stuck = sorted(set(stuck) | {w.worker_id for w in self._workers if w.thread.is_alive()})
        self._on_outbox()  # collect what arrived last
        self._state = "closed"
        closed = RuntimeClosed("the runtime has shut down")
        for sfut in self._spawns.values():
            if not sfut.done():
                sfut.set_exception(closed)
        for rfut, _ in self._requests.values():
            if not rfut.done():
                rfut.set_exception(closed)
        for pfut in list(self._parked):
            if not pfut.done():
                pfut.set_exception(closed)
        self._spawns.clear()
        self._requests.clear()
        self._ledger.req_by_task.clear()
        self._ledger.accepting = False
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

    def _check_running(self) -> None:
        if self._state != "running":
            raise RuntimeClosed(
                f"the runtime is {self._state}: use 'async with Runtime(...)' or 'await start()'"
            )

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
        self._spawns[sid] = fut
        self._lanes[worker].push_force((OP_SPAWN, sid, kind, cfg, None, None))
        return await fut

    # ------------------------------------------------------------------ messages

    def send_nowait(self, target: TaskRef | int, msg: Any) -> None:
        """Send ``msg`` to a task (``TaskRef``) or a worker's host task (worker id).

        Raises :class:`QueueFull` if the worker's inbox is full,
        :class:`UnknownTarget` if the target does not exist.
        """
        lane = self._live.get(target) if self._running else None  # type: ignore[arg-type]
        if lane is not None:  # the hot path, inlined
            q = lane.q
            if len(q) < lane.capacity:
                q.append((OP_EXT, target, msg))
                if len(q) == 1:
                    lane.wake()
                return
        self._check_running()
        lane, item = self._ledger.route(target, msg)
        if not lane.push(item):
            raise QueueFull(
                f"inbox of worker {lane_worker(target)} is full "
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
        self._requests[rid] = (fut, task)
        self._ledger.track(task, rid)
        lane.push_force((OP_REQUEST, task, rid, msg))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise RequestTimeout(f"{task} did not reply within {timeout} s") from None
        finally:
            self._requests.pop(rid, None)
            self._ledger.untrack(task, rid)

    async def run_on_worker(self, worker: int, fn: Callable[[WorkerCore], R]) -> R:
        """Run ``fn(core)`` on worker ``worker``'s thread and return its result.

        For introspection and tests; ``fn`` must not block.
        """
        self._check_running()
        if not 0 <= worker < self._n:
            raise UnknownTarget(f"no worker {worker}; workers are 0..{self._n - 1}")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()

        def call(core: WorkerCore) -> None:
            try:
                result = fn(core)
            except BaseException as exc:
                loop.call_soon_threadsafe(_set_exc_if_pending, fut, exc)
            else:
                loop.call_soon_threadsafe(_set_if_pending, fut, result)

        self._lanes[worker].push_force((OP_CALL, call))
        self._parked.add(fut)
        try:
            return await fut
        finally:
            self._parked.discard(fut)

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
            if self._state == "closed":
                return []
            await self._wait_events()
        return self.poll_events()

    async def next_event(self) -> AppEvent:
        """Wait for the next event; raises :class:`RuntimeClosed` after shutdown."""
        while not self._events:
            if self._state == "closed":
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

        Workers refresh their snapshot every ``stats_interval``; with ``fresh=True`` each
        worker is asked to refresh it now (waiting at most ``timeout`` for each; a worker
        that does not answer in time keeps its old snapshot). A worker's ``age`` tells
        how stale its snapshot is: a blocked worker stops refreshing it.
        """
        if fresh and self._state == "running":
            calls = [
                asyncio.wait_for(self.run_on_worker(w, _refresh), timeout) for w in range(self._n)
            ]
            await asyncio.gather(*calls, return_exceptions=True)
        now = time.monotonic()
        snaps: list[WorkerStats] = []
        for worker in self._workers:
            snap = worker.snapshot
            if snap is None:
                continue
            depth = sum(len(lane) for lane in worker.inbox)
            snaps.append(_replace_stats(snap, age=max(0.0, now - snap.last_seen), depth=depth))
        return RuntimeStats(
            workers=tuple(snaps),
            placed=tuple(self._ledger.load),
            events_dropped=self._events_dropped,
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
        events = self._events
        append = events.append
        task_output, app_reply = TaskOutput, APP_REPLY
        again = False
        got_event = False
        for lane in self._outboxes:
            q = lane.q
            n = len(q)
            if not n:
                continue
            pop = q.popleft
            room = self._event_capacity - len(events)
            for _ in range(n):
                item = pop()
                if type(item) is list:  # a worker's batch of task outputs only
                    if len(item) <= room:
                        events.extend(item)
                        room -= len(item)
                    else:
                        events.extend(item[: max(room, 0)])
                        self._events_dropped += len(item) - max(room, 0)
                        room = 0
                    got_event = True
                elif type(item) is task_output:
                    if room > 0:
                        append(item)
                        room -= 1
                        got_event = True
                    else:
                        self._events_dropped += 1
                elif item[0] == app_reply:
                    entry = self._requests.get(item[1])
                    if entry is not None and not entry[0].done():
                        entry[0].set_result(item[2])
                else:
                    got_event |= self._on_control(item)
                    room = self._event_capacity - len(events)
            if q:
                again = True
        if got_event:
            self._wake_events()
        if again and self._loop is not None:
            self._loop.call_soon(self._on_outbox)

    def _push_event(self, event: AppEvent) -> bool:
        if len(self._events) < self._event_capacity:
            self._events.append(event)
            return True
        self._events_dropped += 1
        return False

    def _on_control(self, item: tuple[Any, ...]) -> bool:
        op = item[0]
        if op == APP_SPAWNED:
            _, sid, ref, error, w = item
            fut = self._spawns.pop(sid, None)
            self._ledger.spawned(ref, w)
            if fut is not None and not fut.done():
                if ref is not None:
                    fut.set_result(ref)
                else:
                    fut.set_exception(spawn_error(str(error)))
            return False
        if op == APP_ENDED:
            _, ref, tb = item
            for rid in self._ledger.ended(ref):
                entry = self._requests.get(rid)
                if entry is not None and not entry[0].done():
                    entry[0].set_exception(ended_error(ref, tb))
            return self._push_event(TaskFailed(ref, tb) if tb else TaskEnded(ref))
        if op == APP_SPAWN_REQ:
            _, kind, cfg, requester, tag = item
            error = self._ledger.spawn_for_task(kind, cfg, requester, tag)
            if error is not None and tag is None:
                log.warning("spawn of %r requested by %s failed: %s", kind, requester, error)
            return False
        if op == APP_REQ_FAILED:
            _, rid, message = item
            entry = self._requests.get(rid)
            if entry is not None and not entry[0].done():
                entry[0].set_exception(UnknownTarget(message))
            return False
        if op == APP_STARTED:
            _, w, error = item
            start_fut = self._started.get(w)
            if start_fut is not None and not start_fut.done():
                if error is None:
                    start_fut.set_result(None)
                else:
                    start_fut.set_exception(ConfigError(error))
                    stopped = self._stopped.get(w)
                    if stopped is not None and not stopped.done():
                        stopped.set_result([])
            return False
        if op == APP_STOPPED:
            _, w, unfinished = item
            stop_fut = self._stopped.get(w)
            if stop_fut is not None and not stop_fut.done():
                stop_fut.set_result(list(unfinished))
            return False
        if op == APP_UNKNOWN:
            self._undelivered += 1
            log.debug("undelivered: %s", item[1])
            return False
        log.error("controller: unknown message %r", item)  # pragma: no cover
        return False


def lane_worker(target: TaskRef | int) -> int:
    """The worker id a send target lives on."""
    return target if isinstance(target, int) else target.worker


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a background future's exception as seen (its awaiter may be cancelled)."""
    if not fut.cancelled():
        fut.exception()


def _refresh(core: WorkerCore) -> None:
    core.request_snapshot()


def _set_if_pending(fut: asyncio.Future[Any], value: Any = None) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exc_if_pending(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _replace_stats(snap: WorkerStats, *, age: float, depth: int) -> WorkerStats:
    return replace(snap, age=age, inbox_depth=depth)
