"""sansio_aio.testing: test Sans-I/O tasks without sockets, threads or real time.

Tasks are pure, so they can be driven deterministically:

* :class:`TaskHarness` hosts one task on a :class:`FakeClock`: feed inputs at chosen
  times, advance time (ticks and deadlines fire in order, as a worker fires them),
  collect the outputs, and get a :class:`ProtocolViolation` when the task breaks the
  protocol (an output after ``None``, an exception, a deadline in the past).
* :class:`SimNetwork` is a seeded lossy network (latency, jitter, loss, duplication,
  reordering, bandwidth, MTU, partitions) behind simulated UDP and TCP drivers that speak
  the real ``sansio_aio.net`` vocabulary.
* :class:`SimRuntime` runs the real worker cores, bus and controller rules in one thread
  on the fake clock and the simulated network, with the API of :class:`sansio_aio.Runtime`.
* :class:`Trace` records every input, output and packet fate; the same seed gives the
  same trace, byte for byte.
* :func:`run_seed` and :func:`sweep` run a scenario (``async def scenario(sim: Sim)``)
  under one seed or many (in worker processes too), with faults drawn from the seed
  (:class:`Faults`: holds, clogs, FoundationDB's swizzle-clogging, partitions, worker
  crashes) and :func:`buggify` fault points in the tasks; a failure comes with its seed,
  a replay command, a configuration hash, VOPR-style status lines and the trace's
  tail. ``python -m sansio_aio.testing.sweep MODULE:scenario`` is the command line.

The pytest plugin (registered as ``sansio_aio``, loaded automatically) adds fixtures
for all of this and a ``runtime`` fixture for the real runtime. Hypothesis strategies
live in ``sansio_aio.testing.strategies`` (imported on demand: hypothesis is optional).
See ``docs/testing.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._buggify import Buggify, buggify
    from ._clock import FakeClock, Timer
    from ._errors import HarnessError, ProtocolViolation, SimulationStalled, TaskCrashed
    from ._harness import TaskHarness
    from ._leaks import ResourceSnapshot, await_no_leaks, find_leaks, wait_for_no_leaks
    from ._netns import (
        NetnsError,
        arun_in_netns,
        in_netns,
        link_delete,
        link_names,
        link_up,
        netns_unavailable_reason,
        run_in_netns,
        set_sysctl,
        set_txqueuelen,
        unshare_net,
    )
    from ._plugin import PROCESS_MODE, SIM_BACKEND, loop_factories
    from ._privnet import (
        LanMember,
        LoopThread,
        PrivateLan,
        PrivateNetwork,
        privnet_unavailable_reason,
    )
    from ._sim.faults import FaultEvent, FaultPlan, Faults
    from ._sim.net import Fate, Hold, LinkConditions, NetStats, Partition, SimNetwork
    from ._sim.runtime import SimRuntime
    from ._sweep import Scenario, SeedResult, Sim, SweepReport, load_scenario, run_seed, sweep
    from ._trace import Trace, describe

# Names are imported on first use (PEP 562): the pytest plugin lives in this package and
# is loaded by every pytest run, so importing the package must stay cheap and must not
# fail because an optional part cannot be imported.
_EXPORTS = {
    "FakeClock": "_clock",
    "Timer": "_clock",
    "HarnessError": "_errors",
    "ProtocolViolation": "_errors",
    "SimulationStalled": "_errors",
    "TaskCrashed": "_errors",
    "TaskHarness": "_harness",
    "Buggify": "_buggify",
    "buggify": "_buggify",
    "FaultEvent": "_sim.faults",
    "FaultPlan": "_sim.faults",
    "Faults": "_sim.faults",
    "Fate": "_sim.net",
    "Hold": "_sim.net",
    "LinkConditions": "_sim.net",
    "NetStats": "_sim.net",
    "Partition": "_sim.net",
    "SimNetwork": "_sim.net",
    "SimRuntime": "_sim.runtime",
    "Scenario": "_sweep",
    "SeedResult": "_sweep",
    "Sim": "_sweep",
    "SweepReport": "_sweep",
    "load_scenario": "_sweep",
    "run_seed": "_sweep",
    "sweep": "_sweep",
    "Trace": "_trace",
    "describe": "_trace",
    "ResourceSnapshot": "_leaks",
    "await_no_leaks": "_leaks",
    "find_leaks": "_leaks",
    "wait_for_no_leaks": "_leaks",
    "NetnsError": "_netns",
    "arun_in_netns": "_netns",
    "in_netns": "_netns",
    "link_delete": "_netns",
    "link_names": "_netns",
    "link_up": "_netns",
    "netns_unavailable_reason": "_netns",
    "run_in_netns": "_netns",
    "set_sysctl": "_netns",
    "set_txqueuelen": "_netns",
    "unshare_net": "_netns",
    "LanMember": "_privnet",
    "LoopThread": "_privnet",
    "PrivateLan": "_privnet",
    "PrivateNetwork": "_privnet",
    "privnet_unavailable_reason": "_privnet",
    "PROCESS_MODE": "_plugin",
    "SIM_BACKEND": "_plugin",
    "loop_factories": "_plugin",
}

__all__ = [
    "PROCESS_MODE",
    "SIM_BACKEND",
    "Buggify",
    "FakeClock",
    "Fate",
    "FaultEvent",
    "FaultPlan",
    "Faults",
    "HarnessError",
    "Hold",
    "LanMember",
    "LinkConditions",
    "LoopThread",
    "NetStats",
    "NetnsError",
    "Partition",
    "PrivateLan",
    "PrivateNetwork",
    "ProtocolViolation",
    "ResourceSnapshot",
    "Scenario",
    "SeedResult",
    "Sim",
    "SimNetwork",
    "SimRuntime",
    "SimulationStalled",
    "SweepReport",
    "TaskCrashed",
    "TaskHarness",
    "Timer",
    "Trace",
    "arun_in_netns",
    "await_no_leaks",
    "buggify",
    "describe",
    "find_leaks",
    "in_netns",
    "link_delete",
    "link_names",
    "link_up",
    "load_scenario",
    "loop_factories",
    "netns_unavailable_reason",
    "privnet_unavailable_reason",
    "run_in_netns",
    "run_seed",
    "set_sysctl",
    "set_txqueuelen",
    "sweep",
    "unshare_net",
    "wait_for_no_leaks",
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
