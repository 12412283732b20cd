"""The worker core and the pieces it is built from (trio's ``lowlevel``, for sansio_aio).

Most programs never need this module. It is for:

* callbacks of :meth:`Runtime.run_on_worker <sansio_aio.Runtime.run_on_worker>`, which
  receive the worker's :class:`WorkerCore`;
* people building a runtime of their own on the same deterministic core: the
  :class:`WorkerCore` with its :class:`CoreSink` and :class:`CoreCounters`, the
  cross-thread :class:`Lane`, the bus tables :class:`BusHub` (per runtime) and
  :class:`LocalSubscriptions` (per worker), the slot table :class:`TaskGroup`, the
  :class:`DeadlineHeap` and the tick grid :func:`next_tick`.

These names are public and documented, but they change more freely than the rest.
"""

from __future__ import annotations

from ._backends import LoopFactory as LoopFactory
from ._bus import BusHub as BusHub
from ._bus import LocalSubscriptions as LocalSubscriptions
from ._core import CoreCounters as CoreCounters
from ._core import WorkerCore as WorkerCore
from ._core import next_tick as next_tick
from ._deadlines import DeadlineHeap as DeadlineHeap
from ._lane import Lane as Lane
from ._task import TaskGroup as TaskGroup
from ._wire import CoreSink as CoreSink

__all__ = [
    "BusHub",
    "CoreCounters",
    "CoreSink",
    "DeadlineHeap",
    "Lane",
    "LocalSubscriptions",
    "LoopFactory",
    "TaskGroup",
    "WorkerCore",
    "next_tick",
]
