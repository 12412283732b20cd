"""The room: a pure Sans-I/O task that owns the sessions of one stream.

Theory of operation
-------------------
One :class:`Room` task per stream name, pinned to one worker (so its publisher and all
its viewers share that worker's media). It never touches aiortc: it answers the HTTP
layer's requests (``Request(id, OpenSession | PatchSession | CloseSession | RoomInfo)``)
and drives the worker's WebRTC driver with commands (``PeerOpen``, ``PeerTrickle``,
``PeerKeyframe``, ``PeerClose``, ``PeerSwitch``); the driver reports back with
``PeerAnswered``, ``PeerFailed``, ``PeerState`` and ``PeerMedia`` inputs (the last one
also carries the session's bitrates, loss, jitter and RTT, kept for ``RoomInfo``).

A session moves through these states (the table is :data:`TRANSITIONS`)::

    negotiating --PeerAnswered--> new --PeerState(connected)--> connected
         |                         |  <--PeerState(connecting/new)--    |
         |                         +--> disconnected <--PeerState------+
         +--PeerFailed--> (gone)         any --failed/closed/timeout/DELETE--> (gone)

An ``OpenSession`` request is held open while the driver negotiates: the room keeps the
request id and replies ``Created`` (or ``Refused``) when the driver answers, so the HTTP
handler awaits one ``Runtime.request``. Deadlines (``next_deadline``) free sessions that
the driver never answers or that never connect (``connect_timeout``) or that lose ICE
(``disconnected_timeout``), and rate-limit keyframe requests. Session ids and ETags come
from the server, so the task is deterministic under the test harness.

The publisher's departure (deleted, failed, timed out, or reported silent by the driver
with ``PeerFailed``) and its replacement (an encoder restart): the room as a whole moves
through three states::

    no publisher --WHIP answered--> publishing --publisher gone, viewers,--> waiting
         ^                               ^          publisher_grace > 0        |
         |                               +------ new publisher answered -------+
         +---- publisher gone, no viewers (or grace 0) ---+                    |
         +---------------- publisher_grace over, or no viewer left ------------+

While **waiting**, the viewers' sessions stay (their peer connections too: the driver
keeps their outgoing tracks, idle) and new viewers are accepted (``PeerOpen`` with no
source: they get the stream when a publisher comes). A new publisher is accepted as
usual; once the driver answers it, the room emits ``PeerSwitch(new, viewers)`` (the
driver re-attaches every viewer's tracks to the new publisher's media) and, once it is
connected, ``PeerKeyframe`` at once. A new publisher that fails before its answer does
not restart the wait. When ``publisher_grace`` passes with no new publisher, or the last
viewer leaves, the viewers end with "the publisher left", as they do at once with
``publisher_grace == 0`` or ``CloseSession(grace=False)``.

Bounds. The offer is checked by :func:`~sansio_aio.webrtc._sdp.check_offer` (one audio
and one video m-section at most, ``max_candidates`` candidates, a DTLS fingerprint, sane
sizes) before any peer connection exists. Each session counts its distinct remote
candidates (component, transport, address, port) across the offer and every trickled
``PATCH``; a ``PATCH`` that would take it past ``max_candidates`` is refused with 422 and
adds none (repeated candidates are dropped, neither counted nor forwarded).

The room's end. A room that has had an answered session ends ``idle_timeout`` after its
last session went. A room that never had one (every ``OpenSession`` was refused or
failed before the driver answered: a viewer of an unknown stream, a bad offer) ends at
once, as soon as it has no session left, so refused requests do not leave idle tasks
behind. A request racing that end meets an ended task; the HTTP layer retries it once
on a fresh room (``UnknownTarget``). A fresh room waits for its first request: it does
not end before it got one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .._events import ExtOut, Reply, Request
from .._task import Task
from ._config import RoomConfig
from ._errors import SdpError
from ._events import (
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
    PeerSwitch,
    PeerTrickle,
    Refused,
    Role,
    RoomInfo,
    RoomSnapshot,
    SessionEnded,
    SessionInfo,
)
from ._sdp import (
    add_rtcp_mux_only,
    address_filter,
    check_offer,
    filter_candidates,
    parse_candidate,
    parse_fragment,
    strip_mdns_candidates,
)

__all__ = ["TRANSITIONS", "Room", "if_match_tags"]

#: Session state -> the peer states that move it, and where to. Anything reaching
#: ``failed`` or ``closed`` ends the session.
TRANSITIONS: dict[str, dict[str, str]] = {
    "negotiating": {},  # only PeerAnswered / PeerFailed leave it
    "new": {"connecting": "new", "connected": "connected", "disconnected": "disconnected"},
    "connected": {"disconnected": "disconnected", "connected": "connected"},
    "disconnected": {"connected": "connected", "connecting": "disconnected"},
}


_TIMEOUT_REASONS = {
    "negotiating": "the peer connection was not set up in time",
    "new": "ICE did not connect in time",
}


@dataclass(slots=True)
class _Session:
    id: str
    role: Role
    etag: str
    opened: float
    ufrag: str | None
    pwd: str | None
    state: str = "negotiating"
    request: int | None = None  # the OpenSession request waiting for the driver
    deadline: float | None = None
    frames: int = 0
    bitrate_in: int | None = None
    bitrate_out: int | None = None
    packets_lost: int | None = None
    jitter: float | None = None
    rtt: float | None = None
    #: Distinct remote candidates so far (``Candidate.key``), offer and trickle.
    candidates: set[tuple[int, str, str, int]] = field(default_factory=set)


# RFC 9110 §8.8.3: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE, etagc = %x21 / %x23-7E /
# obs-text; list elements are separated by commas with optional whitespace (§5.6.1).
_ETAG = re.compile(r'[ \t]*(W/)?("[\x21\x23-\x7e\x80-\xff]*")[ \t]*(?:,|$)')
_EMPTY_ELEMENT = re.compile(r"[ \t]*,")


def if_match_tags(value: str) -> list[str] | None:
    """The entity-tags of an ``If-Match`` field value (RFC 9110 §13.1.1), or ``None``.

    ``*`` alone gives ``["*"]``; a list gives its tags in order, weak ones with their
    ``W/`` prefix (so they never equal a strong tag); empty list elements are skipped
    (§5.6.1). ``None`` means the value is malformed (``*`` mixed with tags, a tag
    without quotes, a lower-case ``w/``, a stray character).
    """
    if value.strip(" \t") == "*":
        return ["*"]
    tags: list[str] = []
    pos, end = 0, len(value)
    while pos < end:
        empty = _EMPTY_ELEMENT.match(value, pos)
        if empty is not None:
            pos = empty.end()
            continue
        if not value[pos:].strip(" \t"):
            break
        m = _ETAG.match(value, pos)
        if m is None:
            return None
        tags.append((m.group(1) or "") + m.group(2))
        pos = m.end()
    return tags


class Room(Task):
    """The sessions of one stream: one publisher (WHIP) and its viewers (WHEP).

    Built by the runtime as ``Room(RoomConfig(...))``.
    """

    def __init__(self, cfg: RoomConfig) -> None:
        super().__init__(cfg)
        self.config = cfg
        self.name = cfg.name
        self.sessions: dict[str, _Session] = {}
        self.publisher: str | None = None
        self._idle_since: float | None = None
        self._keyframe_at = float("-inf")
        self._keyframe_due: float | None = None
        #: While the room waits for a new publisher (its publisher left): until when.
        self._grace_until: float | None = None
        self._allowed = address_filter(cfg.ice_networks)
        self._done = False
        #: An ``OpenSession`` was handled (a fresh room waits for its first request).
        self._asked = False
        #: A session was answered (``Created``): the room then ends by idle timeout only.
        self._answered = False

    # ------------------------------------------------------------------ task protocol

    def on_event(self, now: float, event: Any) -> None:
        """Dispatch a request from the HTTP layer or an input from the driver."""
        kind = type(event)
        if kind is Request:
            self._on_request(now, event.id, event.msg)
        elif kind is PeerAnswered:
            self._on_answered(now, event)
        elif kind is PeerState:
            self._on_state(now, event)
        elif kind is PeerFailed:
            self._on_failed(now, event)
        elif kind is PeerMedia:
            s = self.sessions.get(event.session)
            if s is not None:
                s.frames = event.frames
                s.bitrate_in = event.bitrate_in
                s.bitrate_out = event.bitrate_out
                s.packets_lost = event.packets_lost
                s.jitter = event.jitter
                s.rtt = event.rtt
        self._update_idle(now)
        self._end_if_unused()

    def on_tick(self, now: float) -> None:
        """Run timeouts: unconnected or disconnected sessions, keyframes, room idleness."""
        for s in list(self.sessions.values()):
            if s.deadline is not None and s.deadline <= now:
                self._end(now, s, _TIMEOUT_REASONS.get(s.state, "ICE lost"))
        if self._grace_until is not None and self._grace_until <= now:
            self._stop_waiting(now)
        if self._keyframe_due is not None and self._keyframe_due <= now:
            self._keyframe_due = None
            self._keyframe(now)
        self._update_idle(now)
        if (
            self._idle_since is not None
            # the same sum next_deadline() reports: a difference can round below it
            and now >= self._idle_since + self.config.idle_timeout
            and not self.sessions
        ):
            self._done = True
        self._end_if_unused()

    def on_shutdown(self, now: float) -> None:
        """Close every session; the room is empty once its outputs are popped."""
        self.closing = True
        for s in list(self.sessions.values()):
            self._end(now, s, "server shutting down")

    def is_empty(self) -> bool:
        """Empty, with nothing left to pop, when shut down, idle for ``idle_timeout``, or
        left without sessions and never having answered one (see the module docs)."""
        return (self.closing or self._done) and not self.sessions and not self._outputs

    def next_deadline(self) -> float | None:
        """The earliest session timeout, keyframe slot, end of a grace, or idle end."""
        times = [s.deadline for s in self.sessions.values() if s.deadline is not None]
        if self._keyframe_due is not None:
            times.append(self._keyframe_due)
        if self._grace_until is not None:
            times.append(self._grace_until)
        if self._idle_since is not None and not self.sessions:
            times.append(self._idle_since + self.config.idle_timeout)
        return min(times) if times else None

    # ------------------------------------------------------------------ requests

    def _on_request(self, now: float, rid: int, msg: Any) -> None:
        kind = type(msg)
        if kind is OpenSession:
            self._open(now, rid, msg)
        elif kind is PatchSession:
            self.emit(Reply(rid, self._patch(msg)))
        elif kind is CloseSession:
            s = self.sessions.get(msg.session)
            if s is None:
                self.emit(Reply(rid, Refused(404, "no such session")))
            else:
                self._end(now, s, "deleted by the client", grace=msg.grace)
                self.emit(Reply(rid, Done(200)))
        elif kind is RoomInfo:
            self.emit(Reply(rid, self.snapshot(now)))
        else:
            self.emit(Reply(rid, Refused(400, f"unknown room request {kind.__name__}")))

    def _open(self, now: float, rid: int, msg: OpenSession) -> None:
        cfg = self.config
        if self.closing or self._done:
            self.emit(Reply(rid, Refused(503, "the room is closing", cfg.retry_after)))
            return
        self._asked = True
        if msg.session in self.sessions:
            self.emit(Reply(rid, Refused(409, "session id already in use")))
            return
        try:
            offer = check_offer(msg.offer, msg.role, max_candidates=cfg.max_candidates)
        except SdpError as exc:
            self.emit(Reply(rid, Refused(exc.status, exc.reason)))
            return
        source: str | None = None
        if msg.role == "whip":
            if self.publisher is not None:
                self.emit(Reply(rid, Refused(409, f"room {self.name!r} already has a publisher")))
                return
        else:
            pub = self.sessions.get(self.publisher) if self.publisher else None
            if pub is not None and pub.state != "negotiating":
                source = pub.id
            elif self._grace_until is None:
                status = cfg.no_publisher_status
                retry = cfg.retry_after if status == 409 else None
                why = f"room {self.name!r} has no publisher"
                self.emit(Reply(rid, Refused(status, why, retry)))
                return
            # else: waiting for a new publisher; this viewer gets it when it comes
        if len(self.sessions) >= cfg.max_sessions:
            self.emit(Reply(rid, Refused(503, f"room {self.name!r} is full", cfg.retry_after)))
            return
        if msg.role == "whip":
            self.publisher = msg.session
        text = msg.offer if cfg.allow_mdns else strip_mdns_candidates(msg.offer)
        s = _Session(msg.session, msg.role, msg.etag, now, offer.ufrag, offer.pwd, request=rid)
        s.candidates = {c.key for c in offer.candidates}
        s.deadline = now + cfg.connect_timeout  # the driver must answer by then, too
        self.sessions[s.id] = s
        self.emit(PeerOpen(s.id, msg.role, text, source))

    def _patch(self, msg: PatchSession) -> Created | Done | Refused:
        """Trickle candidates into a session.

        ``If-Match`` (RFC 9110 §13.1.1): missing: 428 (RFC 9725); ``*``, or a list naming
        the session's ETag under strong comparison (a weak ``W/"..."`` tag never
        matches): the PATCH proceeds; anything else: 412. A malformed value (see
        :func:`if_match_tags`) is 412 too, not 400: RFC 9110 gives no status for it, a
        value without a valid entity-tag can never evaluate to true, and §13.1.1
        answers a false condition with 412 (a 400 would blame the body). Then the
        fragment is read: 400 when malformed; 422 for an ICE restart, or when its new
        candidates would take the session past ``max_candidates`` (none is added).
        """
        s = self.sessions.get(msg.session)
        if s is None:
            return Refused(404, "no such session")
        if msg.if_match is None:
            return Refused(428, "PATCH needs If-Match with the session's ETag")
        tags = if_match_tags(msg.if_match)
        if tags is None:
            return Refused(412, "malformed If-Match (RFC 9110 §13.1.1): no entity-tag matches")
        if tags != ["*"] and (s.etag.startswith("W/") or s.etag not in tags):
            return Refused(412, "If-Match does not match the session's ETag")
        try:
            frag = parse_fragment(msg.fragment, max_candidates=self.config.max_candidates)
        except SdpError as exc:
            return Refused(exc.status, exc.reason)
        restart = (frag.ufrag is not None and frag.ufrag != s.ufrag) or (
            frag.pwd is not None and frag.pwd != s.pwd
        )
        if restart:
            return Refused(422, "ICE restart is not supported by this server (aiortc)")
        fresh: list[tuple[str | None, str]] = []
        keys: set[tuple[int, str, str, int]] = set()
        for mid, line in frag.candidates:
            key = parse_candidate(line).key
            if key not in s.candidates and key not in keys:
                keys.add(key)
                fresh.append((mid, line))
        limit = self.config.max_candidates
        if len(s.candidates) + len(keys) > limit:
            return Refused(
                422,
                f"too many ICE candidates: the session has {len(s.candidates)}, the fragment "
                f"adds {len(keys)}, the limit is {limit}; none were added",
            )
        s.candidates |= keys
        cands = fresh
        if not self.config.allow_mdns:
            cands = [(m, c) for m, c in cands if not c.split()[4].lower().endswith(".local")]
        if cands or frag.end:
            self.emit(PeerTrickle(s.id, tuple(cands), frag.end))
        return Done(204)

    # ------------------------------------------------------------------ driver inputs

    def _on_answered(self, now: float, event: PeerAnswered) -> None:
        s = self.sessions.get(event.session)
        if s is None or s.state != "negotiating":
            return
        answer = add_rtcp_mux_only(event.answer)
        if self._allowed is not None:
            answer = filter_candidates(answer, self._allowed)
        s.state = "new"
        s.deadline = now + self.config.connect_timeout
        self._answered = True
        if s.request is not None:
            self.emit(Reply(s.request, Created(s.id, s.etag, answer)))
            s.request = None
        if s.id == self.publisher:
            self._grace_until = None  # a new publisher took over
            viewers = tuple(v.id for v in self.sessions.values() if v.role == "whep")
            if viewers:
                self.emit(PeerSwitch(s.id, viewers))

    def _on_failed(self, now: float, event: PeerFailed) -> None:
        s = self.sessions.get(event.session)
        if s is None:
            return
        if s.request is not None:
            self.emit(Reply(s.request, Refused(event.status, event.reason)))
            s.request = None
        self._end(now, s, event.reason)

    def _on_state(self, now: float, event: PeerState) -> None:
        s = self.sessions.get(event.session)
        if s is None or s.state == "negotiating":
            return
        if event.state in ("failed", "closed"):
            self._end(now, s, f"peer connection {event.state}")
            return
        new = TRANSITIONS.get(s.state, {}).get(event.state)
        if new is None or new == s.state:
            return
        s.state = new
        if new == "connected":
            s.deadline = None
            if s.role == "whep" or any(v.role == "whep" for v in self.sessions.values()):
                self._keyframe(now)  # a viewer starts, or a new publisher has viewers
        elif new == "disconnected":
            s.deadline = now + self.config.disconnected_timeout

    # ------------------------------------------------------------------ helpers

    def _keyframe(self, now: float) -> None:
        if self.publisher is None:
            return
        ready = self._keyframe_at + self.config.keyframe_interval
        if now < ready:
            if self._keyframe_due is None:
                self._keyframe_due = ready
            return
        self._keyframe_at = now
        self.emit(PeerKeyframe(self.publisher))

    def _end(self, now: float, s: _Session, reason: str, *, grace: bool = True) -> None:
        if self.sessions.pop(s.id, None) is None:
            return
        self.emit(PeerClose(s.id))
        if s.request is not None:
            self.emit(Reply(s.request, Refused(503, f"session ended: {reason}")))
            s.request = None
        elif s.state != "negotiating":  # the server knows it (it got ``Created``)
            self.emit(ExtOut(SessionEnded(self.name, s.id, reason)))
        if s.id == self.publisher:
            self.publisher = None
            self._keyframe_due = None
            self._keyframe_at = float("-inf")  # the next publisher's first request is due
            viewers = any(v.role == "whep" for v in self.sessions.values())
            wait = grace and viewers and self.config.publisher_grace > 0 and not self.closing
            if not wait:
                self._stop_waiting(now)
            elif self._grace_until is None:  # a returning publisher that failed: no restart
                self._grace_until = now + self.config.publisher_grace
        elif self._grace_until is not None and not any(
            v.role == "whep" for v in self.sessions.values()
        ):
            self._grace_until = None  # nobody left to keep

    def _stop_waiting(self, now: float) -> None:
        """No publisher, and none awaited: end the viewers."""
        self._grace_until = None
        for viewer in list(self.sessions.values()):
            if viewer.role == "whep":
                self._end(now, viewer, "the publisher left")

    def _end_if_unused(self) -> None:
        """End a room that was asked for sessions, never answered one, and has none."""
        if self._asked and not self._answered and not self.sessions:
            self._done = True

    def _update_idle(self, now: float) -> None:
        if self.sessions:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now

    def snapshot(self, now: float) -> RoomSnapshot:
        """The room's sessions as plain data (for the stats endpoint)."""
        grace = self._grace_until
        return RoomSnapshot(
            self.name,
            [
                SessionInfo(
                    s.id,
                    s.role,
                    s.state,
                    round(now - s.opened, 3),
                    s.frames,
                    s.bitrate_in,
                    s.bitrate_out,
                    s.packets_lost,
                    s.jitter,
                    s.rtt,
                )
                for s in self.sessions.values()
            ],
            None if grace is None else round(max(0.0, grace - now), 3),
        )
