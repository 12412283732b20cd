"""Seeds and sweeps: one seed is one run, determinism mode, stopping at the first failure,
worker processes, reports (the command line is in ``test_sweep_cli.py``)."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

from sansio_aio import ExtOut, Task
from sansio_aio.testing import (
    HarnessError,
    SeedResult,
    Sim,
    SweepReport,
    load_scenario,
    run_seed,
    sweep,
)
from tests.testing import sim_example
from tests.testing.sim_example import Counter, counting, passing

COUNTING = "tests.testing.sim_example:counting"


def first_failing(seeds: range) -> int:
    return next(s for s in seeds if not run_seed(counting, s).ok)


def test_a_seed_reproduces_a_whole_run() -> None:
    a, b, c = run_seed(passing, 5), run_seed(passing, 5), run_seed(passing, 6)
    assert a.ok and b.ok and c.ok
    assert a.digest == b.digest and a.sim_time == b.sim_time and a.status == b.status
    assert a.digest != c.digest
    assert a.config_hash == c.config_hash  # same configuration, another seed
    assert len(a.config_hash) == 8 and a.trace_lines > 0 and a.real_time > 0
    assert a.scenario == "tests.testing.sim_example:passing"
    assert a.replay == (
        "python -m sansio_aio.testing.sweep tests.testing.sim_example:passing "
        f"--seed 5 --config {a.config_hash}"
    )
    assert a.ratio > 1 and str(a) == "ok seed 5"


class Stamper(Task):
    """Stamps each message with the wall clock: the bug determinism mode is for."""

    def on_event(self, now: float, event: Any) -> None:
        self.emit(ExtOut((now, time.time())))


async def clock_reader(sim: Sim) -> None:
    async with sim.runtime({"stamper": Stamper}) as rt:
        ref = await rt.spawn("stamper")
        await rt.send(ref, "stamp")


async def unseeded(sim: Sim) -> None:
    # the global RNG, not sim.rng: a new float every run (equal twice: practically never)
    async with sim.runtime({"counter": Counter}, workers=random.randint(1, 8)):
        sim.note("unseeded draw", random.random())


@pytest.mark.parametrize("scenario", [clock_reader, unseeded, sim_example.nondeterministic])
def test_determinism_mode_catches_a_nondeterministic_scenario(scenario: Any) -> None:
    assert run_seed(scenario, 1).ok  # it passes, but cannot be replayed
    result = run_seed(scenario, 1, check_determinism=True)
    assert not result.ok and result.error is not None
    assert result.error.startswith("Nondeterminism")
    assert result.nondeterminism is not None and "\n  - " in result.nondeterminism
    assert "nondeterminism: the same seed gave two different traces" in result.report()


def test_determinism_mode_passes_a_deterministic_scenario_and_keeps_its_failure() -> None:
    assert run_seed(passing, 3, check_determinism=True).ok
    seed = first_failing(range(50))
    result = run_seed(counting, seed, check_determinism=True)
    assert not result.ok and result.nondeterminism is None
    assert result.error is not None and result.error.startswith("AssertionError: total")


def test_a_failure_is_a_result_with_a_report(tmp_path: Path) -> None:
    seed = first_failing(range(50))
    result = run_seed(counting, seed, trace_dir=tmp_path, tail=5)
    assert not result.ok and "AssertionError" in (result.traceback or "")
    assert 'File "' in (result.traceback or "") and "_sweep.py" not in (result.traceback or "")
    assert len(result.trace_tail) == 5 and result.trace_path is not None
    written = Path(result.trace_path).read_text()
    assert written.startswith(f"# sansio_aio trace seed={seed}") and "buggify fired" in written
    report = result.report()
    lines = report.splitlines()
    assert lines[0] == f"FAILED seed {seed}: {result.error}"
    assert lines[-1] == f"replay: {result.replay}"
    for part in ("config    ", "status at the end of the run:", "rt0 w0  up", "trace tail"):
        assert part in report
    assert "buggify 1/1 points enabled; fired counter.lose x" in report


def test_sweep_stops_at_the_first_failing_seed() -> None:
    seen: list[int] = []

    def progress(result: SeedResult, report: SweepReport) -> None:
        seen.append(result.seed)
        assert report.seeds_run == len(seen)

    seed = first_failing(range(100, 200))
    report = sweep(counting, range(100, 200), progress=progress)
    assert not report.ok and report.failure is not None and report.failure.seed == seed
    assert seen == list(range(100, seed + 1)) and report.stopped_early
    assert [r.seed for r in report.results] == seen
    assert all(r.status == () for r in report.results if r.ok)  # slim, but not the failure
    assert report.failure.status and report.failure.trace_tail
    assert f"FAILED (first: seed {seed})" in report.summary()
    everything = sweep(counting, range(100, 200), stop_on_failure=False)
    assert len(everything.results) == 100 and not everything.stopped_early
    assert everything.failure is not None and everything.failure.seed == seed
    assert len(everything.failures) > 1 and everything.sim_time > 0 and everything.ratio > 1


def test_sweep_in_two_worker_processes_agrees_with_one() -> None:
    one = sweep(COUNTING, range(40), stop_on_failure=False)
    two = sweep(COUNTING, range(40), jobs=2, stop_on_failure=False)
    assert two.jobs == 2 and [r.seed for r in two.results] == list(range(40))
    assert [r.digest for r in two.results] == [r.digest for r in one.results]
    assert two.failure is not None and one.failure is not None
    assert two.failure.seed == one.failure.seed and two.failure.replay == one.failure.replay
    stopped = sweep(counting, range(1000), jobs=2)  # a function, re-imported by its name
    assert stopped.failure is not None and stopped.failure.seed == one.failure.seed
    assert stopped.stopped_early and stopped.seeds_run < 1000
    assert stopped.seeds_per_second > 0


DIGESTS: dict[int, str] = {}


def test_run_seed_in_a_plain_function() -> None:
    DIGESTS[5] = run_seed(passing, 5).digest


async def test_run_seed_from_a_coroutine() -> None:
    # the caller's loop is busy: the scenario runs on a loop of its own, in a thread
    result = run_seed(passing, 5)
    assert result.ok and result.digest == DIGESTS.get(5, result.digest)
    failed = run_seed(counting, first_failing(range(50)))
    assert not failed.ok and "AssertionError" in (failed.error or "")


def test_configuration_hash_follows_the_runtimes() -> None:
    async def one_worker(sim: Sim) -> None:
        sim.runtime({"counter": Counter}, workers=1)

    async def two_workers(sim: Sim) -> None:
        sim.runtime({"counter": Counter}, workers=2)

    a, b = run_seed(one_worker, 1), run_seed(two_workers, 1)
    assert a.config_hash != b.config_hash
    assert a.scenario == "" and "no importable name" in a.replay  # a local function
    with pytest.raises(HarnessError, match="module-level function"):
        sweep(one_worker, range(2), jobs=2)
    assert run_seed(one_worker, 2).config_hash == a.config_hash
    assert run_seed(one_worker, 2, buggify=False).config_hash != a.config_hash


def test_a_limited_trace_keeps_the_whole_digest() -> None:
    full = run_seed(passing, 9)
    limited = run_seed(passing, 9, trace_limit=10)
    assert limited.digest == full.digest and limited.trace_lines == full.trace_lines


def test_sim_basics() -> None:
    sim = Sim(4)
    assert sim.rng.random() == Sim(4).rng.random() != Sim(5).rng.random()
    assert sim.net.seed == 4 and sim.clock is sim.net.clock and sim.now == 0.0
    with pytest.raises(HarnessError, match="come from the Sim"):
        sim.runtime({"counter": Counter}, seed=3)
    rt = sim.runtime({"counter": Counter}, workers=2)
    assert rt.net is sim.net and rt.buggify is sim.buggify and sim.runtimes == [rt]
    sim.note("milestone", 1)
    assert sim.trace.lines()[-1] == "0.000000000 scenario milestone 1"
    assert sim.status_lines()[-3:] == [
        "net     no traffic",
        "faults  none",
        "buggify no point reached",
    ]
    assert "Sim seed=4" in repr(sim)
    sim.close()


def test_load_scenario() -> None:
    assert load_scenario(COUNTING) is counting
    assert load_scenario("tests/testing/sim_example.py:passing").__name__ == "passing"
    assert callable(load_scenario("tests.testing.sim_example:Counter.on_event"))
    for bad in ("no_colon", ":x", "tests.testing.sim_example:"):
        with pytest.raises(HarnessError):
            load_scenario(bad)
    with pytest.raises(HarnessError, match="not callable"):
        load_scenario("tests.testing.sim_example:__doc__")
    with pytest.raises(HarnessError):
        sweep(passing, range(1), jobs=0)
