"""Scenarios for the command line: ``python -m sansio_aio.testing.sweep
tests.testing.sim_example:transfer_scenario``.

The transfer scenarios are docs/testing.md's ("Simulation testing"), imported from the
page itself so that the captured output there stays true. The small ones below are for
the tests of the command line (``test_sweep_cli.py``): they run in a few milliseconds.
"""

from __future__ import annotations

import random
from typing import Any

from sansio_aio import Ext, ExtOut, Task, TaskOutput
from sansio_aio.testing import Sim, buggify
from tests.testing.tutorial import tutorial

transfer_scenario = tutorial.transfer_scenario
impatient_transfer = tutorial.impatient_transfer


class Counter(Task):
    """Counts ``("add", n)`` messages; a fault point sometimes loses one (the bug)."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.total = 0

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is not Ext or buggify("counter.lose", 0.5):
            return
        self.total += event.msg[1]
        self.emit(ExtOut(("total", self.total)))


async def counting(sim: Sim) -> None:
    """Fails on the seeds whose fault point ``counter.lose`` is enabled and fires."""
    async with sim.runtime({"counter": Counter}) as rt:
        ref = await rt.spawn("counter")
        adds = [sim.rng.randrange(1, 10) for _ in range(5)]
        for n in adds:
            await rt.send(ref, ("add", n))
        rt.advance(1.0)
        totals = [e.msg[1] for e in rt.poll_events() if isinstance(e, TaskOutput)]
        assert totals and totals[-1] == sum(adds), f"total {totals[-1:]} != {sum(adds)}"


async def passing(sim: Sim) -> None:
    """Always passes (a few simulated seconds of ticks)."""
    async with sim.runtime({"counter": Counter}, workers=2) as rt:
        await rt.spawn("counter")
        rt.advance(sim.rng.uniform(1.0, 5.0))


async def nondeterministic(sim: Sim) -> None:
    """Reads an unseeded generator: passes, but never twice the same."""
    sim.note("coin", random.random())  # unseeded: the point of the scenario
