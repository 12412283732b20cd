"""The core input/output vocabulary shared by tasks and the runtime.

Inputs are what the runtime feeds a task through ``on_event``; outputs are what the
task hands back from ``pop_output``. I/O drivers define their own vocabularies next to
this one (``sansio_aio.net``, ``sansio_aio.webrtc``), which is why ``on_event`` and
``pop_output`` are typed ``Any`` rather than a closed union. This module imports no
asyncio.

Events are small slotted dataclasses, cheap to build on the per-message path. Treat
them as immutable and don't subclass them: the worker routes outputs by exact type.
They are not ``frozen``: a frozen dataclass sets its fields through
``object.__setattr__``, which doubles the cost of building one (84 ns → 165 ns here,
twice per message on the echo path).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, NamedTuple, final

__all__ = [
    "AppEvent",
    "Broadcast",
    "BroadcastMessage",
    "BusMessage",
    "Direct",
    "Ext",
    "ExtOut",
    "Publish",
    "Reply",
    "Request",
    "SendTo",
    "Spawn",
    "Spawned",
    "Subscribe",
    "TaskEnded",
    "TaskFailed",
    "TaskOutput",
    "TaskRef",
    "Unsubscribe",
    "WorkerExited",
]


class TaskRef(NamedTuple):
    """Names one task anywhere in the runtime: ``TaskRef(worker, kind, index, gen)``.

    ``index`` is the task's slot in its kind's group on ``worker``; slots are reused, so
    ``gen`` (the slot's generation) tells a live task from an ended one that held the
    same slot. A message to a stale reference is reported, never delivered to the new
    occupant. A named tuple: immutable, hashable in C, picklable.

    ``str()`` reads ``kind#index@wWORKER`` for a slot's first occupant and
    ``kind#index.gen@wWORKER`` after it was reused, so two generations print apart:
    ``echo#0@w1``, then ``echo#0.1@w1``. A worker process that replaced a dead one
    (``Runtime(restart="on-failure")``) starts its generations at ``incarnation << 32``;
    its tasks print with ``~incarnation``: ``echo#0@w1~1``.
    """

    worker: int
    kind: str
    index: int  # type: ignore[assignment]  # shadows tuple.index on purpose
    gen: int = 0

    def __str__(self) -> str:
        if not self.gen:
            return f"{self.kind}#{self.index}@w{self.worker}"
        incarnation, gen = divmod(self.gen, 1 << 32)
        text = f"{self.kind}#{self.index}.{gen}" if gen else f"{self.kind}#{self.index}"
        text += f"@w{self.worker}"
        return f"{text}~{incarnation}" if incarnation else text


# --------------------------------------------------------------------------- inputs


@final
@dataclass(slots=True)
class Ext:
    """A message from the application (``Runtime.send``) to this task or worker host."""

    msg: Any


@final
@dataclass(slots=True)
class Request:
    """A request from the application; answer it by emitting ``Reply(request.id, value)``."""

    id: int
    msg: Any


@final
@dataclass(slots=True)
class BusMessage:
    """A message published on a channel this task subscribed to."""

    channel: Hashable
    source: TaskRef
    msg: Any


@final
@dataclass(slots=True)
class BroadcastMessage:
    """A broadcast, delivered once to each worker's host task; ``source`` is a worker id."""

    source: int
    msg: Any


@final
@dataclass(slots=True)
class Direct:
    """A message another task sent to this one with ``SendTo``."""

    source: TaskRef
    msg: Any


@final
@dataclass(slots=True)
class Spawned:
    """The result of a ``Spawn`` that carried a ``tag``: the new task, or why it failed."""

    tag: Hashable
    ref: TaskRef | None
    error: str | None = None


# -------------------------------------------------------------------------- outputs


@final
@dataclass(slots=True)
class ExtOut:
    """A message for the application; it arrives tagged with this task's reference."""

    msg: Any


@final
@dataclass(slots=True)
class Reply:
    """The answer to ``Request`` number ``id``."""

    id: int
    msg: Any


@final
@dataclass(slots=True)
class Subscribe:
    """Receive ``BusMessage`` for ``channel`` (any hashable); duplicates are ignored."""

    channel: Hashable


@final
@dataclass(slots=True)
class Unsubscribe:
    """Stop receiving ``channel``; unsubscribing an unknown channel is a no-op."""

    channel: Hashable


@final
@dataclass(slots=True)
class Publish:
    """Send ``msg`` to every subscriber of ``channel`` on every worker (sender included).

    With ``safe=False`` a message for a worker whose inbox is full is dropped and
    counted instead of enqueued past the bound.
    """

    channel: Hashable
    msg: Any
    safe: bool = True


@final
@dataclass(slots=True)
class Broadcast:
    """Send ``msg`` to the host task of every worker, this one included."""

    msg: Any
    safe: bool = True


@final
@dataclass(slots=True)
class SendTo:
    """Send ``msg`` to one task, on any worker; it arrives as ``Direct``."""

    target: TaskRef
    msg: Any
    safe: bool = True


@final
@dataclass(slots=True)
class Spawn:
    """Ask the controller to start a task of ``kind`` on the least-loaded worker.

    If ``tag`` is not None, the result comes back to this task as ``Spawned(tag, ...)``.
    """

    kind: str
    cfg: Any = None
    tag: Hashable | None = None


# ---------------------------------------------------------- application events


@final
@dataclass(slots=True)
class TaskOutput:
    """An ``ExtOut`` from ``task``, as the application receives it (FIFO per task)."""

    task: TaskRef
    msg: Any

    def __reduce__(self) -> tuple[type[TaskOutput], tuple[TaskRef, Any]]:
        # crosses from worker processes in every batch: the generic copyreg path of a
        # slotted dataclass costs ~600 ns to pickle, this ~100 (bench/controller_echo.py)
        return (TaskOutput, (self.task, self.msg))


@final
@dataclass(slots=True)
class TaskEnded:
    """``task`` reported ``is_empty()`` and was dropped; its resources are released."""

    task: TaskRef


@final
@dataclass(slots=True)
class TaskFailed:
    """``task`` raised; it was dropped, its resources released. Siblings run on."""

    task: TaskRef
    traceback: str

    @property
    def error(self) -> str:
        """The last line of the traceback (the exception and its message)."""
        lines = self.traceback.strip().splitlines()
        return lines[-1] if lines else ""


@final
@dataclass(slots=True)
class WorkerExited:
    """Worker ``worker``'s process ended unexpectedly (``Runtime(mode="process")``).

    ``reason`` says how (the signal, or the exit code). Every task it hosted ended with
    ``TaskFailed`` (each comes before this event), the requests, spawns and calls waiting
    on it failed. ``restarting``: a replacement worker (with a new host task) is being
    started under the same id (``Runtime(restart="on-failure")``).
    """

    worker: int
    reason: str
    restarting: bool


#: What the application receives from ``Runtime.next_event``/``events()``: a task's
#: output, the news that a task ended or failed, or that a worker process died.
AppEvent = TaskOutput | TaskEnded | TaskFailed | WorkerExited
