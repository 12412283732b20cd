"""The worker core: one worker's tasks and the rules that run them, free of threads and loops.

Theory of operation
-------------------
``WorkerCore`` is the deterministic heart of a worker. Both worker shells drive it the
same way (the thread-and-loop ``_worker.Worker`` and the simulated
``testing._sim.worker.SimWorker``): they hand it inbox messages, ticks, deadline expiries
and driver inputs, each with ``now``; it calls the tasks and routes their outputs through
a :class:`~sansio_aio._wire.CoreSink`.

**The drain rule** (one task step): call the task (``on_event`` or a hook), pop its
outputs until ``None`` routing each one, then settle it: ``is_empty()`` ends it, else its
deadline is refreshed. :meth:`WorkerCore._step` is that rule and :meth:`WorkerCore._settle`
its tail. An input that appears while a task is being drained (a driver completing
synchronously, a publish to a subscriber on this same worker, a spawn answer) is queued
and stepped right after the current drain (:meth:`WorkerCore._enter`), so no task is ever
re-entered. Two hand-unrolled copies of ``_step`` exist, and must keep its order of calls: in
:meth:`WorkerCore.handle_from`, the per-message path of application messages
(``bench/controller_echo.py``), and in :meth:`WorkerCore._feed_plain`, the per-packet
path of plain Tasks fed a read's worth of inputs at once (``bench/tun_echo.py``). The
drivers' other per-packet paths (:meth:`WorkerCore.feeder`, and
:meth:`WorkerCore.batch_feeder` for other tasks) inline only the checks of ``_enter``
around ``_step``.

**Tasks built on** :class:`~sansio_aio.Task` that keep its ``pop_output`` (and
``is_empty``) are drained without calling them: the core pops ``Task._outputs`` itself
(and reads ``closing``), which is exactly what those methods do, and saves two or three
Python calls per input. Overriding either method (in the class or on the instance before
the spawn) restores the calls.

**The drain is bounded**: a task whose ``pop_output`` never returns ``None`` would hold
its worker for good, so both drain loops count what they pop; past ``max_outputs``
outputs in one drain (``Runtime(max_outputs=...)``, 100,000 by default, as
``TaskHarness``) the task fails with a ``RuntimeError`` that names the violation (the
application gets ``TaskFailed``), its resources are released and the worker goes on with
its other tasks. Counting up from 0 keeps the cost to one small-int add and one compare
per output.

An exception from a task method ends that task only: the runtime releases what it held
(bus subscriptions, driver resources) and reports the traceback to the application.

Inbox messages are the ``_wire`` commands, dispatched by exact type, and the bare
``(ref, msg)`` tuple of an application message; what leaves for the application goes
into :attr:`WorkerCore.app_buffer` (task outputs, and the reports the sink appends), which
the shell hands over in one batch at the end of each loop callback.
"""

from __future__ import annotations

import logging
import reprlib
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sized
from typing import TYPE_CHECKING, Any

from ._bus import BusHub, LocalSubscriptions
from ._deadlines import DeadlineHeap
from ._errors import ConfigError

# The core vocabulary: most of the names sansio_aio/__init__.py re-exports, in the same
# order, so the two import lists share a run of lines.
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
from ._fast import constructor
from ._task import Task, TaskGroup, TaskProtocol
from ._wire import (
    HOST_KIND,
    BroadcastCmd,
    BusCmd,
    CallCmd,
    CallResult,
    CoreSink,
    DirectCmd,
    EndReport,
    ForceStopCmd,
    HostCmd,
    HostFactory,
    ReplyReport,
    RequestCmd,
    RequestFailed,
    ShutdownCmd,
    SpawnCmd,
    SpawnedCmd,
    SpawnFailure,
    SpawnReport,
    SpawnRequest,
    TaskFactory,
    Undelivered,
)

if TYPE_CHECKING:
    from ._driver import Driver

__all__ = ["DEFAULT_MAX_OUTPUTS", "CoreCounters", "WorkerCore", "check_max_outputs", "next_tick"]

# the events built per message (the C maker when compiled: same class, no __init__ call)
_make_ext = constructor(Ext)
_make_task_output = constructor(TaskOutput)

log = logging.getLogger("sansio_aio")

#: Outputs one drain may pop before the task is failed (``Runtime(max_outputs=...)``).
DEFAULT_MAX_OUTPUTS = 100_000


def check_max_outputs(value: object) -> int:
    """``value`` if it is a valid ``max_outputs`` (an int >= 1), else :class:`ConfigError`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(
            f"max_outputs must be an int >= 1 (outputs one drain may pop), got {value!r}"
        )
    return value


def _runaway(limit: int) -> RuntimeError:
    """The failure of a task whose ``pop_output`` did not return None in time."""
    return RuntimeError(
        f"pop_output returned more than {limit} outputs without None in one drain "
        f"(the drain rule; the bound is Runtime(max_outputs={limit})): the task was ended"
    )


class _Entry:
    """One hosted task with its bound methods cached for the per-message path."""

    __slots__ = (
        "alive",
        "deadline",
        "deadline_fn",
        "is_empty",
        "on_event",
        "plain_empty",
        "plain_pop",
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
        # A Task that keeps the base class's pop_output (is_empty): the drain reads its
        # output deque (its flag) itself, which is what those methods do, minus the calls.
        own = getattr(task, "__dict__", {})
        cls = type(task)
        base = isinstance(task, Task)
        self.plain_pop = base and cls.pop_output is Task.pop_output and "pop_output" not in own
        self.plain_empty = base and cls.is_empty is Task.is_empty and "is_empty" not in own
        fn = getattr(task, "next_deadline", None)
        if fn is not None and getattr(type(task), "next_deadline", None) is Task.next_deadline:
            fn = None  # the base class never asks for a wake-up
        self.deadline_fn: Callable[[], float | None] | None = fn
        self.deadline: float | None = None
        self.alive = True


class _Hook:
    """A no-argument task hook (``on_tick``, ``on_shutdown``) to step like an input."""

    __slots__ = ("method",)

    def __init__(self, method: Callable[[float], None] | None) -> None:
        self.method = method


#: Step a task without calling it: drain what its constructor queued.
_NEW = _Hook(None)


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
    """Hosts the tasks of one worker and routes their outputs (no threads, no loop).

    Built by a worker shell; reach it from the application with
    :meth:`Runtime.run_on_worker <sansio_aio.Runtime.run_on_worker>`. Read-only for
    such callbacks: :attr:`worker_id`, :attr:`drivers`, :attr:`counters`,
    :attr:`max_outputs`, :meth:`task_count`, :meth:`refs`, :meth:`lookup`,
    :attr:`pending_deadlines`.
    """

    def __init__(
        self,
        worker_id: int,
        kinds: Mapping[str, TaskFactory],
        hub: BusHub,
        sink: CoreSink,
        *,
        n_workers: int,
        host: HostFactory | None = None,
        drivers: Iterable[Driver] = (),
        incarnation: int = 0,
        max_outputs: int = DEFAULT_MAX_OUTPUTS,
    ) -> None:
        #: This worker's id (0-based).
        self.worker_id = worker_id
        #: Outputs one drain may pop; past it the task fails (its ``pop_output`` never
        #: returned None: see the module docs).
        self.max_outputs = check_max_outputs(max_outputs)
        self._kinds = dict(kinds)
        self._sink = sink
        self._n_workers = n_workers
        #: Counters of inputs, outputs, failures, orphans... (the stats' source).
        self.counters = CoreCounters()
        #: The tasks of each kind, in reusable slots.
        #: How many workers held this id before this one (a replacement of a dead worker
        #: process is 1, 2, ...): its task references start their generations at
        #: ``incarnation << 32``, so no reference of a dead predecessor's task can reach one
        #: of its tasks.
        self.incarnation = incarnation
        first_gen = incarnation << 32
        self._first_gen = first_gen
        self.groups: dict[str, TaskGroup[_Entry]] = {
            k: TaskGroup(k, first_gen) for k in self._kinds
        }
        self._host: _Entry | None = None
        self._host_factory = host
        self._subs: LocalSubscriptions[_Entry] = LocalSubscriptions(hub, worker_id)
        self._hub = hub
        self._by_ref: dict[TaskRef, _Entry] = {}  # every live task, host included
        #: What leaves for the application during the current callback (task outputs,
        #: reports); the shell hands it over in one batch when the callback ends.
        self.app_buffer: list[Any] = []
        self._pending: deque[tuple[_Entry, Any]] = deque()
        self._depth = 0
        self._deadlines: DeadlineHeap[_Entry] = DeadlineHeap()
        #: True once a shutdown began: no new task is accepted.
        self.closing = False
        #: True once every task ended after a shutdown (or a forced stop).
        self.stopped = False
        #: The worker's drivers, in the order given to the runtime.
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
                    raise ConfigError(
                        f"two handlers for output type {typ.__name__}: pass one driver for it"
                    )
                self._routes[typ] = driver.handle
        self._ops: dict[type, Callable[[Any], None]] = {
            HostCmd: self._op_host,
            RequestCmd: self._op_request,
            SpawnCmd: self._op_spawn,
            BusCmd: self._op_bus,
            BroadcastCmd: self._op_broadcast,
            DirectCmd: self._op_direct,
            SpawnedCmd: self._op_spawned,
            ShutdownCmd: self._op_shutdown,
            ForceStopCmd: self._op_force_stop,
            CallCmd: self._op_call,
        }
        #: The time of the input being handled (the ``now`` tasks see).
        self.now = 0.0

    # ------------------------------------------------------------------ lifecycle

    def start(self, now: float) -> None:
        """Create the host task (if any) and drain it."""
        self.now = now
        if self._host_factory is not None:
            task = self._host_factory(self.worker_id)
            # the host task is "this worker's host", whichever incarnation: generation 0
            entry = _Entry(TaskRef(self.worker_id, HOST_KIND, 0, 0), task)
            self._host = entry
            self._by_ref[entry.ref] = entry
            self._enter(entry, _NEW)

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
        entry = self._by_ref.get(ref)
        return entry.task if entry is not None else None

    @property
    def draining(self) -> bool:
        """True while a task is being stepped: inputs delivered now are queued behind it."""
        return self._depth > 0

    @property
    def pending_deadlines(self) -> int:
        """Entries in the deadline heap, stale ones included (bounded by compaction)."""
        return len(self._deadlines)

    def report_stats(self) -> None:
        """Ask the shell to send a fresh stats snapshot to the controller now."""
        self._sink.snapshot()

    # ------------------------------------------------------------------ inputs

    def handle_from(self, queue: deque[Any], count: int, now: float) -> None:
        """Pop and handle ``count`` inbox messages from ``queue`` with one clock reading.

        Called only from the top of the worker's call stack (never during a drain).
        """
        self.now = now
        ops = self._ops
        pop = queue.popleft
        by_ref = self._by_ref
        routes = self._routes
        app = self.app_buffer.append
        pending = self._pending
        tuple_, ext, ext_out, task_output = tuple, _make_ext, ExtOut, _make_task_output
        limit = self.max_outputs
        fed = outs = 0
        self._depth = 1
        try:
            for _ in range(count):
                item = pop()
                if type(item) is not tuple_:  # a command
                    self._depth = 0
                    if fed:  # counted first: a stats snapshot among the commands sees them
                        self.counters.inputs += fed
                        self.counters.outputs += outs
                        fed = outs = 0
                    ops[type(item)](item)
                    self._depth = 1
                    app = self.app_buffer.append  # a command may have handed it over
                    continue
                # (ref, msg): an application message. The one hand-unrolled copy of
                # ``_step`` (see the module docs): the per-message path that
                # ``bench/controller_echo.py`` measures; inlined, it costs ~10 % less
                # per message on the worker side. Keep the order of calls identical.
                entry = by_ref.get(item[0])
                if entry is None:
                    self._orphan_message(item[0])
                    continue
                fed += 1
                try:
                    entry.on_event(now, ext(item[1]))
                    # a plain Task's queue is popped here (no calls), else pop_output
                    outq = entry.task._outputs if entry.plain_pop else None  # type: ignore[attr-defined]
                    pop_out = entry.pop_output
                    out = (outq.popleft() if outq else None) if outq is not None else pop_out(now)
                    popped = 0
                    while out is not None:
                        popped += 1
                        if popped > limit:
                            raise _runaway(limit)
                        if type(out) is ext_out:
                            app(task_output(entry.ref, out.msg))
                            outs += 1
                        else:
                            route = routes.get(type(out))
                            if route is None:
                                self._unrouted(entry, out)
                            else:
                                route(entry.ref, out)
                        out = (
                            (outq.popleft() if outq else None) if outq is not None else pop_out(now)
                        )
                    if entry.plain_empty:
                        empty = entry.task.closing and not entry.task._outputs  # type: ignore[attr-defined]
                    else:
                        empty = entry.is_empty()
                except Exception as exc:
                    self._fail(entry, exc)
                else:
                    if empty or entry.deadline_fn is not None:
                        self._settle(entry, empty)
                if pending:  # inputs it queued for others, even if it ended
                    self._flush_pending()
        finally:
            self._depth = 0
            self.counters.inputs += fed
            self.counters.outputs += outs

    def deliver(self, ref: TaskRef, event: Any, now: float) -> bool:
        """Feed a driver's input to ``ref``; False (and counted) if the task is gone.

        Stepped at once when called from the top of the worker's stack; queued behind
        the current drain when a driver delivers from inside one (see ``draining``).
        """
        entry = self._by_ref.get(ref)
        if entry is None:
            self.counters.orphans += 1
            return False
        if not self._depth:
            self.now = now
        self._enter(entry, event)
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
        step = self._step

        # ``_enter`` with the checks inlined: one closure call per datagram, then the
        # drain rule itself (``_step``).
        def feed(event: Any) -> bool:
            if not entry.alive:
                counters.orphans += 1
                return False
            if core._depth:
                pending.append((entry, event))
                return True
            core.now = clock()
            core._depth = 1
            try:
                step(entry, event)
                if pending:
                    core._flush_pending()
            finally:
                core._depth = 0
            if core.app_buffer or wakes:
                flush()
            return True

        return feed

    def batch_feeder(
        self,
        ref: TaskRef,
        clock: Callable[[], float],
        flush: Callable[[], None],
        wakes: Sized,
    ) -> Callable[[list[Any]], None]:
        """:meth:`feeder` for a run of inputs: ``feed_all(events)`` feeds each, in order.

        One clock reading, one entry check and one ``flush`` for the whole list instead
        of one per event; each event is still stepped on its own under the drain rule.
        Clearing ``events`` while they are fed (a driver does it when the task closes
        the socket they came from) stops the rest: they are never fed.
        """
        entry = self._by_ref.get(ref)
        counters = self.counters
        core = self
        pending = self._pending
        step = self._step
        _feed_plain = self._feed_plain

        def feed_all(events: list[Any]) -> None:
            if entry is None or not entry.alive:
                counters.orphans += len(events)
                return
            if core._depth:
                pending.extend([(entry, event) for event in events])
                return
            now = core.now = clock()
            core._depth = 1
            done = 0
            try:
                if entry.plain_pop and entry.plain_empty:
                    _feed_plain(entry, events, now)
                else:
                    for event in events:
                        done += 1
                        step(entry, event)
                        if pending:
                            core._flush_pending()
                        if not entry.alive:  # it ended (or failed): the rest are orphans
                            counters.orphans += max(0, len(events) - done)
                            break
            finally:
                core._depth = 0
            if core.app_buffer or wakes:
                flush()

        return feed_all

    def _feed_plain(self, entry: _Entry, events: list[Any], now: float) -> None:
        """``batch_feeder``'s loop for a plain Task (see ``_Entry.plain_pop``): the drain
        rule unrolled, as in :meth:`handle_from` (the second and last such copy; it keeps
        ``_step``'s order of calls), which saves ``_step``'s call and set-up per input."""
        task: Any = entry.task
        outq = task._outputs
        popleft = outq.popleft
        on_event = entry.on_event
        routes = self._routes
        limit = self.max_outputs
        ref = entry.ref
        pending = self._pending
        counters = self.counters
        timed = entry.deadline_fn is not None  # fixed for the task's life
        done = outs = 0
        try:
            for event in events:
                done += 1
                try:
                    on_event(now, event)
                    popped = 0
                    while outq:
                        out = popleft()
                        popped += 1
                        if popped > limit:
                            raise _runaway(limit)
                        if type(out) is ExtOut:
                            outs += 1
                            self.app_buffer.append(_make_task_output(ref, out.msg))
                        else:
                            route = routes.get(type(out))
                            if route is None:
                                self._unrouted(entry, out)
                            else:
                                route(ref, out)
                    empty = task.closing and not outq
                except Exception as exc:
                    self._fail(entry, exc)
                else:
                    if empty or timed:
                        self._settle(entry, empty)
                if pending:
                    self._flush_pending()
                if not entry.alive:  # it ended (or failed): the rest are orphans
                    counters.orphans += max(0, len(events) - done)
                    break
        finally:
            counters.inputs += done
            counters.outputs += outs

    def tick(self, now: float) -> None:
        """The periodic tick: ``on_tick`` on every task, each drained."""
        self.now = now
        self.counters.ticks += 1
        if self._host is not None and self._host.alive:
            self._enter(self._host, _Hook(self._host.task.on_tick))
        for group in list(self.groups.values()):
            for _, _, entry in list(group.items()):
                if entry.alive:
                    self._enter(entry, _Hook(entry.task.on_tick))

    def on_deadline(self, now: float) -> None:
        """Fire every task deadline that is due, then re-arm for the next one."""
        self.now = now
        for entry in self._deadlines.pop_due(now):
            if entry.alive:
                self._enter(entry, _Hook(entry.task.on_tick))
        when = self._deadlines.rearm()
        if when is not None:
            self._sink.arm_deadline(when)

    def next_deadline(self) -> float | None:
        """The earliest live task deadline, or None."""
        return self._deadlines.earliest()

    # ------------------------------------------------------------------ the drain rule

    def _enter(self, entry: _Entry, event: Any) -> None:
        """Step ``entry`` now, or right after the current drain if one is running."""
        if self._depth:
            self._pending.append((entry, event))
            return
        self._depth = 1
        try:
            self._step(entry, event)
            if self._pending:
                self._flush_pending()
        finally:
            self._depth = 0

    def _flush_pending(self) -> None:
        pending = self._pending
        while pending:
            entry, event = pending.popleft()
            if entry.alive:
                self._step(entry, event)

    def _step(self, entry: _Entry, event: Any) -> None:
        """The drain rule: call, pop every output, settle (see the module docs)."""
        now = self.now
        counters = self.counters
        try:
            if type(event) is _Hook:
                if event.method is not None:
                    event.method(now)
            else:
                counters.inputs += 1
                entry.on_event(now, event)
            limit = self.max_outputs
            # a plain Task's queue is popped here (no calls), else pop_output
            outq = entry.task._outputs if entry.plain_pop else None  # type: ignore[attr-defined]
            pop = entry.pop_output
            out = (outq.popleft() if outq else None) if outq is not None else pop(now)
            popped = 0
            while out is not None:
                popped += 1
                if popped > limit:
                    raise _runaway(limit)
                if type(out) is ExtOut:  # the commonest output, routed inline
                    counters.outputs += 1
                    self.app_buffer.append(_make_task_output(entry.ref, out.msg))
                else:
                    route = self._routes.get(type(out))
                    if route is None:
                        self._unrouted(entry, out)
                    else:
                        route(entry.ref, out)
                out = (outq.popleft() if outq else None) if outq is not None else pop(now)
            if entry.plain_empty:
                empty = entry.task.closing and not entry.task._outputs  # type: ignore[attr-defined]
            else:
                empty = entry.is_empty()
        except Exception as exc:
            self._fail(entry, exc)
            return
        if empty or entry.deadline_fn is not None:
            self._settle(entry, empty)

    def _settle(self, entry: _Entry, empty: bool) -> None:
        """After a drain: end an empty task, else refresh its deadline."""
        if empty:
            self._end(entry, None)
        elif entry.deadline_fn is not None:
            try:
                when = entry.deadline_fn()
                if when is not None and (not isinstance(when, int | float) or when != when):
                    raise TypeError(f"next_deadline() must return a time or None, not {when!r}")
            except Exception as exc:
                self._fail(entry, exc)
                return
            arm = self._deadlines.set(entry, when, len(self._by_ref))
            if arm is not None:
                self._sink.arm_deadline(arm)

    def _unrouted(self, entry: _Entry, out: Any) -> None:
        self.counters.unrouted += 1
        if self.counters.unrouted <= 10:
            log.warning(
                "task %s emitted %s, which no driver of this runtime handles (dropped): %s",
                entry.ref,
                reprlib.repr(out),
                _driver_hint(type(out)),
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
        self._subs.drop(entry)
        for driver in self.drivers:
            try:
                driver.release(ref)
            except Exception:
                log.exception("driver %r failed to release %s", driver, ref)
        if report:
            self._sink.to_app(EndReport(ref, tb))
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

    def _entries(self) -> list[_Entry]:
        """Every hosted task, the host task last."""
        entries = [e for g in self.groups.values() for _, _, e in g.items()]
        if self._host is not None:
            entries.append(self._host)
        return entries

    # ------------------------------------------------------------------ inbox ops

    def _orphan_message(self, ref: TaskRef) -> None:
        self.counters.orphans += 1
        self._sink.to_app(Undelivered(f"message for {ref}, which has ended"))

    def _op_host(self, cmd: HostCmd) -> None:
        host = self._host
        if host is None or not host.alive:
            self.counters.orphans += 1
            return
        self._enter(host, Ext(cmd.msg))

    def _op_request(self, cmd: RequestCmd) -> None:
        entry = self._by_ref.get(cmd.ref)
        if entry is None:
            self._sink.to_app(RequestFailed(cmd.rid, f"no task {cmd.ref} (it has ended)"))
            return
        self._enter(entry, Request(cmd.rid, cmd.msg))

    def _op_spawn(self, cmd: SpawnCmd) -> None:
        entry, failure, error = self._create(cmd.kind, cmd.cfg)
        ref = entry.ref if entry is not None else None
        # Reported before the drain: a task that ends while its constructor's outputs
        # are drained must reach the controller as spawned, then ended (not the reverse).
        self._sink.to_app(SpawnReport(cmd.sid, ref, failure, error, self.worker_id))
        if entry is not None:
            self._enter(entry, _NEW)
        if cmd.requester is not None and cmd.tag is not None:
            self._deliver_spawned(SpawnedCmd(cmd.requester, cmd.tag, ref, error))

    def _create(self, kind: str, cfg: Any) -> tuple[_Entry | None, SpawnFailure | None, str | None]:
        if self.closing:
            return None, SpawnFailure.CLOSING, "the runtime is shutting down"
        factory = self._kinds.get(kind)
        if factory is None:
            return None, SpawnFailure.UNKNOWN_KIND, f"unknown task kind {kind!r}"
        try:
            task = factory(cfg)
        except Exception as exc:
            self.counters.failures += 1
            return None, SpawnFailure.CONSTRUCTOR_RAISED, f"{kind} constructor raised {exc!r}"
        entry = _Entry(TaskRef(self.worker_id, kind, -1, 0), task)
        index, gen = self.groups[kind].add(entry)
        ref = entry.ref = TaskRef(self.worker_id, kind, index, gen)
        self._by_ref[ref] = entry
        self.counters.spawned += 1
        return entry, None, None

    def _op_bus(self, cmd: BusCmd) -> None:
        for entry in self._subs.subscribers(cmd.channel):
            if entry.alive:
                self._enter(entry, BusMessage(cmd.channel, cmd.source, cmd.msg))

    def _op_broadcast(self, cmd: BroadcastCmd) -> None:
        host = self._host
        if host is None or not host.alive:
            self.counters.orphans += 1
            return
        self._enter(host, BroadcastMessage(cmd.source, cmd.msg))

    def _op_direct(self, cmd: DirectCmd) -> None:
        entry = self._by_ref.get(cmd.target)
        if entry is None:
            self.counters.orphans += 1
            return
        self._enter(entry, Direct(cmd.source, cmd.msg))

    def _op_spawned(self, cmd: SpawnedCmd) -> None:
        self._deliver_spawned(cmd)

    def _deliver_spawned(self, cmd: SpawnedCmd) -> None:
        requester = cmd.requester
        if requester.worker != self.worker_id:
            self._sink.to_worker(requester.worker, cmd, True)
            return
        entry = self._by_ref.get(requester)
        if entry is None:
            self.counters.orphans += 1
            return
        self._enter(entry, Spawned(cmd.tag, cmd.ref, cmd.error))

    def _op_shutdown(self, cmd: ShutdownCmd) -> None:
        if self.closing:
            return
        self.closing = True
        for entry in self._entries():
            if entry.alive:
                self._enter(entry, _Hook(entry.task.on_shutdown))
        self._check_stopped()

    def _op_force_stop(self, cmd: ForceStopCmd) -> None:
        unfinished = self.refs()
        entries = self._entries()
        self.closing = True
        already = self.stopped
        self.stopped = True  # no "stopped([])" while the entries below are dropped
        for entry in entries:
            self._end(entry, None, report=False)
        if not already:
            self._sink.stopped(unfinished)

    def _op_call(self, cmd: CallCmd) -> None:
        try:
            value = cmd.fn(self)
        except BaseException as exc:  # handed to the caller, whatever it is
            self._sink.to_app(CallResult(cmd.cid, False, exc))
        else:
            self._sink.to_app(CallResult(cmd.cid, True, value))

    # ------------------------------------------------------------------ output routes

    def _r_ext_out(self, ref: TaskRef, out: ExtOut) -> None:
        self.counters.outputs += 1
        self.app_buffer.append(TaskOutput(ref, out.msg))

    def _r_reply(self, ref: TaskRef, out: Reply) -> None:
        self._sink.to_app(ReplyReport(out.id, out.msg))

    def _r_subscribe(self, ref: TaskRef, out: Subscribe) -> None:
        self._subs.subscribe(self._by_ref[ref], out.channel)

    def _r_unsubscribe(self, ref: TaskRef, out: Unsubscribe) -> None:
        self._subs.unsubscribe(self._by_ref[ref], out.channel)

    def _r_publish(self, ref: TaskRef, out: Publish) -> None:
        channel = out.channel
        me = self.worker_id
        for worker in self._hub.workers(channel):
            if worker == me:
                for sub in self._subs.subscribers(channel):
                    self._pending.append((sub, BusMessage(channel, ref, out.msg)))
            elif not self._sink.to_worker(worker, BusCmd(channel, ref, out.msg), out.safe):
                self.counters.bus_dropped += 1

    def _r_broadcast(self, ref: TaskRef, out: Broadcast) -> None:
        me = self.worker_id
        for worker in range(self._n_workers):
            if worker == me:
                if self._host is not None and self._host.alive:
                    self._pending.append((self._host, BroadcastMessage(me, out.msg)))
                else:
                    self.counters.orphans += 1
            elif not self._sink.to_worker(worker, BroadcastCmd(me, out.msg), out.safe):
                self.counters.bus_dropped += 1

    def _r_send_to(self, ref: TaskRef, out: SendTo) -> None:
        target = out.target
        if target.worker == self.worker_id:
            dest = self._by_ref.get(target)
            if dest is None:
                self.counters.orphans += 1
            else:
                self._pending.append((dest, Direct(ref, out.msg)))
        elif not 0 <= target.worker < self._n_workers:
            self.counters.orphans += 1
        elif not self._sink.to_worker(target.worker, DirectCmd(target, ref, out.msg), out.safe):
            self.counters.bus_dropped += 1

    def _r_spawn(self, ref: TaskRef, out: Spawn) -> None:
        self._sink.to_app(SpawnRequest(out.kind, out.cfg, ref, out.tag))


def next_tick(due: float, now: float, period: float) -> float:
    """The tick after the one scheduled at ``due``, run at ``now``.

    Ticks sit on the grid ``start + k * period`` so they never drift; ticks missed
    because the worker was late are skipped (the grid keeps its phase), never bunched.
    """
    following = due + period
    if following <= now:
        following += ((now - following) // period + 1) * period
    return following


#: (module of an output type, prefix of its name) -> the driver that handles it.
_DRIVERS: dict[tuple[str, str], str] = {
    ("sansio_aio.net._events", "Udp"): "sansio_aio.net.UdpDriver",
    ("sansio_aio.net._events", "Tcp"): "sansio_aio.net.TcpDriver",
    ("sansio_aio.net._tun_events", "Tun"): "sansio_aio.net.TunDriver",
    ("sansio_aio.webrtc._events", "Peer"): "sansio_aio.webrtc.WebRtcDriver",
}


def _driver_hint(typ: type) -> str:
    """How to get ``typ`` handled: which driver to add to ``Runtime(drivers=[...])``."""
    for (module, prefix), driver in _DRIVERS.items():
        if typ.__module__ == module and typ.__name__.startswith(prefix):
            name = driver.rsplit(".", 1)[1]
            return f"add its driver: Runtime(..., drivers=[{name}]) ({driver})"
    return (
        f"add a driver whose output_types include {typ.__name__} to "
        "Runtime(..., drivers=[...]), or stop emitting it"
    )
