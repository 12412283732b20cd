"""The room task under the strict test harness (fake clock, no WebRTC, no threads).

The harness calls the task as a worker does (drain after every input, deadlines armed
from ``next_deadline``) and raises on protocol violations (outputs after ``None``,
deadlines in the past or spinning, input after the end), so these tests also pin the
room's use of deadlines: connect timeouts, deferred keyframe requests and the idle end
fire on time by themselves, on a 10 s tick.
"""

from __future__ import annotations

from sansio_aio import ExtOut, Reply, Request
from sansio_aio.testing import TaskHarness
from sansio_aio.webrtc import (
    Created,
    OpenSession,
    PeerAnswered,
    PeerClose,
    PeerKeyframe,
    PeerOpen,
    PeerState,
    Room,
    RoomConfig,
    SessionEnded,
)
from tests.webrtc.support import ANSWER, offer


def open_session(h: TaskHarness, rid: int, sid: str, role: str) -> Created:
    direction = "sendonly" if role == "whip" else "recvonly"
    out = h.feed(Request(rid, OpenSession(sid, role, offer(direction), f'"{sid}"')))  # type: ignore[arg-type]
    assert [type(o) for o in out] == [PeerOpen]
    (reply,) = h.feed(PeerAnswered(sid, ANSWER))
    assert isinstance(reply, Reply) and reply.id == rid and isinstance(reply.msg, Created)
    return reply.msg


def test_room_lifecycle_runs_on_its_own_deadlines() -> None:
    cfg = RoomConfig(name="r", connect_timeout=5.0, idle_timeout=30.0, keyframe_interval=1.0)
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

    # The publisher fails: its viewers go with it; the room ends 30 s after, by itself.
    out = h.feed(PeerState("p", "failed"), at=12.0)
    assert {o.session for o in out if isinstance(o, PeerClose)} == {"p", "v1", "v2"}
    h.run_until_idle(within=60.0)
    assert h.ended and h.ended_at == 42.0


def test_shutdown_under_harness_closes_everything() -> None:
    h = TaskHarness(Room, RoomConfig(name="r"), tick=1.0)
    open_session(h, 1, "p", "whip")
    open_session(h, 2, "v", "whep")
    h.take()
    out = h.shutdown(within=1.0)
    assert {o.session for o in out if isinstance(o, PeerClose)} == {"p", "v"}
    assert h.ended
