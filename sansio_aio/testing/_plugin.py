"""The pytest plugin of sansio_aio (registered through the ``pytest11`` entry point).

Fixtures
--------
``sim_seed``
    The seed of the test's simulation: ``--sansio-seed=N`` if given (``random`` picks
    one per test, ``time`` takes one from the clock for the whole session, as madsim
    does), else a stable number derived
    from the test's id. A failing test that used it prints the seed, the command that
    replays it and a hash of the configuration of its simulated runtimes.
``sim``
    A :class:`~sansio_aio.testing.Sim` seeded with ``sim_seed``: the test is a scenario
    (``await my_scenario(sim)``); closed at teardown. A failing test also prints its
    VOPR-style status lines (one per worker).
``fake_clock``
    A manual :class:`~sansio_aio.testing.FakeClock` at time 0.
``sim_net``
    A :class:`~sansio_aio.testing.SimNetwork` seeded with ``sim_seed`` (autojump clock).
``task_harness``
    A factory: ``task_harness(TaskClass, cfg, **kwargs)`` returns a
    :class:`~sansio_aio.testing.TaskHarness` on a new fake clock.
``sim_runtime``
    A factory: ``sim_runtime(kinds, **kwargs)`` returns a started
    :class:`~sansio_aio.testing.SimRuntime` on ``sim_net``; stopped at teardown.
``runtime``
    A started runtime, shut down at teardown, which then asserts that no thread and no
    file descriptor leaked. Configure it with the marker
    ``@pytest.mark.sansio_runtime(kinds={...}, workers=2, drivers=[...], ...)`` (any
    :class:`sansio_aio.Runtime` keyword) and parametrise it indirectly over backends:
    ``@pytest.mark.parametrize("runtime", ["uvloop", "epoll", "poll", "sim"],
    indirect=True)``; ``"sim"`` gives a :class:`~sansio_aio.testing.SimRuntime` built
    from the same marker (its drivers: ``sim_drivers=`` or the simulated network's).
    A parameter may also be a dict of keywords. Unavailable backends skip with the reason.
``runtime_factory``
    ``await runtime_factory(kinds, **kwargs)`` starts a real :class:`sansio_aio.Runtime`
    (several per test if needed); all are shut down and leak-checked at teardown.

Options: ``--sansio-seed``, ``--sansio-trace-dir`` (write the trace of every failing
simulated test there). Async fixtures need pytest-asyncio; without it they fail with a
message saying so, and the synchronous fixtures still work.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shlex
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .._api import RuntimeAPI
    from .._runtime import Runtime
    from ._clock import FakeClock
    from ._harness import TaskHarness
    from ._leaks import ResourceSnapshot
    from ._sim.net import SimNetwork
    from ._sim.runtime import SimRuntime
    from ._sweep import Sim
    from ._trace import Trace

try:
    import pytest_asyncio

    _async_fixture: Callable[..., Any] = pytest_asyncio.fixture
    _HAVE_ASYNCIO_PLUGIN = True
except ImportError:  # pragma: no cover - exercised only without pytest-asyncio
    _async_fixture = pytest.fixture
    _HAVE_ASYNCIO_PLUGIN = False

__all__ = ["PROCESS_MODE", "SIM_BACKEND", "loop_factories"]

#: The backend name that makes the ``runtime`` fixture build a SimRuntime.
SIM_BACKEND = "sim"
#: The parameter that makes the ``runtime`` fixture run its workers as processes.
PROCESS_MODE = "process"

_SEED_KEY = pytest.StashKey[int]()
_TRACES_KEY = pytest.StashKey[list["Trace"]]()
_SIMS_KEY = pytest.StashKey[list["Sim | SimRuntime"]]()
_TIME_SEED_KEY = pytest.StashKey[int]()


# ---------------------------------------------------------------------- options


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--sansio-seed`` and ``--sansio-trace-dir``."""
    group = parser.getgroup("sansio_aio", "sansio_aio test harness")
    group.addoption(
        "--sansio-seed",
        default=None,
        help="seed of simulated tests (an int, 'random' or 'time'); default: derived from "
        "the test id",
    )
    group.addoption(
        "--sansio-trace-dir",
        default=None,
        help="write the trace of every failing simulated test into this directory",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``sansio_runtime`` marker (tests run with ``--strict-markers``)."""
    config.addinivalue_line(
        "markers",
        "sansio_runtime(**kwargs): keyword arguments of the Runtime built by the 'runtime' "
        "fixture (kinds=, workers=, drivers=, host=, tick=, sim_drivers=, check_leaks=)",
    )


def loop_factories() -> dict[str, Callable[[], Any]]:
    """Loop factories for pytest-asyncio's ``pytest_asyncio_loop_factories`` hook.

    Return it from the hook in your ``conftest.py`` to run every async test on the
    stdlib loop and on uvloop (when installed)::

        def pytest_asyncio_loop_factories(config, item):
            return sansio_aio.testing.loop_factories()
    """
    import asyncio

    out: dict[str, Callable[[], Any]] = {"asyncio": asyncio.new_event_loop}
    try:
        import uvloop
    except ImportError:
        return out
    out["uvloop"] = uvloop.new_event_loop
    return out


# ---------------------------------------------------------------------- seeds and reports


def _seed_for(config: pytest.Config, nodeid: str) -> int:
    opt = config.getoption("--sansio-seed")
    if opt is None:
        return zlib.crc32(nodeid.encode()) & 0x7FFFFFFF
    if str(opt).lower() == "random":
        return random.SystemRandom().randrange(1 << 31)
    if str(opt).lower() == "time":  # one seed for the whole session, as madsim does
        seed = config.stash.get(_TIME_SEED_KEY, None)
        if seed is None:
            seed = config.stash[_TIME_SEED_KEY] = time.time_ns() // 1000 % (1 << 31)
        return seed
    try:
        return int(opt)
    except ValueError:
        raise pytest.UsageError(
            f"--sansio-seed must be an int, 'random' or 'time', got {opt!r}"
        ) from None


def _remember_sim(node: pytest.Item | Any, sim: Sim | SimRuntime) -> None:
    sims = node.stash.get(_SIMS_KEY, None)
    if sims is None:
        sims = []
        node.stash[_SIMS_KEY] = sims
    sims.append(sim)
    _remember_trace(node, sim.trace)


def _config_hash(nodeid: str, sims: list[Sim | SimRuntime]) -> str:
    """8 hex digits over the test and the construction of its simulations."""
    configs = [sim.config for sim in sims]
    text = json.dumps({"test": nodeid, "sims": configs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _remember_trace(node: pytest.Item | Any, trace: Trace) -> None:
    traces = node.stash.get(_TRACES_KEY, None)
    if traces is None:
        traces = []
        node.stash[_TRACES_KEY] = traces
    if trace not in traces:
        traces.append(trace)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failing test that used a seed gets the seed, a replay command, its traces."""
    report = yield
    if report.failed and _SEED_KEY in item.stash:
        seed = item.stash[_SEED_KEY]
        lines = [
            f"seed: {seed}",
            f"replay: python -m pytest {shlex.quote(item.nodeid)} --sansio-seed={seed}",
        ]
        sims = item.stash.get(_SIMS_KEY, [])
        traces = item.stash.get(_TRACES_KEY, [])
        if sims:
            digests = " ".join(t.digest()[:16] for t in traces)
            lines.append(f"config: {_config_hash(item.nodeid, sims)}  trace digest: {digests}")
            from ._sweep import Sim

            for sim in sims:
                if not isinstance(sim, Sim):
                    continue  # a runtime of its own: the test did not ask for status lines
                try:
                    lines += ["  " + line for line in sim.status_lines()]
                except Exception as exc:  # never hide the test's failure
                    lines.append(f"  (status lines failed: {exc!r})")
        trace_dir = item.config.getoption("--sansio-trace-dir")
        if trace_dir and traces:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in item.nodeid)
            for i, trace in enumerate(traces):
                path = Path(trace_dir) / f"{safe}.{report.when}.{i}.trace"
                trace.write(path)
                lines.append(f"trace: {path} ({len(trace)} lines)")
        elif traces:
            lines.append("write the trace with --sansio-trace-dir=DIR")
        report.sections.append(("sansio_aio simulation", "\n".join(lines)))
    return report


# ---------------------------------------------------------------------- sync fixtures


@pytest.fixture
def sim_seed(request: pytest.FixtureRequest) -> int:
    """The seed of this test's simulation (printed with a replay command on failure)."""
    seed = _seed_for(request.config, request.node.nodeid)
    request.node.stash[_SEED_KEY] = seed
    return seed


@pytest.fixture
def fake_clock() -> FakeClock:
    """A manual fake clock at time 0."""
    from ._clock import FakeClock

    return FakeClock(0.0)


@pytest.fixture
def sim_net(sim_seed: int, request: pytest.FixtureRequest) -> SimNetwork:
    """A simulated network seeded with ``sim_seed``, on an autojump clock."""
    from ._sim.net import SimNetwork

    net = SimNetwork(seed=sim_seed)
    _remember_trace(request.node, net.trace)
    return net


@pytest.fixture
def sim(sim_seed: int, request: pytest.FixtureRequest) -> Iterator[Sim]:
    """A :class:`Sim` seeded with ``sim_seed`` (a scenario's argument); closed at
    teardown; its status lines are printed when the test fails."""
    from ._sweep import Sim

    made = Sim(sim_seed, name=request.node.nodeid)
    _remember_sim(request.node, made)
    yield made
    made.close()


@pytest.fixture
def task_harness(request: pytest.FixtureRequest) -> Callable[..., TaskHarness]:
    """A factory of :class:`TaskHarness`: ``task_harness(TaskClass, cfg, **kwargs)``."""
    from ._harness import TaskHarness

    def make(task: Any, cfg: Any = None, **kwargs: Any) -> TaskHarness:
        h = TaskHarness(task, cfg, **kwargs)
        _remember_trace(request.node, h.trace)
        return h

    return make


@pytest.fixture
def sim_runtime(
    sim_net: SimNetwork, request: pytest.FixtureRequest
) -> Iterator[Callable[..., SimRuntime]]:
    """A factory of started :class:`SimRuntime` on ``sim_net``; stopped at teardown."""
    from ._sim.runtime import SimRuntime

    made: list[SimRuntime] = []

    def make(kinds: Any, **kwargs: Any) -> SimRuntime:
        kwargs.setdefault("net", sim_net)
        rt = SimRuntime(kinds, **kwargs)
        _remember_sim(request.node, rt)
        made.append(rt)
        return rt.start_now()

    yield make
    for rt in made:
        rt.close()


# ---------------------------------------------------------------------- the real runtime


def _need_asyncio() -> None:
    if not _HAVE_ASYNCIO_PLUGIN:  # pragma: no cover
        pytest.fail(
            "the sansio_aio runtime fixtures need pytest-asyncio: pip install pytest-asyncio"
        )


def _spec(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The keywords of the runtime: the marker's, updated by the indirect parameter."""
    kwargs: dict[str, Any] = {}
    for mark in reversed(list(request.node.iter_markers("sansio_runtime"))):
        if mark.args:
            raise pytest.UsageError("sansio_runtime takes keyword arguments only")
        kwargs.update(mark.kwargs)
    param = getattr(request, "param", None)
    if param == PROCESS_MODE:
        kwargs["mode"] = "process"
    elif isinstance(param, str):
        kwargs["backend"] = param
    elif isinstance(param, dict):
        kwargs.update(param)
    elif param is not None:
        raise pytest.UsageError(
            f"runtime parameters are backend names or dicts of Runtime keywords, got {param!r}"
        )
    return kwargs


def _check_backend(name: Any) -> None:
    if not isinstance(name, str) or name == SIM_BACKEND:
        return
    from .._backends import BACKENDS, available_backends

    if name in BACKENDS and name not in available_backends():
        reason = f"backend {name!r} is not available on this machine"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: skips are failures)")
        pytest.skip(reason)


_warmed = False


def _warm_up_processes() -> None:
    """Start multiprocessing's resource tracker before the leak snapshot.

    The ``spawn`` start method starts it (a helper process, and a pipe to it) the first
    time a child is started, and keeps it for the life of this process: not a leak.
    """
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()


def _warm_up_backends() -> None:
    """Build and close one loop of each backend, once per process.

    libuv opens a process-wide signal pipe the first time a uvloop loop is made and never
    closes it; that is not a leak of the runtime, so it is allocated before the snapshot.
    """
    global _warmed
    if _warmed:
        return
    _warmed = True
    from .._backends import BACKENDS, available_backends

    for name in available_backends():
        try:
            BACKENDS[name]().close()
        except Exception:  # pragma: no cover - a broken backend fails in the test itself
            continue


async def _stop_and_check(
    rts: list[Runtime],
    before: ResourceSnapshot,
    check: bool,
    started: ResourceSnapshot | None,
    thread_prefixes: set[str],
) -> None:
    from ._leaks import await_no_leaks

    errors: list[BaseException] = []
    for rt in rts:
        try:
            await rt.shutdown()
        except Exception as exc:
            errors.append(exc)
    if check:
        prefix = next(iter(thread_prefixes)) if len(thread_prefixes) == 1 else None
        found = await await_no_leaks(before, started=started, runtime_threads=prefix)
        if found:
            pytest.fail(
                "still open after the runtime shut down (the leak check of the `runtime` "
                "fixtures; check_leaks=False turns it off):\n  " + "\n  ".join(found),
                pytrace=False,
            )
    if errors:
        raise errors[0]


def _thread_prefix(kwargs: dict[str, Any]) -> str:
    """The prefix of the worker thread names of a runtime built with ``kwargs``."""
    return f"{kwargs.get('name', 'sansio')}-worker-"


@_async_fixture
async def runtime(request: pytest.FixtureRequest) -> AsyncIterator[RuntimeAPI]:
    """A started runtime (configured as docs/testing.md says); stopped, leak-checked after."""
    _need_asyncio()
    kwargs = _spec(request)
    kinds = kwargs.pop("kinds", {})
    check = kwargs.pop("check_leaks", True)
    sim_drivers = kwargs.pop("sim_drivers", None)
    backend = kwargs.get("backend")
    _check_backend(backend)
    if backend == SIM_BACKEND:
        from ._sim.runtime import SimRuntime

        for key in ("backend", "drivers", "stats_interval", "name"):
            kwargs.pop(key, None)
        seed = request.getfixturevalue("sim_seed")
        sim = SimRuntime(kinds, drivers=sim_drivers, seed=seed, **kwargs)
        _remember_sim(request.node, sim)
        sim.start_now()
        try:
            yield sim
        finally:
            await sim.shutdown()
        return
    from .._runtime import Runtime
    from ._leaks import ResourceSnapshot

    _warm_up_backends()
    if kwargs.get("mode") == "process":
        _warm_up_processes()
    before = ResourceSnapshot.take()
    rt = Runtime(kinds, **kwargs)
    await rt.start()
    started = ResourceSnapshot.take()  # what the runtime itself opened, before the body
    try:
        yield rt
    finally:
        await _stop_and_check([rt], before, check, started, {_thread_prefix(kwargs)})


@_async_fixture
async def runtime_factory(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """``await runtime_factory(kinds, **kwargs)``: start real runtimes; teardown stops and
    leak-checks them all."""
    _need_asyncio()
    from .._runtime import Runtime
    from ._leaks import ResourceSnapshot

    _warm_up_backends()
    _warm_up_processes()
    before = ResourceSnapshot.take()
    made: list[Runtime] = []
    prefixes: set[str] = set()
    check = True

    async def make(kinds: Any, *, check_leaks: bool = True, **kwargs: Any) -> Runtime:
        nonlocal check
        check = check and check_leaks
        _check_backend(kwargs.get("backend"))
        rt = Runtime(kinds, **kwargs)
        await rt.start()
        made.append(rt)
        prefixes.add(_thread_prefix(kwargs))
        return rt

    factory: Callable[..., Awaitable[Runtime]] = make
    try:
        yield factory
    finally:
        await _stop_and_check(made, before, check, None, prefixes)
