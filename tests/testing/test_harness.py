"""TaskHarness: the drain rule, ticks and deadlines in order, protocol violations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sansio_aio import Ext, ExtOut, Reply, Request, Task
from sansio_aio.testing import (
    FakeClock,
    HarnessError,
    ProtocolViolation,
    SimulationStalled,
    TaskCrashed,
    TaskHarness,
)
from tests.tasks import Echo, Graceful, Recorder, Ticker


class Timer(Task):
    """Asks for a wake-up ``cfg`` seconds after each ``Ext("arm")``; reports ticks."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.wake: float | None = None

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext and event.msg == "arm":
            self.wake = now + self.cfg

    def on_tick(self, now: float) -> None:
        if self.wake is not None and now >= self.wake:
            self.wake = None
            self.emit(ExtOut(("woke", now)))
        else:
            self.emit(ExtOut(("tick", now)))

    def next_deadline(self) -> float | None:
        return self.wake


def test_constructor_outputs_are_drained_at_once_and_each_input_is_drained() -> None:
    h = TaskHarness(Recorder)
    assert h.take() == [ExtOut("hello from the constructor")]
    assert h.feed(Ext("x")) == [ExtOut(1), ExtOut(2)]
    # the strict check asks pop_output once more after None: it must stay None
    assert h.task.log == ["pop", "None", "None", "on_event", "pop", "pop", "None", "None"]
    assert h.log == [
        (0.0, ExtOut("hello from the constructor")),
        (0.0, ExtOut(1)),
        (0.0, ExtOut(2)),
    ]


def test_feed_at_a_time_fires_the_ticks_on_the_way() -> None:
    h = TaskHarness(Ticker, tick=1.0)
    outs = h.feed(Ext("nothing"), at=2.5)
    assert outs == []  # the input itself produced nothing
    assert h.take() == [ExtOut(("tick", 1.0)), ExtOut(("tick", 2.0))]
    assert h.now == 2.5


def test_ten_periods_give_ten_ticks_at_exact_multiples() -> None:
    h = TaskHarness(Ticker, tick=0.1, clock=FakeClock(100.0))
    h.advance(1.0)
    ticks = [out.msg[1] for out in h.take()]
    assert ticks == [100.0 + k * 0.1 for k in range(1, 11)]


def test_a_deadline_fires_long_before_the_tick() -> None:
    h = TaskHarness(Timer, 0.05, tick=10.0)
    h.feed(Ext("arm"), at=1.0)
    assert h.deadline == pytest.approx(1.05)
    assert h.run_until_idle() == [ExtOut(("woke", 1.05))]
    assert h.deadline is None
    assert h.advance(10.0) == [ExtOut(("tick", 10.0))]


def test_wait_for_jumps_time_to_the_matching_output() -> None:
    h = TaskHarness(Timer, 3.0, tick=None)
    h.feed(Ext("arm"))
    out = h.wait_for(lambda o: o.msg[0] == "woke", within=5)
    assert out == ExtOut(("woke", 3.0)) and h.now == 3.0
    with pytest.raises(SimulationStalled, match="nothing is scheduled"):
        h.wait_for(ExtOut, within=5)


def test_scheduled_inputs_fire_in_order_with_ticks() -> None:
    h = TaskHarness(Echo, tick=None)
    h.schedule(2.0, Ext("b"))
    h.schedule(1.0, Ext("a"))
    h.run_until_idle()
    assert [(t, o.msg) for t, o in h.log] == [(1.0, "a"), (2.0, "b")]


def test_requests_and_shutdown() -> None:
    h = TaskHarness(Graceful)
    assert h.feed(Request(7, "x")) == []
    assert h.shutdown() == [ExtOut("bye")]
    assert h.ended and h.ended_at == 0.0
    with pytest.raises(ProtocolViolation, match="ended"):
        h.feed(Ext("late"))

    h2 = TaskHarness(Echo)
    assert h2.feed(Request(1, ("double", 21))) == [Reply(1, 42)]


# ----------------------------------------------------------------- violations


class Stranding(Task):
    """Queues an output from is_empty(): it would be stranded until the next input."""

    def is_empty(self) -> bool:
        if not self.closing:
            self.emit(ExtOut("stranded"))
        return False


class Endless(Task):
    def pop_output(self, now: float) -> Any:
        return ExtOut("again")


class PastDeadline(Task):
    def next_deadline(self) -> float | None:
        return -1.0


class Spinner(Task):
    """Asks for a wake-up now, and again when woken: the worker would spin."""

    def next_deadline(self) -> float | None:
        return 1.0


class Raiser(Task):
    def on_event(self, now: float, event: Any) -> None:
        if event == Ext("boom"):
            raise ValueError("boom")
        self.emit(ExtOut("ok"))


class NotATask:
    def on_event(self, now: float, event: Any) -> None:
        pass


def test_an_output_left_unpopped_is_a_violation_and_is_not_lost() -> None:
    with pytest.raises(ProtocolViolation, match="after returning None") as info:
        TaskHarness(Stranding)
    assert info.value.task == "Stranding"


def test_pop_output_that_never_returns_none() -> None:
    with pytest.raises(ProtocolViolation, match="did not return None after 50"):
        TaskHarness(Endless, max_outputs=50)


def test_a_deadline_in_the_past() -> None:
    with pytest.raises(ProtocolViolation, match="in the past"):
        TaskHarness(PastDeadline, clock=FakeClock(5.0))


def test_a_task_woken_for_a_deadline_that_asks_for_the_same_instant() -> None:
    h = TaskHarness(Spinner, tick=None)
    with pytest.raises(ProtocolViolation, match="would spin"):
        h.advance(2.0)


def test_an_exception_is_reported_with_the_input_and_time() -> None:
    h = TaskHarness(Raiser)
    assert h.feed(Ext("fine")) == [ExtOut("ok")]
    with pytest.raises(TaskCrashed, match=r"raised ValueError\('boom'\) in on_event\(Ext") as info:
        h.feed(Ext("boom"), at=3.0)
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.now == 3.0


def test_not_a_task_and_bad_arguments() -> None:
    with pytest.raises(ProtocolViolation, match="missing on_tick"):
        TaskHarness(NotATask())  # type: ignore[arg-type]
    with pytest.raises(HarnessError, match="tick"):
        TaskHarness(Echo, tick=0)


def test_non_strict_mode_tolerates_a_stranded_output() -> None:
    h = TaskHarness(Stranding, strict=False)
    assert h.take() == []  # the stranded output only shows up at the next input
    assert h.feed(Ext("x"))[0] == ExtOut("stranded")


def test_fixture_factory(task_harness: Callable[..., TaskHarness]) -> None:
    h = task_harness(Echo, None, start=5.0)
    assert h.feed(Ext("hi")) == [ExtOut("hi")]
    assert len(h.trace) == 3  # created, in, out
    assert h.trace.lines()[1] == "5.000000000 Echo in Ext(msg='hi')"
