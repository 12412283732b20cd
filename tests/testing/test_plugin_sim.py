"""The plugin's side of seeded simulation: the ``sim`` fixture, ``--sansio-seed=time``,
and a failure report with the configuration hash and the status lines."""

from __future__ import annotations

import re

import pytest

from tests.helpers import PYTESTER_INI

pytest_plugins = ["pytester"]

SCENARIO_TESTS = """
from sansio_aio import Ext, ExtOut, Task

class Echo(Task):
    def on_event(self, now, event):
        if type(event) is Ext:
            self.emit(ExtOut(event.msg))

async def test_scenario_fails(sim):
    async with sim.runtime({"echo": Echo}, workers=2) as rt:
        ref = await rt.spawn("echo")
        await rt.send(ref, sim.seed)
        print("SEED-SEEN", (await rt.next_event()).msg)
        assert False, "deliberate"

def test_seed_is_an_int(sim_seed):
    print("SEED-SEEN", sim_seed)
"""


def test_a_failing_scenario_test_reports_config_and_status(pytester: pytest.Pytester) -> None:
    pytester.makeini(PYTESTER_INI)
    pytester.makepyfile(test_scn=SCENARIO_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "scenario_fails")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    seed = int(re.findall(r"SEED-SEEN (\d+)", out)[0])
    assert f"seed: {seed}" in out and f"--sansio-seed={seed}" in out
    config = re.search(r"config: ([0-9a-f]{8})  trace digest: ([0-9a-f]{16})", out)
    assert config, out
    assert re.search(r"rt0 w0  up +tasks +1", out) and "rt0 w1 " in out and "rt0 ctl " in out
    again = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-k", "scenario_fails", f"--sansio-seed={seed}"
    )
    assert f"config: {config.group(1)}  trace digest: {config.group(2)}" in again.stdout.str()


def test_seed_from_the_clock(pytester: pytest.Pytester) -> None:
    pytester.makeini(PYTESTER_INI)
    pytester.makepyfile(test_scn=SCENARIO_TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-k", "seed_is", "-s", "--sansio-seed=time"
    )
    result.assert_outcomes(passed=1)
    assert re.search(r"SEED-SEEN \d+", result.stdout.str())  # a new one each session
    bad = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--sansio-seed=soon")
    assert "must be an int, 'random' or 'time'" in bad.stdout.str()
