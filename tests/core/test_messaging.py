"""Messaging: application messages and requests, the output stream to the application,
batched wake-ups, the bus (pub/sub, broadcast) and bounded queues.

Tests whose docstring starts with "Bug:" failed before their fix: it is their
regression note.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from sansio_aio import (
    QueueFull,
    RequestTimeout,
    Runtime,
    TaskFailedError,
    TaskOutput,
    TaskRef,
    UnknownKind,
    UnknownTarget,
)
from tests.helpers import T, Variant, collect, outputs, outs, until
from tests.tasks import KINDS, Echo, Host

# ----------------------------------------------------------- messages, requests


async def test_worker_messages_reach_only_that_worker(variant: Variant) -> None:
    async with Runtime(KINDS, workers=2, **variant, host=Host) as rt:
        await outputs(rt, 2)  # the hosts' greetings
        rt.send_nowait(1, "ping")
        (got,) = await outputs(rt, 1)
        assert got.msg == ("worker-msg", 1, "ping")
        assert got.task.worker == 1
        assert rt.poll_events() == []


async def test_requests_reach_a_worker_host(variant: Variant) -> None:
    async with Runtime(KINDS, workers=2, **variant, host=Host) as rt:
        host1 = TaskRef(1, "host", 0, 0)
        assert await rt.request(host1, "hi") == ("host", 1, "hi")


async def test_unknown_targets_fail_clearly_and_workers_live_on(variant: Variant) -> None:
    async with Runtime(KINDS, workers=2, **variant) as rt:
        ref = await rt.spawn("echo")
        with pytest.raises(UnknownTarget, match="no worker 7"):
            rt.send_nowait(TaskRef(7, "echo", 0), "x")
        with pytest.raises(UnknownTarget, match="no live task"):
            rt.send_nowait(TaskRef(ref.worker, "echo", 5), "x")
        with pytest.raises(UnknownTarget, match="host"):
            rt.send_nowait(0, "x")  # no host task configured
        with pytest.raises(UnknownKind, match="registered"):
            await rt.spawn("nope")
        rt.send_nowait(ref, "still alive")
        (got,) = await outputs(rt, 1)
        assert got.msg == "still alive"


async def test_requests_get_their_replies_or_time_out(variant: Variant) -> None:
    async with Runtime(KINDS, workers=2, **variant) as rt:
        a, b = await rt.spawn("echo"), await rt.spawn("echo")
        results = await asyncio.gather(
            *(rt.request(r, ("double", i)) for i, r in enumerate([a, b] * 5))
        )
        assert results == [2 * i for i in range(10)]
        with pytest.raises(RequestTimeout):
            await rt.request(a, "ignore", timeout=0.1)


async def test_request_to_a_task_that_dies_fails_instead_of_hanging(
    variant: Variant,
) -> None:
    async with Runtime(KINDS, **variant) as rt:
        a = await rt.spawn("echo")
        with pytest.raises(TaskFailedError, match="failed") as info:
            await rt.request(a, "raise", timeout=T)
        assert "asked to fail" in info.value.traceback
        b = await rt.spawn("echo")
        with pytest.raises(TaskFailedError, match="without replying"):
            await rt.request(b, "end", timeout=T)
        with pytest.raises(UnknownTarget):
            await rt.request(a, "x")


# ------------------------------------------------------------ the output stream


async def test_outputs_are_fifo_per_task_and_tagged_with_it(variant: Variant) -> None:
    async with Runtime(KINDS, workers=2, **variant) as rt:
        a, b = await rt.spawn("echo"), await rt.spawn("echo")
        rt.send_nowait(a, ("emit", ["e1", "e2", "e3"]))
        rt.send_nowait(b, ("emit", ["f1", "f2"]))
        got = await outputs(rt, 5)
        assert [o.msg for o in got if o.task == a] == ["e1", "e2", "e3"]
        assert [o.msg for o in got if o.task == b] == ["f1", "f2"]
        seen: list[Any] = []
        rt.send_nowait(a, ("emit", [1, 2]))

        async def consume() -> None:
            async for event in rt.events():
                seen.append(event)
                if len(seen) == 2:
                    return

        await asyncio.wait_for(consume(), T)
        assert [e.msg for e in seen if isinstance(e, TaskOutput)] == [1, 2]


async def test_event_buffer_is_bounded_and_drops_are_counted(variant: Variant) -> None:
    async with Runtime(KINDS, **variant, event_capacity=5) as rt:
        ref = await rt.spawn("echo")
        rt.send_nowait(ref, ("emit", list(range(20))))  # one drain, one batch of 20

        async def dropped() -> bool:
            return (await rt.stats()).events_dropped == 15

        await until(dropped)
        # the oldest kept, in order
        assert [e.msg for e in rt.poll_events()] == [0, 1, 2, 3, 4]  # type: ignore[union-attr]
        rt.send_nowait(ref, "after")  # room again: delivered
        assert [o.msg for o in await outputs(rt, 1)] == ["after"]


async def test_cancelling_one_event_waiter_does_not_cancel_another(variant: Variant) -> None:
    """Bug: every waiter in next_event(s) awaited one shared future, so cancelling one
    waiter (a ``wait_for`` timing out) cancelled that future and raised CancelledError
    in every other consumer."""
    async with Runtime({"echo": Echo}, workers=1, **variant) as rt:
        ref = await rt.spawn("echo")
        consumer = asyncio.create_task(rt.next_event())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(rt.next_event(), 0.05)
        assert not consumer.done()
        rt.send_nowait(ref, "x")
        event = await asyncio.wait_for(consumer, T)
        assert isinstance(event, TaskOutput) and event.msg == "x"


async def test_events_awaited_before_start() -> None:
    """Bug: next_event(s) (and events()) awaited before ``start`` failed on an assert."""
    rt = Runtime({"echo": Echo}, workers=1)
    first = asyncio.create_task(rt.next_event())
    await asyncio.sleep(0)
    assert not first.done()
    async with rt:
        ref = await rt.spawn("echo")
        rt.send_nowait(ref, "hi")
        event = await asyncio.wait_for(first, T)
        assert isinstance(event, TaskOutput) and event.msg == "hi"


# --------------------------------------------------------------------- batching


async def test_messages_pushed_while_busy_share_wakeups(backend: str) -> None:
    async with Runtime(KINDS, backend=backend) as rt:
        ref = await rt.spawn("echo")
        before = (await rt.stats(fresh=True)).workers[0].wakeups
        started = threading.Event()
        rt.send_nowait(ref, ("spin", 0.2, started))
        assert await asyncio.to_thread(started.wait, T)
        for i in range(1000):  # pushed while the worker is busy
            rt.send_nowait(ref, i)
        got = await outputs(rt, 1001)
        assert [o.msg for o in got[1:]] == list(range(1000))
        after = (await rt.stats(fresh=True)).workers[0].wakeups
        assert after - before < 50, f"{after - before} wake-ups for 1001 messages"


# ---------------------------------------------------------------------- the bus


async def test_pubsub_across_workers(variant: Variant) -> None:
    async with Runtime(KINDS, workers=2, **variant) as rt:
        subs = [await rt.spawn("sub", "news", worker=w) for w in (0, 1, 1)]
        pub = await rt.spawn("pub", worker=0)
        # the publisher's worker is included
        rt.send_nowait(pub, ("publish", "news", 100, True))
        got = await outputs(rt, 301)
        for sub in subs:
            msgs = [o.msg for o in got if o.task == sub]
            assert [m[2] for m in msgs] == list(range(100)), sub
            assert all(m[0] == "news" and m[1] == pub for m in msgs)
        assert rt._hub.workers("news") == (0, 1)
        # the last unsubscribe on worker 0 removes worker 0 from the channel
        rt.send_nowait(subs[0], "unsubscribe")
        await outputs(rt, 1)
        assert rt._hub.workers("news") == (1,)
        rt.send_nowait(pub, ("publish", "news", 3, True))
        got = await outputs(rt, 7)
        assert {o.task for o in got if o.msg != ("published", 3)} == {subs[1], subs[2]}


async def test_broadcast_reaches_every_worker_once(variant: Variant) -> None:
    async with Runtime(KINDS, workers=3, **variant, host=Host) as rt:
        await outputs(rt, 3)
        rt.send_nowait(1, "broadcast")
        got = await outputs(rt, 3)
        assert sorted(o.msg[1] for o in got) == [0, 1, 2]
        assert all(o.msg[0] == "bcast" and o.msg[2] == 1 for o in got)
        assert all(o.msg[3] == ("hello from", 1) for o in got)


# --------------------------------------------------------------- bounded queues


async def test_a_full_inbox_refuses_send_nowait_and_send_waits_for_room(
    backend: str,
) -> None:
    async with Runtime(KINDS, backend=backend, inbox_capacity=1) as rt:
        ref = await rt.spawn("echo")
        started = threading.Event()
        rt.send_nowait(ref, ("spin", 0.3, started))
        assert await asyncio.to_thread(started.wait, T)
        rt.send_nowait(ref, "a")  # fills the lane
        with pytest.raises(QueueFull, match="await send"):
            rt.send_nowait(ref, "refused")
        rt.send_force(ref, "b")  # the safe send always enqueues
        await rt.send(ref, "c")  # waits for room, resumes when the worker drains
        got = await outputs(rt, 4)
        assert [o.msg for o in got] == [("spun", 0.3), "a", "b", "c"]


async def test_send_many_delivers_in_order_one_event_per_message(variant: Variant) -> None:
    async with Runtime(KINDS, workers=2, **variant, host=Host) as rt:
        await outputs(rt, 2)  # the hosts' greetings
        ref = await rt.spawn("echo")
        rt.send_many(ref, list(range(500)))
        rt.send_many(ref, (f"g{i}" for i in range(3)))  # any iterable
        rt.send_many(ref, [])  # nothing to send: no event, no error
        got = await outputs(rt, 503)
        assert [o.msg for o in got] == [*range(500), "g0", "g1", "g2"]
        assert {o.task for o in got} == {ref}
        rt.send_many(1, ["a", "b"])  # a worker's host task
        got = await outputs(rt, 2)
        assert [o.msg for o in got] == [("worker-msg", 1, "a"), ("worker-msg", 1, "b")]


async def test_send_many_is_all_or_nothing_when_the_inbox_is_short(backend: str) -> None:
    async with Runtime(KINDS, backend=backend, inbox_capacity=3) as rt:
        ref = await rt.spawn("echo")
        started = threading.Event()
        rt.send_nowait(ref, ("spin", 0.3, started))
        assert await asyncio.to_thread(started.wait, T)
        rt.send_nowait(ref, "a")  # 1 of 3 taken while the worker spins
        with pytest.raises(QueueFull, match=r"no room for 3 messages.*nothing was sent"):
            rt.send_many(ref, ["x", "y", "z"])
        rt.send_many(ref, ["b", "c"])  # exactly the room left
        got = await outputs(rt, 4)
        assert [o.msg for o in got] == [("spun", 0.3), "a", "b", "c"]


async def test_send_many_to_unknown_targets_fails_like_send_nowait(variant: Variant) -> None:
    async with Runtime(KINDS, **variant) as rt:
        with pytest.raises(UnknownTarget, match="no worker 7"):
            rt.send_many(TaskRef(7, "echo", 0), ["x"])
        with pytest.raises(UnknownTarget, match="host"):
            rt.send_many(0, ["x"])
        with pytest.raises(UnknownTarget, match="no live task"):
            rt.send_many(TaskRef(0, "echo", 99), [])


async def test_unsafe_bus_sends_are_dropped_and_counted(backend: str) -> None:
    async with Runtime(KINDS, workers=2, backend=backend, inbox_capacity=4) as rt:
        await rt.spawn("sub", "chan", worker=1)
        busy = await rt.spawn("echo", worker=1)
        pub = await rt.spawn("pub", worker=0)
        started = threading.Event()
        rt.send_nowait(busy, ("spin", 0.3, started))
        assert await asyncio.to_thread(started.wait, T)
        rt.send_nowait(pub, ("publish", "chan", 50, False))
        got = await outputs(rt, 2)  # "published", "spun"
        assert ("published", 50) in [o.msg for o in got]
        stats = await rt.stats(fresh=True)
        delivered = 50 - stats.workers[0].drops
        assert stats.workers[0].drops >= 40  # only about the capacity fitted
        rest = await outputs(rt, delivered)
        assert [o.msg[2] for o in rest] == list(range(delivered))


async def test_a_failing_room_callback_does_not_strand_the_batch(variant: Variant) -> None:
    """Bug: a room callback raising (the controller's one does when the application's
    loop is closed) escaped Worker._on_wake halfway: the batch's outputs were not handed
    over and the other lanes were not drained until some later callback."""
    async with Runtime({"echo": Echo}, workers=1, **variant, tick=60) as rt:
        ref = await rt.spawn("echo")
        lane = rt._lanes[0]  # the controller's lane into worker 0

        def broken() -> None:
            raise RuntimeError("Event loop is closed")

        called = threading.Event()
        lane._room_waiters.append(broken)
        lane._room_waiters.append(called.set)  # a later waiter still runs
        rt.send_nowait(ref, "through")
        got = await collect(rt, lambda g: len(g) >= 1)
        assert outs(got) == ["through"]
        assert called.is_set()
