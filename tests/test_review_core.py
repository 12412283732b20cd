"""Left over from the review of the core: the simulator case (moves to tests/testing/)."""

from __future__ import annotations

import pytest

from sansio_aio import TaskEnded, UnknownTarget
from tests.helpers import outs
from tests.tasks import Instant


async def test_task_that_ends_in_its_spawn_under_the_simulator() -> None:
    """SimRuntime (the same core, its own controller) agrees: the ref is not live."""
    from sansio_aio.testing import SimRuntime

    async with SimRuntime({"i": Instant}, workers=2) as rt:
        ref = await rt.spawn("i")
        got = await rt.next_events()
        assert outs(got) == ["born"] and isinstance(got[-1], TaskEnded)
        with pytest.raises(UnknownTarget):
            await rt.send(ref, "hello")
