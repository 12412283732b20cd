"""Seed sweeps: run a scenario under many seeds, stop at the first failure, replay it.

Theory of operation
-------------------
A *scenario* is ``async def scenario(sim: Sim) -> None``: it builds runtimes with
:meth:`Sim.runtime`, schedules faults with :attr:`Sim.faults`, drives the system and
raises (usually ``AssertionError``) when an invariant fails. Everything random in it
comes from the seed: the network's generator (``Sim.net.rng``: packet fates), the
scenario's own (:attr:`Sim.rng`: which worker, how many clients), the fault schedule's
(``Sim.faults.rng``) and the fault points' (:attr:`Sim.buggify`), each derived from the
seed separately so that one more draw from one of them does not shift the others.

:func:`run_seed` runs one seed: a fresh :class:`Sim`, the scenario on a fresh event loop
(in a helper thread if the caller's thread already runs one) with the run's fault
points current, then a :class:`SeedResult`: pass or fail, the error, the trace digest,
simulated and real time, the VOPR-style status lines (one per worker, taken before the
runtimes are closed), the tail of the trace, a hash of the configuration and the
command that replays it. ``check_determinism=True`` runs the seed twice and fails on the
first differing trace line (madsim's ``MADSIM_TEST_CHECK_DETERMINISM``): a scenario or
task that reads the wall clock, an unseeded generator or a process-dependent order
(``id()``, ``set`` of objects) is caught here rather than as a failure that does not
replay.

The *configuration hash* covers what, besides the seed, decides a run: the scenario's
name, each runtime's construction (``SimRuntime.config``: kinds, workers, tick, restart,
...), fault points on or off, and the Python and sansio_aio versions. A replay prints a
warning when it differs from the hash given with ``--config``: the seed alone would
not reproduce the run.

:func:`sweep` runs seeds one after the other (``jobs=1``) or in worker processes
(``concurrent.futures.ProcessPoolExecutor``, ``spawn``: the scenario is re-imported by
its ``module:function`` name), at most two seeds in flight per job; at the first failure
it submits no more, lets the running ones finish and reports the failure with the
lowest seed index. ``python -m sansio_aio.testing.sweep`` is the command line over it.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import json
import os
import platform
import random
import shlex
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, final

from ._buggify import Buggify
from ._errors import HarnessError
from ._sim.faults import Faults
from ._sim.net import SimNetwork
from ._trace import Trace

if TYPE_CHECKING:
    from ._clock import FakeClock
    from ._sim.runtime import SimRuntime

__all__ = ["Scenario", "SeedResult", "Sim", "SweepReport", "load_scenario", "run_seed", "sweep"]

#: What a sweep runs: ``async def scenario(sim: Sim) -> None``, raising on a failure.
Scenario: TypeAlias = Callable[["Sim"], Awaitable[None]]

_RESERVED = ("net", "clock", "seed")


class Sim:
    """What a scenario gets: one seed and everything derived from it.

    Build every runtime with :meth:`runtime` (and give a ``TaskHarness``
    ``clock=sim.clock, trace=sim.trace``): whatever runs outside the run's trace is seen
    neither by the digest nor by the determinism check.

    Args:
        seed: the seed of the run.
        buggify: enable the fault points (:func:`~sansio_aio.testing.buggify`) of the
            tasks of the runtimes made here.
        activation: the probability that a fault point is enabled in this run.
        trace_limit: keep only the last lines of the trace (the digest still covers
            every line).
        name: the scenario's name (``module:function``), for reports and the hash.
    """

    def __init__(
        self,
        seed: int,
        *,
        buggify: bool = True,
        activation: float = 0.25,
        trace_limit: int | None = None,
        name: str = "",
    ) -> None:
        self.seed = seed
        self.name = name
        #: The scenario's own generator (which worker to kill, how many clients...).
        self.rng = random.Random(f"scenario:{seed}")
        #: The trace of the whole run: every runtime's, the network's, faults, points.
        self.trace = Trace(seed, limit=trace_limit)
        #: The simulated network every runtime made here shares (seeded with ``seed``).
        self.net = SimNetwork(seed=seed, trace=self.trace)
        #: The fault points, current while the scenario runs under :func:`run_seed`.
        self.buggify = Buggify(
            seed, enabled=buggify, activation=activation, trace=self.trace, clock=self.clock.now
        )
        #: Fault helpers drawing from their own generator: clogs, swizzles, crashes.
        self.faults = Faults(self.net)
        #: The runtimes made by :meth:`runtime`, in order.
        self.runtimes: list[SimRuntime] = []

    @property
    def clock(self) -> FakeClock:
        """The simulated clock of the run (the network's)."""
        return self.net.clock

    @property
    def now(self) -> float:
        """The simulated time."""
        return self.net.clock.now()

    def runtime(self, kinds: Any, **kwargs: Any) -> SimRuntime:
        """A new :class:`SimRuntime` on this run's network, clock, trace and fault points
        (not started: ``async with sim.runtime(...) as rt``). Keywords are
        ``SimRuntime``'s (``workers``, ``restart``, ``tick``...), except ``net``,
        ``clock`` and ``seed``, which are the run's."""
        from ._sim.runtime import SimRuntime

        bad = [k for k in _RESERVED if k in kwargs]
        if bad:
            raise HarnessError(f"Sim.runtime: {bad} come from the Sim (its seed and network)")
        kwargs.setdefault("buggify", self.buggify)
        rt = SimRuntime(kinds, net=self.net, **kwargs)
        self.runtimes.append(rt)
        return rt

    def note(self, what: str, detail: Any = None) -> None:
        """Add a ``scenario`` line to the trace (a milestone of the scenario)."""
        self.trace.record(self.now, "scenario", what, detail)

    # ------------------------------------------------------------------ reports

    @property
    def config(self) -> dict[str, Any]:
        """What, besides the seed, decides the run (hashed by :meth:`config_hash`)."""
        return {
            "scenario": self.name,
            "buggify": self.buggify.enabled,
            "activation": self.buggify.activation,
            "runtimes": [rt.config for rt in self.runtimes],
            "python": platform.python_version_tuple()[:2],
            "sansio_aio": _version(),
        }

    def config_hash(self) -> str:
        """8 hex digits of SHA-256 over :meth:`config`."""
        text = json.dumps(self.config, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def status_lines(self) -> list[str]:
        """One line per worker of every runtime (VOPR style), then the network, the
        faults and the fault points."""
        lines: list[str] = []
        for i, rt in enumerate(self.runtimes):
            lines += rt.status_lines(f"rt{i} ")
        stats = {k: v for k, v in self.net.stats.as_dict().items() if v}
        holds = self.net.holds()
        net = " ".join(f"{k} {v}" for k, v in stats.items()) or "no traffic"
        if holds:
            net += f"  holding {sum(len(h.held) for h in holds)} in {len(holds)} hold(s)"
        lines.append(f"net     {net}")
        lines.append(f"faults  {self.faults.summary()}")
        lines.append(f"buggify {self.buggify.summary()}")
        return lines

    def close(self) -> None:
        """Close every runtime made here (at once, without a graceful shutdown)."""
        for rt in self.runtimes:
            rt.close()

    def __repr__(self) -> str:
        return f"<Sim seed={self.seed} t={self.now!r} runtimes={len(self.runtimes)}>"


def _version() -> str:
    from .. import __version__

    return __version__


# ---------------------------------------------------------------------- results


@final
@dataclass(frozen=True, slots=True)
class SeedResult:
    """The outcome of one seed (picklable: it crosses from sweep worker processes)."""

    #: The seed.
    seed: int
    #: True if the scenario returned (and, in determinism mode, both runs agreed).
    ok: bool
    #: ``"ExceptionType: message"`` of the failure (or of the nondeterminism), else None.
    error: str | None
    #: The formatted traceback of the failure, else None.
    traceback: str | None
    #: SHA-256 of the trace (:meth:`Trace.digest`): equal runs, equal digests.
    digest: str
    #: Simulated seconds the run covered.
    sim_time: float
    #: Real seconds it took.
    real_time: float
    #: VOPR-style status lines at the end of the run (:meth:`Sim.status_lines`).
    status: tuple[str, ...] = ()
    #: The last lines of the trace.
    trace_tail: tuple[str, ...] = ()
    #: Lines in the trace.
    trace_lines: int = 0
    #: Where the trace was written (``trace_dir``), else None.
    trace_path: str | None = None
    #: :meth:`Sim.config_hash` of the run.
    config_hash: str = ""
    #: The scenario as ``module:function`` (or a file path), "" if it has no name.
    scenario: str = ""
    #: The first differing trace line when ``check_determinism`` found two runs apart.
    nondeterminism: str | None = None
    #: Whether fault points were enabled (a replay must do the same).
    buggify: bool = True

    @property
    def replay(self) -> str:
        """The one-line command that replays this seed."""
        if not self.scenario:
            return f"run_seed(<the scenario>, {self.seed})  # no importable name"
        cmd = (
            f"python -m sansio_aio.testing.sweep {shlex.quote(self.scenario)} "
            f"--seed {self.seed} --config {self.config_hash}"
        )
        return cmd + ("" if self.buggify else " --no-buggify")

    @property
    def ratio(self) -> float:
        """Simulated time over real time (how much faster than real time the run was)."""
        return self.sim_time / self.real_time if self.real_time > 0 else 0.0

    def headline(self) -> str:
        """One line: the seed, pass or fail, and the error."""
        if self.ok:
            return f"ok seed {self.seed}"
        return f"FAILED seed {self.seed}: {self.error}"

    def report(self, *, traceback: bool = True) -> str:
        """The full report of this seed: what failed, status lines, the trace's tail,
        the traceback and the replay command (the last line)."""
        out = [self.headline()]
        if self.scenario:
            out.append(f"  scenario  {self.scenario}")
        out.append(
            f"  config    {self.config_hash} (python {'.'.join(_pyver())}, "
            f"sansio_aio {_version()}, buggify {'on' if self.buggify else 'off'})"
        )
        out.append(f"  trace     {self.trace_lines} lines, digest {self.digest[:16]}")
        out.append(
            f"  time      {self.sim_time:.3f} s simulated in {self.real_time:.3f} s real "
            f"({self.ratio:.0f}x)"
        )
        if self.nondeterminism:
            out.append("nondeterminism: the same seed gave two different traces, first at")
            out += ["  " + line for line in self.nondeterminism.splitlines()]
        if self.status:
            out.append("status at the end of the run:")
            out += ["  " + line for line in self.status]
        if self.trace_path:
            out.append(f"trace written to {self.trace_path}")
        if self.trace_tail:
            out.append(f"trace tail (last {len(self.trace_tail)} of {self.trace_lines} lines):")
            out += ["  " + line for line in self.trace_tail]
        if traceback and self.traceback:
            out += ["  " + line for line in self.traceback.rstrip().splitlines()]
        out.append(f"replay: {self.replay}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.headline()


def _pyver() -> tuple[str, str]:
    major, minor, _ = platform.python_version_tuple()
    return major, minor


@final
@dataclass(slots=True)
class SweepReport:
    """What a sweep found."""

    #: The scenario's name.
    scenario: str
    #: Every finished seed, in seed order (successful ones without status and tail).
    results: list[SeedResult] = field(default_factory=list)
    #: The failure with the lowest seed index, if any.
    failure: SeedResult | None = None
    #: Wall-clock seconds of the sweep.
    real_time: float = 0.0
    #: Worker processes used (1: in this process).
    jobs: int = 1
    #: True if seeds were left unrun because of a failure.
    stopped_early: bool = False

    @property
    def ok(self) -> bool:
        """True if every seed run passed."""
        return self.failure is None and all(r.ok for r in self.results)

    @property
    def seeds_run(self) -> int:
        """Seeds run."""
        return len(self.results)

    @property
    def failures(self) -> list[SeedResult]:
        """Every failed seed, in seed order."""
        return [r for r in self.results if not r.ok]

    @property
    def sim_time(self) -> float:
        """Simulated seconds over every seed."""
        return sum(r.sim_time for r in self.results)

    @property
    def run_time(self) -> float:
        """Real seconds spent running seeds (summed over worker processes)."""
        return sum(r.real_time for r in self.results)

    @property
    def ratio(self) -> float:
        """Simulated time over real time per run (the time compression)."""
        rt = self.run_time
        return self.sim_time / rt if rt > 0 else 0.0

    @property
    def seeds_per_second(self) -> float:
        """Seeds per wall-clock second."""
        return self.seeds_run / self.real_time if self.real_time > 0 else 0.0

    def summary(self) -> str:
        """One line: seeds, failures, throughput, time compression."""
        n = len(self.failures)
        if self.ok:
            verdict = "all ok"
        else:
            first = f" (first: seed {self.failure.seed})" if self.failure else ""
            verdict = f"{self.seeds_run - n} ok, {n} FAILED{first}"
        return (
            f"{self.seeds_run} seeds run: {verdict} in {self.real_time:.2f} s "
            f"({self.seeds_per_second:.1f} seeds/s, {self.jobs} job(s)); "
            f"{self.sim_time:.1f} s simulated, sim/real {self.ratio:.0f}x"
        )


# ---------------------------------------------------------------------- scenarios by name


def scenario_name(scenario: Scenario | str) -> str:
    """``module:function`` (or ``path.py:function``) of a scenario; "" if it has none."""
    if isinstance(scenario, str):
        return scenario
    module = getattr(scenario, "__module__", None)
    qual = getattr(scenario, "__qualname__", None)
    if not module or not qual or "<" in qual:
        return ""
    if module == "__main__":
        path = getattr(sys.modules.get("__main__"), "__file__", None)
        if not path:
            return ""
        try:
            module = os.path.relpath(path)
        except ValueError:
            module = path
    elif module not in sys.modules or not getattr(sys.modules[module], "__spec__", None):
        return ""  # not importable by name (e.g. executed from a document)
    return f"{module}:{qual}"


def load_scenario(spec: str) -> Scenario:
    """The scenario named ``module:function`` (``module.sub:Class.method`` too) or
    ``path/to/file.py:function``; the current directory is searched first."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise HarnessError(f"a scenario is named MODULE:FUNCTION, got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    if module_name.endswith(".py") or os.sep in module_name:
        path = Path(module_name).resolve()
        name = "_sansio_scenario_" + hashlib.sha1(str(path).encode()).hexdigest()[:10]
        module = sys.modules.get(name)
        if module is None:
            file_spec = importlib.util.spec_from_file_location(name, path)
            if file_spec is None or file_spec.loader is None:
                raise HarnessError(f"cannot load a scenario from {path}")
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[name] = module
            file_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise HarnessError(f"{spec} is not callable")
    fn: Scenario = obj
    return fn


def _resolve(scenario: Scenario | str) -> tuple[Scenario, str]:
    if isinstance(scenario, str):
        return load_scenario(scenario), scenario
    return scenario, scenario_name(scenario)


# ---------------------------------------------------------------------- one seed


def run_seed(
    scenario: Scenario | str,
    seed: int,
    *,
    check_determinism: bool = False,
    buggify: bool = True,
    trace_dir: str | Path | None = None,
    tail: int = 20,
    trace_limit: int | None = None,
) -> SeedResult:
    """Run ``scenario`` with ``seed``; a :class:`SeedResult` (it never raises for a
    failing scenario: the failure is in the result).

    Args:
        scenario: ``async def scenario(sim)`` or its ``module:function`` name.
        check_determinism: run the seed twice; fail if the traces differ.
        buggify: enable fault points (per seed, as :class:`Buggify` says).
        trace_dir: on failure, write the trace there (both traces when two runs
            differ); the path is in the result.
        tail: trace lines kept in the result.
        trace_limit: keep only that many trace lines in memory (the digest still covers
            every line).
    """
    fn, name = _resolve(scenario)
    first, trace = _run_once(fn, name, seed, buggify, tail, trace_limit)
    paths: list[Path] = []
    if check_determinism:
        second, trace2 = _run_once(fn, name, seed, buggify, tail, trace_limit)
        if second.digest != first.digest:
            diff = trace.first_difference(trace2) or "the digests differ (a line was dropped)"
            error = first.error or "Nondeterminism: two runs of the same seed differ"
            first = replace(first, ok=False, error=error, nondeterminism=diff)
            if trace_dir is not None:
                paths.append(_write(trace, trace_dir, name, seed, ".run1"))
                paths.append(_write(trace2, trace_dir, name, seed, ".run2"))
    if not first.ok and trace_dir is not None and not paths:
        paths.append(_write(trace, trace_dir, name, seed, ""))
    if paths:
        first = replace(first, trace_path=", ".join(str(p) for p in paths))
    return first


def _write(trace: Trace, trace_dir: str | Path, name: str, seed: int, suffix: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "scenario"
    return trace.write(Path(trace_dir) / f"{safe}.seed{seed}{suffix}.trace")


def _run_once(
    fn: Scenario, name: str, seed: int, buggify: bool, tail: int, trace_limit: int | None
) -> tuple[SeedResult, Trace]:
    sim = Sim(seed, buggify=buggify, trace_limit=trace_limit, name=name)
    error: BaseException | None = None
    start = time.perf_counter()
    try:
        _drive(fn, sim)
    except (Exception, asyncio.CancelledError) as exc:
        error = exc
    real = time.perf_counter() - start
    try:
        status = tuple(sim.status_lines())
    except Exception as exc:  # a broken runtime must not hide the scenario's failure
        status = (f"(status lines failed: {exc!r})",)
    sim.close()
    trace = sim.trace
    result = SeedResult(
        seed=seed,
        ok=error is None,
        error=None if error is None else _one_line(error),
        traceback=None if error is None else _format(error),
        digest=trace.digest(),
        sim_time=sim.now,
        real_time=real,
        status=status,
        trace_tail=tuple(trace.lines()[-tail:]) if tail > 0 else (),
        trace_lines=len(trace) + trace.dropped,
        config_hash=sim.config_hash(),
        scenario=name,
        buggify=buggify,
    )
    return result, trace


_HERE = os.path.abspath(__file__)
_ASYNCIO = os.path.dirname(os.path.abspath(asyncio.__file__))


def _format(exc: BaseException) -> str:
    """The traceback from the scenario's frame on (the harness's and asyncio's frames
    above it say nothing about the failure), with paths relative to the current
    directory."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if filename != _HERE and not filename.startswith(_ASYNCIO):
            break
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return text.replace(f'File "{os.getcwd()}{os.sep}', 'File "')  # paths relative to here


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    more = " [...]" if "\n" in text else ""
    return f"{type(exc).__name__}: {first}{more}" if first else type(exc).__name__


def _drive(fn: Scenario, sim: Sim) -> None:
    """Run ``fn(sim)`` to completion on a new event loop, with the run's points current."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        busy = False
    else:
        busy = True
    if not busy:
        _drive_here(fn, sim)
        return
    # called from a coroutine: its loop is busy, so the scenario gets a thread of its own
    box: list[BaseException] = []

    def target() -> None:
        try:
            _drive_here(fn, sim)
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=target, name=f"sansio-sim-seed-{sim.seed}")
    thread.start()
    thread.join()
    if box:
        raise box[0]


def _drive_here(fn: Scenario, sim: Sim) -> None:
    token = sim.buggify.activate()
    try:
        asyncio.run(_call(fn, sim))
    finally:
        Buggify.deactivate(token)


async def _call(fn: Scenario, sim: Sim) -> None:
    await fn(sim)


# ---------------------------------------------------------------------- many seeds


def _stripped(result: SeedResult) -> SeedResult:
    """A passing result without the bulky parts (it crosses a process boundary)."""
    return replace(result, status=(), trace_tail=()) if result.ok else result


def _run_job(
    scenario: Scenario | str,
    seed: int,
    check_determinism: bool,
    buggify: bool,
    trace_dir: str | None,
    tail: int,
    trace_limit: int | None,
) -> SeedResult:
    """One seed in a worker process (module level: the pool pickles it by name)."""
    result = run_seed(
        scenario,
        seed,
        check_determinism=check_determinism,
        buggify=buggify,
        trace_dir=trace_dir,
        tail=tail,
        trace_limit=trace_limit,
    )
    return _stripped(result)


Progress = Callable[[SeedResult, SweepReport], None]


def sweep(
    scenario: Scenario | str,
    seeds: Iterable[int],
    *,
    jobs: int = 1,
    stop_on_failure: bool = True,
    check_determinism: bool = False,
    progress: Progress | None = None,
    buggify: bool = True,
    trace_dir: str | Path | None = None,
    tail: int = 20,
    trace_limit: int | None = None,
) -> SweepReport:
    """Run ``scenario`` under each of ``seeds``; a :class:`SweepReport`.

    With ``jobs > 1`` seeds run in that many worker processes (the scenario must be
    importable by name there: a module-level function, or a ``module:function``
    string). ``stop_on_failure`` stops submitting seeds at the first failure (the ones
    already running finish; the report's ``failure`` is the failing seed that comes
    first in ``seeds``). ``progress(result, report)`` is called after every seed, in
    this process. The other arguments are :func:`run_seed`'s.
    """
    if jobs < 1:
        raise HarnessError(f"jobs must be >= 1, got {jobs!r}")
    fn, name = _resolve(scenario)
    if jobs > 1 and not name:
        raise HarnessError(
            "sweep(jobs > 1) re-imports the scenario in worker processes: pass a "
            "module-level function or its 'module:function' name"
        )
    report = SweepReport(scenario=name, jobs=jobs)
    start = time.perf_counter()
    done: dict[int, SeedResult] = {}
    it = enumerate(seeds)
    tdir = None if trace_dir is None else str(trace_dir)
    args = (check_determinism, buggify, tdir, tail, trace_limit)

    def finished(index: int, result: SeedResult) -> None:
        done[index] = result
        report.results.append(result)
        report.real_time = time.perf_counter() - start
        if not result.ok and report.failure is None:
            report.failure = result
        if progress is not None:
            progress(result, report)

    if jobs == 1:
        for index, seed in it:
            finished(index, _stripped(run_seed(fn, seed, **_kw(args))))
            if stop_on_failure and not done[index].ok:
                report.stopped_early = next(it, None) is not None
                break
    else:
        _sweep_processes(name, it, jobs, stop_on_failure, args, finished, report)
    report.results = [done[i] for i in sorted(done)]
    failures = [done[i] for i in sorted(done) if not done[i].ok]
    report.failure = failures[0] if failures else None
    report.real_time = time.perf_counter() - start
    return report


def _harness_failure(seed: int, exc: BaseException) -> SeedResult:
    return SeedResult(
        seed=seed,
        ok=False,
        error=f"the sweep's worker process failed: {exc!r}",
        traceback="".join(traceback.format_exception(exc)),
        digest="",
        sim_time=0.0,
        real_time=0.0,
    )


def _kw(args: tuple[bool, bool, str | None, int, int | None]) -> dict[str, Any]:
    check, bug, tdir, tail, limit = args
    return {
        "check_determinism": check,
        "buggify": bug,
        "trace_dir": tdir,
        "tail": tail,
        "trace_limit": limit,
    }


def _sweep_processes(
    target: str,
    it: Iterator[tuple[int, int]],
    jobs: int,
    stop_on_failure: bool,
    args: tuple[bool, bool, str | None, int, int | None],
    finished: Callable[[int, SeedResult], None],
    report: SweepReport,
) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    running: dict[Future[SeedResult], tuple[int, int]] = {}
    stopping = False
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:

        def submit() -> None:
            while not stopping and len(running) < 2 * jobs:
                nxt = next(it, None)
                if nxt is None:
                    return
                index, seed = nxt
                running[pool.submit(_run_job, target, seed, *args)] = (index, seed)

        submit()
        while running:
            ready, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in sorted(ready, key=running.__getitem__):
                index, seed = running.pop(fut)
                try:
                    result = fut.result()
                except Exception as exc:  # the worker process died (or could not pickle)
                    result = _harness_failure(seed, exc)
                    stopping = True
                finished(index, result)
                if stop_on_failure and not result.ok and not stopping:
                    stopping = True
                    report.stopped_early = next(it, None) is not None
            submit()
