"""What crosses a lane is plain data a process transport can carry: every command and
report pickles, and run_on_worker comes back as a report, in order with the outputs."""

from __future__ import annotations

import functools
import pickle
from typing import Any

import pytest

from sansio_aio import Ext, ExtOut, RuntimeAPI, Task, TaskOutput, TaskRef, WorkerStats
from sansio_aio import _wire as wire
from sansio_aio.lowlevel import WorkerCore

REF = TaskRef(1, "echo", 2, 3)

SAMPLES: list[Any] = [
    wire.HostCmd("hi"),
    wire.RequestCmd(REF, 7, {"a": 1}),
    wire.SpawnCmd(4, "echo", {"cfg": 1}, REF, "tag"),
    wire.SpawnedCmd(REF, "tag", REF, None),
    wire.BusCmd("news", REF, b"x"),
    wire.BroadcastCmd(0, "all"),
    wire.DirectCmd(REF, REF, 1.5),
    wire.ShutdownCmd(),
    wire.ForceStopCmd(),
    wire.CallCmd(9, len),
    wire.ReplyReport(7, "ok"),
    wire.RequestFailed(7, "gone"),
    wire.SpawnReport(4, None, wire.SpawnFailure.UNKNOWN_KIND, "unknown task kind 'x'", 1),
    wire.SpawnRequest("echo", None, REF, None),
    wire.EndReport(REF, "Traceback ..."),
    wire.Undelivered("message for echo#2.3@w1"),
    wire.StartReport(1, None),
    wire.StopReport(1, [REF]),
    wire.CallResult(9, True, 3),
    wire.StatsReport(
        WorkerStats(
            worker=1,
            tasks=2,
            utilisation=0.5,
            runtime_busy=0.25,
            loop_lag=0.0,
            loop_lag_max=0.001,
            inbox_depth=0,
            inbox_peak=3,
            wakeups=4,
            msgs_in=5,
            msgs_out=6,
            drops=0,
            orphans=0,
            failures=0,
            unrouted=0,
            ticks=7,
            last_seen=1.0,
            drivers={"udp_rx": 1},
        )
    ),
    wire.Relay(1, b"pickled commands", 3, False),
    wire.HubUpdate("news", 1, True),
    wire.HubCmd(None, 1, False),
    wire.Credit(42),
    (REF, "the hot path: a bare tuple"),
    [TaskOutput(REF, "a"), TaskOutput(REF, "b")],
]


@pytest.mark.parametrize("item", SAMPLES, ids=lambda item: type(item).__name__)
def test_every_message_pickles(item: Any) -> None:
    again = pickle.loads(pickle.dumps(item))
    assert again == item
    assert type(again) is type(item)


def test_commands_and_reports_are_distinct_types_and_not_bare_tuples() -> None:
    """The core dispatches by exact type; a bare tuple is always an application message."""
    kinds = [type(item) for item in SAMPLES if isinstance(item, tuple)]
    named = [k for k in kinds if k is not tuple]
    assert len(named) == len(set(named))
    assert all(issubclass(k, tuple) for k in named)


class Echo(Task):
    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            self.emit(ExtOut(event.msg))


def count_tasks(core: WorkerCore) -> int:
    """A module-level function: what run_on_worker sends across processes too."""
    return core.task_count()


def worker_of(core: WorkerCore, offset: int) -> int:
    return core.worker_id + offset


def fails(core: WorkerCore) -> None:
    raise LookupError(f"worker {core.worker_id} has no such thing")


@pytest.mark.sansio_runtime(kinds={"echo": Echo}, workers=2)
@pytest.mark.parametrize("runtime", ["uvloop", "poll", "sim"], indirect=True)
async def test_run_on_worker_takes_plain_functions_and_returns_errors(
    runtime: RuntimeAPI,
) -> None:
    await runtime.spawn("echo", worker=1)
    assert await runtime.run_on_worker(1, count_tasks) == 1
    assert await runtime.run_on_worker(0, count_tasks) == 0
    assert await runtime.run_on_worker(1, functools.partial(worker_of, offset=10)) == 11
    with pytest.raises(LookupError, match="worker 0 has no such thing"):
        await runtime.run_on_worker(0, fails)
    assert await runtime.run_on_worker(0, count_tasks) == 0  # the worker goes on


@pytest.mark.sansio_runtime(kinds={"echo": Echo})
@pytest.mark.parametrize("runtime", ["uvloop", "epoll", "sim"], indirect=True)
async def test_run_on_worker_answers_after_the_outputs_sent_before_it(
    runtime: RuntimeAPI,
) -> None:
    """The result is a report on the same lane as the outputs: FIFO with them."""
    ref = await runtime.spawn("echo")
    for i in range(50):
        runtime.send_nowait(ref, i)
    await runtime.run_on_worker(0, count_tasks)
    got = [e.msg for e in runtime.poll_events() if isinstance(e, TaskOutput)]
    assert got == list(range(50))
