"""The room task alone: sessions, ETags, limits, timeouts, keyframes, teardown.

No WebRTC, no sockets, no threads: the task is fed inputs with an explicit ``now`` and
drained until ``pop_output`` returns None, exactly as the worker core does.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_aio import ExtOut, Reply, Request
from sansio_aio.webrtc import (
    CloseSession,
    Created,
    Done,
    OpenSession,
    PatchSession,
    PeerAnswered,
    PeerClose,
    PeerFailed,
    PeerKeyframe,
    PeerMedia,
    PeerOpen,
    PeerState,
    PeerTrickle,
    Refused,
    Room,
    RoomConfig,
    RoomInfo,
    RoomSnapshot,
    SdpError,
    SessionEnded,
    check_offer,
)
from sansio_aio.webrtc._events import PeerSwitch
from sansio_aio.webrtc._room import if_match_tags
from sansio_aio.webrtc._sdp import add_rtcp_mux_only, parse_fragment
from tests.webrtc.support import ANSWER
from tests.webrtc.test_sdp import FINGERPRINT, build, offer


class Driven:
    """A room plus a request counter; every call drains the outputs."""

    def __init__(self, **cfg: Any) -> None:
        self.room = Room(RoomConfig(name="r", **cfg))
        self.rid = 0

    def feed(self, now: float, event: Any) -> list[Any]:
        self.room.on_event(now, event)
        return self.drain(now)

    def tick(self, now: float) -> list[Any]:
        self.room.on_tick(now)
        return self.drain(now)

    def drain(self, now: float) -> list[Any]:
        out = []
        while (item := self.room.pop_output(now)) is not None:
            out.append(item)
        return out

    def request(self, now: float, msg: Any) -> tuple[int, list[Any]]:
        self.rid += 1
        return self.rid, self.feed(now, Request(self.rid, msg))

    def open(self, now: float, sid: str, role: str = "whip", text: str | None = None) -> Any:
        """Open and answer a session; return the reply value."""
        if text is None:
            text = offer("sendonly" if role == "whip" else "recvonly")
        rid, out = self.request(now, OpenSession(sid, role, text, f'"e-{sid}"'))  # type: ignore[arg-type]
        if out and isinstance(out[0], Reply):
            return out[0].msg
        assert out == [PeerOpen(sid, role, out[0].offer, out[0].source)]  # type: ignore[arg-type]
        out = self.feed(now, PeerAnswered(sid, ANSWER))
        assert len(out) == 1 and out[0].id == rid
        return out[0].msg


def replies(out: list[Any]) -> list[Any]:
    return [o.msg for o in out if isinstance(o, Reply)]


def test_open_publisher_holds_request_until_driver_answers() -> None:
    d = Driven()
    rid, out = d.request(0.0, OpenSession("p", "whip", offer(), '"e"'))
    assert len(out) == 1 and isinstance(out[0], PeerOpen)
    assert out[0].role == "whip" and out[0].source is None
    assert ".local" not in out[0].offer  # mDNS candidates never reach aiortc
    out = d.feed(0.1, PeerAnswered("p", ANSWER))
    assert out == [Reply(rid, Created("p", '"e"', out[0].msg.answer))]
    answer = out[0].msg.answer
    assert "a=rtcp-mux\r\na=rtcp-mux-only\r\n" in answer
    assert answer.count("a=candidate:") == 2


def test_offered_candidates_follow_ice_networks() -> None:
    d = Driven(ice_networks=("10.99.0.0/24",))
    created = d.open(0.0, "p")
    assert "10.99.0.1" in created.answer and "192.168.7.7" not in created.answer


def test_viewer_needs_a_publisher_409_with_retry_after() -> None:
    d = Driven(retry_after=7)
    assert d.open(0.0, "v", "whep") == Refused(409, "room 'r' has no publisher", 7)
    d404 = Driven(no_publisher_status=404)
    assert d404.open(0.0, "v", "whep") == Refused(404, "room 'r' has no publisher", None)


def test_viewer_gets_the_publisher_as_source() -> None:
    d = Driven()
    d.open(0.0, "p")
    _, out = d.request(1.0, OpenSession("v", "whep", offer("recvonly"), '"ev"'))
    assert isinstance(out[0], PeerOpen) and out[0].source == "p" and out[0].role == "whep"


def test_viewer_refused_while_publisher_still_negotiating() -> None:
    d = Driven()
    d.request(0.0, OpenSession("p", "whip", offer(), '"e"'))
    assert d.open(0.1, "v", "whep").status == 409


def test_second_publisher_conflicts() -> None:
    d = Driven()
    d.open(0.0, "p")
    assert d.open(0.1, "p2") == Refused(409, "room 'r' already has a publisher")


def test_room_limit_503_with_retry_after() -> None:
    d = Driven(max_sessions=2, retry_after=3)
    d.open(0.0, "p")
    assert isinstance(d.open(0.1, "v1", "whep"), Created)
    assert d.open(0.2, "v2", "whep") == Refused(503, "room 'r' is full", 3)


@pytest.mark.parametrize(
    ("text", "role", "status"),
    [
        ("garbage", "whip", 400),
        ("", "whip", 400),
        ("v=0\r\nthis is not sdp\r\n", "whip", 400),
        ("v=0\r\ns=-\r\n", "whip", 400),
        (offer().replace("a=ice-ufrag:abcd\r\n", ""), "whip", 400),
        (offer(kinds=("application",)), "whip", 422),
        (offer("recvonly"), "whip", 422),
        (offer("sendonly"), "whep", 422),
        ("v=0\r\nm=video\r\n", "whip", 400),
    ],
)
def test_bad_offers_are_refused_before_any_peer(text: str, role: str, status: int) -> None:
    d = Driven()
    if role == "whep":
        d.open(0.0, "p")
    reply = d.open(1.0, "x", role, text)
    assert isinstance(reply, Refused) and reply.status == status, reply
    assert "x" not in d.room.sessions


def test_driver_failure_refuses_and_frees_the_publisher_slot() -> None:
    d = Driven()
    rid, _ = d.request(0.0, OpenSession("p", "whip", offer(), '"e"'))
    out = d.feed(0.1, PeerFailed("p", 422, "no common codec"))
    assert Reply(rid, Refused(422, "no common codec")) in out
    assert not any(isinstance(o, ExtOut) for o in out)  # the server never knew it
    assert d.room.publisher is None
    assert d.room.is_empty()  # it never answered a session: it ends (a POST spawns anew)
    # A room that had a session lives on, and its publisher slot is free again.
    d = Driven()
    d.open(0.0, "p0")
    d.request(0.1, CloseSession("p0"))
    rid, _ = d.request(0.2, OpenSession("p", "whip", offer(), '"e"'))
    out = d.feed(0.3, PeerFailed("p", 422, "no common codec"))
    assert Reply(rid, Refused(422, "no common codec")) in out
    assert not d.room.is_empty()
    assert isinstance(d.open(0.4, "p2"), Created)


def test_patch_rules() -> None:
    d = Driven()
    d.open(0.0, "p")
    frag = (
        "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\nm=video 9 RTP/AVP 0\r\n"
        "a=mid:0\r\na=candidate:3 1 udp 1 10.99.0.2 7000 typ host\r\n"
        "a=candidate:4 1 udp 1 ffff.local 7001 typ host\r\na=end-of-candidates\r\n"
    )
    assert replies(d.request(1, PatchSession("nope", frag, '"e-p"'))[1]) == [
        Refused(404, "no such session")
    ]
    assert replies(d.request(1, PatchSession("p", frag, None))[1])[0].status == 428
    assert replies(d.request(1, PatchSession("p", frag, '"stale"'))[1])[0].status == 412
    _, out = d.request(1, PatchSession("p", frag, '"e-p"'))
    assert replies(out) == [Done(204)]
    trickles = [o for o in out if isinstance(o, PeerTrickle)]
    assert trickles == [
        PeerTrickle("p", (("0", "candidate:3 1 udp 1 10.99.0.2 7000 typ host"),), True)
    ]
    assert replies(d.request(1, PatchSession("p", frag, "*"))[1]) == [Done(204)]
    restart = frag.replace("ice-ufrag:abcd", "ice-ufrag:zzzz")
    assert replies(d.request(1, PatchSession("p", restart, "*"))[1])[0].status == 422
    bad = "a=candidate:1 2\r\n"
    assert replies(d.request(1, PatchSession("p", bad, '"e-p"'))[1])[0].status == 400


def test_delete_then_404_and_server_told() -> None:
    d = Driven()
    d.open(0.0, "p")
    _, out = d.request(1.0, CloseSession("p"))
    assert PeerClose("p") in out and Done(200) in replies(out)
    assert ExtOut(SessionEnded("r", "p", "deleted by the client")) in out
    assert replies(d.request(1.0, CloseSession("p"))[1]) == [Refused(404, "no such session")]


def test_publisher_leaving_ends_its_viewers() -> None:
    d = Driven(publisher_grace=0.0)
    d.open(0.0, "p")
    d.open(0.1, "v1", "whep")
    d.open(0.2, "v2", "whep")
    _, out = d.request(1.0, CloseSession("p"))
    assert {o.session for o in out if isinstance(o, PeerClose)} == {"p", "v1", "v2"}
    assert not d.room.sessions


def test_unconnected_session_times_out() -> None:
    d = Driven(connect_timeout=5.0)
    d.open(10.0, "p")
    assert d.room.next_deadline() == 15.0
    assert d.tick(14.9) == []
    out = d.tick(15.0)
    assert PeerClose("p") in out
    assert ExtOut(SessionEnded("r", "p", "ICE did not connect in time")) in out


def test_connected_session_has_no_deadline_until_disconnected() -> None:
    d = Driven(connect_timeout=5.0, disconnected_timeout=2.0)
    d.open(0.0, "p")
    d.feed(1.0, PeerState("p", "connected"))
    assert d.room.next_deadline() is None
    d.feed(3.0, PeerState("p", "disconnected"))
    assert d.room.next_deadline() == 5.0
    d.feed(4.0, PeerState("p", "connected"))  # came back in time
    assert d.room.next_deadline() is None
    d.feed(6.0, PeerState("p", "disconnected"))
    out = d.tick(8.0)
    assert ExtOut(SessionEnded("r", "p", "ICE lost")) in out


def test_failed_peer_ends_session() -> None:
    d = Driven()
    d.open(0.0, "p")
    out = d.feed(1.0, PeerState("p", "failed"))
    assert PeerClose("p") in out and not d.room.sessions


def test_keyframe_requests_are_rate_limited() -> None:
    d = Driven(keyframe_interval=1.0)
    d.open(0.0, "p")
    d.open(0.0, "v1", "whep")
    d.open(0.0, "v2", "whep")
    assert d.feed(5.0, PeerState("v1", "connected")) == [PeerKeyframe("p")]
    assert d.feed(5.2, PeerState("v2", "connected")) == []  # too soon: deferred
    assert d.room.next_deadline() == 6.0
    assert d.tick(6.0) == [PeerKeyframe("p")]


def test_media_counters_show_in_snapshot() -> None:
    d = Driven()
    d.open(0.0, "p")
    d.feed(1.0, PeerMedia("p", 42))
    (snap,) = replies(d.request(2.0, RoomInfo())[1])
    assert isinstance(snap, RoomSnapshot)
    assert snap.room == "r" and snap.sessions[0].frames == 42
    assert snap.sessions[0].state == "new" and snap.sessions[0].age == 2.0
    assert snap.sessions[0].bitrate_in is None and snap.sessions[0].rtt is None
    assert snap.grace_left is None
    d.feed(3.0, PeerMedia("p", 80, 512000, 1200, 3, 0.004, None))
    (snap,) = replies(d.request(3.0, RoomInfo())[1])
    info = snap.sessions[0]
    assert (info.frames, info.bitrate_in, info.bitrate_out) == (80, 512000, 1200)
    assert (info.packets_lost, info.jitter, info.rtt) == (3, 0.004, None)


def test_idle_room_ends_by_itself() -> None:
    d = Driven(idle_timeout=30.0)
    d.tick(0.0)
    assert d.room.next_deadline() == 30.0
    d.open(10.0, "p")
    d.request(11.0, CloseSession("p"))
    assert not d.room.is_empty()
    assert d.room.next_deadline() == 41.0
    d.tick(40.0)
    assert not d.room.is_empty()
    d.tick(41.0)
    assert d.room.is_empty()
    assert d.open(41.0, "late").status == 503  # a racing request is refused, not lost


def test_shutdown_closes_every_session() -> None:
    d = Driven()
    d.open(0.0, "p")
    d.open(0.0, "v", "whep")
    rid, _ = d.request(0.5, OpenSession("v2", "whep", offer("recvonly"), '"x"'))
    d.room.on_shutdown(1.0)
    out = d.drain(1.0)
    assert {o.session for o in out if isinstance(o, PeerClose)} == {"p", "v", "v2"}
    assert Reply(rid, Refused(503, "session ended: the publisher left")) in out
    assert d.room.is_empty()


def test_unknown_request_is_a_400_not_a_crash() -> None:
    d = Driven()
    assert replies(d.request(0, "hello")[1])[0].status == 400


def test_sdp_helpers() -> None:
    with pytest.raises(SdpError) as err:
        check_offer("nope", "whip")
    assert err.value.status == 400
    assert [m.kind for m in check_offer(offer(kinds=("audio", "video")), "whip").media] == [
        "audio",
        "video",
    ]
    fixed = add_rtcp_mux_only(offer(kinds=("audio", "video")))
    assert fixed.count("a=rtcp-mux-only") == 2
    assert add_rtcp_mux_only(fixed) == fixed
    frag = parse_fragment("a=ice-ufrag:u\na=ice-pwd:p\na=end-of-candidates\n")
    assert (frag.ufrag, frag.pwd, frag.end, frag.candidates) == ("u", "p", True, [])


def test_driver_that_never_answers_frees_the_session() -> None:
    d = Driven(connect_timeout=5.0)
    rid, _ = d.request(0.0, OpenSession("p", "whip", offer(), '"e"'))
    assert d.room.next_deadline() == 5.0
    out = d.tick(5.0)
    assert (
        Reply(rid, Refused(503, "session ended: the peer connection was not set up in time")) in out
    )
    assert PeerClose("p") in out and d.room.publisher is None


_SDP_LINES = st.sampled_from(
    [
        "v=0",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "m=audio 9",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "a=sendonly",
        "a=recvonly",
        "a=inactive",
        "a=mid:0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:0123456789012345678901",
        FINGERPRINT,
        "a=candidate:1 1 udp 2130706431 10.99.0.2 5000 typ host",
        "a=candidate:1 1 udp 1 x.local 5 typ host",
        "a=candidate:",
        "a=end-of-candidates",
        "a=rtcp-mux",
        "c=IN IP4 0.0.0.0",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.one_of(_SDP_LINES, st.text(max_size=40)), max_size=25),
    role=st.sampled_from(["whip", "whep"]),
)
def test_any_offer_or_fragment_gets_an_answer_never_an_exception(
    lines: list[str], role: str
) -> None:
    text = "\r\n".join(lines)
    d = Driven()
    d.open(0.0, "p")
    d.feed(0.5, PeerState("p", "connected"))
    _, out = d.request(1.0, OpenSession("x", role, text, '"x"'))  # type: ignore[arg-type]
    assert len(out) == 1 and isinstance(out[0], Reply | PeerOpen)
    if isinstance(out[0], Reply):
        assert out[0].msg.status in (400, 409, 422)
    _, out = d.request(2.0, PatchSession("p", text, "*"))
    (reply,) = replies(out)
    assert reply.status in (204, 400, 422)


# ------------------------------------------------------------------ offer bounds


@pytest.mark.parametrize(
    ("text", "status", "cfg"),
    [
        (build(("video", "video")), 422, {}),
        (build(("audio", "audio")), 422, {}),
        (build(("video",) * 60), 422, {}),
        (build(("video", "application")), 422, {}),
        (build(candidates=RoomConfig("r").max_candidates + 1), 422, {}),
        (build(candidates=3), 422, {"max_candidates": 2}),
        (build(fingerprint="none"), 400, {}),
        (build(("audio", "video"), fingerprint="first"), 400, {}),  # not in every m-section
        (offer() + "a=x\r\n" * 600, 400, {}),
    ],
)
def test_unbounded_offers_are_refused_before_any_peer(
    text: str, status: int, cfg: dict[str, Any]
) -> None:
    d = Driven(**cfg)
    _, out = d.request(0.0, OpenSession("p", "whip", text, '"e"'))
    assert len(out) == 1 and isinstance(out[0], Reply), out  # no PeerOpen
    assert out[0].msg.status == status, out[0].msg
    assert not d.room.sessions and d.room.publisher is None


def test_an_offer_at_the_candidate_limit_is_accepted() -> None:
    d = Driven(max_candidates=3)
    assert isinstance(d.open(0.0, "p", text=build(candidates=3)), Created)


# ------------------------------------------------------------------ trickle


def _frag(*candidates: str, end: bool = False) -> str:
    lines = ["a=ice-ufrag:abcd", "a=ice-pwd:0123456789012345678901", "m=video 9 RTP/AVP 0"]
    lines += ["a=mid:0", *(f"a=candidate:{c}" for c in candidates)]
    if end:
        lines.append("a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"


def _host(port: int, address: str = "10.99.0.2") -> str:
    return f"{port} 1 udp 2130706431 {address} {port} typ host"


def trickled(out: list[Any]) -> list[PeerTrickle]:
    return [o for o in out if isinstance(o, PeerTrickle)]


@pytest.mark.parametrize(
    "candidate",
    [
        "1 1 udp 1 10.99.0.2 7000 typ",
        "1 0 udp 1 10.99.0.2 7000 typ host",
        "1 1 sctp 1 10.99.0.2 7000 typ host",
        "1 1 udp high 10.99.0.2 7000 typ host",
        "1 1 udp 1 victim.example.org 7000 typ host",
        "1 1 udp 1 10.99.0.2 70000 typ host",
        "1 1 udp 1 10.99.0.2 7000 typ bogus",
        "1 1 udp 1 10.99.0.2 7000 typ srflx raddr nowhere rport 1",
        "1 1 udp 1 10.99.0.2 7000 typ srflx raddr 10.0.0.1 rport -1",
    ],
)
def test_patch_with_a_malformed_candidate_is_400_naming_it(candidate: str) -> None:
    d = Driven()
    d.open(0.0, "p")
    good = _host(7001)
    _, out = d.request(1.0, PatchSession("p", _frag(good, candidate), '"e-p"'))
    (reply,) = replies(out)
    assert isinstance(reply, Refused) and reply.status == 400
    assert candidate in reply.reason
    assert trickled(out) == []  # not even the good one before it


def test_remote_candidates_are_capped_per_session() -> None:
    d = Driven(max_candidates=5)
    d.open(0.0, "p", text=build(candidates=2))  # the offer brings 2

    def patch(*candidates: str, end: bool = False) -> tuple[Any, list[PeerTrickle]]:
        _, out = d.request(1.0, PatchSession("p", _frag(*candidates, end=end), '"e-p"'))
        (reply,) = replies(out)
        return reply, trickled(out)

    reply, sent = patch(_host(7000), _host(7001), _host(7002), _host(7003))  # 2 + 4 > 5
    assert reply.status == 422 and "limit is 5" in reply.reason and sent == []
    reply, sent = patch(_host(7000), _host(7001))  # none of the refused ones was counted
    assert reply == Done(204) and [len(t.candidates) for t in sent] == [2]
    # Candidates the session already has are neither counted nor sent again.
    reply, sent = patch(_host(5000), _host(7000), end=True)
    assert reply == Done(204) and sent == [PeerTrickle("p", (), True)]
    # The last slot goes to an mDNS candidate: counted, but never sent to aiortc.
    reply, sent = patch(_host(7005, "0a1b2c3d-0000.local"))
    assert reply == Done(204) and sent == []
    reply, sent = patch(_host(7006))
    assert reply.status == 422 and sent == []
    # A fragment larger than the cap is refused by itself.
    reply, sent = patch(*(_host(8000 + i) for i in range(6)))
    assert reply.status == 422 and sent == []


def test_the_cap_is_per_session() -> None:
    d = Driven(max_candidates=2)
    d.open(0.0, "p", text=build(candidates=2))
    d.open(0.0, "v", "whep", text=build(direction="recvonly", candidates=0))
    _, out = d.request(1.0, PatchSession("v", _frag(_host(7000), _host(7001)), '"e-v"'))
    assert replies(out) == [Done(204)]
    _, out = d.request(1.0, PatchSession("p", _frag(_host(7000)), '"e-p"'))
    assert replies(out)[0].status == 422


# ------------------------------------------------------------------ If-Match


@pytest.mark.parametrize(
    ("if_match", "status"),
    [
        ('"e-p"', 204),
        ("*", 204),
        (" * ", 204),
        ('"x", "e-p"', 204),
        ('"x","e-p" ,"y"', 204),
        (', "e-p",,', 204),  # empty list elements are allowed (RFC 9110 §5.6.1)
        ('"x"', 412),
        ('"x", "y"', 412),
        ('W/"e-p"', 412),  # weak tags never match under strong comparison
        ('"x", W/"e-p"', 412),
        ("", 412),
        ("e-p", 412),  # malformed: no quotes
        ('w/"e-p"', 412),  # malformed: W/ is case-sensitive
        ('"e-p", *', 412),  # malformed: * cannot be in a list
        ('"e-p" "x"', 412),  # malformed: no comma
        ('"e-p', 412),
    ],
)
def test_if_match_lists(if_match: str, status: int) -> None:
    d = Driven()
    d.open(0.0, "p")
    (reply,) = replies(d.request(1.0, PatchSession("p", _frag(), if_match))[1])
    assert reply.status == status, reply


def test_if_match_tags() -> None:
    assert if_match_tags("*") == ["*"]
    assert if_match_tags('"a", W/"b",, "c,d"') == ['"a"', 'W/"b"', '"c,d"']
    assert if_match_tags("") == []
    assert if_match_tags('"a", *') is None
    assert if_match_tags('"a"x') is None
    assert if_match_tags('"\x00"') is None


# ------------------------------------------------------------------ the room's end


@pytest.mark.parametrize("how", ["no publisher", "bad offer", "driver failed", "never answered"])
def test_a_room_that_never_answered_ends_once_it_has_no_session(how: str) -> None:
    d = Driven(connect_timeout=5.0, idle_timeout=30.0)
    d.tick(0.0)
    assert not d.room.is_empty()  # a fresh room waits for its first request
    if how == "no publisher":
        assert d.open(1.0, "v", "whep").status == 409
    elif how == "bad offer":
        assert d.open(1.0, "p", text=build(("video", "video"))).status == 422
    elif how == "driver failed":
        d.request(1.0, OpenSession("p", "whip", offer(), '"e"'))
        assert not d.room.is_empty()  # negotiating
        d.feed(1.5, PeerFailed("p", 400, "bad SDP"))
    else:
        d.request(1.0, OpenSession("p", "whip", offer(), '"e"'))
        assert not d.room.is_empty()
        d.tick(6.0)
    assert d.room.is_empty()  # at once, not 30 s later


def test_a_room_that_had_a_session_keeps_its_idle_timeout() -> None:
    d = Driven(idle_timeout=30.0)
    d.open(0.0, "p")
    d.request(1.0, CloseSession("p"))
    assert d.open(2.0, "v", "whep").status == 409  # a refused open does not end it now
    assert d.open(3.0, "x", text="garbage").status == 400
    assert not d.room.is_empty() and d.room.next_deadline() == 31.0
    d.tick(31.0)
    assert d.room.is_empty()


def test_a_viewer_refused_while_the_publisher_negotiates_keeps_the_room() -> None:
    d = Driven()
    d.request(0.0, OpenSession("p", "whip", offer(), '"e"'))
    assert d.open(0.1, "v", "whep").status == 409
    assert not d.room.is_empty()
    d.feed(0.2, PeerAnswered("p", ANSWER))
    assert d.open(0.3, "v", "whep").__class__ is Created


# ------------------------------------------------------------------ publisher grace


def connected_room(grace: float = 5.0, viewers: tuple[str, ...] = ("v1", "v2")) -> Driven:
    """A room with publisher ``p`` and ``viewers``, all connected at t=1."""
    d = Driven(publisher_grace=grace)
    d.open(0.0, "p")
    for v in viewers:
        d.open(0.5, v, "whep")
    for sid in ("p", *viewers):
        d.feed(1.0, PeerState(sid, "connected"))
    return d


def closed(out: list[Any]) -> set[str]:
    return {o.session for o in out if isinstance(o, PeerClose)}


def snapshot(d: Driven, now: float) -> RoomSnapshot:
    (snap,) = replies(d.request(now, RoomInfo())[1])
    assert isinstance(snap, RoomSnapshot)
    return snap


def test_the_publisher_leaving_keeps_its_viewers_for_the_grace() -> None:
    d = connected_room()
    _, out = d.request(10.0, CloseSession("p"))
    assert closed(out) == {"p"} and Done(200) in replies(out)
    assert ExtOut(SessionEnded("r", "p", "deleted by the client")) in out
    assert set(d.room.sessions) == {"v1", "v2"} and d.room.publisher is None
    assert d.room.next_deadline() == 15.0
    assert snapshot(d, 11.0).grace_left == 4.0
    assert d.tick(14.9) == []
    out = d.tick(15.0)
    assert closed(out) == {"v1", "v2"}
    assert ExtOut(SessionEnded("r", "v1", "the publisher left")) in out
    assert snapshot(d, 15.0).grace_left is None
    assert d.open(16.0, "v3", "whep").status == 409  # no publisher, none awaited


def test_a_new_publisher_takes_the_viewers_over() -> None:
    d = connected_room()
    d.request(10.0, CloseSession("p"))
    rid, out = d.request(12.0, OpenSession("p2", "whip", offer(), '"e-p2"'))
    assert [type(o) for o in out] == [PeerOpen]
    assert d.room.next_deadline() == 15.0  # still waiting while p2 negotiates
    assert d.open(12.5, "p3").status == 409  # one publisher at a time
    out = d.feed(12.6, PeerAnswered("p2", ANSWER))
    assert isinstance(out[0], Reply) and out[0].id == rid and isinstance(out[0].msg, Created)
    assert out[1:] == [PeerSwitch("p2", ("v1", "v2"))]
    assert snapshot(d, 12.7).grace_left is None
    assert d.room.next_deadline() == 12.6 + d.room.config.connect_timeout  # p2 must connect
    # connected: a keyframe at once (the viewers' decoders start on it)
    assert d.feed(13.0, PeerState("p2", "connected")) == [PeerKeyframe("p2")]
    assert d.tick(15.0) == [] and set(d.room.sessions) == {"p2", "v1", "v2"}
    assert all(d.room.sessions[v].state == "connected" for v in ("v1", "v2"))
    # and the room is an ordinary one again: its publisher leaving starts a new grace
    d.request(20.0, CloseSession("p2"))
    assert d.room.next_deadline() == 25.0


def test_viewers_are_accepted_while_the_room_waits() -> None:
    d = connected_room(viewers=("v1",))
    d.request(10.0, CloseSession("p"))
    _, out = d.request(11.0, OpenSession("v2", "whep", offer("recvonly"), '"e-v2"'))
    assert out == [PeerOpen("v2", "whep", out[0].offer, None)]  # no source yet
    assert isinstance(replies(d.feed(11.1, PeerAnswered("v2", ANSWER)))[0], Created)
    # a viewer connecting with no publisher asks for no keyframe
    assert d.feed(11.5, PeerState("v2", "connected")) == []
    d.request(12.0, OpenSession("p2", "whip", offer(), '"e"'))
    out = d.feed(12.1, PeerAnswered("p2", ANSWER))
    assert out[1:] == [PeerSwitch("p2", ("v1", "v2"))]  # the new viewer too


def test_a_returning_publisher_that_fails_does_not_restart_the_wait() -> None:
    d = connected_room()
    d.request(10.0, CloseSession("p"))
    rid, _ = d.request(11.0, OpenSession("p2", "whip", offer(), '"e"'))
    out = d.feed(12.0, PeerFailed("p2", 422, "no common codec"))
    assert Reply(rid, Refused(422, "no common codec")) in out
    assert closed(out) == {"p2"} and set(d.room.sessions) == {"v1", "v2"}
    assert d.room.next_deadline() == 15.0
    assert closed(d.tick(15.0)) == {"v1", "v2"}


def test_the_wait_ends_when_the_last_viewer_leaves() -> None:
    d = connected_room()
    d.request(10.0, CloseSession("p"))
    d.request(11.0, CloseSession("v1"))
    assert d.room.next_deadline() == 15.0
    d.request(12.0, CloseSession("v2"))
    assert snapshot(d, 12.0).grace_left is None
    assert d.room.next_deadline() == 12.0 + d.room.config.idle_timeout
    assert d.open(13.0, "v3", "whep").status == 409


@pytest.mark.parametrize("how", ["grace=0", "CloseSession(grace=False)", "no viewer"])
def test_no_wait(how: str) -> None:
    d = connected_room(
        grace=0.0 if how == "grace=0" else 5.0, viewers=() if how == "no viewer" else ("v1",)
    )
    _, out = d.request(10.0, CloseSession("p", grace=how != "CloseSession(grace=False)"))
    if how != "no viewer":
        assert closed(out) == {"p", "v1"}
        assert ExtOut(SessionEnded("r", "v1", "the publisher left")) in out
    assert not d.room.sessions and snapshot(d, 10.0).grace_left is None
    assert d.open(11.0, "v", "whep").status == 409


@pytest.mark.parametrize(
    "gone",
    [
        PeerFailed("p", 410, "no packets from the peer for 10 s"),
        PeerState("p", "failed"),
        PeerState("p", "closed"),
    ],
)
def test_a_publisher_that_fails_or_goes_silent_gets_the_grace_too(gone: Any) -> None:
    d = connected_room()
    out = d.feed(10.0, gone)
    assert closed(out) == {"p"} and d.room.next_deadline() == 15.0


def test_a_publisher_that_loses_ice_gets_the_grace_too() -> None:
    d = connected_room()
    d.feed(10.0, PeerState("p", "disconnected"))
    out = d.tick(10.0 + d.room.config.disconnected_timeout)
    assert closed(out) == {"p"} and set(d.room.sessions) == {"v1", "v2"}


def test_shutdown_while_waiting_closes_everything() -> None:
    d = connected_room()
    d.request(10.0, CloseSession("p"))
    d.room.on_shutdown(11.0)
    assert closed(d.drain(11.0)) == {"v1", "v2"}
    assert d.room.is_empty()
