"""Sweep the scenarios of ``tests/sim/scenarios.py`` over hundreds of seeds each.

Every seed is a whole simulated run (seconds of simulated time in milliseconds of real
time); a failure names its seed and the command that replays it. A few seeds run twice
to check that a seed gives the same trace byte for byte. The mutants at the end show
that the invariants bite: a room, a bus or an echo server with a planted bug fails the
same scenarios within a few dozen seeds.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from sansio_aio import Request
from sansio_aio._bus import BusHub
from sansio_aio.net import UdpPacket, UdpSend
from sansio_aio.testing import (
    Sim,
    SweepReport,
    TaskHarness,
    run_seed,
    sweep,
)
from sansio_aio.webrtc._config import RoomConfig
from sansio_aio.webrtc._events import (
    CloseSession,
    OpenSession,
    PeerAnswered,
    PeerKeyframe,
)
from sansio_aio.webrtc._room import Room
from tests.sim import scenarios
from tests.sim.scenarios import SCENARIOS, BusWorld, EchoWorld, RoomWorld, load_example

SEEDS = 200


def _failure(report: SweepReport) -> str:
    return report.failure.report(traceback=True) if report.failure else report.summary()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_seed_keeps_the_invariants(name: str) -> None:
    report = sweep(SCENARIOS[name], range(SEEDS), stop_on_failure=True)
    assert report.ok, _failure(report)
    assert report.seeds_run == SEEDS
    assert report.sim_time > 0


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_seed_replays_byte_for_byte(name: str) -> None:
    for seed in (0, 1, 2):
        result = run_seed(SCENARIOS[name], seed, check_determinism=True)
        assert result.ok, result.report()
        assert result.trace_lines > 10  # the digests compared a real trace


# ------------------------------------------------------------------ a bug found (fixed)


def test_the_idle_end_falls_due_exactly_at_its_deadline() -> None:
    t = 2.2322111021323865  # (t + 0.3) - t < 0.3 in binary floating point
    h = TaskHarness(Room, RoomConfig(name="r", idle_timeout=0.3), tick=10.0)
    h.feed(Request(1, OpenSession("p", "whip", scenarios._offer("whip", "u", []), '"p"')))
    h.feed(PeerAnswered("p", scenarios._ANSWER))
    h.feed(Request(2, CloseSession("p")), at=t)
    assert h.deadline == t + 0.3
    h.run_until_idle()  # raises ProtocolViolation: woken at t + 0.3, asks for t + 0.3 again
    assert h.ended and h.ended_at == t + 0.3


# ------------------------------------------------------------------ the checks bite


class _KeyframeFlood(Room):
    """A room that forgot its keyframe rate limit."""

    def _keyframe(self, now: float) -> None:
        if self.publisher is not None:
            self.emit(PeerKeyframe(self.publisher))


def test_a_room_without_its_keyframe_rate_limit_is_caught() -> None:
    errors: list[str] = []
    for seed in range(60):
        try:
            RoomWorld(random.Random(seed), room=_KeyframeFlood).run()
        except AssertionError as exc:
            errors.append(str(exc))
    assert errors and all("keyframe" in e for e in errors), errors


def test_a_bus_that_forgets_a_live_workers_routes_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drop = BusHub.drop_worker

    def forgetful(self: BusHub, worker: int) -> None:
        drop(self, worker)
        drop(self, (worker + 1) % 4)  # also the routes of a worker that lives on

    monkeypatch.setattr(BusHub, "drop_worker", forgetful)
    errors: list[str] = []
    for seed in range(60):
        try:
            asyncio.run(BusWorld(Sim(seed)).run())
        except AssertionError as exc:
            errors.append(str(exc))
    assert errors and all("live subscriber" in e for e in errors), errors


def test_an_echo_server_that_echoes_twice_is_caught() -> None:
    base = load_example("udp_echo_server").EchoServer

    class Stutter(base):  # type: ignore[misc,valid-type]
        """Echoes every seventh datagram twice."""

        def on_event(self, now: float, event: object) -> None:
            super().on_event(now, event)
            if type(event) is UdpPacket and self.echoed % 7 == 0:
                self.emit(UdpSend(event.slot, event.source, event.data))

    errors: list[str] = []
    for seed in range(40):
        try:
            asyncio.run(EchoWorld(Sim(seed), echo=Stutter).run())
        except AssertionError as exc:
            errors.append(str(exc))
    assert any("twice" in e or "2 times" in e for e in errors), errors
