"""FakeClock and Trace: ordering, manual advance, busy-loop detection, determinism."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from sansio_aio.testing import FakeClock, HarnessError, SimulationStalled, Trace, describe


def test_timers_fire_in_time_order_ties_in_scheduling_order() -> None:
    clock = FakeClock(10.0)
    fired: list[tuple[str, float]] = []
    for name, when in [("c", 12.0), ("a", 11.0), ("b1", 11.5), ("b2", 11.5)]:
        clock.call_at(when, lambda n=name: fired.append((n, clock.now())))
    assert clock.next_deadline() == 11.0
    assert clock.advance(1.5) == 3
    assert fired == [("a", 11.0), ("b1", 11.5), ("b2", 11.5)]
    assert clock.now() == 11.5
    assert clock.step()
    assert fired[-1] == ("c", 12.0)
    assert not clock.step()  # nothing left: time stays
    assert clock.now() == 12.0


def test_advance_runs_timers_scheduled_by_callbacks_within_the_window() -> None:
    clock = FakeClock()
    seen: list[float] = []

    def again() -> None:
        seen.append(clock.now())
        if len(seen) < 5:
            clock.call_later(0.25, again)

    clock.call_later(0.25, again)
    clock.advance(1.0)
    assert seen == [0.25, 0.5, 0.75, 1.0]
    clock.advance(10.0)
    assert seen == [0.25, 0.5, 0.75, 1.0, 1.25]


def test_cancelled_timer_does_not_fire_and_past_timers_fire_now() -> None:
    clock = FakeClock(5.0)
    seen: list[str] = []
    t = clock.call_at(6.0, seen.append, "cancelled")
    t.cancel()
    clock.call_at(1.0, seen.append, "late")  # in the past: due at once
    assert clock.pending() == 1
    assert clock.fire_due() == 1
    assert seen == ["late"]
    clock.advance(5)
    assert seen == ["late"]


def test_time_never_moves_backwards_and_bad_times_are_refused() -> None:
    clock = FakeClock(1.0)
    with pytest.raises(HarnessError, match="forward"):
        clock.advance(-1)
    with pytest.raises(HarnessError, match="forward"):
        clock.advance_to(0.5)
    with pytest.raises(HarnessError):
        clock.call_at(float("nan"), lambda: None)
    with pytest.raises(HarnessError):
        clock.call_later(-0.1, lambda: None)


def test_a_timer_that_reschedules_itself_at_the_same_instant_is_a_busy_loop() -> None:
    clock = FakeClock(max_same_instant=1000)

    def spin() -> None:
        clock.call_at(clock.now(), spin)

    clock.call_at(1.0, spin)
    with pytest.raises(SimulationStalled, match="without time moving"):
        clock.advance(2.0)


@dataclass(slots=True)
class _Ev:
    data: bytes
    n: int


class _NoRepr:
    pass


def test_describe_is_stable_and_compact() -> None:
    assert describe(_Ev(b"ab", 3)) == "_Ev(data=b'ab', n=3)"
    long = describe(b"x" * 1000)
    assert long.startswith("<1000 B sha1:") and long == describe(b"x" * 1000)
    assert describe(_NoRepr()) == "<_NoRepr>"  # no memory address
    assert describe({"b": (1,), "a": [2.5, None]}) == "{'b': (1,), 'a': [2.5, None]}"


def test_trace_digest_difference_and_write(tmp_path: Path) -> None:
    a, b = Trace(seed=1), Trace(seed=1)
    for t in (a, b):
        t.record(0.5, "x", "in", _Ev(b"hi", 1))
    assert a.digest() == b.digest() and a.first_difference(b) is None
    b.record(1.0, "x", "out", "more")
    assert a.digest() != b.digest()
    assert "lengths differ" in str(a.first_difference(b))
    path = a.write(tmp_path / "sub" / "a.trace")
    text = path.read_text()
    assert text.startswith("# sansio_aio trace seed=1 lines=1")
    assert "0.500000000 x in _Ev(data=b'hi', n=1)" in text
    limited = Trace(limit=2)
    for i in range(5):
        limited.record(i, "x", "n", i)
    assert len(limited) == 2 and limited.dropped == 3
