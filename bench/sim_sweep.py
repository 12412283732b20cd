"""sim_sweep: the scenarios of ``tests/sim/scenarios.py``, each over 10,000 seeds.

Each scenario (``room_churn``, ``udp_echo``, ``bus_crash``; see their docstrings for the
invariants) is swept with ``sansio_aio.testing.sweep`` over seeds ``0..N-1`` in two
worker processes (``jobs=2``), every seed run to its end (no stop at the first
failure: the count of failing seeds is part of the result; it must be 0). Per
scenario: seeds per second (wall clock, both processes together), simulated seconds
covered, and the time compression (simulated time over the real time spent running
the seeds).

The baseline is the same sweep of :func:`trivial`, a scenario that builds a one-worker
``SimRuntime``, lets one simulated second pass and shuts it down: what the sweep
machinery itself costs per seed (process pool, ``Sim`` with its network, trace and
fault points, runtime start and stop). The metric is the seeds/s of the project's
scenarios together; the ratio (metric / baseline) is the share of the per-seed budget
left to the framework (the rest is the scenarios' own work).

``python -m bench sim_sweep`` (a few minutes); ``run(quick=True)`` sweeps 200 seeds each.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import write_result
from sansio_aio.testing import Sim, SweepReport, sweep

SCENARIOS = ("room_churn", "room_churn_float", "udp_echo", "bus_crash")
SEEDS = 10_000
QUICK_SEEDS = 200
JOBS = 2


async def trivial(sim: Sim) -> None:
    """The baseline: a one-worker simulated runtime, one simulated second, a shutdown."""
    async with sim.runtime({}, workers=1) as rt:
        rt.advance(1.0)


def _entry(report: SweepReport) -> dict[str, Any]:
    failure = report.failure
    return {
        "seeds": report.seeds_run,
        "failed": len(report.failures),
        "first_failure": None if failure is None else failure.error,
        "replay": None if failure is None else failure.replay,
        "real_s": round(report.real_time, 2),
        "seeds_per_s": round(report.seeds_per_second, 1),
        "sim_s": round(report.sim_time, 1),
        "sim_per_seed_s": round(report.sim_time / max(1, report.seeds_run), 2),
        "sim_over_real": round(report.ratio, 1),
    }


def _sweep(name: str, seeds: int, *, module: str = "tests.sim.scenarios") -> dict[str, Any]:
    report = sweep(f"{module}:{name}", range(seeds), jobs=JOBS, stop_on_failure=False)
    entry = _entry(report)
    print(f"  {name}: {report.summary()}", flush=True)
    return entry


def run(quick: bool = False) -> dict[str, Any]:
    """Sweep every scenario (and the baseline); write ``bench/results/sim_sweep.json``."""
    seeds = QUICK_SEEDS if quick else SEEDS
    t0 = time.perf_counter()
    base = _sweep("trivial", seeds, module="bench.sim_sweep")
    results = {name: _sweep(name, seeds) for name in SCENARIOS}
    total_seeds = sum(r["seeds"] for r in results.values())
    total_real = sum(r["real_s"] for r in results.values())
    value = round(total_seeds / total_real, 1) if total_real else 0.0
    return write_result(
        "sim_sweep",
        metric="seeds/s over the project's scenarios (2 jobs)",
        value=value,
        baseline="seeds/s of the trivial scenario (1 worker, 1 simulated s, 2 jobs)",
        baseline_value=base["seeds_per_s"],
        params={"seeds_per_scenario": seeds, "jobs": JOBS, "quick": quick},
        scenarios=results,
        trivial=base,
        failed=sum(r["failed"] for r in results.values()),
        wall_s=round(time.perf_counter() - t0, 1),
    )


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
