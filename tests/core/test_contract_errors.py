"""The API's rough edges a newcomer found: wrong types get a ConfigError that names the
fix, failures say what happened, references print apart, and unrouted outputs name the
driver to add. Each runs on both runtimes (threads and simulated) through RuntimeAPI."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from sansio_aio import (
    ConfigError,
    Ext,
    ExtOut,
    Request,
    RuntimeAPI,
    RuntimeClosed,
    RuntimeState,
    Task,
    TaskFailedError,
    TaskRef,
    UnknownTarget,
)
from sansio_aio.lowlevel import WorkerCore
from sansio_aio.net import UdpSend
from tests.helpers import T

RUNTIMES = ["uvloop", "epoll", "sim"]


class Calc(Task):
    """Answers requests; a request ``"boom"`` raises ``ValueError("bad input 42")``."""

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Request:
            if event.msg == "boom":
                raise ValueError("bad input 42")
            from sansio_aio import Reply

            self.emit(Reply(event.id, event.msg))


class Once(Task):
    """Ends as soon as it gets a message."""

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            self.closing = True


class SendsUdpWithoutDriver(Task):
    """Emits a UdpSend on its first message (the runtime has no UdpDriver)."""

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            self.emit(UdpSend(1, ("127.0.0.1", 9), b"x"))
            self.emit(ExtOut("sent"))


KINDS = {"calc": Calc, "once": Once, "udp": SendsUdpWithoutDriver}


@pytest.mark.sansio_runtime(kinds=KINDS, workers=2)
@pytest.mark.parametrize("runtime", RUNTIMES, indirect=True)
async def test_a_request_to_a_kind_name_says_to_spawn_first(runtime: RuntimeAPI) -> None:
    with pytest.raises(ConfigError, match=r"TaskRef that spawn\(\) returned.*'calc'"):
        await runtime.request("calc", 1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="TaskRef"):
        await runtime.request(0, 1)  # type: ignore[arg-type]


@pytest.mark.sansio_runtime(kinds=KINDS, workers=2)
@pytest.mark.parametrize("runtime", RUNTIMES, indirect=True)
async def test_a_worker_id_of_the_wrong_type_is_a_config_error(runtime: RuntimeAPI) -> None:
    with pytest.raises(ConfigError, match=r"worker id is an int in 0\.\.1, got '1' \(str\)"):
        await runtime.spawn("calc", worker="1")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="worker id"):
        await runtime.spawn("calc", worker=True)
    with pytest.raises(ConfigError, match="worker id"):
        await runtime.run_on_worker("0", len)  # type: ignore[arg-type]
    with pytest.raises(UnknownTarget, match="no worker 5"):
        await runtime.spawn("calc", worker=5)
    with pytest.raises(ConfigError, match="kind name"):
        await runtime.spawn(Calc)  # type: ignore[arg-type]


@pytest.mark.sansio_runtime(kinds=KINDS, workers=2)
@pytest.mark.parametrize("runtime", RUNTIMES, indirect=True)
async def test_a_send_to_something_that_is_not_a_target_is_a_config_error(
    runtime: RuntimeAPI,
) -> None:
    for bad in (None, "calc", 1.5, ("w", 1), [1, 2]):
        with pytest.raises(ConfigError, match="send target is the TaskRef"):
            runtime.send_nowait(bad, "hi")  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="send target"):
            runtime.send_force(bad, "hi")  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="send target"):
            await runtime.send(bad, "hi")  # type: ignore[arg-type]
    ref = await runtime.spawn("calc")
    assert await runtime.request(ref, "still fine") == "still fine"


@pytest.mark.sansio_runtime(kinds=KINDS)
@pytest.mark.parametrize("runtime", RUNTIMES, indirect=True)
async def test_task_failed_error_says_what_the_task_raised(runtime: RuntimeAPI) -> None:
    ref = await runtime.spawn("calc")
    with pytest.raises(TaskFailedError) as caught:
        await runtime.request(ref, "boom")
    assert "ValueError: bad input 42" in str(caught.value)
    assert str(ref) in str(caught.value)
    assert caught.value.task == ref
    assert "Traceback" in caught.value.traceback


@pytest.mark.sansio_runtime(kinds=KINDS)
@pytest.mark.parametrize("runtime", RUNTIMES, indirect=True)
async def test_two_generations_of_one_slot_print_apart(runtime: RuntimeAPI) -> None:
    first = await runtime.spawn("once", worker=0)
    runtime.send_nowait(first, "end")
    while True:  # wait for its end: the slot is free again
        event = await runtime.next_event()
        if getattr(event, "task", None) == first:
            break
    second = await runtime.spawn("once", worker=0)
    assert (first.index, first.gen) == (second.index, 0) and second.gen == 1
    assert str(first) == "once#0@w0"
    assert str(second) == "once#0.1@w0"
    assert str(first) != str(second)


def test_task_ref_str() -> None:
    assert str(TaskRef(3, "echo", 7)) == "echo#7@w3"
    assert str(TaskRef(3, "echo", 7, 2)) == "echo#7.2@w3"
    assert str(TaskRef(3, "echo", 7, 1 << 32)) == "echo#7@w3~1"  # a replacement worker's
    assert str(TaskRef(3, "echo", 7, (2 << 32) + 5)) == "echo#7.5@w3~2"


@pytest.mark.sansio_runtime(kinds=KINDS, sim_drivers=[])  # no driver at all, in both
@pytest.mark.parametrize("runtime", RUNTIMES, indirect=True)
async def test_an_output_no_driver_handles_names_the_driver_to_add(
    runtime: RuntimeAPI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sansio_aio")
    ref = await runtime.spawn("udp")
    runtime.send_nowait(ref, "go")
    event = await runtime.next_event()
    assert getattr(event, "msg", None) == "sent"  # the task goes on
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "UdpSend" in w and "drivers=[UdpDriver]" in w and "sansio_aio.net.UdpDriver" in w
        for w in warnings
    ), warnings
    stats = await runtime.stats(fresh=True)
    assert sum(w.unrouted for w in stats.workers) == 1


@pytest.mark.sansio_runtime(kinds=KINDS)
@pytest.mark.parametrize("runtime", RUNTIMES, indirect=True)
async def test_the_life_cycle_is_one_state(runtime: RuntimeAPI) -> None:
    seen = [(runtime.state, runtime.running)]
    with pytest.raises(RuntimeClosed, match="already running"):
        await runtime.start()
    await runtime.shutdown()
    seen.append((runtime.state, runtime.running))
    assert seen == [(RuntimeState.RUNNING, True), (RuntimeState.CLOSED, False)]
    with pytest.raises(RuntimeClosed, match="the runtime is closed"):
        await runtime.spawn("calc")
    with pytest.raises(RuntimeClosed):
        runtime.send_nowait(TaskRef(0, "calc", 0), "late")


def _stops(core: WorkerCore) -> int:
    """Run on a worker: raises StopIteration (module level: it may cross to a process)."""
    return next(iter([]))


@pytest.mark.sansio_runtime(kinds=KINDS, workers=1)
@pytest.mark.parametrize("runtime", RUNTIMES, indirect=True)
async def test_run_on_worker_raising_stop_iteration_fails_instead_of_hanging(
    runtime: RuntimeAPI,
) -> None:
    """Bug: a Future refuses StopIteration, so the waiter of a function that raised it on
    the worker hung for good (found profiling with ``next(iter(core.refs()))``)."""
    with pytest.raises(RuntimeError, match="StopIteration raised on the worker"):
        await asyncio.wait_for(runtime.run_on_worker(0, _stops), T)
    assert await runtime.run_on_worker(0, len_of_refs) == 0  # the worker is fine


def len_of_refs(core: WorkerCore) -> int:
    return len(core.refs())
