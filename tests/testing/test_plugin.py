"""The pytest plugin, driven through pytester: seeds and replay, traces, the runtime
fixture (backends, "sim", leak checks) and pytest-asyncio's loop factories."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

import pytest

from sansio_aio import Ext, Task, TaskOutput
from sansio_aio.testing import (
    FakeClock,
    ResourceSnapshot,
    SimNetwork,
    SimRuntime,
    TaskHarness,
    find_leaks,
)
from tests.helpers import PYTESTER_INI

pytest_plugins = ["pytester"]


SIM_TESTS = """
from sansio_aio import Ext, ExtOut, Task, TaskOutput
from sansio_aio.testing import LinkConditions

class Echo(Task):
    def on_event(self, now, event):
        if type(event) is Ext:
            self.emit(ExtOut(event.msg))

async def test_fails_with_a_seed(sim_runtime, sim_seed):
    rt = sim_runtime({"echo": Echo})
    ref = await rt.spawn("echo")
    rt.send_nowait(ref, sim_seed)
    ev = await rt.next_event()
    print("SEED-SEEN", ev.msg)
    assert False, "deliberate"

def test_passes(sim_seed):
    assert isinstance(sim_seed, int)
"""


def _seen(stdout: str) -> int:
    match = re.search(r"SEED-SEEN (\d+)", stdout)
    assert match, stdout
    return int(match.group(1))


def test_failing_test_prints_its_seed_and_replay_command(pytester: pytest.Pytester) -> None:
    pytester.makeini(PYTESTER_INI)
    pytester.makepyfile(test_sim=SIM_TESTS)
    trace_dir = pytester.path / "traces"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--sansio-trace-dir={trace_dir}"
    )
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    seed = _seen(out)
    assert "sansio_aio simulation" in out
    assert f"seed: {seed}" in out
    assert f"--sansio-seed={seed}" in out and "test_sim.py::test_fails_with_a_seed" in out
    written = list(trace_dir.glob("*.trace"))
    assert written and "Ext(msg=" in written[0].read_text()
    # the printed command replays the same seed; another seed is another run
    again = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--sansio-seed={seed}")
    assert _seen(again.stdout.str()) == seed
    other = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--sansio-seed=12345")
    assert _seen(other.stdout.str()) == 12345


LEAKY = """
import socket
import pytest
from sansio_aio import Task

KEEP = []

class Idle(Task):
    pass

@pytest.mark.sansio_runtime(kinds={"idle": Idle})
@pytest.mark.parametrize("runtime", ["epoll", "sim"], indirect=True)
async def test_clean(runtime):
    await runtime.spawn("idle")

@pytest.mark.sansio_runtime(kinds={"idle": Idle}, workers=2)
async def test_leaks_a_socket(runtime):
    assert runtime.workers == 2
    KEEP.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))

@pytest.mark.sansio_runtime(kinds={"idle": Idle}, check_leaks=False)
async def test_opted_out(runtime):
    KEEP.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))

async def test_factory(runtime_factory):
    a = await runtime_factory({"idle": Idle}, backend="poll")
    b = await runtime_factory({"idle": Idle}, workers=3)
    assert a.running and b.workers == 3
"""


def test_runtime_fixture_backends_sim_and_leak_check(pytester: pytest.Pytester) -> None:
    pytester.makeini(PYTESTER_INI)
    pytester.makepyfile(test_leaky=LEAKY)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-W", "ignore::ResourceWarning"
    )
    result.assert_outcomes(passed=5, errors=1)
    out = result.stdout.str()
    assert "ERROR at teardown of test_leaks_a_socket" in out
    assert "still open after the runtime shut down" in out
    assert "opened while the test body ran" in out
    assert re.search(r"fd \d+ -> socket:\[\d+\] still open", out)


LOOPS = """
import asyncio
from sansio_aio import Ext, ExtOut, Task
from sansio_aio.testing import loop_factories
import pytest

def pytest_asyncio_loop_factories(config, item):
    return loop_factories()
"""

LOOP_TEST = """
import asyncio
import pytest
from sansio_aio import Ext, ExtOut, Task, TaskOutput

class Echo(Task):
    def on_event(self, now, event):
        self.emit(ExtOut(event.msg))

SEEN = set()

@pytest.mark.sansio_runtime(kinds={"echo": Echo}, backend="epoll")
async def test_on_each_app_loop(runtime):
    ref = await runtime.spawn("echo")
    runtime.send_nowait(ref, "hi")
    assert await asyncio.wait_for(runtime.next_event(), 5) == TaskOutput(ref, "hi")
    print("LOOP", type(asyncio.get_running_loop()).__module__)
"""


def test_works_with_pytest_asyncio_loop_factories(pytester: pytest.Pytester) -> None:
    pytest.importorskip("uvloop", reason="uvloop is not installed")
    pytester.makeini(PYTESTER_INI)
    pytester.makeconftest(LOOPS)
    pytester.makepyfile(test_loops=LOOP_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", "-v")
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "LOOP asyncio" in out and "LOOP uvloop" in out
    assert "test_on_each_app_loop[uvloop]" in out


def test_sync_fixtures(
    fake_clock: FakeClock,
    sim_net: SimNetwork,
    sim_seed: int,
    task_harness: Callable[..., TaskHarness],
) -> None:
    assert fake_clock.now() == 0.0 and not fake_clock.autojump
    assert sim_net.seed == sim_seed and sim_net.clock.autojump
    h = task_harness(Task, None, clock=fake_clock)
    fake_clock.advance(1.0)
    assert h.now == 1.0


@pytest.mark.sansio_runtime(kinds={"task": Task})
@pytest.mark.parametrize("runtime", ["sim"], indirect=True)
async def test_runtime_sim_param_is_seeded(runtime: Any, sim_seed: int) -> None:
    assert isinstance(runtime, SimRuntime) and runtime.seed == sim_seed
    ref = await runtime.spawn("task")
    runtime.send_nowait(ref, Ext(1))
    assert runtime.poll_events() == []  # Task ignores inputs: nothing, at no cost
    assert not isinstance(ref, TaskOutput)


def test_leak_snapshot_sees_new_fds_and_threads() -> None:
    import socket
    import threading

    before = ResourceSnapshot.take()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, args=(5,), name="leaky")
    thread.start()
    try:
        found = find_leaks(before)
        assert any("socket:" in f for f in found) or sys.platform != "linux"
        assert any("'leaky'" in f for f in found)
    finally:
        stop.set()
        thread.join(5)
        sock.close()
    assert find_leaks(before) == []
