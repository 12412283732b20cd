"""The controller's end of a worker process (process mode).

Theory of operation
-------------------
A :class:`WorkerProcess` is what ``Runtime`` holds for a worker when
``mode="process"``, in place of a :class:`~sansio_aio._worker.Worker` thread. It offers
the controller the same edges:

* ``inbox_lane``: the controller's lane into the worker, a
  :class:`~sansio_aio._ipc.ProcLane` (batches pickled and written when the controller's
  callback ends; credits from the worker keep ``inbox_capacity``);
* ``outbox``: a plain :class:`~sansio_aio._lane.Lane` that the socket reader fills with
  the worker's reports, which the controller drains as it drains a thread's outbox;
* the life cycle: ``start``, ``is_alive``, ``wait_exit``, ``terminate`` (SIGTERM),
  ``kill`` (SIGKILL), ``close``, and ``inbox_depth``.

Frames from the worker carry, besides its reports, what only the controller can act on:
``Credit`` (room in the worker's inbox), ``Relay`` (a command for another worker) and
``HubUpdate`` (a bus route change); the :class:`ProcessHooks` the runtime gives handle the
last two. The process's ``sentinel`` is watched on the controller's loop, so a worker that
dies for any reason is noticed at once (``on_exit``).

Child processes are started with ``multiprocessing``'s ``spawn`` method: a fresh
interpreter, safe whatever threads the application runs, and the usual rules apply (task
classes, configs and drivers must be picklable: defined at module level; a script starting
the runtime guards it with ``if __name__ == "__main__"``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import socket
from typing import TYPE_CHECKING, Any, Protocol

from ._ipc import FrameReader, FrameWriter, ProcLane
from ._lane import Lane
from ._procworker import WorkerSpec, worker_main
from ._wire import Credit, HubUpdate, Relay, Undelivered

if TYPE_CHECKING:
    import asyncio

__all__ = ["ProcessHooks", "WorkerProcess"]

log = logging.getLogger("sansio_aio")

_SPAWN = multiprocessing.get_context("spawn")


class ProcessHooks(Protocol):
    """What a worker process's frames need from the runtime."""

    def relay(self, relay: Relay) -> None:
        """Forward a worker's commands for another worker (``safe``: past the bound)."""

    def hub_update(self, update: HubUpdate) -> None:
        """A worker's bus routes changed: update the others."""

    def reports_arrived(self) -> None:
        """Reports were added to an outbox: drain them."""

    def worker_exited(self, worker: int, exitcode: int | None) -> None:
        """Worker ``worker``'s process ended."""


def _nothing() -> None:
    pass


class WorkerProcess:
    """The controller's end of one worker process (see the module docs)."""

    def __init__(
        self,
        spec: WorkerSpec,
        inbox_capacity: int,
        loop: asyncio.AbstractEventLoop,
        hooks: ProcessHooks,
    ) -> None:
        #: The worker's id.
        self.worker_id = spec.worker_id
        self._spec = spec
        self._loop = loop
        self._hooks = hooks
        self._sock, self._child_sock = socket.socketpair()
        self._writer = FrameWriter(self._sock, loop)
        #: The controller's lane into this worker.
        self.inbox_lane = ProcLane(inbox_capacity, self._writer, self._dropped)
        #: This worker's reports, filled by the socket reader.
        self.outbox = Lane(1 << 62, _nothing)
        self._reader = FrameReader(self._sock, self._on_frames, self._on_eof)
        self.process = _SPAWN.Process(
            target=worker_main,
            args=(spec, self._child_sock, os.getpid()),
            name=f"{spec.name}-worker-{spec.worker_id}",
            daemon=True,
        )
        self._watching = False
        self._exited = False
        self._exit: asyncio.Future[int | None] = loop.create_future()  # the exit code
        self._closed = False

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Start the process and watch its socket and its exit."""
        try:
            self.process.start()
        finally:
            self._child_sock.close()
        self._sock.setblocking(False)
        self._loop.add_reader(self._sock.fileno(), self._reader.on_readable)
        self._loop.add_reader(self.process.sentinel, self._on_sentinel)
        self._watching = True

    def is_alive(self) -> bool:
        """True until the process ended and was reaped."""
        if self._closed:
            return False
        if self._exited:
            return not self._exit.done()
        return self.process.is_alive()

    async def wait_exit(self, timeout: float) -> None:
        """Wait at most ``timeout`` seconds for the process to end (its sentinel)."""
        import asyncio

        try:
            await asyncio.wait_for(asyncio.shield(self._exit), timeout)
        except TimeoutError:
            pass

    def terminate(self) -> bool:
        """Ask the process to end (SIGTERM); True if it was running.

        The worker installs no handler: SIGTERM ends it at once unless it is stuck in
        native code that does not return to the interpreter, hence ``kill`` after a grace.
        """
        if self._exited or self.process.exitcode is not None:
            return False
        self.process.terminate()
        return True

    def kill(self) -> bool:
        """End the process now (SIGKILL); True if it was running."""
        if self._exited or self.process.exitcode is not None:
            return False
        self.process.kill()
        return True

    def abandon(self) -> None:
        """Nothing to do: a process that would not stop was killed."""

    def inbox_depth(self) -> int:
        """Messages sent to the worker and not yet handled by it."""
        return self.inbox_lane.depth()

    def close(self) -> None:
        """Stop watching, close the socket and release the process object (once it
        ended; a process still running keeps its object until it is reaped)."""
        if self._closed:
            return
        self._unwatch()
        self._writer.close()
        self._sock.close()
        self.process.join(0)
        if self.process.exitcode is not None:
            self._closed = True
            self.process.close()

    # ------------------------------------------------------------------ callbacks

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            if not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
                try:
                    self._loop.remove_reader(self.process.sentinel)
                except ValueError:
                    pass  # the process object is closed

    def _on_frames(self, frames: list[bytes]) -> None:
        q = self.outbox.q
        hooks = self._hooks
        lane = self.inbox_lane
        for payload in frames:
            for item in pickle.loads(payload):
                kind = type(item)
                if kind is Credit:
                    lane.credit(item.n)
                elif kind is Relay:
                    hooks.relay(item)
                elif kind is HubUpdate:
                    hooks.hub_update(item)
                else:
                    q.append(item)
        hooks.reports_arrived()

    def _on_eof(self) -> None:
        self._reader_done()

    def _reader_done(self) -> None:
        if self._watching and not self._loop.is_closed():
            try:
                self._loop.remove_reader(self._sock.fileno())
            except Exception:  # pragma: no cover
                pass

    def _on_sentinel(self) -> None:
        if self._exited:
            return
        self._exited = True
        self._reader.on_readable()  # the last reports it wrote before it ended
        self._unwatch()
        self._reap(0)

    def _reap(self, tries: int) -> None:
        """Collect the exit code: the sentinel closes a moment before the process can be
        reaped, so look again shortly (bounded) until it can."""
        self.process.join(0)
        code = self.process.exitcode
        if code is None and tries < 200 and not self._loop.is_closed():
            # 1 ms, doubling to 50 ms: usually the first or second look (bounded: ~10 s)
            self._loop.call_later(min(0.05, 0.001 * 2**tries), self._reap, tries + 1)
            return
        if not self._exit.done():
            self._exit.set_result(code)
        self._hooks.worker_exited(self.worker_id, code)

    def _dropped(self, dropped: list[tuple[Any, BaseException]]) -> None:
        for item, exc in dropped:
            log.error(
                "controller: %r cannot cross to worker %d (not picklable: %s); dropped",
                item,
                self.worker_id,
                exc,
            )
        self.outbox.q.extend(Undelivered("unpicklable message") for _ in dropped)


def check_picklable(what: str, value: Any, fix: str) -> None:
    """Raise :class:`~sansio_aio.ConfigError` unless ``value`` pickles (process mode)."""
    from ._errors import ConfigError

    try:
        pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise ConfigError(
            f"{what} must be picklable to reach a worker process ({exc}); {fix}"
        ) from None
