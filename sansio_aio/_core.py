"""The task host of one worker, free of threads and event loops.

Theory of operation
-------------------
``WorkerCore`` is the deterministic heart of a worker. The thread-and-loop shell
(``worker.py``) and the simulated runtime of ``sansio_aio.testing`` both drive it the
same way: they hand it inbox messages, ticks, deadline expiries and driver inputs, each
with ``now``; it calls the tasks and routes their outputs through a :class:`CoreSink`.

The drain rule is enforced in one place, :meth:`WorkerCore._feed`: call the task, pop
its outputs until ``None`` routing each one, check ``is_empty()``, refresh its deadline.
An input that appears while a task is being drained (a driver completing synchronously,
a publish to a subscriber on this same worker) is queued and fed right after the current
drain, so no task is ever re-entered.

An exception from a task method ends that task only: the runtime releases what it held
(bus subscriptions, driver resources) and reports the traceback to the application.

Inbox messages are tuples whose first item is one of the ``OP_*`` codes; messages to the
application are tuples starting with an ``APP_*`` code. Both are plain data so that a
later process-based transport can pickle them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import reprlib
import traceback
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sized
from typing import TYPE_CHECKING, Any

from ._bus import BusHub
from ._events import (
    Broadcast,
    BroadcastMessage,
    BusMessage,
    Direct,
    Ext,
    ExtOut,
    Publish,
    Reply,
    Request,
    SendTo,
    Spawn,
    Spawned,
    Subscribe,
    TaskOutput,
    TaskRef,
    Unsubscribe,
)
from ._task import Task, TaskGroup, TaskProtocol
from ._wire import (
    APP_ENDED,
    APP_REPLY,
    APP_REQ_FAILED,
    APP_SPAWN_REQ,
    APP_SPAWNED,
    APP_UNKNOWN,
    HOST_KIND,
    OP_BCAST,
    OP_BUS,
    OP_CALL,
    OP_DIRECT,
    OP_EXT,
    OP_FORCE_STOP,
    OP_HOST,
    OP_REQUEST,
    OP_SHUTDOWN,
    OP_SPAWN,
    OP_SPAWNED,
    CoreSink,
    HostFactory,
    TaskFactory,
)

if TYPE_CHECKING:
    from ._driver import Driver

__all__ = ["HOST_KIND", "CoreSink", "TaskFactory", "WorkerCore", "next_tick"]

log = logging.getLogger("sansio_aio")


class _Entry:
    """One hosted task with its bound methods cached for the per-message path."""

    __slots__ = (
        "alive",
        "channels",
        "deadline",
        "deadline_fn",
        "is_empty",
        "on_event",
        "pop_output",
        "ref",
        "task",
    )

    def __init__(self, ref: TaskRef, task: TaskProtocol) -> None:
        self.ref = ref
        self.task = task
        self.on_event = task.on_event
        self.pop_output = task.pop_output
        self.is_empty = task.is_empty
        fn = getattr(task, "next_deadline", None)
        if fn is not None and getattr(type(task), "next_deadline", None) is Task.next_deadline:
            fn = None  # the base class never asks for a wake-up
        self.deadline_fn: Callable[[], float | None] | None = fn
        self.deadline: float | None = None
        self.channels: set[Hashable] | None = None
        self.alive = True


class CoreCounters:
    """Plain counters of one worker core (read by the shell for stats)."""

    __slots__ = (
        "bus_dropped",
        "failures",
        "inputs",
        "orphans",
        "outputs",
        "spawned",
        "ticks",
        "unrouted",
    )

    def __init__(self) -> None:
        self.inputs = 0
        self.outputs = 0
        self.ticks = 0
        self.spawned = 0
        self.failures = 0
        self.orphans = 0
        self.bus_dropped = 0
        self.unrouted = 0


class WorkerCore:
    """Hosts the tasks of one worker and routes their outputs (no threads, no loop)."""

    def __init__(
        self,
        worker_id: int,
        kinds: Mapping[str, TaskFactory],
        hub: BusHub,
        sink: CoreSink,
        *,
        workers: int,
        host: HostFactory | None = None,
        drivers: Iterable[Driver] = (),
    ) -> None:
        self.worker_id = worker_id
        self._kinds = dict(kinds)
        self._hub = hub
        self._sink = sink
        self._workers = workers
        self.counters = CoreCounters()
        self.groups: dict[str, TaskGroup[_Entry]] = {k: TaskGroup(k) for k in self._kinds}
        self._host: _Entry | None = None
        self._host_factory = host
        self._subs: dict[Hashable, list[_Entry]] = {}
        self._by_ref: dict[TaskRef, _Entry] = {}  # every live task, host included
        #: Application-bound messages of the current callback; the shell flushes them
        #: with one hand-off (``flush_app``) when the callback ends.
        self.app_buffer: list[Any] = []
        self._pending: deque[tuple[_Entry, Any]] = deque()
        self._depth = 0
        self._heap: list[tuple[float, int, _Entry]] = []
        self._seq = itertools.count()
        self._armed: float | None = None
        self.closing = False
        self.stopped = False
        self.drivers = list(drivers)
        self._routes: dict[type, Callable[[TaskRef, Any], None]] = {
            ExtOut: self._r_ext_out,
            Reply: self._r_reply,
            Subscribe: self._r_subscribe,
            Unsubscribe: self._r_unsubscribe,
            Publish: self._r_publish,
            Broadcast: self._r_broadcast,
            SendTo: self._r_send_to,
            Spawn: self._r_spawn,
        }
        for driver in self.drivers:
            for typ in driver.output_types:
                if typ in self._routes:
                    raise ValueError(f"two handlers for output type {typ.__name__}")
                self._routes[typ] = driver.handle
        self._ops: dict[int, Callable[..., None]] = {
            OP_EXT: self._op_ext,
            OP_HOST: self._op_host,
            OP_REQUEST: self._op_request,
            OP_SPAWN: self._op_spawn,
            OP_BUS: self._op_bus,
            OP_BCAST: self._op_bcast,
            OP_DIRECT: self._op_direct,
            OP_SPAWNED: self._op_spawned,
            OP_SHUTDOWN: self._op_shutdown,
            OP_FORCE_STOP: self._op_force_stop,
            OP_CALL: self._op_call,
        }
        self.now = 0.0
        #: Set by the shell: refresh the worker's stats snapshot now.
        self.request_snapshot: Callable[[], None] = _nothing

    # ------------------------------------------------------------------ lifecycle

    def start(self, now: float) -> None:
        """Create the host task (if any) and drain it."""
        self.now = now
        if self._host_factory is not None:
            task = self._host_factory(self.worker_id)
            entry = _Entry(TaskRef(self.worker_id, HOST_KIND, 0, 0), task)
            self._host = entry
            self._by_ref[entry.ref] = entry
            self._drain_new(entry)

    # ------------------------------------------------------------------ queries

    def task_count(self) -> int:
        """Tasks hosted now (the host task not included)."""
        return sum(len(g) for g in self.groups.values())

    def refs(self) -> list[TaskRef]:
        """References of every live task, host included."""
        out = [e.ref for g in self.groups.values() for _, _, e in g.items()]
        if self._host is not None and self._host.alive:
            out.append(self._host.ref)
        return out

    def lookup(self, ref: TaskRef) -> TaskProtocol | None:
        """The live task behind ``ref``, or None."""
        entry = self._entry(ref)
        return entry.task if entry is not None else None

    def _entry(self, ref: TaskRef) -> _Entry | None:
        return self._by_ref.get(ref)

    # ------------------------------------------------------------------ inputs

    def handle(self, item: tuple[Any, ...], now: float) -> None:
        """Process one inbox message."""
        self.now = now
        self._ops[item[0]](*item[1:])

    def handle_from(self, queue: deque[tuple[Any, ...]], count: int, now: float) -> None:
        """Pop and process ``count`` inbox messages from ``queue`` with one clock reading.

        Called only from the top of the worker's call stack (never during a drain).
        Application messages to tasks, the per-message hot path, are fed inline: this is
        ``_feed_one`` unrolled, with ``ExtOut`` appended straight to ``app_buffer``.
        """
        self.now = now
        ops = self._ops
        pop = queue.popleft
        by_ref = self._by_ref
        routes = self._routes
        app = self.app_buffer.append
        counters = self.counters
        pending = self._pending
        op_ext, task_output, ext, ext_out = OP_EXT, TaskOutput, Ext, ExtOut
        fed = outs = 0
        self._depth = 1
        try:
            for _ in range(count):
                item = pop()
                if item[0] == op_ext:
                    entry = by_ref.get(item[1])
                    if entry is not None:
                        fed += 1
                        try:
                            entry.on_event(now, ext(item[2]))
                            pop_out = entry.pop_output
                            out = pop_out(now)
                            while out is not None:
                                if type(out) is ext_out:
                                    app(task_output(entry.ref, out.msg))
                                    outs += 1
                                else:
                                    route = routes.get(type(out))
                                    if route is None:
                                        self._unrouted(entry, out)
                                    else:
                                        route(entry.ref, out)
                                out = pop_out(now)
                            if entry.is_empty():
                                self._end(entry, None)
                            elif entry.deadline_fn is not None:
                                self._refresh_deadline(entry)
                        except Exception as exc:
                            self._fail(entry, exc)
                        if pending:  # inputs it queued for others, even if it ended
                            self._flush_pending()
                        continue
                self._depth = 0
                ops[item[0]](*item[1:])
                self._depth = 1
                app = self.app_buffer.append  # an op may have flushed (a new list)
        finally:
            self._depth = 0
            counters.inputs += fed
            counters.outputs += outs

    def deliver(self, ref: TaskRef, event: Any, now: float) -> bool:
        """Feed a driver's input to ``ref``; False (and counted) if the task is gone.

        Fed at once (and drained) when called from the top of the worker's stack; queued
        behind the current drain when a driver delivers from inside ``handle``.
        """
        entry = self._by_ref.get(ref)
        if entry is None:
            self.counters.orphans += 1
            return False
        if self._depth:
            self._pending.append((entry, event))
            return True
        self.now = now
        self._depth = 1
        try:
            self._feed_one(entry, event)
            if self._pending:
                self._flush_pending()
        finally:
            self._depth = 0
        return True

    def feeder(
        self,
        ref: TaskRef,
        clock: Callable[[], float],
        flush: Callable[[], None],
        wakes: Sized,
    ) -> Callable[[Any], bool]:
        """A fast ``deliver`` bound to one task, for a driver's per-packet path.

        The returned ``feed(event)`` reads ``clock()``, feeds ``event`` under the drain
        rule exactly as :meth:`deliver` does (queued if called during a drain), then
        calls ``flush()`` if anything is waiting to leave the worker (``app_buffer`` or
        ``wakes``). It returns False, counted as an orphan, once the task has ended.
        This is :meth:`deliver` + ``_feed_one`` unrolled into one call.
        """
        entry = self._by_ref.get(ref)
        counters = self.counters
        if entry is None:

            def gone(event: Any) -> bool:
                counters.orphans += 1
                return False

            return gone
        core = self
        pending = self._pending
        routes = self._routes

        def feed(event: Any) -> bool:
            if not entry.alive:
                counters.orphans += 1
                return False
            if core._depth:
                pending.append((entry, event))
                return True
            now = core.now = clock()
            core._depth = 1
            try:
                counters.inputs += 1
                try:
                    entry.on_event(now, event)
                    pop = entry.pop_output
                    out = pop(now)
                    while out is not None:
                        route = routes.get(type(out))
                        if route is None:
                            core._unrouted(entry, out)
                        else:
                            route(entry.ref, out)
                        out = pop(now)
                    if entry.is_empty():
                        core._end(entry, None)
                    elif entry.deadline_fn is not None:
                        core._refresh_deadline(entry)
                except Exception as exc:
                    core._fail(entry, exc)
                if pending:
                    core._flush_pending()
            finally:
                core._depth = 0
            if core.app_buffer or wakes:
                flush()
            return True

        return feed

    def tick(self, now: float) -> None:
        """The periodic tick: ``on_tick`` on every task, each drained."""
        self.now = now
        self.counters.ticks += 1
        if self._host is not None and self._host.alive:
            self._call(self._host, self._host.task.on_tick)
        for group in list(self.groups.values()):
            for _, _, entry in list(group.items()):
                if entry.alive:
                    self._call(entry, entry.task.on_tick)

    def on_deadline(self, now: float) -> None:
        """Fire every task deadline that is due, then re-arm for the next one."""
        self.now = now
        self._armed = None
        heap = self._heap
        due = []
        while heap and heap[0][0] <= now:
            when, _, entry = heapq.heappop(heap)
            if entry.alive and entry.deadline == when:
                entry.deadline = None
                due.append(entry)
        # Fired after the pops: a deadline a task sets in the past again waits for the
        # next timer (the loop runs in between) instead of looping here forever.
        for entry in due:
            if entry.alive:
                self._call(entry, entry.task.on_tick)
        self._rearm()

    def next_deadline(self) -> float | None:
        """The earliest live task deadline, or None."""
        heap = self._heap
        while heap and (not heap[0][2].alive or heap[0][2].deadline != heap[0][0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _rearm(self) -> None:
        when = self.next_deadline()
        if when is not None and (self._armed is None or when < self._armed):
            self._armed = when
            self._sink.arm_deadline(when)

    # ------------------------------------------------------------------ the drain rule

    def _feed(self, entry: _Entry, event: Any) -> None:
        if self._depth:
            self._pending.append((entry, event))
            return
        self._depth = 1
        try:
            self._feed_one(entry, event)
            if self._pending:
                self._flush_pending()
        finally:
            self._depth = 0

    def _flush_pending(self) -> None:
        pending = self._pending
        while pending:
            entry, event = pending.popleft()
            if entry.alive:
                if type(event) is _HookCall:
                    self._call_one(entry, event.method)
                else:
                    self._feed_one(entry, event)

    def _feed_one(self, entry: _Entry, event: Any) -> None:
        self.counters.inputs += 1
        try:
            entry.on_event(self.now, event)
            self._drain(entry)
            empty = entry.is_empty()
        except Exception as exc:
            self._fail(entry, exc)
            return
        if empty:
            self._end(entry, None)
        elif entry.deadline_fn is not None:
            self._refresh_deadline(entry)

    def _call(self, entry: _Entry, method: Callable[[float], None]) -> None:
        """Run a no-argument hook (tick, shutdown) under the drain rule."""
        if self._depth:
            self._pending.append((entry, _HookCall(method)))
            return
        self._depth = 1
        try:
            self._call_one(entry, method)
            if self._pending:
                self._flush_pending()
        finally:
            self._depth = 0

    def _call_one(self, entry: _Entry, method: Callable[[float], None]) -> None:
        try:
            method(self.now)
            self._drain(entry)
            empty = entry.is_empty()
        except Exception as exc:
            self._fail(entry, exc)
            return
        if empty:
            self._end(entry, None)
        elif entry.deadline_fn is not None:
            self._refresh_deadline(entry)

    def _drain(self, entry: _Entry) -> None:
        now = self.now
        pop = entry.pop_output
        routes = self._routes
        out = pop(now)
        while out is not None:
            route = routes.get(type(out))
            if route is None:
                self._unrouted(entry, out)
            else:
                route(entry.ref, out)
            out = pop(now)

    def _drain_new(self, entry: _Entry) -> None:
        """Drain a task just created (outputs queued by its constructor)."""
        outer = self._depth
        self._depth = 1
        try:
            try:
                self._drain(entry)
                empty = entry.is_empty()
            except Exception as exc:
                self._fail(entry, exc)
                return
            if empty:
                self._end(entry, None)
            elif entry.deadline_fn is not None:
                self._refresh_deadline(entry)
            if not outer and self._pending:
                self._flush_pending()
        finally:
            self._depth = outer

    def _refresh_deadline(self, entry: _Entry) -> None:
        assert entry.deadline_fn is not None
        try:
            when = entry.deadline_fn()
            if when is not None and (not isinstance(when, int | float) or when != when):
                raise TypeError(f"next_deadline() must return a time or None, not {when!r}")
        except Exception as exc:
            self._fail(entry, exc)
            return
        if when == entry.deadline:
            return
        entry.deadline = when
        if when is not None:
            heap = self._heap
            if len(heap) > 64 + 2 * len(self._by_ref):
                # stale entries (moved deadlines, ended tasks) leave only when their
                # time comes: drop them before they outnumber the live ones
                heap[:] = [h for h in heap if h[2].alive and h[2].deadline == h[0]]
                heapq.heapify(heap)
            heapq.heappush(heap, (when, next(self._seq), entry))
            if self._armed is None or when < self._armed:
                self._armed = when
                self._sink.arm_deadline(when)

    def _unrouted(self, entry: _Entry, out: Any) -> None:
        self.counters.unrouted += 1
        if self.counters.unrouted <= 10:
            log.warning(
                "task %s emitted %s, which no driver handles (output dropped)",
                entry.ref,
                reprlib.repr(out),
            )

    # ------------------------------------------------------------------ ending tasks

    def _fail(self, entry: _Entry, exc: BaseException) -> None:
        self.counters.failures += 1
        tb = "".join(traceback.format_exception(exc))
        log.debug("task %s failed:\n%s", entry.ref, tb)
        self._end(entry, tb)

    def _end(self, entry: _Entry, tb: str | None, *, report: bool = True) -> None:
        if not entry.alive:
            return
        entry.alive = False
        ref = entry.ref
        self._by_ref.pop(ref, None)
        if entry is not self._host:
            self.groups[ref.kind].remove(ref.index)
        if entry.channels:
            for channel in entry.channels:
                self._unsubscribe(entry, channel)
            entry.channels = None
        for driver in self.drivers:
            try:
                driver.release(ref)
            except Exception:
                log.exception("driver %r failed to release %s", driver, ref)
        if report:
            self._sink.to_app((APP_ENDED, ref, tb))
        if self.closing:
            self._check_stopped()

    def _check_stopped(self) -> None:
        if self.stopped:
            return
        if self._host is not None and self._host.alive:
            return
        if any(not g.is_empty() for g in self.groups.values()):
            return
        self.stopped = True
        self._sink.stopped([])

    # ------------------------------------------------------------------ inbox ops

    def _op_ext(self, ref: TaskRef, msg: Any) -> None:
        entry = self._entry(ref)
        if entry is None:
            self.counters.orphans += 1
            self._sink.to_app((APP_UNKNOWN, f"message for {ref}, which has ended"))
            return
        self._feed(entry, Ext(msg))

    def _op_host(self, msg: Any) -> None:
        host = self._host
        if host is None or not host.alive:
            self.counters.orphans += 1
            return
        self._feed(host, Ext(msg))

    def _op_request(self, ref: TaskRef, rid: int, msg: Any) -> None:
        entry = self._entry(ref)
        if entry is None:
            self._sink.to_app((APP_REQ_FAILED, rid, f"no task {ref} (it has ended)"))
            return
        self._feed(entry, Request(rid, msg))

    def _op_spawn(
        self, sid: int, kind: str, cfg: Any, requester: TaskRef | None, tag: Hashable
    ) -> None:
        entry, error = self._create(kind, cfg)
        ref = entry.ref if entry is not None else None
        # Reported before the drain: a task that ends while its constructor's outputs
        # are drained must reach the controller as spawned, then ended (not the reverse).
        self._sink.to_app((APP_SPAWNED, sid, ref, error, self.worker_id))
        if entry is not None:
            self._drain_new(entry)
        if requester is not None and tag is not None:
            self._deliver_spawned(requester, tag, ref, error)

    def spawn_local(self, kind: str, cfg: Any) -> tuple[TaskRef | None, str | None]:
        """Create a task of ``kind`` here and drain it; return its ref or an error."""
        entry, error = self._create(kind, cfg)
        if entry is None:
            return None, error
        self._drain_new(entry)
        return entry.ref, None

    def _create(self, kind: str, cfg: Any) -> tuple[_Entry | None, str | None]:
        if self.closing:
            return None, "the runtime is shutting down"
        factory = self._kinds.get(kind)
        if factory is None:
            return None, f"unknown task kind {kind!r}"
        try:
            task = factory(cfg)
        except Exception as exc:
            self.counters.failures += 1
            return None, f"{kind} constructor raised {exc!r}"
        entry = _Entry(TaskRef(self.worker_id, kind, -1, 0), task)
        index, gen = self.groups[kind].add(entry)
        ref = entry.ref = TaskRef(self.worker_id, kind, index, gen)
        self._by_ref[ref] = entry
        self.counters.spawned += 1
        return entry, None

    def _op_bus(self, channel: Hashable, source: TaskRef, msg: Any) -> None:
        subs = self._subs.get(channel)
        if not subs:
            return
        for entry in list(subs):
            if entry.alive:
                self._feed(entry, BusMessage(channel, source, msg))

    def _op_bcast(self, source: int, msg: Any) -> None:
        host = self._host
        if host is None or not host.alive:
            self.counters.orphans += 1
            return
        self._feed(host, BroadcastMessage(source, msg))

    def _op_direct(self, target: TaskRef, source: TaskRef, msg: Any) -> None:
        entry = self._entry(target)
        if entry is None:
            self.counters.orphans += 1
            return
        self._feed(entry, Direct(source, msg))

    def _op_spawned(
        self, requester: TaskRef, tag: Hashable, ref: TaskRef | None, error: str | None
    ) -> None:
        self._deliver_spawned(requester, tag, ref, error)

    def _deliver_spawned(
        self, requester: TaskRef, tag: Hashable, ref: TaskRef | None, error: str | None
    ) -> None:
        if requester.worker != self.worker_id:
            self._sink.to_worker(requester.worker, (OP_SPAWNED, requester, tag, ref, error), True)
            return
        entry = self._entry(requester)
        if entry is None:
            self.counters.orphans += 1
            return
        self._feed(entry, Spawned(tag, ref, error))

    def _op_shutdown(self) -> None:
        if self.closing:
            return
        self.closing = True
        entries = [e for g in self.groups.values() for _, _, e in g.items()]
        if self._host is not None:
            entries.append(self._host)
        for entry in entries:
            if entry.alive:
                self._call(entry, entry.task.on_shutdown)
        self._check_stopped()

    def _op_force_stop(self) -> None:
        unfinished = self.refs()
        entries = [e for g in self.groups.values() for _, _, e in g.items()]
        if self._host is not None:
            entries.append(self._host)
        self.closing = True
        already = self.stopped
        self.stopped = True  # no "stopped([])" while the entries below are dropped
        for entry in entries:
            self._end(entry, None, report=False)
        if not already:
            self._sink.stopped(unfinished)

    def _op_call(self, fn: Callable[[WorkerCore], None]) -> None:
        fn(self)

    # ------------------------------------------------------------------ output routes

    def _r_ext_out(self, ref: TaskRef, out: ExtOut) -> None:
        self.counters.outputs += 1
        self.app_buffer.append(TaskOutput(ref, out.msg))

    def _r_reply(self, ref: TaskRef, out: Reply) -> None:
        self._sink.to_app((APP_REPLY, out.id, out.msg))

    def _r_subscribe(self, ref: TaskRef, out: Subscribe) -> None:
        entry = self._by_ref[ref]
        channels = entry.channels
        if channels is None:
            channels = entry.channels = set()
        channel = out.channel
        if channel in channels:
            return
        channels.add(channel)
        subs = self._subs.get(channel)
        if subs is None:
            self._subs[channel] = [entry]
            self._hub.register(channel, self.worker_id)
        else:
            subs.append(entry)

    def _r_unsubscribe(self, ref: TaskRef, out: Unsubscribe) -> None:
        entry = self._by_ref[ref]
        channels = entry.channels
        if not channels or out.channel not in channels:
            return
        channels.discard(out.channel)
        self._unsubscribe(entry, out.channel)

    def _unsubscribe(self, entry: _Entry, channel: Hashable) -> None:
        subs = self._subs.get(channel)
        if subs is None:
            return
        try:
            subs.remove(entry)
        except ValueError:
            return
        if not subs:
            del self._subs[channel]
            self._hub.unregister(channel, self.worker_id)

    def _r_publish(self, ref: TaskRef, out: Publish) -> None:
        channel = out.channel
        me = self.worker_id
        for worker in self._hub.workers(channel):
            if worker == me:
                subs = self._subs.get(channel)
                if subs:
                    for sub in list(subs):
                        self._pending.append((sub, BusMessage(channel, ref, out.msg)))
            elif not self._sink.to_worker(worker, (OP_BUS, channel, ref, out.msg), out.safe):
                self.counters.bus_dropped += 1

    def _r_broadcast(self, ref: TaskRef, out: Broadcast) -> None:
        me = self.worker_id
        for worker in range(self._workers):
            if worker == me:
                if self._host is not None and self._host.alive:
                    self._pending.append((self._host, BroadcastMessage(me, out.msg)))
                else:
                    self.counters.orphans += 1
            elif not self._sink.to_worker(worker, (OP_BCAST, me, out.msg), out.safe):
                self.counters.bus_dropped += 1

    def _r_send_to(self, ref: TaskRef, out: SendTo) -> None:
        target = out.target
        if target.worker == self.worker_id:
            dest = self._entry(target)
            if dest is None:
                self.counters.orphans += 1
            else:
                self._pending.append((dest, Direct(ref, out.msg)))
        elif not 0 <= target.worker < self._workers:
            self.counters.orphans += 1
        elif not self._sink.to_worker(target.worker, (OP_DIRECT, target, ref, out.msg), out.safe):
            self.counters.bus_dropped += 1

    def _r_spawn(self, ref: TaskRef, out: Spawn) -> None:
        self._sink.to_app((APP_SPAWN_REQ, out.kind, out.cfg, ref, out.tag))


def next_tick(due: float, now: float, period: float) -> float:
    """The tick after the one scheduled at ``due``, run at ``now``.

    Ticks sit on the grid ``start + k * period`` so they never drift; ticks missed
    because the worker was late are skipped (the grid keeps its phase), never bunched.
    """
    following = due + period
    if following <= now:
        following += ((now - following) // period + 1) * period
    return following


def _nothing() -> None:
    pass


class _HookCall:
    """A deferred no-argument hook call (tick/shutdown) queued behind a drain."""

    __slots__ = ("method",)

    def __init__(self, method: Callable[[float], None]) -> None:
        self.method = method
