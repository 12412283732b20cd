"""Fault points: inert outside a simulation, seeded inside, recorded, never leaking."""

from __future__ import annotations

import subprocess
import sys
import threading
import timeit
from typing import Any

from sansio_aio import Ext, ExtOut, Task, TaskOutput
from sansio_aio.testing import Buggify, Sim, SimRuntime, buggify, run_seed


class Flaky(Task):
    """Reports, for every message, which of its fault points fired."""

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            a, b = buggify("a", 0.5), buggify("b", 0.5)
            c = buggify(0.5)  # named after this line
            d = buggify()  # and this one (probability 0.25)
            self.emit(ExtOut((a, b, c, d)))


async def firings(seed: int, *, enabled: bool | Buggify = True, n: int = 40) -> list[Any]:
    async with SimRuntime({"flaky": Flaky}, workers=2, seed=seed, buggify=enabled) as rt:
        ref = await rt.spawn("flaky")
        for i in range(n):
            await rt.send(ref, i)
        return [e.msg for e in rt.poll_events() if isinstance(e, TaskOutput)]


def test_inert_outside_a_simulation_and_cheap() -> None:
    assert buggify() is False
    assert buggify("x", 1.0) is False and buggify(1.0) is False
    assert Buggify.current() is None
    per_call = min(timeit.repeat(lambda: buggify("x", 1.0), number=20_000, repeat=3)) / 20_000
    assert per_call < 5e-6  # a context variable read and a return


def test_importable_without_the_simulator() -> None:
    code = (
        "import sys\n"
        "from sansio_aio.testing import buggify\n"
        "assert buggify('x', 1.0) is False\n"
        "print(sorted(m for m in sys.modules if m.startswith('sansio_aio.testing._sim')"
        " or m == 'asyncio'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def test_seeded_inside_a_simulated_run() -> None:
    runs = {seed: await firings(seed) for seed in range(12)}
    assert runs[3] == await firings(3)  # the same seed fires the same points, in order
    assert len({repr(r) for r in runs.values()}) > 1  # seeds differ
    # each point is enabled in some runs only (FoundationDB: a quarter of them)
    per_point = [{any(msg[i] for msg in r) for r in runs.values()} for i in range(4)]
    assert all(seen == {True, False} for seen in per_point), per_point
    assert all(not any(m) for m in await firings(3, enabled=False))  # off by default


async def test_points_are_independent_and_named_by_call_site() -> None:
    b = Buggify(5, activation=1.0)
    rt = SimRuntime({"flaky": Flaky}, seed=5, buggify=b)
    async with rt:
        ref = await rt.spawn("flaky")
        for i in range(20):
            await rt.send(ref, i)
    points = b.points()
    assert set(points) >= {"a", "b"}
    unnamed = [name for name in points if name not in ("a", "b")]
    assert len(unnamed) == 2 and all(n.startswith(f"{__name__}:") for n in unnamed)
    assert all(enabled and reached == 20 for enabled, reached, _ in points.values())
    # a point's firings depend only on the seed and on how often it was reached
    alone = Buggify(5, activation=1.0)
    token = alone.activate()
    try:
        solo = [buggify("b", 0.5) for _ in range(20)]
    finally:
        Buggify.deactivate(token)
    assert sum(solo) == points["b"][2]
    assert "fired" in b.summary() and "4/4 points enabled" in b.summary()


async def test_firings_land_in_the_trace_and_nothing_leaks() -> None:
    b = Buggify(1, activation=1.0)
    async with SimRuntime({"flaky": Flaky}, seed=1, buggify=b) as rt:
        ref = await rt.spawn("flaky")
        for i in range(10):
            await rt.send(ref, i)
        assert Buggify.current() is None  # only while the simulation runs task code
        seen: list[bool] = []
        thread = threading.Thread(target=lambda: seen.append(buggify("a", 1.0)))
        thread.start()
        thread.join()
        assert seen == [False]
    lines = rt.trace.lines()
    assert any(" buggify enabled a" in line for line in lines)
    fired = [line for line in lines if " buggify fired " in line]
    assert len(fired) == sum(f for _, _, f in b.points().values()) > 0


async def scenario_with_points(sim: Sim) -> None:
    async with sim.runtime({"flaky": Flaky}) as rt:
        ref = await rt.spawn("flaky")
        for i in range(30):
            await rt.send(ref, i)
        sim.note("direct", buggify("scenario.level", 0.5))  # current for the whole run


def test_run_seed_enables_points_per_seed() -> None:
    results = [run_seed(scenario_with_points, seed) for seed in range(12)]
    assert all(r.ok for r in results)
    a = next(r for r in results if "none fired" not in r.status[-1])  # a seed with firings
    assert run_seed(scenario_with_points, a.seed).digest == a.digest
    assert a.status[-1].startswith("buggify") and " x" in a.status[-1]
    off = run_seed(scenario_with_points, a.seed, buggify=False)
    assert off.ok and off.digest != a.digest and "--no-buggify" in off.replay
    assert buggify("scenario.level", 1.0) is False  # nothing left behind
