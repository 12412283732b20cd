"""Time: ticks on a fixed grid, task deadlines between ticks, odd deadlines.

Tests whose docstring starts with "Bug:" failed before their fix: it is their
regression note.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from sansio_aio import Ext, ExtOut, Runtime, Task
from sansio_aio.lowlevel import WorkerCore
from tests.helpers import Variant, collect, outputs, outs
from tests.tasks import KINDS, Echo

# ------------------------------------------------------------------------ ticks


async def test_ticks_keep_their_period(variant: Variant) -> None:
    period = 0.02
    async with Runtime(KINDS, **variant, tick=period) as rt:
        ref = await rt.spawn("ticker")
        ticks = [o.msg[1] for o in await outputs(rt, 10) if o.task == ref]
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        assert all(g > 0 for g in gaps)
        # on the grid start + k * period: the mean gap is the period (no drift
        # accumulates even when single ticks run late)
        assert sum(gaps) / len(gaps) == pytest.approx(period, rel=0.5)


def test_tick_grid_skips_missed_ticks_without_drift() -> None:
    from sansio_aio.lowlevel import next_tick

    due, period = 100.0, 1.0
    # on time: the next tick is exactly one period later
    assert next_tick(due, 100.0003, period) == 101.0
    # ten ticks each run 30 ms late: still exact multiples
    for _ in range(10):
        due = next_tick(due, due + 0.03, period)
    assert due == 110.0
    # 3.5 periods late: the missed ticks are skipped, the phase is kept
    assert next_tick(110.0, 113.5, period) == 114.0


# -------------------------------------------------------------------- deadlines


async def test_task_deadline_wakes_it_between_ticks(variant: Variant) -> None:
    async with Runtime(KINDS, **variant, tick=10.0) as rt:
        ref = await rt.spawn("ticker", 0.05)
        rt.send_nowait(ref, "arm")
        armed, woke = await outputs(rt, 2, timeout=2.0)
        assert armed.msg[0] == "armed"
        assert woke.msg[0] == "woke"
        assert woke.msg[1] >= armed.msg[1]  # not early
        assert woke.msg[1] - armed.msg[1] < 1.0  # and long before the 10 s tick


class Never(Task):
    """Asks for a wake-up at +inf ("never"), echoes messages."""

    def next_deadline(self) -> float | None:
        return float("inf")

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            self.emit(ExtOut(event.msg))


async def test_infinite_deadline_does_not_break_the_worker(variant: Variant) -> None:
    async with Runtime({"never": Never}, workers=1, **variant) as rt:
        a = await rt.spawn("never")
        b = await rt.spawn("never")
        rt.send_nowait(a, 1)
        rt.send_nowait(b, 2)
        got = await collect(rt, lambda g: len(g) >= 2)
        assert outs(got) == [1, 2]


# ------------------------------------------------------------ the deadline heap


class Sliding(Task):
    """An idle timer: every message pushes its deadline further (as QUIC's get_timer)."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.when = 1e9

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            self.when += 1.0
            if event.msg == "last":
                self.emit(ExtOut("done"))

    def next_deadline(self) -> float | None:
        return self.when


async def test_sliding_deadlines_do_not_grow_the_heap(variant: Variant) -> None:
    """Bug: each deadline change pushed a heap entry and stale ones were dropped only
    when they reached the top (i.e. when their time came): a task sliding an idle timer
    per message grew the heap by one entry per message (and kept ended tasks alive)."""
    async with Runtime({"s": Sliding}, workers=1, **variant) as rt:
        ref = await rt.spawn("s")
        for _ in range(20):
            for _ in range(500):
                rt.send_nowait(ref, "x")
            await asyncio.sleep(0)
        rt.send_nowait(ref, "last")
        await collect(rt, lambda g: outs(g) == ["done"])
        size = await rt.run_on_worker(0, pending_deadlines)
        assert size < 100


# ------------------------------------------------- a deadline stuck in the past


class PastDeadline(Task):
    """Keeps asking for a wake-up in the past (a timer it never advances), for at most
    ``cfg`` seconds of wall time (so a broken runtime is not stuck forever)."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        import time

        self.until = time.monotonic() + cfg
        self.ticks = 0

    def on_tick(self, now: float) -> None:
        self.ticks += 1

    def next_deadline(self) -> float | None:
        import time

        return 0.0 if not self.closing and time.monotonic() < self.until else None


async def test_a_deadline_stuck_in_the_past_does_not_hang_the_worker(
    variant: Variant,
) -> None:
    """Bug: on_deadline fired due deadlines until none was due; a task whose deadline
    stayed in the past was fired again and again inside that one callback, so its worker
    never returned to its loop (no other task ran, shutdown could not complete)."""
    kinds = {"past": PastDeadline, "echo": Echo}
    async with Runtime(kinds, workers=1, **variant) as rt:
        echo = await rt.spawn("echo")
        await rt.spawn("past", 3.0)
        rt.send_nowait(echo, "still served")
        got = await collect(rt, lambda g: len(g) >= 1, timeout=1.5)
        assert outs(got) == ["still served"]


def pending_deadlines(core: WorkerCore) -> int:
    """Run on a worker: the size of its deadline heap (module level: crosses processes)."""
    return core.pending_deadlines
