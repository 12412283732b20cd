"""``SimRuntime(max_outputs=...)``: the drain bound of ``Runtime(max_outputs=...)``, on the
simulated workers (they run the real core, so the same rule, now with the same argument)."""

from __future__ import annotations

import pytest

from sansio_aio import ConfigError, TaskFailed, TaskOutput
from sansio_aio.testing import SimRuntime
from tests.core.test_drain_rule import Runaway


async def test_a_runaway_task_fails_at_the_simulated_bound() -> None:
    async with SimRuntime({"runaway": Runaway}, max_outputs=50, strict=False) as rt:
        bad = await rt.spawn("runaway", "ext")
        rt.send_nowait(bad, "go")
        got: list[object] = []
        while not any(isinstance(e, TaskFailed) for e in got):
            got += await rt.next_events()
        assert [e.msg for e in got if isinstance(e, TaskOutput)] == list(range(1, 51))
        (failed,) = [e for e in got if isinstance(e, TaskFailed)]
        assert "more than 50 outputs without None" in failed.traceback
        assert rt.config["max_outputs"] == 50  # part of a sweep's configuration hash


def test_a_bad_bound_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="max_outputs"):
        SimRuntime({"runaway": Runaway}, max_outputs=0)
