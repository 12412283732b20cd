"""The WHIP/WHEP vocabulary: room requests and replies, peer commands and peer inputs.

Three families of small slotted dataclasses, all plain data (picklable) and free of
asyncio and aiortc:

* **Room requests** (the HTTP server -> a room task, through ``Runtime.request``):
  :class:`OpenSession`, :class:`PatchSession`, :class:`CloseSession`, :class:`RoomInfo`.
  The room answers each with a :class:`Created`, :class:`Done`, :class:`Refused` or
  :class:`RoomSnapshot` reply value.
* **Peer commands** (room task outputs, performed by
  :class:`~sansio_aio.webrtc._driver.WebRtcDriver`): :class:`PeerOpen`,
  :class:`PeerTrickle`, :class:`PeerKeyframe`, :class:`PeerClose`, :class:`PeerSwitch`.
* **Peer inputs** (the driver -> the room task): :class:`PeerAnswered`,
  :class:`PeerFailed`, :class:`PeerState`, :class:`PeerMedia`.

Application events (room -> the server, as ``ExtOut``): :class:`SessionEnded`.
Don't subclass these: the worker routes outputs by exact type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, final

__all__ = [
    "CloseSession",
    "Created",
    "Done",
    "OpenSession",
    "PatchSession",
    "PeerAnswered",
    "PeerClose",
    "PeerFailed",
    "PeerKeyframe",
    "PeerMedia",
    "PeerOpen",
    "PeerState",
    "PeerSwitch",
    "PeerTrickle",
    "Refused",
    "Role",
    "RoomInfo",
    "RoomSnapshot",
    "SessionEnded",
    "SessionInfo",
]

#: ``"whip"`` for a publisher (ingest), ``"whep"`` for a viewer (egress).
Role = Literal["whip", "whep"]

# ------------------------------------------------------------------ room requests


@final
@dataclass(slots=True)
class OpenSession:
    """Create a session from an SDP offer (HTTP ``POST`` on an endpoint)."""

    #: The session id (unguessable, chosen by the server).
    session: str
    #: ``"whip"`` (publish) or ``"whep"`` (view).
    role: Role
    #: The client's SDP offer.
    offer: str
    #: The session's entity tag, as sent in ``ETag`` (quoted).
    etag: str


@final
@dataclass(slots=True)
class PatchSession:
    """Trickle ICE candidates (or ask for an ICE restart): HTTP ``PATCH``."""

    session: str
    #: The ``trickle-ice-sdpfrag`` body.
    fragment: str
    #: The ``If-Match`` header value, or ``None`` when absent.
    if_match: str | None


@final
@dataclass(slots=True)
class CloseSession:
    """End a session (HTTP ``DELETE``)."""

    session: str
    #: For a publisher: ``True`` keeps its viewers for the room's ``publisher_grace``
    #: (a new publisher may take over); ``False`` ends them at once (a cluster edge
    #: tearing down, a room taken over by another node).
    grace: bool = True


@final
@dataclass(slots=True)
class RoomInfo:
    """Ask a room for a :class:`RoomSnapshot` (the stats endpoint)."""


# ------------------------------------------------------------------ room replies


@final
@dataclass(slots=True)
class Created:
    """A session was created: send ``answer`` with 201."""

    session: str
    etag: str
    #: The SDP answer (all candidates, ``a=rtcp-mux-only``).
    answer: str


@final
@dataclass(slots=True)
class Done:
    """The request succeeded with ``status`` (204 for a trickle, 200 for a delete)."""

    status: int


@final
@dataclass(slots=True)
class Refused:
    """The request failed: answer ``status`` with ``reason`` as the text body."""

    status: int
    reason: str
    #: Seconds for a ``Retry-After`` header (409 no publisher, 503 full), or ``None``.
    retry_after: int | None = None


@final
@dataclass(slots=True)
class SessionInfo:
    """One session as the stats endpoint shows it."""

    session: str
    role: Role
    #: ``negotiating``, then the peer connection's state (``connected``, ...).
    state: str
    #: Seconds since the session was opened.
    age: float
    #: Video frames received (publisher) or relayed towards the viewer, per the driver.
    frames: int
    #: Bits per second received from the peer over its transport (RTP, RTCP, DTLS and
    #: ICE; about one second's average); ``None`` until known.
    bitrate_in: int | None = None
    #: Bits per second sent to the peer over its transport; ``None`` until known.
    bitrate_out: int | None = None
    #: RTP packets lost: received from a publisher (aiortc's inbound stats), or lost on
    #: the way to a viewer (its receiver reports); ``None`` until known.
    packets_lost: int | None = None
    #: Interarrival jitter in seconds (RFC 3550), the largest of the session's streams.
    jitter: float | None = None
    #: Round-trip time in seconds (viewers: from their receiver reports); ``None`` for
    #: publishers (aiortc's receiver does not measure it) and until known.
    rtt: float | None = None


@final
@dataclass(slots=True)
class RoomSnapshot:
    """A room's sessions, for the stats endpoint."""

    room: str
    sessions: list[SessionInfo] = field(default_factory=list)
    #: Seconds left for a new publisher to take over the room's viewers (its publisher
    #: left, ``publisher_grace``); ``None`` when the room is not waiting for one.
    grace_left: float | None = None


# ------------------------------------------------------------------ peer commands


@final
@dataclass(slots=True)
class PeerOpen:
    """Create a peer connection for ``session`` from ``offer`` and answer it.

    For a viewer (``role == "whep"``), ``source`` names the publisher session whose
    tracks it receives (on the same worker: a room lives on one worker).
    """

    session: str
    role: Role
    offer: str
    source: str | None = None


@final
@dataclass(slots=True)
class PeerTrickle:
    """Add remote ICE candidates (``a=candidate:`` lines, without the ``a=``)."""

    session: str
    #: ``(mid or None, candidate line)`` pairs.
    candidates: tuple[tuple[str | None, str], ...]
    #: The fragment said ``a=end-of-candidates``.
    end: bool = False


@final
@dataclass(slots=True)
class PeerKeyframe:
    """Ask the publisher of ``session`` for a keyframe (RTCP PLI on its video)."""

    session: str


@final
@dataclass(slots=True)
class PeerClose:
    """Close the peer connection of ``session`` and free what it held."""

    session: str


@final
@dataclass(slots=True)
class PeerSwitch:
    """Feed ``viewers`` from the tracks of the publisher ``session`` (a new publisher
    took over the room): each viewer's outgoing tracks are re-attached to it, encoded
    when the codecs match, else through the decoded relay."""

    session: str
    viewers: tuple[str, ...]


# ------------------------------------------------------------------ peer inputs


@final
@dataclass(slots=True)
class PeerAnswered:
    """The peer connection of ``session`` is set up; ``answer`` is its local SDP."""

    session: str
    answer: str


@final
@dataclass(slots=True)
class PeerFailed:
    """The peer of ``session`` failed: ``status`` is the HTTP status to report.

    Before the answer (``PeerOpen`` failed) the room refuses the held ``OpenSession``
    with ``status`` and ``reason``. After it (a connected peer gone silent, a trickle
    the driver could not apply) the session ends: ``SessionEnded`` carries ``reason``,
    and a publisher's end ends its viewers.
    """

    session: str
    status: int
    reason: str


@final
@dataclass(slots=True)
class PeerState:
    """The peer connection's ``connectionState`` changed (``connected``, ``failed``, ...)."""

    session: str
    state: str


@final
@dataclass(slots=True)
class PeerMedia:
    """Media counters of ``session``, reported by the driver about once a second.

    The other fields come from aiortc's ``getStats()`` of the session's receivers
    (publisher) or senders (viewer) and its transport; ``None`` when not known (yet).
    Their meaning is that of :class:`SessionInfo`'s fields of the same name.
    """

    session: str
    #: Video frames received (publisher) or sent (viewer) so far.
    frames: int
    bitrate_in: int | None = None
    bitrate_out: int | None = None
    packets_lost: int | None = None
    jitter: float | None = None
    rtt: float | None = None


# ------------------------------------------------------------------ app events


@final
@dataclass(slots=True)
class SessionEnded:
    """``session`` of ``room`` ended (closed, failed, timed out): forget it."""

    room: str
    session: str
    reason: str
