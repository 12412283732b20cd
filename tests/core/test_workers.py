"""Workers: their own ids, threads and loops; where spawns are placed; their stats.

Every test runs on every backend; those that make sense across processes also run
with worker processes (the ``variant`` fixture).
"""

from __future__ import annotations

import asyncio
import threading

from sansio_aio import Runtime
from sansio_aio.lowlevel import WorkerCore
from tests.helpers import T, Variant, outputs, until
from tests.tasks import KINDS, Echo, Host

# --------------------------------------------------------------------- identity


async def test_workers_have_their_own_ids_threads_and_loops(backend: str) -> None:
    async with Runtime(KINDS, workers=3, backend=backend, host=Host) as rt:

        def probe(core: WorkerCore) -> tuple[int, int, int]:
            return core.worker_id, threading.get_ident(), id(asyncio.get_event_loop())

        results = [await rt.run_on_worker(w, probe) for w in range(3)]
        assert [r[0] for r in results] == [0, 1, 2]
        assert len({r[1] for r in results}) == 3
        assert threading.get_ident() not in {r[1] for r in results}
        assert len({r[2] for r in results}) == 3
        hosts = await outputs(rt, 3)
        # each host was constructed with its own worker id, on its own thread
        assert sorted(o.msg[1] for o in hosts) == [0, 1, 2]
        assert {o.msg[1]: o.msg[2] for o in hosts} == {r[0]: r[1] for r in results}


# -------------------------------------------------------------------- placement


async def test_spawn_spreads_before_any_stats(variant: Variant) -> None:
    async with Runtime(KINDS, workers=2, **variant) as rt:
        refs = await asyncio.gather(*(rt.spawn("echo") for _ in range(4)))
        assert sorted(r.worker for r in refs) == [0, 0, 1, 1]


async def test_spawn_goes_to_the_least_loaded_worker(variant: Variant) -> None:
    async with Runtime(KINDS, workers=2, **variant) as rt:
        for _ in range(3):
            assert (await rt.spawn("echo", worker=0)).worker == 0
        assert (await rt.spawn("echo")).worker == 1
        stats = await rt.stats(fresh=True)
        assert [w.tasks for w in stats.workers] == [3, 1]


async def test_task_spawns_use_the_balancer(variant: Variant) -> None:
    async with Runtime(KINDS, workers=2, **variant) as rt:
        for _ in range(2):
            await rt.spawn("echo", worker=0)
        parent = await rt.spawn("parent", 2, worker=0)
        got = await outputs(rt, 2)
        assert sorted(o.msg[1] for o in got) == [0, 1]
        assert all(o.task == parent and o.msg[3] is None for o in got)
        # worker 0 had 3 tasks, worker 1 none: both children go to worker 1
        assert [o.msg[2].worker for o in got] == [1, 1]
        rt.send_nowait(parent, "no-such-kind")
        (bad,) = await outputs(rt, 1)
        assert bad.msg[1] == "bad"
        assert bad.msg[2] is None
        assert "unknown task kind" in bad.msg[3]


# ------------------------------------------------------------------------ stats


async def test_stats_count_tasks_and_utilisation(backend: str) -> None:
    async with Runtime(KINDS, backend=backend, stats_interval=0.1) as rt:
        refs = [await rt.spawn("echo") for _ in range(3)]
        stats = await rt.stats(fresh=True)
        (w0,) = stats.workers
        assert w0.tasks == 3
        assert 0.0 <= w0.utilisation <= 1.0
        assert w0.age < 1.0
        # a busy task keeps the worker busy for a whole window: utilisation near 1
        rt.send_nowait(refs[0], ("spin", 1.0))

        async def busy() -> bool:
            return (await rt.stats()).workers[0].utilisation > 0.8

        await until(busy)
        assert (await rt.stats()).workers[0].msgs_in >= 1


async def test_a_blocked_worker_goes_stale(backend: str) -> None:
    async with Runtime(KINDS, backend=backend, stats_interval=0.05) as rt:
        ref = await rt.spawn("echo")
        started = threading.Event()
        rt.send_nowait(ref, ("spin", 1.0, started))
        assert await asyncio.to_thread(started.wait, T)

        async def stale() -> bool:
            return (await rt.stats()).workers[0].age > 0.4

        await until(stale, timeout=T)
        await outputs(rt, 1)  # the spin ends; the worker is back

        async def fresh() -> bool:
            return (await rt.stats()).workers[0].age < 0.3

        await until(fresh, timeout=T)


async def test_stats_before_start() -> None:
    rt = Runtime({"echo": Echo}, workers=3)
    stats = await rt.stats(fresh=True)
    assert stats.workers == () and stats.placed == (0, 0, 0)
