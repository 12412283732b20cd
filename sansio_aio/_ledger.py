"""The controller's bookkeeping, shared by the real and the simulated runtime.

Theory of operation
-------------------
A :class:`Ledger` holds what the controller knows about the workers without asking
them, and the rules that use it:

* **placement**: per worker, the tasks placed and not yet seen end. It is updated at
  once when a task is placed (a burst of spawns spreads before any report arrives) and
  when a worker reports a task ended or a spawn failed. The least-loaded worker wins;
  ties go round-robin. Spawns emitted by tasks go through the same rule;
* **routing**: a message for a live task goes to its worker's controller lane, a
  message for a worker id to that worker's host task; anything else is a clear
  :class:`~sansio_aio._errors.UnknownTarget`;
* **requests per task**, so that a task that ends fails the requests still waiting on it.

``Runtime`` (futures, threads) and ``testing.SimRuntime`` (fake clock, one thread) both
keep one, so their rules cannot drift apart. It also sends the two commands that follow
from its decisions (a task's ``Spawn`` placed on a worker, or refused back to the task).
Targets are checked here too, so a wrong-typed target or worker id is a
:class:`~sansio_aio.ConfigError` that names the fix in both runtimes. This module imports
no asyncio.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from typing import Any

from ._errors import ConfigError, UnknownKind, UnknownTarget
from ._events import TaskRef
from ._lane import Lane
from ._wire import HOST_KIND, HostCmd, SpawnCmd, SpawnedCmd

__all__ = ["Ledger", "check_runtime_args"]


def check_runtime_args(
    kinds: Mapping[str, Callable[..., Any]],
    workers: int,
    tick: float,
    inbox_capacity: int,
    event_capacity: int,
    drivers: Sequence[Callable[..., Any]] = (),
) -> None:
    """Fail fast, with a message that names the fix, on a bad runtime argument.

    Shared by ``Runtime`` and ``SimRuntime`` so both accept exactly the same arguments.
    """
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
    claimed: dict[type, object] = {}
    for driver in drivers:
        if not callable(driver):
            raise ConfigError(f"drivers must be Driver classes or factories, got {driver!r}")
        for typ in getattr(driver, "output_types", ()):
            if typ in claimed:
                raise ConfigError(
                    f"drivers {claimed[typ]!r} and {driver!r} both handle {typ.__name__}; "
                    "pass only one of them"
                )
            claimed[typ] = driver


class Ledger:
    """Placement counts, live tasks with their routes, and requests per task."""

    __slots__ = (
        "accepting",
        "asked",
        "down",
        "has_host",
        "kinds",
        "lanes",
        "live",
        "load",
        "n",
        "req_by_task",
        "rr",
    )

    def __init__(self, n: int, kinds: Collection[str], *, has_host: bool) -> None:
        self.n = n
        self.kinds = kinds
        self.has_host = has_host
        #: The controller's lane into each worker's inbox (set once the workers exist).
        self.lanes: list[Lane] = []
        #: Task spawns emitted by tasks are placed only while this is true.
        self.accepting = False
        self.load = [0] * n
        self.rr = 0
        #: Every live task, mapped to the lane of its worker.
        self.live: dict[TaskRef, Lane] = {}
        self.req_by_task: dict[TaskRef, set[int]] = {}
        #: Workers whose process died (and is not back yet): nothing is placed there.
        self.down: set[int] = set()
        #: Per worker, the spawns tasks asked for that it has not answered yet (requester,
        #: tag), oldest first: if it dies, the requesters are told.
        self.asked: dict[int, deque[tuple[TaskRef, Hashable]]] = {}

    # ------------------------------------------------------------------ placement

    def pick(self) -> int:
        """The least-loaded worker that is up; ties round-robin."""
        load = self.load
        down = self.down
        up = [load[w] for w in range(self.n) if w not in down]
        if not up:
            raise UnknownTarget("every worker is down")
        best = min(up)
        n = self.n
        for i in range(n):
            w = (self.rr + i) % n
            if load[w] == best and w not in down:
                self.rr = (w + 1) % n
                return w
        raise AssertionError("unreachable")  # pragma: no cover

    def check_worker(self, worker: int) -> None:
        """Raise unless ``worker`` is a worker id (:class:`UnknownTarget` if out of range)."""
        if not isinstance(worker, int) or isinstance(worker, bool):
            raise ConfigError(
                f"a worker id is an int in 0..{self.n - 1}, got {worker!r} "
                f"({type(worker).__name__})"
            )
        if not 0 <= worker < self.n:
            raise UnknownTarget(f"no worker {worker}; workers are 0..{self.n - 1}")
        if worker in self.down:
            raise UnknownTarget(f"worker {worker} is down (its process died)")

    def place(self, kind: str, worker: int | None) -> int:
        """Choose (or check) the worker for a spawn of ``kind`` and count it there."""
        if not isinstance(kind, str):
            raise ConfigError(
                f"spawn takes a kind name (str), got {kind!r}; registered: {sorted(self.kinds)}"
            )
        if kind not in self.kinds:
            raise UnknownKind(f"unknown task kind {kind!r}; registered: {sorted(self.kinds)}")
        if worker is None:
            worker = self.pick()
        else:
            self.check_worker(worker)
        self.load[worker] += 1
        return worker

    def spawned(self, ref: TaskRef | None, worker: int) -> None:
        """A worker reported a spawn: ``ref`` is live, or the placement did not happen."""
        if ref is not None:
            self.live[ref] = self.lanes[ref.worker]
        elif self.load[worker] > 0:
            self.load[worker] -= 1

    def ended(self, ref: TaskRef) -> set[int]:
        """``ref`` ended: forget it; return the ids of the requests still waiting on it."""
        if ref.kind != HOST_KIND:
            self.live.pop(ref, None)
            if 0 <= ref.worker < self.n and self.load[ref.worker] > 0:
                self.load[ref.worker] -= 1
        return self.req_by_task.pop(ref, set())

    def spawn_for_task(self, kind: str, cfg: Any, requester: TaskRef, tag: Hashable) -> str | None:
        """Place a ``Spawn`` emitted by ``requester``, or answer it with the error.

        Returns the error (also sent to the requester if it gave a ``tag``), or None.
        """
        if not self.accepting or kind not in self.kinds or len(self.down) == self.n:
            if kind not in self.kinds:
                error = f"unknown task kind {kind!r}"
            else:
                error = "runtime closing" if not self.accepting else "every worker is down"
            if tag is not None and 0 <= requester.worker < self.n:
                self.lanes[requester.worker].push_force(SpawnedCmd(requester, tag, None, error))
            return error
        worker = self.pick()
        self.load[worker] += 1
        self.asked.setdefault(worker, deque()).append((requester, tag))
        self.lanes[worker].push_force(SpawnCmd(-1, kind, cfg, requester, tag))
        return None

    def answered(self, worker: int) -> None:
        """Worker ``worker`` answered the oldest spawn a task asked of it (FIFO)."""
        asked = self.asked.get(worker)
        if asked:
            asked.popleft()

    def unanswered(self, worker: int, error: str) -> None:
        """Worker ``worker`` is lost: tell each task still waiting on a spawn there."""
        for requester, tag in self.asked.pop(worker, ()):
            if tag is not None and requester.worker not in self.down:
                self.lanes[requester.worker].push_force(SpawnedCmd(requester, tag, None, error))

    # ------------------------------------------------------------------ routing

    def route(self, target: TaskRef | int, msg: Any) -> tuple[Lane, Any]:
        """The lane and inbox message for ``msg`` to a task or a worker's host task."""
        if not isinstance(target, TaskRef):
            self._check_target(target)
            self.check_worker(target)
            if not self.has_host:
                raise UnknownTarget(
                    "messages to a worker go to its host task; pass host=... to the runtime"
                )
            return self.lanes[target], HostCmd(msg)
        lane = self.live.get(target)
        if lane is None:
            if target.kind == HOST_KIND and self.has_host:
                self.check_worker(target.worker)  # its host task lives while it is up
                return self.lanes[target.worker], HostCmd(msg)
            self.check_worker(target.worker)
            raise UnknownTarget(f"no live task {target!r} (it ended, or never existed)")
        return lane, (target, msg)

    def live_lane(self, task: TaskRef) -> Lane:
        """The lane to a live task's worker; :class:`UnknownTarget` if it is not live."""
        if not isinstance(task, TaskRef):
            raise ConfigError(
                f"requests go to a task: pass the TaskRef that spawn() returned, got {task!r} "
                f"({type(task).__name__}); e.g. ref = await rt.spawn('calc'); "
                "await rt.request(ref, msg)"
            )
        lane = self.live.get(task)
        if lane is None:
            if task.kind == HOST_KIND and self.has_host:
                self.check_worker(task.worker)  # a worker's host task, while it is up
                return self.lanes[task.worker]
            raise UnknownTarget(f"no live task {task!r} (it ended, or never existed)")
        return lane

    @staticmethod
    def _check_target(target: object) -> None:
        if not isinstance(target, int) or isinstance(target, bool):
            raise ConfigError(
                f"a send target is the TaskRef that spawn() returned, or a worker id (int) "
                f"for its host task; got {target!r} ({type(target).__name__})"
            )

    # ------------------------------------------------------------------ requests

    def track(self, task: TaskRef, rid: int) -> None:
        """Request ``rid`` waits on ``task``."""
        self.req_by_task.setdefault(task, set()).add(rid)

    def untrack(self, task: TaskRef, rid: int) -> None:
        """Request ``rid`` is settled."""
        rids = self.req_by_task.get(task)
        if rids is not None:
            rids.discard(rid)
            if not rids:
                del self.req_by_task[task]
