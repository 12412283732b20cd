"""sansio_aio.testing: test Sans-I/O tasks without sockets, threads or real time.

Tasks are pure, so they can be driven deterministically:

* :class:`TaskHarness` hosts one task on a :class:`FakeClock`: feed inputs at chosen
  times, advance time (ticks and deadlines fire in order, as a worker fires them),
  collect the outputs, and get a :class:`ProtocolViolation` when the task breaks the
  protocol (an output after ``None``, an exception, a deadline in the past).
* :class:`SimNetwork` is a seeded lossy network (latency, jitter, loss, duplication,
  reordering, bandwidth, MTU, partitions) behind simulated UDP and TCP drivers that speak
  the real ``sansio_aio.net.events`` vocabulary.
* :class:`SimRuntime` runs the real worker cores, bus and controller rules in one thread
  on the fake clock and the simulated network, with the API of :class:`sansio_aio.Runtime`.
* :class:`Trace` records every input, output and packet fate; the same seed gives the
  same trace, byte for byte.

The pytest plugin (``sansio_aio.testing.plugin``, loaded automatically) adds fixtures
for all of this and a ``runtime`` fixture for the real runtime. Hypothesis strategies
live in ``sansio_aio.testing.strategies`` (imported on demand: hypothesis is optional).
See ``docs/testing.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .clock import FakeClock, Timer
    from .errors import HarnessError, ProtocolViolation, SimulationStalled, TaskCrashed
    from .harness import TaskHarness
    from .simnet import Fate, LinkConditions, NetStats, Partition, SimNetwork
    from .simruntime import SimRuntime
    from .trace import Trace, describe

# Names are imported on first use (PEP 562): the pytest plugin lives in this package and
# is loaded by every pytest run, so importing the package must stay cheap and must not
# fail because an optional part cannot be imported.
_EXPORTS = {
    "FakeClock": "clock",
    "Timer": "clock",
    "HarnessError": "errors",
    "ProtocolViolation": "errors",
    "SimulationStalled": "errors",
    "TaskCrashed": "errors",
    "TaskHarness": "harness",
    "Fate": "simnet",
    "LinkConditions": "simnet",
    "NetStats": "simnet",
    "Partition": "simnet",
    "SimNetwork": "simnet",
    "SimRuntime": "simruntime",
    "Trace": "trace",
    "describe": "trace",
}

__all__ = [
    "FakeClock",
    "Fate",
    "HarnessError",
    "LinkConditions",
    "NetStats",
    "Partition",
    "ProtocolViolation",
    "SimNetwork",
    "SimRuntime",
    "SimulationStalled",
    "TaskCrashed",
    "TaskHarness",
    "Timer",
    "Trace",
    "describe",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
