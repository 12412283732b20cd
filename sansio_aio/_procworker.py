"""A worker in a process of its own: the thread worker, run on the process's main thread.

Theory of operation
-------------------
In process mode (``Runtime(mode="process")``) each worker is a child process started
with the ``spawn`` method (safe with threads). The child runs :func:`worker_main`: it
builds the same :class:`~sansio_aio._worker.Worker` the thread mode builds (its own event
loop on the chosen backend, its drivers, its :class:`~sansio_aio._core.WorkerCore`) and
runs it on its main thread. Only the edges differ (:class:`ProcWorker`):

* **one socket to the controller** carries everything, both ways, as pickled batches
  (``_ipc``). Frames from the controller land in the worker's inbox lane and are handled
  at once, on the loop's reader callback; the count handled goes back as a ``Credit``
  so the controller can keep the inbox bound.
* **everything that leaves** (the core's reports and task outputs, commands for other
  workers wrapped in ``Relay``, bus route changes as ``HubUpdate``) goes into one outgoing
  batch, flushed once at the end of each loop callback.
* **other workers are reached through the controller** (a star, not N² sockets): FIFO per
  sender holds, a restarted worker needs one new socket, and the controller applies the
  receiver's inbox bound to ``safe=False`` sends (and counts what it drops).
* **the bus routes** (channel -> workers) are a copy per process: a worker's first or last
  local subscriber of a channel updates its own copy at once and tells the controller,
  which tells every other worker. A route change reaches the others before anything the
  application sends after it learned of the change (same socket, in order).
* **the parent's death ends the child**: the kernel kills it (``PR_SET_PDEATHSIG``), and
  the controller's socket reading end-of-file stops it too. Ctrl-C is the parent's to
  handle: the child ignores ``SIGINT``.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._backends import LoopFactory, resolve_backend
from ._bus import BusHub
from ._core import DEFAULT_MAX_OUTPUTS
from ._driver import DriverFactory
from ._ipc import FrameReader, FrameWriter, ProcLane, dumps_batch
from ._wire import (
    Credit,
    HostFactory,
    HubCmd,
    HubUpdate,
    Relay,
    StartReport,
    StopReport,
    TaskFactory,
    Undelivered,
)
from ._worker import Worker

if TYPE_CHECKING:
    import asyncio

__all__ = ["WorkerSpec", "worker_main"]

log = logging.getLogger("sansio_aio")

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs to build its worker (pickled to the child)."""

    worker_id: int
    n_workers: int
    kinds: Mapping[str, TaskFactory]
    host: HostFactory | None
    backend: str | LoopFactory
    drivers: Sequence[DriverFactory]
    tick: float
    stats_interval: float
    inbox_capacity: int
    name: str
    routes: Mapping[Hashable, tuple[int, ...]]
    incarnation: int = 0
    max_outputs: int = DEFAULT_MAX_OUTPUTS


class _ReplicaHub(BusHub):
    """This process's copy of the bus routes; its own changes are announced."""

    __slots__ = ("_announce", "_me")

    def __init__(self, me: int, announce: Callable[[Hashable, bool], None]) -> None:
        super().__init__()
        self._me = me
        self._announce = announce

    def register(self, channel: Hashable, worker: int) -> None:
        super().register(channel, worker)
        if worker == self._me:
            self._announce(channel, True)

    def unregister(self, channel: Hashable, worker: int) -> None:
        super().unregister(channel, worker)
        if worker == self._me:
            self._announce(channel, False)

    def apply(self, cmd: HubCmd) -> None:
        """A route change from another worker (through the controller)."""
        if cmd.channel is None and not cmd.add:
            self.drop_worker(cmd.worker)
        elif cmd.add:
            BusHub.register(self, cmd.channel, cmd.worker)
        else:
            BusHub.unregister(self, cmd.channel, cmd.worker)


class ProcWorker(Worker):
    """The thread worker with process edges (see the module docs)."""

    def __init__(self, spec: WorkerSpec, sock: socket.socket) -> None:
        self._sock = sock
        hub = _ReplicaHub(spec.worker_id, self._hub_changed)
        for channel, workers in spec.routes.items():
            for worker in workers:
                BusHub.register(hub, channel, worker)
        super().__init__(
            spec.worker_id,
            n_workers=spec.n_workers,
            kinds=spec.kinds,
            host=spec.host,
            hub=hub,
            loop_factory=resolve_backend(spec.backend)[1],
            drivers=spec.drivers,
            tick=spec.tick,
            stats_interval=spec.stats_interval,
            inbox_capacity=1 << 62,  # the controller keeps the bound (credits)
            name=spec.name,
            incarnation=spec.incarnation,
            max_outputs=spec.max_outputs,
        )
        self._replica = hub
        self._writer = FrameWriter(sock, None)
        out = ProcLane(1 << 62, self._writer, self._report_dropped)
        out.wake = functools.partial(self._pending_wakes.add, self._flush_out)
        self.outbox = out
        self._out = out
        self._credit = 0  # inbox items handled and not yet reported
        self._relays: dict[tuple[int, bool], list[Any]] = {}  # commands for other workers
        self._reader = FrameReader(sock, self._on_frames, self._on_eof)

    # ------------------------------------------------------------------ the edges

    def to_worker(self, worker: int, item: Any, safe: bool) -> bool:
        """CoreSink: a command for another worker goes through the controller, pickled
        with the others for that worker in one relay per callback."""
        batch = self._relays.get((worker, safe))
        if batch is None:
            batch = self._relays[(worker, safe)] = []
            if not self._out.q:
                self._pending_wakes.add(self._flush_out)
        batch.append(item)
        return True

    def _hub_changed(self, channel: Hashable, add: bool) -> None:
        self._out.push_force(HubUpdate(channel, self.worker_id, add))

    def _flush_out(self) -> None:
        q = self._out.q
        if self._relays:
            relays, self._relays = self._relays, {}
            for (worker, safe), items in relays.items():
                payload, count, dropped = dumps_batch(items)
                if dropped:
                    self._report_dropped(dropped)
                if count:
                    q.append(Relay(worker, payload, count, safe))
        if self._credit:
            q.appendleft(Credit(self._credit))
            self._credit = 0
        self._out.flush()

    def _report_dropped(self, dropped: list[tuple[Any, BaseException]]) -> None:
        for item, exc in dropped:
            log.error(
                "worker %d: %r cannot cross to the controller (not picklable: %s); dropped",
                self.worker_id,
                item,
                exc,
            )
        # the controller counts them (undelivered) and can say so
        payload, _, _ = dumps_batch(
            [Undelivered(f"unpicklable: {type(item).__name__}") for item, _ in dropped]
        )
        self._writer.write(payload)

    def _on_frames(self, frames: list[bytes]) -> None:
        import pickle

        q = self.inbox[-1].q
        for payload in frames:
            items = pickle.loads(payload)
            for item in items:
                kind = type(item)
                if kind is Relay:  # another worker's commands, forwarded as they were
                    q.extend(pickle.loads(item.payload))
                elif kind is HubCmd:
                    self._replica.apply(item)
                    self._credit += 1
                else:
                    q.append(item)
        self._on_wake()
        if self._credit:
            self._flush_out()

    def _on_eof(self) -> None:
        """The controller is gone: stop now (nobody is left to report to)."""
        self._writer.broken = True
        core = self.core
        if core is not None and not core.stopped:
            from ._wire import ForceStopCmd

            core.handle_from(_one(ForceStopCmd()), 1, time.monotonic())
        if self.loop is not None:
            self.loop.stop()

    def _on_wake(self) -> None:
        if self.core is None or self.loop is None:
            return
        t0 = self._cur_start = time.perf_counter()
        total, again = self.drain_inbox(time.monotonic())
        self._credit += total
        if again:
            self.loop.call_soon(self._on_wake)
        self.flush_app()
        self._cur_start = None
        self._busy += time.perf_counter() - t0

    def wake(self) -> None:
        """Nothing to do: frames are handled on the loop's reader callback."""

    # ------------------------------------------------------------------ the process

    def run(self) -> None:
        """Build the worker on this thread, run its loop until it stops, close it."""
        self._main()

    def _loop_ready(self, loop: asyncio.AbstractEventLoop) -> None:
        self._writer.attach(loop)
        loop.add_reader(self._sock.fileno(), self._reader.on_readable)

    def _report_start(self, report: StartReport) -> None:
        self._out.push_force(report)
        self._flush_out()

    def _close(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.remove_reader(self._sock.fileno())
        except Exception:
            pass
        super()._close(loop)
        if not self._stop_reported:  # pragma: no cover - _close reports it
            self._out.push_force(StopReport(self.worker_id, []))
        self._flush_out()
        self._writer.flush_blocking()


def _one(item: Any) -> Any:
    from collections import deque

    return deque([item])


def _die_with_parent() -> None:
    """Ask the kernel to kill this process when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # pragma: no cover - not fatal: EOF on the socket also stops us
        log.debug("prctl(PR_SET_PDEATHSIG) failed", exc_info=True)


def worker_main(spec: WorkerSpec, sock: socket.socket, parent: int) -> None:
    """The worker process's entry point (``multiprocessing`` spawns it)."""
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before we could ask
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock.setblocking(False)
    worker = ProcWorker(spec, sock)
    try:
        worker.run()
    finally:
        sock.close()
