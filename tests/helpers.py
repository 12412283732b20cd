"""Helpers shared by the test modules: timeouts, paths, and ways to wait for events.

Test tasks live in ``tests/tasks.py`` and test drivers in ``tests/drivers.py``; fixtures
live in the ``conftest.py`` of the folder that uses them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sansio_aio import Runtime, TaskFailed, TaskOutput
from sansio_aio.lowlevel import WorkerCore

if TYPE_CHECKING:
    from sansio_aio.testing import SimRuntime

Variant = dict[str, Any]
"""How a test's runtime runs its workers: ``{"backend": name}`` or ``{"mode": "process"}``
(the ``variant`` fixture); pass it as ``Runtime(kinds, **variant)``."""

T = 5.0
"""A generous timeout (seconds) for any single wait: a test that hits it has failed."""

LO = "127.0.0.1"

ROOT = Path(__file__).resolve().parent.parent
"""The repository's root (``examples/``, ``docs/``, ``README.md`` live there)."""
EXAMPLES = ROOT / "examples"

PYTESTER_INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
filterwarnings = error
"""
"""The ini of the inner pytest runs of plugin tests (``pytester.makeini``)."""


def outs(events: list[Any]) -> list[Any]:
    """The messages of the task outputs among ``events``, in order."""
    return [e.msg for e in events if isinstance(e, TaskOutput)]


async def collect(
    rt: Runtime | SimRuntime, pred: Callable[[list[Any]], bool], timeout: float = T
) -> list[Any]:
    """Read events until ``pred(events so far)`` holds (or time out).

    Fails at once if the runtime closed (``next_events`` returned nothing) first."""
    got: list[Any] = []

    async def run() -> None:
        while not pred(got):
            batch = await rt.next_events()
            assert batch, f"{type(rt).__name__} closed; events so far: {got}"
            got.extend(batch)

    await asyncio.wait_for(run(), timeout)
    return got


async def outputs(rt: Runtime, n: int, timeout: float = T) -> list[TaskOutput]:
    """Wait for the next ``n`` task outputs (other events are skipped)."""
    got: list[TaskOutput] = []

    async def run() -> None:
        while len(got) < n:
            event = await rt.next_event()
            if isinstance(event, TaskOutput):
                got.append(event)

    await asyncio.wait_for(run(), timeout)
    return got


async def msg(rt: Runtime, timeout: float = T) -> Any:
    """The next event's message, which must be a task output (fails on anything else)."""
    ev = await asyncio.wait_for(rt.next_event(), timeout)
    assert isinstance(ev, TaskOutput), f"expected a task output, got {ev!r}"
    return ev.msg


async def inputs(rt: Runtime, n: int) -> list[Any]:
    """The next ``n`` inputs an ``OutputProbe`` reported; a task failure fails the test."""
    got = []
    for _ in range(n):
        ev = await asyncio.wait_for(rt.next_event(), T)
        assert not isinstance(ev, TaskFailed), ev.traceback
        assert isinstance(ev, TaskOutput), ev
        got.append(ev.msg)
    return got


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = T) -> None:
    """Poll an async condition until it holds (bounded by ``timeout``)."""

    async def loop() -> None:
        while not await predicate():  # noqa: ASYNC110 - polling a remote snapshot
            await asyncio.sleep(0.02)

    await asyncio.wait_for(loop(), timeout)


async def driver_stats(rt: Runtime, worker: int = 0) -> dict[str, int]:
    """The counters of the worker's first driver, read on the worker's own thread."""
    return await rt.run_on_worker(worker, first_driver_stats)


def first_driver_stats(core: WorkerCore) -> dict[str, int]:
    """Run on a worker: its first driver's counters (module level: crosses processes)."""
    return dict(core.drivers[0].stats())
