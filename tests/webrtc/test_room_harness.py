"""The room task under the strict test harness (fake clock, no WebRTC, no threads).

The harness calls the task as a worker does (drain after every input, deadlines armed
from ``next_deadline``) and raises on protocol violations (outputs after ``None``,
deadlines in the past or spinning, input after the end), so these tests also pin the
room's use of deadlines: connect timeouts, deferred keyframe requests and the idle end
fire on time by themselves, on a 10 s tick.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sansio_aio import ExtOut, Reply, Request, TaskFailedError, UnknownTarget
from sansio_aio.testing import SimRuntime, TaskHarness
from sansio_aio.webrtc import (
    Created,
    OpenSession,
    PeerAnswered,
    PeerClose,
    PeerFailed,
    PeerKeyframe,
    PeerOpen,
    PeerState,
    Refused,
    Room,
    RoomConfig,
    SessionEnded,
)
from sansio_aio.webrtc._events import PeerSwitch
from tests.webrtc.support import ANSWER
from tests.webrtc.test_sdp import build, offer


def open_session(h: TaskHarness, rid: int, sid: str, role: str) -> Created:
    direction = "sendonly" if role == "whip" else "recvonly"
    out = h.feed(Request(rid, OpenSession(sid, role, offer(direction), f'"{sid}"')))  # type: ignore[arg-type]
    assert [type(o) for o in out] == [PeerOpen]
    (reply,) = h.feed(PeerAnswered(sid, ANSWER))
    assert isinstance(reply, Reply) and reply.id == rid and isinstance(reply.msg, Created)
    return reply.msg


def test_room_lifecycle_runs_on_its_own_deadlines() -> None:
    cfg = RoomConfig(
        name="r", connect_timeout=5.0, idle_timeout=30.0, keyframe_interval=1.0, publisher_grace=5.0
    )
    h = TaskHarness(Room, cfg, tick=10.0)
    open_session(h, 1, "p", "whip")
    h.feed(PeerState("p", "connected"), at=1.0)
    open_session(h, 2, "v1", "whep")
    open_session(h, 3, "v2", "whep")
    h.take()
    assert h.feed(PeerState("v1", "connected"), at=2.0) == [PeerKeyframe("p")]
    assert h.feed(PeerState("v2", "connected"), at=2.5) == []
    assert h.deadline == 3.0  # the deferred keyframe request
    assert h.advance_to(3.0) == [PeerKeyframe("p")]

    # A viewer that never connects is freed by its connect timeout (t=4 + 5 s).
    h.advance_to(4.0)
    open_session(h, 4, "v3", "whep")
    h.take()
    out = h.advance_to(9.0)
    assert PeerClose("v3") in out
    assert ExtOut(SessionEnded("r", "v3", "ICE did not connect in time")) in out

    # The publisher fails: its viewers wait 5 s for a new one, none comes, they go; the
    # room ends 30 s after, by itself.
    out = h.feed(PeerState("p", "failed"), at=12.0)
    assert {o.session for o in out if isinstance(o, PeerClose)} == {"p"}
    assert h.deadline == 17.0  # the end of the publisher's grace
    out = h.advance_to(17.0)
    assert {o.session for o in out if isinstance(o, PeerClose)} == {"v1", "v2"}
    assert ExtOut(SessionEnded("r", "v1", "the publisher left")) in out
    h.run_until_idle(within=60.0)
    assert h.ended and h.ended_at == 47.0


def test_shutdown_under_harness_closes_everything() -> None:
    h = TaskHarness(Room, RoomConfig(name="r"), tick=1.0)
    open_session(h, 1, "p", "whip")
    open_session(h, 2, "v", "whep")
    h.take()
    out = h.shutdown(within=1.0)
    assert {o.session for o in out if isinstance(o, PeerClose)} == {"p", "v"}
    assert h.ended


# ------------------------------------------------------------------ refused opens


def test_refused_opens_leave_no_room_behind() -> None:
    cfg = RoomConfig(name="r", connect_timeout=5.0, idle_timeout=30.0)
    # A viewer of a stream nobody publishes: 409, and the room ends with that reply.
    h = TaskHarness(Room, cfg, tick=1.0)
    h.advance_to(0.5)
    assert not h.ended  # a fresh room waits for its first request
    (reply,) = h.feed(Request(1, OpenSession("v", "whep", offer("recvonly"), '"v"')))
    assert isinstance(reply.msg, Refused) and reply.msg.status == 409
    assert h.ended and h.ended_at == 0.5
    # A bad offer.
    h = TaskHarness(Room, cfg, tick=1.0)
    (reply,) = h.feed(Request(1, OpenSession("p", "whip", build(("video", "video")), '"p"')))
    assert reply.msg.status == 422 and h.ended
    # The driver refuses the offer.
    h = TaskHarness(Room, cfg, tick=1.0)
    h.feed(Request(1, OpenSession("p", "whip", offer(), '"p"')))
    out = h.feed(PeerFailed("p", 400, "aiortc: no common codec"), at=0.2)
    assert Reply(1, Refused(400, "aiortc: no common codec")) in out
    assert h.ended and h.ended_at == 0.2
    # The driver never answers: the connect timeout frees the session and ends the room.
    h = TaskHarness(Room, cfg, tick=10.0)
    h.feed(Request(1, OpenSession("p", "whip", offer(), '"p"')))
    h.run_until_idle(within=60.0)
    assert h.ended and h.ended_at == 5.0  # not 5 + 30


def test_a_room_with_real_sessions_keeps_its_idle_timeout() -> None:
    h = TaskHarness(Room, RoomConfig(name="r", idle_timeout=30.0), tick=10.0)
    open_session(h, 1, "p", "whip")
    h.feed(PeerFailed("p", 410, "no packets from the peer for 10 s"), at=2.0)
    (reply,) = h.feed(Request(2, OpenSession("v", "whep", offer("recvonly"), '"v"')), at=3.0)
    assert reply.msg.status == 409 and not h.ended
    h.run_until_idle(within=60.0)
    assert h.ended and h.ended_at == 32.0


async def test_a_request_racing_the_rooms_end_fails_fast_for_a_retry() -> None:
    """The HTTP layer retries once on ``UnknownTarget``/``TaskFailedError``: a request
    sent to a room that has just ended (here: right after a refused viewer) must fail
    with one of those, at once, not hang until the request timeout."""
    async with SimRuntime({"room": Room}, workers=1, tick=1.0) as rt:
        cfg = RoomConfig(name="r")
        whep = OpenSession("v1", "whep", offer("recvonly"), '"v1"')
        ref = await rt.spawn("room", cfg)
        results: tuple[Any, Any] = await asyncio.gather(
            rt.request(ref, whep, timeout=5.0),
            rt.request(ref, OpenSession("v2", "whep", offer("recvonly"), '"v2"'), timeout=5.0),
            return_exceptions=True,
        )
        first, second = results
        assert isinstance(first, Refused) and first.status == 409
        assert isinstance(second, UnknownTarget | TaskFailedError), second
        with pytest.raises((UnknownTarget, TaskFailedError)):
            await rt.request(ref, whep, timeout=5.0)
        # The retry, on a fresh room, gets the room's real answer.
        fresh = await rt.spawn("room", cfg)
        again = await rt.request(fresh, whep, timeout=5.0)
        assert isinstance(again, Refused) and again.status == 409


# ------------------------------------------------------------------ the driver's PeerFailed


def test_a_silent_peer_reported_by_the_driver_ends_its_session() -> None:
    """``PeerFailed`` after the answer (the driver's "no packets" report) ends the
    session with its reason; the publisher's end ends its viewers (no grace here)."""
    cfg = RoomConfig(name="r", idle_timeout=30.0, publisher_grace=0.0)
    h = TaskHarness(Room, cfg, tick=10.0)
    open_session(h, 1, "p", "whip")
    open_session(h, 2, "v1", "whep")
    open_session(h, 3, "v2", "whep")
    h.feed(PeerState("p", "connected"), at=1.0)
    h.feed(PeerState("v1", "connected"), at=1.0)
    h.feed(PeerState("v2", "connected"), at=1.0)
    h.take()
    silent = "no packets from the peer for 10 s"
    out = h.feed(PeerFailed("v1", 410, silent), at=12.0)
    assert out == [PeerClose("v1"), ExtOut(SessionEnded("r", "v1", silent))]
    out = h.feed(PeerFailed("p", 410, silent), at=20.0)
    assert out == [
        PeerClose("p"),
        ExtOut(SessionEnded("r", "p", silent)),
        PeerClose("v2"),
        ExtOut(SessionEnded("r", "v2", "the publisher left")),
    ]
    assert not h.task.sessions and h.task.publisher is None
    # A late report about a session that is gone changes nothing.
    assert h.feed(PeerFailed("p", 410, silent), at=21.0) == []
    h.run_until_idle(within=60.0)
    assert h.ended and h.ended_at == 50.0


def test_a_new_publisher_within_the_grace_under_harness() -> None:
    """A silent publisher is dropped; the viewer waits; a new publisher's answer switches
    it (``PeerSwitch``), its connection asks for a keyframe, and no deadline of the
    grace is left behind."""
    cfg = RoomConfig(name="r", idle_timeout=30.0, publisher_grace=5.0, keyframe_interval=1.0)
    h = TaskHarness(Room, cfg, tick=10.0)
    open_session(h, 1, "p", "whip")
    open_session(h, 2, "v", "whep")
    h.feed(PeerState("p", "connected"), at=1.0)
    h.feed(PeerState("v", "connected"), at=1.0)
    h.take()
    out = h.feed(PeerFailed("p", 410, "no packets from the peer for 10 s"), at=2.0)
    assert [type(o) for o in out] == [PeerClose, ExtOut] and h.deadline == 7.0
    out = h.feed(Request(3, OpenSession("p2", "whip", offer(), '"p2"')), at=4.0)
    assert [type(o) for o in out] == [PeerOpen]
    reply, switch = h.feed(PeerAnswered("p2", ANSWER), at=4.1)
    assert isinstance(reply, Reply) and isinstance(reply.msg, Created)
    assert switch == PeerSwitch("p2", ("v",))
    assert h.feed(PeerState("p2", "connected"), at=4.5) == [PeerKeyframe("p2")]
    h.advance_to(20.0)  # nothing fires at 7.0: the grace is over
    assert set(h.task.sessions) == {"p2", "v"}
    out = h.shutdown(within=1.0)
    assert {o.session for o in out if isinstance(o, PeerClose)} == {"p2", "v"}
