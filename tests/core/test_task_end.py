"""A task's end: by itself or by request; its slot, stale references and resources.

Every test runs on every backend; those that make sense across processes also run
with worker processes (the ``variant`` fixture).
"""

from __future__ import annotations

import asyncio

import pytest

from sansio_aio import AppEvent, Runtime, TaskEnded, TaskFailedError, TaskOutput, UnknownTarget
from tests.helpers import T, Variant
from tests.tasks import KINDS


async def test_finite_task_ends_by_itself(variant: Variant) -> None:
    async with Runtime(KINDS, **variant) as rt:
        ref = await rt.spawn("finite", 3)
        events: list[AppEvent] = []
        while len(events) < 4:
            events.append(await asyncio.wait_for(rt.next_event(), T))
        assert [e.msg for e in events[:3] if isinstance(e, TaskOutput)] == [0, 1, 2]
        assert events[3] == TaskEnded(ref)


async def test_stale_ref_is_refused_after_slot_reuse(variant: Variant) -> None:
    async with Runtime(KINDS, **variant) as rt:
        refs = [await rt.spawn("echo") for _ in range(3)]
        assert [r.index for r in refs] == [0, 1, 2]
        with pytest.raises(TaskFailedError):
            await rt.request(refs[1], "end")
        new = await rt.spawn("echo")
        assert new.index == 1 and new != refs[1]
        with pytest.raises(UnknownTarget):
            rt.send_nowait(refs[1], "stale")


async def test_resources_are_released_when_a_task_ends(variant: Variant) -> None:
    async with Runtime(KINDS, workers=2, **variant) as rt:
        sub = await rt.spawn("sub", "gone", worker=1)
        await rt.stats(fresh=True)
        assert rt._hub.workers("gone") == (1,)
        rt.send_nowait(sub, "quit")  # ends without unsubscribing
        event = await asyncio.wait_for(rt.next_event(), T)
        assert event == TaskEnded(sub)
        assert rt._hub.workers("gone") == ()
