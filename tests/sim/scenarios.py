"""Seeded scenarios with invariants, for sweeping over many seeds.

Each scenario is ``async def scenario(sim) -> None``: it draws everything random from
``sim.rng`` (and builds any simulated runtime with ``sim.runtime(...)``, whose network is
seeded by ``sim.seed``), runs the project's own code on simulated time, and raises
``AssertionError`` naming the broken invariant. The same seed gives the same run.
``tests/sim/test_scenarios.py`` sweeps each over hundreds of seeds; ``bench/sim_sweep.py``
over tens of thousands; from the command line::

    python -m sansio_aio.testing.sweep tests.sim.scenarios:room_churn --seeds 1000 --jobs 2

The scenarios:

* :func:`room_churn`: the WHIP/WHEP :class:`~sansio_aio.webrtc.Room` under a seeded
  storm of publishers and viewers (POST, PATCH, DELETE, stats), a fake WebRTC driver
  that answers, fails, never answers, flaps ICE states and reports late, and the room's
  own timeouts; checked against an independent model of the room after every input.
  :func:`room_churn_float` is the same with arbitrary float times (it found the idle
  end's floating-point comparison, fixed since).
* :func:`udp_echo`: ``examples/udp_echo_server.py``'s echo task behind a lossy,
  duplicating, reordering, partitioned simulated network, with echo workers killed and
  restarted; a client task counts what comes back.
* :func:`bus_crash`: publishers and subscribers on several workers, workers killed and
  restarted (``restart="on-failure"``) at seeded times; what the bus promises around a
  worker's death is checked exactly (see :func:`bus_crash`).
"""

from __future__ import annotations

import importlib.util
import random
import struct
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from sansio_aio import (
    BusMessage,
    Ext,
    ExtOut,
    Publish,
    Reply,
    Request,
    Subscribe,
    Task,
    TaskEnded,
    TaskFailed,
    TaskOutput,
    TaskRef,
    WorkerExited,
)
from sansio_aio.net import UdpBind, UdpBound, UdpError, UdpPacket, UdpSend, UdpUnbind, UdpUnbound
from sansio_aio.testing import (
    FakeClock,
    LinkConditions,
    Sim,
    SimRuntime,
    TaskHarness,
    Trace,
    buggify,
)
from sansio_aio.webrtc._config import RoomConfig
from sansio_aio.webrtc._events import (
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
    RoomInfo,
    RoomSnapshot,
    SessionEnded,
)
from sansio_aio.webrtc._room import Room

__all__ = [
    "SCENARIOS",
    "BusPub",
    "BusSub",
    "BusWorld",
    "EchoClient",
    "EchoWorld",
    "RoomWorld",
    "bus_crash",
    "echo_payload",
    "load_example",
    "room_churn",
    "room_churn_float",
    "udp_echo",
]

ROOT = Path(__file__).resolve().parent.parent.parent


# =====================================================================================
# The WHIP/WHEP room
# =====================================================================================

#: Times of the room scenario sit on a grid of 1/256 s (dyadic: sums and differences are
#: exact in binary floating point), so only the room's logic is under test, not rounding.
GRID = 1 / 256

_FINGERPRINT = "a=fingerprint:sha-256 " + ":".join(["AB"] * 32)
_ANSWER = (
    "v=0\r\no=- 2 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    "a=mid:0\r\na=recvonly\r\na=rtcp-mux\r\n"
    "a=candidate:1 1 udp 2130706431 10.99.0.1 6000 typ host\r\n"
)
#: Peer connection states the fake driver reports (``checking`` is not one the room
#: knows: it must be ignored), with weights.
_STATES = (
    ("connected", 8),
    ("disconnected", 4),
    ("connecting", 2),
    ("new", 1),
    ("checking", 1),
    ("failed", 1),
    ("closed", 1),
)
_TIMEOUT_REASON = {"new": "ICE did not connect in time", "disconnected": "ICE lost"}

Key = tuple[int, str, str, int]


def _cand(port: int, mdns: bool = False) -> tuple[str, Key]:
    """A host candidate line (without ``a=``) and its ICE key."""
    address = f"c{port}-0000.local" if mdns else "10.99.0.2"
    return f"candidate:{port} 1 udp 2130706431 {address} {port} typ host", (
        1,
        "udp",
        address.lower(),
        port,
    )


def _offer(role: str, ufrag: str, ports: list[int], *, kinds: tuple[str, ...] = ("video",)) -> str:
    direction = "sendonly" if role == "whip" else "recvonly"
    lines = ["v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", _FINGERPRINT]
    for i, kind in enumerate(kinds):
        lines += [
            f"m={kind} 9 UDP/TLS/RTP/SAVPF 96",
            "c=IN IP4 0.0.0.0",
            f"a=mid:{i}",
            f"a={direction}",
            f"a=ice-ufrag:{ufrag}",
            "a=ice-pwd:0123456789012345678901",
        ]
        if i == 0:
            lines += ["a=" + _cand(p)[0] for p in ports]
    return "\r\n".join(lines) + "\r\n"


@dataclass
class _Sess:
    """The model's view of one session (what the room should hold)."""

    sid: str
    role: str
    rid: int
    etag: str
    ufrag: str
    source: str | None
    deadline: float | None
    state: str = "negotiating"
    keys: set[Key] = field(default_factory=set)


@dataclass
class _Pending:
    """A request waiting for its reply: what it was, and the model's expectation."""

    kind: str
    sid: str | None


class _ObservedRoom:
    """A room task that reports to the scenario after every input's drain.

    It delegates the task protocol to the real room; ``is_empty()`` is what a worker (and
    the harness) calls exactly once after draining each input, so it is where the
    scenario compares that input's outputs with its model.
    """

    def __init__(self, room: Room, observer: Callable[[bool], None]) -> None:
        self.room = room
        self.observer = observer

    def on_tick(self, now: float) -> None:
        """The room's."""
        self.room.on_tick(now)

    def on_event(self, now: float, event: Any) -> None:
        """The room's."""
        self.room.on_event(now, event)

    def pop_output(self, now: float) -> Any | None:
        """The room's."""
        return self.room.pop_output(now)

    def on_shutdown(self, now: float) -> None:
        """The room's."""
        self.room.on_shutdown(now)

    def next_deadline(self) -> float | None:
        """The room's."""
        return self.room.next_deadline()

    def is_empty(self) -> bool:
        """The room's own answer, after the observer saw this input's outputs."""
        empty = self.room.is_empty()
        self.observer(empty)
        return empty


class RoomWorld:
    """One room scenario: the room under a harness, a model of it, a fake driver and a
    fake HTTP layer, all scheduled on one :class:`FakeClock` from one generator.

    The model (:meth:`_model`) is written from the room's documented rules (module docs
    of ``sansio_aio/webrtc/_room.py``), not from its code paths: after every input the
    room's outputs must equal the model's, as multisets of normalised outputs, and the
    room must end exactly when the model says.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        grid: float | None = GRID,
        clock: FakeClock | None = None,
        trace: Trace | bool = False,
        room: Callable[[RoomConfig], Room] = Room,
    ) -> None:
        self.rng = rng
        self.room_factory = room
        self.grid = grid
        self.clock = clock if clock is not None else FakeClock()
        self.trace = trace
        self.cfg = RoomConfig(
            name="r",
            max_sessions=rng.randint(2, 6),
            connect_timeout=rng.choice([1.0, 2.5, 5.0]),
            disconnected_timeout=rng.choice([0.5, 1.5, 3.0]),
            idle_timeout=rng.choice([2.0, 5.0, 10.0]),
            no_publisher_status=rng.choice([404, 409]),
            retry_after=3,
            keyframe_interval=rng.choice([0.25, 1.0]),
            max_candidates=rng.randint(2, 8),
            publisher_grace=rng.choice([0.0, 1.0, 2.5]),
        )
        self.tick = rng.choice([0.5, 1.0, 10.0])
        self.horizon = self._t(rng.uniform(8.0, 30.0))
        self.rate = rng.choice([0.7, 1.5, 4.0])  # client actions per simulated second
        self.p_answer = rng.uniform(0.5, 0.95)
        self.p_fail = rng.uniform(0.0, 1.0 - self.p_answer)
        self.p_late = rng.choice([0.0, 0.1, 0.4])
        self.clean_exit = rng.random() < 0.5
        # the room (one harness per incarnation: a POST to an ended room spawns anew)
        self.h: TaskHarness | None = None
        self.room: _ObservedRoom | None = None
        self.rooms = 0
        self.pos = 0
        self.feeding: Any = None
        self.shutting_down = False
        # the model of the current room
        self.live: dict[str, _Sess] = {}
        self.publisher: str | None = None
        self.asked = False
        self.answered = False
        self.idle_since: float | None = None
        self.grace_until: float | None = None
        self.closing = False
        self.done = False
        self.last_keyframe = float("-inf")
        self.keyframe_due: float | None = None
        # requests, sessions and what the client knows
        self.rid = 0
        self.pending: dict[int, _Pending] = {}
        self.next_sid = 0
        self.opened: set[str] = set()
        self.closed: set[str] = set()
        self.created: set[str] = set()
        self.ended: set[str] = set()
        self.known: dict[str, _Sess] = {}  # sessions the client was told about (Created)
        self.failure: str | None = None
        self.counts: Counter[str] = Counter()
        # what the next request carries (set by the client just before sending it)
        self._bad_status: int | None = None
        self._offer_keys: set[Key] = set()
        self._offer_ufrag = ""
        self._patch_variant = ""
        self._patch_if_match: str | None = None
        self._patch_keys: list[Key] = []
        self._close_grace = True

    # ------------------------------------------------------------------ helpers

    def _t(self, t: float) -> float:
        """``t`` on the scenario's time grid (unchanged without a grid)."""
        return round(t / self.grid) * self.grid if self.grid else t

    def _later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        self.clock.call_at(self._t(self.clock.now() + delay), fn, *args)

    def _fail(self, msg: str) -> None:
        if self.failure is None:
            self.failure = f"t={self.clock.now()!r} room#{self.rooms}: {msg}"

    def _raise(self) -> None:
        if self.failure is not None:
            raise AssertionError(self.failure)

    # ------------------------------------------------------------------ running

    def run(self) -> dict[str, int]:
        """Play the scenario; raise ``AssertionError`` at the first broken invariant."""
        t = 0.0
        while True:
            t = self._t(t + self.rng.expovariate(self.rate))
            if t > self.horizon:
                break
            self.clock.call_at(t, self._client_action)
        self.clock.call_at(self.horizon, self._stop_clients)
        end = self.horizon + self.cfg.connect_timeout * 3 + self.cfg.idle_timeout + 20.0
        self.clock.advance_to(self._t(end))
        self._raise()
        if self.h is not None and not self.h.ended:
            if self.clean_exit and not self.live:
                self._fail("every session was deleted long ago, yet the room did not end")
            self.shutting_down = True
            self.feeding = "shutdown"
            self.h.shutdown(within=1.0)
            self._raise()
        # every request got exactly one reply; every session opened was closed once;
        # every session created ended once (nothing is listed any more)
        if self.pending:
            self._fail(f"requests without a reply: {sorted(self.pending)}")
        if self.opened != self.closed:
            self._fail(f"PeerOpen without PeerClose: {sorted(self.opened - self.closed)}")
        if self.created != self.ended:
            self._fail(f"Created without SessionEnded: {sorted(self.created - self.ended)}")
        self._raise()
        self.counts["rooms"] = self.rooms
        return dict(self.counts)

    def _spawn_room(self) -> None:
        self.rooms += 1
        self.live, self.publisher = {}, None
        self.asked = self.answered = self.done = self.closing = False
        self.idle_since = self.grace_until = None
        self.last_keyframe, self.keyframe_due = float("-inf"), None
        self.pos = 0
        self.h = None  # the observer ignores the spawn's own drain
        room = _ObservedRoom(self.room_factory(self.cfg), self._observe)
        self.room = room
        self.h = TaskHarness(
            room, clock=self.clock, tick=self.tick, trace=self.trace, name=f"room#{self.rooms}"
        )

    def _request(self, msg: Any, kind: str, sid: str | None) -> None:
        """Send one request, as the HTTP layer does: POSTs spawn a room when there is
        none (or it ended: the retry on ``UnknownTarget``), the rest get 404 without one."""
        self.rid += 1
        rid = self.rid
        self.counts[kind] += 1
        if self.h is None or self.h.ended:
            if kind != "open":
                return  # no room: the HTTP layer answers 404 itself
            self._spawn_room()
        assert self.h is not None
        self.pending[rid] = _Pending(kind, sid)
        self.feeding = Request(rid, msg)
        self.h.feed(self.feeding)
        self._raise()

    def _driver_input(self, event: Any) -> None:
        """The fake driver reports ``event`` (dropped if the room it was for ended)."""
        if self.h is None or self.h.ended or self.shutting_down:
            return
        self.counts[type(event).__name__] += 1
        self.feeding = event
        self.h.feed(event)
        self._raise()

    # ------------------------------------------------------------------ the HTTP layer

    def _client_action(self) -> None:
        rng = self.rng
        r = rng.random()
        known = sorted(self.known)
        if r < 0.22 or (r < 0.35 and self.publisher is None):
            self._post("whip")
        elif r < 0.55:
            self._post("whep")
        elif r < 0.62:
            self._post(rng.choice(["whip", "whep"]), bad=True)
        elif r < 0.66 and self.live:
            self._post_duplicate(rng.choice(sorted(self.live)))
        elif r < 0.76 and known:
            self._delete(rng.choice(known))
        elif r < 0.79:
            self._delete(f"nobody{self.rid}")
        elif r < 0.80 and self.publisher in self.known:
            assert self.publisher is not None
            self._delete(self.publisher)  # the publisher is replaced
            self._post("whip")
        elif r < 0.93 and known:
            self._patch(rng.choice(known))
        else:
            self._request(RoomInfo(), "info", None)

    def _stop_clients(self) -> None:
        """The horizon: with ``clean_exit`` the clients delete what they hold."""
        if self.clean_exit:
            for sid in sorted(self.known):
                self._delete(sid)

    def _post(self, role: str, *, bad: bool = False) -> None:
        rng = self.rng
        self.next_sid += 1
        sid = f"{'p' if role == 'whip' else 'v'}{self.next_sid}"
        ufrag = f"u{self.next_sid}"
        ports = rng.sample(range(5000, 5012), rng.randint(0, min(3, self.cfg.max_candidates)))
        text = _offer(role, ufrag, ports)
        status: int | None = None
        if bad:
            status, text = rng.choice(
                [
                    (400, "garbage"),
                    (400, text.replace(_FINGERPRINT + "\r\n", "")),
                    (422, _offer(role, ufrag, ports, kinds=("video", "video"))),
                    (422, _offer("whep" if role == "whip" else "whip", ufrag, ports)),
                    (422, _offer(role, ufrag, list(range(6000, 6001 + self.cfg.max_candidates)))),
                ]
            )
        self._bad_status = status
        self._offer_keys = {_cand(p)[1] for p in ports}
        self._offer_ufrag = ufrag
        msg = OpenSession(sid, role, text, f'"e-{sid}"')  # type: ignore[arg-type]
        self._request(msg, "open", sid)

    def _post_duplicate(self, sid: str) -> None:
        """A POST reusing a live session's id (the server never does; the room refuses)."""
        self._bad_status = None
        self._offer_keys = set()
        self._offer_ufrag = "dup"
        role = self.live[sid].role
        self._request(OpenSession(sid, role, _offer(role, "dup", []), '"dup"'), "open", sid)  # type: ignore[arg-type]

    def _delete_known(self, sid: str) -> None:
        if sid in self.known:
            self._delete(sid)

    def _delete(self, sid: str) -> None:
        self.known.pop(sid, None)
        grace = self.rng.random() < 0.7
        self._close_grace = grace
        self._request(CloseSession(sid, grace=grace), "delete", sid)

    def _patch(self, sid: str) -> None:
        rng = self.rng
        s = self.known[sid]
        variant = rng.choices(
            ["good", "good_end", "restart", "malformed", "empty", "many"], [6, 2, 1, 1, 1, 1]
        )[0]
        self._patch_variant = variant
        if_match = rng.choices(
            [s.etag, "*", f'"x", {s.etag}', None, '"wrong"', "W/" + s.etag, "e-bare"],
            [6, 2, 1, 1, 1, 1, 1],
        )[0]
        self._patch_if_match = if_match
        ufrag = "zzzz" if variant == "restart" else s.ufrag
        head = [f"a=ice-ufrag:{ufrag}", "a=ice-pwd:0123456789012345678901", "a=mid:0"]
        n = self.cfg.max_candidates + 1 if variant == "many" else rng.randint(1, 3)
        cands = [_cand(rng.randrange(5000, 5020), mdns=rng.random() < 0.2) for _ in range(n)]
        self._patch_keys = [] if variant == "empty" else [k for _, k in cands]
        lines = head + ["a=" + line for line, _ in cands]
        if variant == "good_end":
            lines.append("a=end-of-candidates")
        if variant == "malformed":
            lines.append("a=candidate:1 2")
        text = "" if variant == "empty" else "\r\n".join(lines) + "\r\n"
        self._request(PatchSession(sid, text, if_match), "patch", sid)

    # ------------------------------------------------------------------ the fake driver

    def _driver_open(self, sid: str) -> None:
        """The driver got ``PeerOpen``: it answers, fails or never answers (the seed)."""
        rng = self.rng
        r = rng.random()
        delay = rng.choice([0.0, GRID, rng.uniform(0.0, self.cfg.connect_timeout * 1.2)])
        if r < self.p_answer:
            self._later(delay, self._answer, sid)
            if rng.random() < 0.05:  # a duplicate report: ignored by the room
                self._later(
                    delay + rng.uniform(0, 1), self._driver_input, PeerAnswered(sid, _ANSWER)
                )
        elif r < self.p_answer + self.p_fail:
            status = rng.choice([400, 500, 503])
            self._later(delay, self._driver_input, PeerFailed(sid, status, f"driver says {status}"))
        # else: never answers; the room's connect timeout frees the session

    def _answer(self, sid: str) -> None:
        if sid in self.closed:
            if self.rng.random() < self.p_late:
                self._driver_input(PeerAnswered(sid, _ANSWER))  # late: must change nothing
            return
        self._driver_input(PeerAnswered(sid, _ANSWER))
        rng = self.rng
        t = 0.0
        names, weights = zip(*_STATES, strict=True)
        for _ in range(rng.randint(0, 5)):
            t += rng.expovariate(1.0 / max(GRID, self.cfg.connect_timeout * 0.5))
            if rng.random() < 0.06:
                self._later(t, self._report, PeerFailed(sid, 410, "no packets from the peer"))
            elif rng.random() < 0.1:
                self._later(t, self._report, PeerMedia(sid, rng.randint(0, 1000)))
            else:
                self._later(t, self._report, PeerState(sid, rng.choices(names, weights)[0]))

    def _report(self, event: Any) -> None:
        """A report about a session: dropped once the driver closed it, unless late."""
        if event.session in self.closed and self.rng.random() >= self.p_late:
            return
        self._driver_input(event)

    # ------------------------------------------------------------------ the model

    def _end(
        self,
        now: float,
        s: _Sess,
        reason: str,
        expect: Counter[tuple[Any, ...]],
        *,
        grace: bool = True,
    ) -> None:
        if self.live.pop(s.sid, None) is None:
            return
        expect["close", s.sid] += 1
        if s.state == "negotiating":
            expect["reply", s.rid, "Refused", 503] += 1
            self.pending.pop(s.rid, None)
        elif s.state != "refused":  # refused: the driver's failure was its reply
            expect["ended", s.sid, reason] += 1
        viewers = any(v.role == "whep" for v in self.live.values())
        if s.sid == self.publisher:
            self.publisher = None
            self.keyframe_due = None
            self.last_keyframe = float("-inf")
            if not (grace and viewers and self.cfg.publisher_grace > 0 and not self.closing):
                self._stop_waiting(now, expect)
            elif self.grace_until is None:
                self.grace_until = now + self.cfg.publisher_grace
        elif self.grace_until is not None and not viewers:
            self.grace_until = None

    def _stop_waiting(self, now: float, expect: Counter[tuple[Any, ...]]) -> None:
        self.grace_until = None
        for v in list(self.live.values()):
            if v.role == "whep":
                self._end(now, v, "the publisher left", expect)

    def _keyframe(self, now: float, expect: Counter[tuple[Any, ...]]) -> None:
        if self.publisher is None:
            return
        ready = self.last_keyframe + self.cfg.keyframe_interval
        if now < ready:
            if self.keyframe_due is None:
                self.keyframe_due = ready
            return
        self.last_keyframe = now
        expect["keyframe", self.publisher] += 1

    def _model(self, now: float, event: Any) -> Counter[tuple[Any, ...]]:
        """What the room must emit for ``event`` (``None``: a tick or deadline wake-up;
        ``"shutdown"``), updating the model's state."""
        expect: Counter[tuple[Any, ...]] = Counter()
        cfg = self.cfg
        if event is None:  # on_tick: timeouts, the deferred keyframe, the idle end
            for timed in list(self.live.values()):
                if timed.deadline is not None and timed.deadline <= now:
                    self._end(now, timed, _TIMEOUT_REASON.get(timed.state, "?"), expect)
            if self.grace_until is not None and self.grace_until <= now:
                self._stop_waiting(now, expect)
            if self.keyframe_due is not None and self.keyframe_due <= now:
                self.keyframe_due = None
                self._keyframe(now, expect)
            self._idle(now)
            if self.idle_since is not None and now >= self.idle_since + cfg.idle_timeout:
                self.done = True
            self._unused()
            return expect
        if event == "shutdown":
            self.closing = True
            for sess in list(self.live.values()):
                self._end(now, sess, "server shutting down", expect)
            return expect
        if isinstance(event, Request):
            self._model_request(now, event.id, event.msg, expect)
        elif isinstance(event, PeerAnswered):
            s = self.live.get(event.session)
            if s is not None and s.state == "negotiating":
                s.state = "new"
                s.deadline = now + cfg.connect_timeout
                self.answered = True
                expect["reply", s.rid, "Created", event.session] += 1
                self.pending.pop(s.rid, None)
                self.known[s.sid] = s
                if s.sid == self.publisher:
                    self.grace_until = None  # a new publisher took over
                    viewers = tuple(sorted(v.sid for v in self.live.values() if v.role == "whep"))
                    if viewers:
                        expect["switch", s.sid, viewers] += 1
        elif isinstance(event, PeerFailed):
            s = self.live.get(event.session)
            if s is not None:
                if s.state == "negotiating":
                    expect["reply", s.rid, "Refused", event.status] += 1
                    self.pending.pop(s.rid, None)
                    s.state = "refused"  # its reply is this one, not a 503
                self._end(now, s, event.reason, expect)
        elif isinstance(event, PeerState):
            s = self.live.get(event.session)
            if s is not None and s.state != "negotiating":
                if event.state in ("failed", "closed"):
                    self._end(now, s, f"peer connection {event.state}", expect)
                else:
                    new = {
                        "new": {"connecting": "new", "connected": "connected"},
                        "connected": {"connected": "connected"},
                        "disconnected": {"connected": "connected", "connecting": "disconnected"},
                    }[s.state].get(event.state)
                    if event.state == "disconnected":
                        new = "disconnected"
                    if new is not None and new != s.state:
                        s.state = new
                        if new == "connected":
                            s.deadline = None
                            if any(v.role == "whep" for v in self.live.values()):
                                self._keyframe(now, expect)  # a viewer, or one waits
                        else:
                            s.deadline = now + cfg.disconnected_timeout
        self._idle(now)
        self._unused()
        return expect

    def _idle(self, now: float) -> None:
        if self.live:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = now

    def _unused(self) -> None:
        if self.asked and not self.answered and not self.live:
            self.done = True

    def _model_request(
        self, now: float, rid: int, msg: Any, expect: Counter[tuple[Any, ...]]
    ) -> None:
        cfg = self.cfg
        live = self.live

        def refuse(status: int) -> None:
            expect["reply", rid, "Refused", status] += 1
            self.pending.pop(rid, None)

        if isinstance(msg, OpenSession):
            self.asked = True
            pub = live.get(self.publisher) if self.publisher else None
            feeding = pub is not None and pub.state != "negotiating"
            if msg.session in live:
                refuse(409)
            elif self._bad_status is not None:
                refuse(self._bad_status)
            elif msg.role == "whip" and pub is not None:
                refuse(409)
            elif msg.role == "whep" and not feeding and self.grace_until is None:
                refuse(cfg.no_publisher_status)
            elif len(live) >= cfg.max_sessions:
                refuse(503)
            else:  # a viewer while the room waits for a publisher gets no source yet
                source = self.publisher if msg.role == "whep" and feeding else None
                new = _Sess(
                    msg.session,
                    msg.role,
                    rid,
                    msg.etag,
                    self._offer_ufrag,
                    source,
                    now + cfg.connect_timeout,
                    keys=set(self._offer_keys),
                )
                live[new.sid] = new
                if msg.role == "whip":
                    self.publisher = new.sid
                expect["open", new.sid, msg.role, source] += 1
        elif isinstance(msg, CloseSession):
            s = live.get(msg.session)
            if s is None:
                refuse(404)
            else:
                self._end(now, s, "deleted by the client", expect, grace=self._close_grace)
                expect["reply", rid, "Done", 200] += 1
                self.pending.pop(rid, None)
        elif isinstance(msg, PatchSession):
            self._model_patch(rid, msg, expect, refuse)
        elif isinstance(msg, RoomInfo):
            grace = self.grace_until
            left = None if grace is None else round(max(0.0, grace - now), 3)
            expect["reply", rid, "RoomSnapshot", tuple(sorted(live)), left] += 1
            self.pending.pop(rid, None)

    def _model_patch(
        self,
        rid: int,
        msg: PatchSession,
        expect: Counter[tuple[Any, ...]],
        refuse: Callable[[int], None],
    ) -> None:
        s = self.live.get(msg.session)
        variant, if_match = self._patch_variant, self._patch_if_match
        if s is None:
            return refuse(404)
        if if_match is None:
            return refuse(428)
        if if_match not in (s.etag, "*", f'"x", {s.etag}'):
            return refuse(412)
        if len(self._patch_keys) > self.cfg.max_candidates:
            return refuse(422)  # counted while reading, before the malformed line
        if variant == "malformed":
            return refuse(400 if len(self._patch_keys) < self.cfg.max_candidates else 422)
        if variant == "empty":
            expect["reply", rid, "Done", 204] += 1
            self.pending.pop(rid, None)
            return None
        if variant == "restart":
            return refuse(422)
        fresh: list[Key] = []
        forward = 0
        for key in self._patch_keys:
            if key not in s.keys and key not in fresh:
                fresh.append(key)
                forward += not key[2].endswith(".local")
        if len(s.keys) + len(fresh) > self.cfg.max_candidates:
            return refuse(422)
        s.keys |= set(fresh)
        end = variant == "good_end"
        if forward or end:
            expect["trickle", s.sid, forward, end] += 1
        expect["reply", rid, "Done", 204] += 1
        self.pending.pop(rid, None)
        return None

    # ------------------------------------------------------------------ the checks

    def _normalise(self, out: Any) -> tuple[Any, ...]:
        kind = type(out)
        if kind is PeerOpen:
            return ("open", out.session, out.role, out.source)
        if kind is PeerClose:
            return ("close", out.session)
        if kind is PeerKeyframe:
            return ("keyframe", out.session)
        if kind is PeerSwitch:
            return ("switch", out.session, tuple(sorted(out.viewers)))
        if kind is PeerTrickle:
            return ("trickle", out.session, len(out.candidates), out.end)
        if kind is ExtOut and type(out.msg) is SessionEnded:
            return ("ended", out.msg.session, out.msg.reason)
        if kind is Reply:
            msg = out.msg
            if type(msg) is Created:
                return ("reply", out.id, "Created", msg.session)
            if type(msg) in (Refused, Done):
                return ("reply", out.id, type(msg).__name__, msg.status)
            if type(msg) is RoomSnapshot:
                ids = tuple(sorted(s.session for s in msg.sessions))
                return ("reply", out.id, "RoomSnapshot", ids, msg.grace_left)
        return ("unexpected", repr(out))

    def _observe(self, empty: bool) -> None:
        """After each input's drain: the outputs, the model, the invariants."""
        h = self.h
        if h is None or self.failure is not None:
            return
        now = self.clock.now()
        outs = [out for _, out in h.log[self.pos :]]
        self.pos = len(h.log)
        event, self.feeding = self.feeding, None
        expect = self._model(now, event)
        got = Counter(self._normalise(o) for o in outs)
        if got != expect:
            missing, extra = expect - got, got - expect
            self._fail(
                f"after {event!r}: the room emitted {sorted(extra, key=repr)} and not "
                f"{sorted(missing, key=repr)} (model); outputs {outs!r}"
            )
            return
        self._bookkeep(outs)
        # at most one publisher; no viewer outlives its publisher
        pubs = [s for s in self.live.values() if s.role == "whip"]
        if len(pubs) > 1:
            self._fail(f"two publishers: {pubs}")
        pub = self.live.get(self.publisher) if self.publisher else None
        feeding = pub is not None and pub.state != "negotiating"
        viewers = [s.sid for s in self.live.values() if s.role == "whep"]
        if viewers and not feeding and self.grace_until is None:
            self._fail(f"viewers {viewers} outlive their publisher (and no grace)")
        # the room ends when idle (or unused, or shut down) and only then
        model_empty = (self.done or self.closing) and not self.live
        if empty != model_empty:
            self._fail(
                f"the room {'ended' if empty else 'did not end'} after {event!r}; the model "
                f"says {'end' if model_empty else 'live'} (sessions {sorted(self.live)}, "
                f"asked {self.asked}, answered {self.answered}, idle since {self.idle_since})"
            )

    def _bookkeep(self, outs: list[Any]) -> None:
        """What crosses the room's boundary: opens and closes once each, replies once."""
        for out in outs:
            kind = type(out)
            if kind is PeerOpen:
                if out.session in self.opened:
                    self._fail(f"PeerOpen twice for {out.session}")
                self.opened.add(out.session)
                self._driver_open(out.session)
            elif kind is PeerClose:
                if out.session in self.closed or out.session not in self.opened:
                    self._fail(f"PeerClose for {out.session}, opened once, closed before?")
                self.closed.add(out.session)
            elif kind is Reply and type(out.msg) is Created:
                self.created.add(out.msg.session)
                if self.clean_exit and self.clock.now() >= self.horizon:
                    self.clock.call_at(self.clock.now(), self._delete_known, out.msg.session)
            elif kind is ExtOut:
                sid = out.msg.session
                if sid in self.ended or sid not in self.created or sid not in self.closed:
                    self._fail(f"SessionEnded for {sid}: not created, ended twice or not closed")
                self.ended.add(sid)


def _room_run(sim: Sim, grid: float | None) -> None:
    RoomWorld(sim.rng, grid=grid, clock=sim.clock, trace=sim.trace).run()


async def room_churn(sim: Sim) -> None:
    """The WHIP/WHEP room under seeded churn, checked against a model after every input.

    One :class:`~sansio_aio.webrtc.Room` (its real code, under the strict
    :class:`TaskHarness`) gets a seeded storm of requests from a fake HTTP layer:
    publishers and viewers POSTing (valid offers, bad ones, a duplicate session id),
    DELETEs (of live, gone and unknown sessions; a publisher replaced by a new one),
    PATCHes (good and bad If-Match, candidates past the cap, an ICE restart, malformed
    fragments) and stats requests. A fake driver answers each ``PeerOpen`` by the seed
    (``PeerAnswered``, ``PeerFailed``, or never), then reports ICE states (known and
    unknown ones), silence (``PeerFailed`` 410) and media counters, sometimes after the
    session was closed (late reports must change nothing). A POST to an ended room
    spawns a new one (the HTTP layer's retry on ``UnknownTarget``). The room's config
    (timeouts, limits, tick) is drawn from the seed too.

    Invariants, after every input (requests, driver reports, ticks, deadline wake-ups):
    the outputs equal an independent model's (replies with their status, ``PeerOpen``
    with its source, ``PeerClose``, ``SessionEnded`` with its reason, keyframe requests
    rate-limited, trickles); at most one publisher; no viewer outlives its publisher;
    the room ends exactly when the model says: at once when it never answered a session
    and has none, ``idle_timeout`` after its last session went otherwise, never before;
    the harness's protocol checks (no output after the room is empty, no deadline in
    the past, no spinning). At the end (after a shutdown if the room still runs): every
    request got exactly one reply, every ``PeerOpen`` exactly one ``PeerClose``, every
    ``Created`` session exactly one ``SessionEnded``.
    """
    _room_run(sim, GRID)


async def room_churn_float(sim: Sim) -> None:
    """:func:`room_churn` with times that are arbitrary floats instead of a 1/256 s grid.

    It found a bug of ``Room.on_tick`` (fixed): the idle end was due at
    ``idle_since + idle_timeout`` (``next_deadline``) but checked as
    ``now - idle_since >= idle_timeout``, which is false at that very instant for about a
    quarter of the float pairs (``(a + b) - a < b`` after rounding): the room asked to be
    woken at the instant it was just woken for (the harness raised ``ProtocolViolation``).
    """
    _room_run(sim, None)


# =====================================================================================
# The UDP echo example
# =====================================================================================


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` once per process (as ``example_<name>``)."""
    key = f"example_{name}"
    module = sys.modules.get(key)
    if module is None:
        spec = importlib.util.spec_from_file_location(key, ROOT / "examples" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return module


_HEADER = struct.Struct("!IQ")  # client id, sequence number


def echo_payload(client: int, seq: int) -> bytes:
    """The datagram ``seq`` of ``client``: a header and 8 to 300 bytes derived from it."""
    head = _HEADER.pack(client, seq)
    size = 8 + (seq * 37 + client * 11) % 293
    return head + (head * (size // len(head) + 1))[:size]


class EchoClient(Task):
    """Sends numbered datagrams to ``cfg["dest"]`` when told, and counts the echoes.

    ``Ext(("send", n, gap))`` queues ``n`` more datagrams, one every ``gap`` seconds (a
    deadline); ``Ext("stop")`` drops what is still queued; ``Ext("close")`` unbinds its
    socket and ends the task; a ``Request``
    is answered with :meth:`report`. Reports ``("bound", id, addr)`` once bound.
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        self.id: int = cfg["id"]
        self.dest: tuple[str, int] = cfg["dest"]
        self.slot = -1
        self.next_seq = 0
        self.queued = 0
        self.gap = 0.0
        self.due: float | None = None
        #: Echoes per sequence number (saturating at 255): one byte per datagram sent,
        #: so a long soak does not keep what it sent (payloads are derived from the seq).
        self.got = bytearray()
        self.bad: list[str] = []
        self.errors = 0
        self.emit(UdpBind(cfg["addr"]))

    def on_event(self, now: float, event: Any) -> None:
        """Bound, echoes, errors, and the application's orders."""
        kind = type(event)
        if kind is UdpPacket:
            data = event.data
            if len(data) < _HEADER.size:
                self.bad.append(f"short datagram {data!r}")
                return
            client, seq = _HEADER.unpack_from(data)
            if client != self.id or seq >= self.next_seq or data != echo_payload(client, seq):
                self.bad.append(f"echo of nothing sent: client {client} seq {seq}")
            elif tuple(event.source[:2]) != self.dest:
                self.bad.append(f"echo of {seq} from {event.source}, not {self.dest}")
            else:
                got = self.got
                if seq >= len(got):
                    got.extend(bytes(seq + 1 - len(got)))
                got[seq] = min(255, got[seq] + 1)
        elif kind is UdpBound:
            self.slot = event.slot
            self.emit(ExtOut(("bound", self.id, event.addr, event.error)))
        elif kind is UdpError:
            self.errors += 1
        elif kind is UdpUnbound:
            self.closing = True
        elif kind is Ext and type(event.msg) is tuple and event.msg[0] == "send":
            _, n, gap = event.msg
            self.queued += n
            self.gap = gap
            if self.due is None:
                self.due = now
        elif kind is Ext and event.msg == "stop":
            self.queued = 0
            self.due = None
        elif kind is Ext and event.msg == "close":
            self.due = None
            self.emit(UdpUnbind(self.slot))
        elif kind is Request:
            self.emit(Reply(event.id, self.report()))

    def on_tick(self, now: float) -> None:
        """Send the next queued datagram when it is due."""
        if self.due is None or now < self.due:
            return
        seq = self.next_seq
        self.next_seq += 1
        self.queued -= 1
        self.emit(UdpSend(self.slot, self.dest, echo_payload(self.id, seq)))
        self.due = now + self.gap if self.queued > 0 else None

    def next_deadline(self) -> float | None:
        """The next datagram's time."""
        return self.due

    def report(self) -> dict[str, Any]:
        """What was sent and received (plain data)."""
        return {
            "sent": self.next_seq,
            "got": {seq: n for seq, n in enumerate(self.got) if n},
            "bad": list(self.bad),
            "errors": self.errors,
        }


@dataclass
class _EchoServer:
    worker: int
    ref: TaskRef
    counted: bool = False


class EchoWorld:
    """One UDP echo scenario (see :func:`udp_echo`)."""

    SERVER = ("10.0.0.1", 7000)

    def __init__(self, sim: Sim, *, echo: Callable[[Any], Task] | None = None) -> None:
        self.sim = sim
        self.echo = echo if echo is not None else load_example("udp_echo_server").EchoServer
        rng = self.rng = sim.rng
        self.n_servers = rng.randint(1, 2)
        self.n_clients = rng.randint(1, 2)
        self.cond = LinkConditions(
            latency=rng.uniform(0.001, 0.03),
            jitter=rng.choice([0.0, 0.005, 0.02]),
            loss=rng.choice([0.0, 0.05, 0.2, 0.4]),
            duplicate=rng.choice([0.0, 0.05, 0.2]),
            reorder=rng.choice([0.0, 0.1, 0.3]),
        )
        self.fault_time = rng.uniform(2.0, 8.0)
        self.servers: dict[int, _EchoServer] = {}
        self.echoed = 0  # echoes counted by server incarnations (their "count" requests)
        self.spawned: list[TaskRef] = []
        self.gone: Counter[TaskRef] = Counter()
        self.kills = 0
        self.events: list[Any] = []

    def _take_events(self, rt: SimRuntime) -> None:
        for event in rt.poll_events():
            self.events.append(event)
            if isinstance(event, TaskEnded | TaskFailed):
                self.gone[event.task] += 1
                if isinstance(event, TaskFailed) and "WorkerDied" not in event.traceback:
                    raise AssertionError(f"{event.task} failed: {event.error}")

    async def _spawn_echo(self, rt: SimRuntime, w: int) -> None:
        cfg = {"addr": self.SERVER, "reuse": self.n_servers > 1}
        ref = await rt.spawn("echo", cfg, worker=w)
        self.spawned.append(ref)
        self.servers[w] = _EchoServer(w, ref)
        self._take_events(rt)
        bound = [
            e.msg
            for e in self.events
            if isinstance(e, TaskOutput) and e.task == ref and isinstance(e.msg, UdpBound)
        ]
        assert bound and bound[-1].ok, f"echo on worker {w} could not bind: {bound}"

    async def _count(self, rt: SimRuntime, server: _EchoServer) -> None:
        """Add a live echo server's count (its own ``"count"`` request) to the total."""
        echoed, errors = await rt.request(server.ref, "count")
        assert errors == 0, f"echo {server.ref} saw {errors} send errors"
        self.echoed += echoed
        server.counted = True

    async def run(self) -> None:
        sim, rng = self.sim, self.rng
        net = sim.net
        net.set_default(self.cond)
        kinds = {"echo": self.echo, "client": EchoClient}
        tick = rng.choice([0.05, 1.0])
        async with sim.runtime(
            kinds, workers=1 + self.n_servers, restart="on-failure", tick=tick
        ) as rt:
            for w in range(1, 1 + self.n_servers):
                await self._spawn_echo(rt, w)
            clients = []
            for i in range(self.n_clients):
                cfg = {"id": i, "addr": (f"10.0.1.{i + 1}", 0), "dest": self.SERVER}
                ref = await rt.spawn("client", cfg, worker=0)
                self.spawned.append(ref)
                clients.append(ref)
            hosts = [self.SERVER[0]] + [f"10.0.1.{i + 1}" for i in range(self.n_clients)]
            self._faults(hosts)
            per_client = rng.randint(15, 60)
            for ref in clients:
                rt.send_nowait(ref, ("send", per_client, self.fault_time / per_client * 0.8))
            await self._fault_phase(rt)
            await self._heal(rt)
            probes = rng.randint(3, 10)
            before = [await rt.request(ref, "report") for ref in clients]
            for ref in clients:
                rt.send_nowait(ref, ("send", probes, 0.01))
            rt.advance(probes * 0.01 + 1.0)
            self._take_events(rt)
            reports = [await rt.request(ref, "report") for ref in clients]
            self._check(reports, before, probes)
            # no leak: the clients close; then only the echo servers hold sockets
            for ref in clients:
                rt.send_nowait(ref, "close")
            rt.advance(0.1)
            self._take_events(rt)
            for ref in clients:
                assert self.gone[ref] == 1, f"client {ref} did not end after close"
            for server in self.servers.values():
                await self._count(rt, server)
            stats = await rt.stats()
            for ws in stats.workers:
                want = 0 if ws.worker == 0 else 1
                assert ws.tasks == want, f"worker {ws.worker} hosts {ws.tasks} tasks, not {want}"
                assert ws.drivers.get("udp_sockets") == want, (
                    f"worker {ws.worker} holds {ws.drivers.get('udp_sockets')} sockets"
                )
            self._conservation(reports)
        # the shutdown ended every task; every socket is gone from the network
        self._take_events(rt)
        for ref in self.spawned:
            assert self.gone[ref] == 1, f"{ref} ended {self.gone[ref]} times (once expected)"
        table = net.registry.get("udp")
        assert table is None or not table.by_addr, f"sockets left: {table.by_addr}"

    def _faults(self, hosts: list[str]) -> None:
        """The seed's faults for the fault phase: partitions, clogs, swizzles."""
        faults, rng, t = self.sim.faults, self.rng, self.fault_time
        for _ in range(rng.randint(0, 2)):
            side = [rng.choice(hosts)]
            faults.partition(side, at=rng.uniform(0, t), duration=rng.uniform(0.05, t / 2))
        if rng.random() < 0.5:
            faults.swizzle_clog(
                hosts,
                at=rng.uniform(0, t / 2),
                gap=rng.uniform(0.05, t / 4),
                shuffle=rng.random() < 0.5,
            )
        if rng.random() < 0.3:
            host = rng.choice(hosts)
            faults.clog(host, at=rng.uniform(0, t), duration=rng.uniform(0.05, 1.0))
        if rng.random() < 0.3:  # a one-way hold, released by itself
            now = self.sim.now
            self.sim.net.hold(
                [self.SERVER[0]],
                both_ways=False,
                until=now + rng.uniform(0.1, t),
                shuffle=rng.random() < 0.5,
            )

    async def _fault_phase(self, rt: SimRuntime) -> None:
        """Run the fault phase; kill echo workers at seeded times (their counts first),
        respawn the echo on each replacement once it is up."""
        rng, t_end = self.rng, self.fault_time
        kills = sorted(rng.uniform(0.0, t_end) for _ in range(rng.choice([0, 0, 1, 2, 3])))
        steps = sorted({*kills, *(k * 0.5 for k in range(int(t_end / 0.5) + 1)), t_end})
        for t in steps:
            rt.advance_to(t)
            self._take_events(rt)
            await self._respawn(rt)
            if t in kills:
                up = [w for w in rt.workers_up() if w in self.servers]
                if up:
                    w = rng.choice(up)
                    await self._count(rt, self.servers.pop(w))
                    rt.kill_worker(w)
                    self.kills += 1
                    self._take_events(rt)

    async def _respawn(self, rt: SimRuntime) -> None:
        for w in rt.workers_up():
            if w != 0 and w not in self.servers:
                await self._spawn_echo(rt, w)

    async def _heal(self, rt: SimRuntime) -> None:
        """Lift every fault, clean the links, let everything in flight land; every echo
        worker up with its echo task again."""
        for plan in self.sim.faults.plans:
            plan.cancel()
        self.sim.net.release()
        self.sim.net.heal()
        self.sim.net.set_default(LinkConditions(latency=0.002))
        up = rt.run_until(lambda: len(rt.workers_up()) == 1 + self.n_servers, within=30.0)
        assert up, f"workers up {rt.workers_up()}, 30 s after the faults"
        await self._respawn(rt)
        rt.advance(2.0)  # the slowest in-flight datagram (latency, jitter, reorder) lands
        self._take_events(rt)

    def _check(self, reports: list[Any], before: list[Any], probes: int) -> None:
        dups = 0
        for i, (rep, old) in enumerate(zip(reports, before, strict=True)):
            assert not rep["bad"], f"client {i}: {rep['bad'][:3]}"
            assert rep["sent"] == old["sent"] + probes, f"client {i} did not send its probes"
            for seq in range(old["sent"], rep["sent"]):  # after the faults: once each
                got = rep["got"].get(seq, 0)
                assert got == 1, f"client {i}: probe {seq} echoed {got} times after the faults"
            dups += sum(n - 1 for n in rep["got"].values() if n > 1)
            if self.cond.duplicate == 0:
                twice = [seq for seq, n in rep["got"].items() if n > 1]
                assert not twice, f"client {i}: echoed twice without duplication: {twice[:5]}"
        stats = self.sim.net.stats
        assert dups <= stats.duplicated, (
            f"{dups} extra echoes but the network duplicated only {stats.duplicated}"
        )

    def _conservation(self, reports: list[Any]) -> None:
        """Every datagram is accounted for: sent = delivered + dropped (by cause), and
        delivered = what the tasks received + what found no socket."""
        s = self.sim.net.stats
        client_tx = sum(r["sent"] for r in reports)
        client_rx = sum(sum(r["got"].values()) for r in reports)
        assert s.sent == client_tx + self.echoed, (
            f"network sent {s.sent}, clients {client_tx} + echoes {self.echoed}"
        )
        dropped = s.lost + s.partitioned + s.mtu_dropped + s.queue_dropped
        assert s.sent + s.duplicated == s.delivered + dropped, f"unexplained loss: {s}"
        assert s.delivered == client_rx + self.echoed + s.unreachable, (
            f"delivered {s.delivered} != clients {client_rx} + servers {self.echoed} "
            f"+ unreachable {s.unreachable}"
        )


async def udp_echo(sim: Sim) -> None:
    """``examples/udp_echo_server.py``'s ``EchoServer`` behind a faulty simulated network.

    One or two echo tasks (one per worker, sharing the port with ``reuse`` when two) and
    one or two :class:`EchoClient` tasks; the links lose, duplicate, reorder and jitter
    by the seed; the seed's faults cut hosts off (partitions), clog them (holds, one by
    one and lifted in a random order: swizzle-clogging, packets kept and released in or
    out of order) and kill echo workers (``restart="on-failure"``: the echo is spawned
    again on the replacement). Then every fault is lifted and each client sends probes.

    Invariants: every echo a client receives is a datagram it sent, from the server's
    address, byte for byte; nothing is echoed twice unless the network duplicated it
    (never without duplication; in all not more extra echoes than duplicated packets);
    after the faults every probe comes back exactly once (the server keeps serving,
    restarted or not); every datagram is accounted for (sent + duplicated = delivered +
    lost + cut + dropped; delivered = received by the tasks + found no socket; sent =
    the clients' + the echoes counted by the servers themselves); no send errors; no
    leak: once the clients close, worker 0 hosts no task and no socket and each echo
    worker exactly its echo task and socket; after the shutdown every task spawned ended
    exactly once and no simulated socket is left.
    """
    await EchoWorld(sim).run()


# =====================================================================================
# The bus under worker crashes
# =====================================================================================


class BusSub(Task):
    """Subscribes to ``cfg["channels"]`` and reports every delivery to the application as
    ``("got", id, channel, publisher, seq)`` (``ExtOut`` is FIFO per task, so the
    application sees the deliveries in the order the task got them)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        self.id: str = cfg["id"]
        for channel in cfg["channels"]:
            self.emit(Subscribe(channel))

    def on_event(self, now: float, event: Any) -> None:
        """Report a bus message."""
        if type(event) is BusMessage:
            pub, seq = event.msg
            self.emit(ExtOut(("got", self.id, event.channel, pub, seq)))


class BusPub(Task):
    """Publishes ``(id, seq)`` on ``cfg["channel"]``, ``seq`` counting up from 0, in bursts
    of ``cfg["burst"]`` every ``cfg["interval"]`` seconds once started, until
    ``cfg["count"]`` messages; reports each burst as ``("pub", id, first, last)``.

    ``Ext("start")`` starts it; ``Ext(("mark", tag))`` is answered with
    ``("mark", id, tag, next_seq)``: every message from ``next_seq`` on is published after
    this task handled the mark. The fault point ``bus.flood`` makes a burst much larger
    (past the workers' inbox bound: ``safe`` publishes must still arrive).
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        self.id: str = cfg["id"]
        self.channel: str = cfg["channel"]
        self.count: int = cfg["count"]
        self.interval: float = cfg["interval"]
        self.burst: int = cfg["burst"]
        self.seq = 0
        self.due: float | None = None

    def on_event(self, now: float, event: Any) -> None:
        """Start, or answer a mark."""
        if type(event) is Ext and event.msg == "start" and self.seq < self.count:
            self.due = now
        elif type(event) is Ext and type(event.msg) is tuple and event.msg[0] == "mark":
            self.emit(ExtOut(("mark", self.id, event.msg[1], self.seq)))

    def on_tick(self, now: float) -> None:
        """Publish the burst that is due."""
        if self.due is None or now < self.due:
            return
        n = self.burst * (10 if buggify("bus.flood", 0.1) else 1)
        first = self.seq
        last = min(self.count, first + n) - 1
        for seq in range(first, last + 1):
            self.emit(Publish(self.channel, (self.id, seq)))
        self.seq = last + 1
        self.emit(ExtOut(("pub", self.id, first, last)))
        self.due = now + self.interval if self.seq < self.count else None

    def next_deadline(self) -> float | None:
        """The next burst."""
        return self.due


@dataclass
class _BusTask:
    ref: TaskRef
    spawned_at: float
    dead: bool = False
    ended: int = 0


class BusWorld:
    """One bus scenario (see :func:`bus_crash`)."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        rng = self.rng = sim.rng
        self.n_workers = rng.randint(2, 4)
        self.channels = ["a", "b"][: rng.randint(1, 2)]
        self.subs: dict[str, _BusTask] = {}
        self.sub_channels: dict[str, list[str]] = {}
        self.pubs: dict[str, _BusTask] = {}
        self.pub_channel: dict[str, str] = {}
        self.pub_count: dict[str, int] = {}
        #: The last sequence number each publisher reported as published.
        self.reported: dict[str, int] = {}
        #: (subscriber, publisher) -> the first seq the subscriber must get.
        self.window: dict[tuple[str, str], int] = {}
        #: (subscriber, publisher) -> the seqs delivered, in order.
        self.got: dict[tuple[str, str], list[int]] = {}
        self.by_ref: dict[TaskRef, _BusTask] = {}
        self.n = 0
        self.exits = 0

    def _events(self, rt: SimRuntime) -> None:
        for event in rt.poll_events():
            if isinstance(event, TaskOutput):
                msg = event.msg
                if msg[0] == "got":
                    _, sid, channel, pid, seq = msg
                    assert channel in self.sub_channels[sid], f"{sid} got {channel} unasked"
                    assert self.pub_channel.get(pid) == channel, f"{pid} is not on {channel}"
                    self.got.setdefault((sid, pid), []).append(seq)
                elif msg[0] == "pub":
                    self.reported[msg[1]] = msg[3]
                elif msg[0] == "mark":
                    _, pid, sid, nxt = msg
                    self.window.setdefault((sid, pid), nxt)
            elif isinstance(event, TaskFailed):
                task = self.by_ref[event.task]
                assert "WorkerDied" in event.traceback, f"{event.task}: {event.error}"
                task.dead = True
                task.ended += 1
            elif isinstance(event, TaskEnded):
                self.by_ref[event.task].ended += 1
            elif isinstance(event, WorkerExited):
                assert event.restarting, f"worker {event.worker} not restarting"
                self.exits += 1

    async def _spawn_sub(self, rt: SimRuntime) -> None:
        self.n += 1
        sid = f"s{self.n}"
        chans = self.rng.sample(self.channels, self.rng.randint(1, len(self.channels)))
        self.sub_channels[sid] = chans
        ref = await rt.spawn("sub", {"id": sid, "channels": chans})
        task = self.subs[sid] = self.by_ref[ref] = _BusTask(ref, rt.now)
        # a publisher that handles a mark sent now publishes to it from the seq it says
        for pid, pub in self.pubs.items():
            if not pub.dead and self.pub_channel[pid] in chans:
                rt.send_nowait(pub.ref, ("mark", sid))
        del task

    async def _spawn_pub(self, rt: SimRuntime) -> None:
        rng = self.rng
        self.n += 1
        pid = f"p{self.n}"
        channel = rng.choice(self.channels)
        self.pub_channel[pid] = channel
        count = self.pub_count[pid] = rng.randint(5, 30)
        cfg = {
            "id": pid,
            "channel": channel,
            "count": count,
            "interval": rng.choice([0.01, 0.05, 0.2]),
            "burst": rng.randint(1, 4),
        }
        ref = await rt.spawn("pub", cfg)
        self.pubs[pid] = self.by_ref[ref] = _BusTask(ref, rt.now)
        for sid, sub in self.subs.items():  # subscribed before: everything from seq 0
            if not sub.dead and channel in self.sub_channels[sid]:
                self.window[(sid, pid)] = 0
        rt.send_nowait(ref, "start")

    def _busy(self) -> bool:
        return any(
            not p.dead and self.reported.get(pid, -1) < self.pub_count[pid] - 1
            for pid, p in self.pubs.items()
        )

    async def run(self) -> None:
        sim, rng = self.sim, self.rng
        kinds = {"sub": BusSub, "pub": BusPub}
        cap = rng.choice([4, 16, 65536])
        async with sim.runtime(
            kinds, workers=self.n_workers, restart="on-failure", inbox_capacity=cap
        ) as rt:
            for _ in range(rng.randint(2, 5)):
                await self._spawn_sub(rt)
            for _ in range(rng.randint(1, 3)):
                await self._spawn_pub(rt)
            crash_until = rng.uniform(1.0, 4.0)
            plan = sim.faults.crash_workers(
                rt, rate=rng.uniform(0.3, 2.0), until=crash_until, max_kills=rng.randint(0, 3)
            )
            t = 0.0
            while t < crash_until + 1.0:  # churn: after a death, replacements join
                t += rng.uniform(0.05, 0.5)
                rt.advance_to(t)
                self._events(rt)
                dead_subs = sum(s.dead for s in self.subs.values())
                if (dead_subs and rng.random() < 0.5) or rng.random() < 0.1:
                    await self._spawn_sub(rt)
                dead_pubs = sum(p.dead for p in self.pubs.values())
                if dead_pubs and rng.random() < 0.3:
                    await self._spawn_pub(rt)
                self._events(rt)
            plan.cancel()
            up = rt.run_until(lambda: len(rt.workers_up()) == self.n_workers, within=30.0)
            assert up, f"workers {rt.workers_up()} of {self.n_workers} up 30 s after the kills"

            def done() -> bool:
                self._events(rt)
                return not self._busy()

            assert rt.run_until(done, within=60.0), "publishers still busy after 60 s"
            rt.advance(0.1)
            self._events(rt)
            self._check()
            stats = await rt.stats()
            kills = plan.count("kill")
            assert sum(stats.restarts) == kills == self.exits, (
                f"{kills} kills, {self.exits} WorkerExited, restarts {stats.restarts}"
            )
            assert all(ws.drops == 0 for ws in stats.workers), "a safe publish was dropped"
        self._events(rt)  # the shutdown's TaskEnded events
        for name, task in [*self.subs.items(), *self.pubs.items()]:
            assert task.ended == 1, f"{name} ({task.ref}) ended {task.ended} times"

    def _check(self) -> None:
        """FIFO per sender, nothing twice, no gap, and everything the promise covers."""
        for (sid, pid), seqs in self.got.items():
            first = seqs[0]
            if seqs != list(range(first, first + len(seqs))):
                raise AssertionError(
                    f"{sid} got {pid}'s messages out of order or with gaps: {seqs}"
                )
            last = self.reported.get(pid, -1)
            if not self.pubs[pid].dead:
                assert seqs[-1] <= last, f"{sid} got {pid}#{seqs[-1]}, never published"
            else:
                assert seqs[-1] < self.pub_count[pid], f"{sid} got {pid}#{seqs[-1]}?"
        for (sid, pid), start in self.window.items():
            if self.subs[sid].dead:
                continue  # it died: what was in flight to it is gone with it
            last = self.reported.get(pid, -1)
            if last < start:
                continue  # nothing published in its window
            seqs = self.got.get((sid, pid), [])
            if not seqs or seqs[0] > start or seqs[-1] < last:
                have = f"{seqs[0]}..{seqs[-1]}" if seqs else "nothing"
                raise AssertionError(
                    f"live subscriber {sid} got {have} of {pid}'s messages; promised "
                    f"{start}..{last} (published after it subscribed, reported before the end "
                    f"of {pid}{' (dead)' if self.pubs[pid].dead else ''})"
                )


async def bus_crash(sim: Sim) -> None:
    """Publishers and subscribers on 2-4 workers; workers killed (``crash_workers``,
    ``restart="on-failure"``) at seeded times; replacements spawned as the run goes.

    What the runtime promises (docs/guide.md section 3, docs/architecture.md "Bus" and
    "Cores"): ``Publish`` reaches every subscriber of the channel on every worker, FIFO
    per sender; ``safe=True`` (the default) never drops, even past a worker's inbox bound
    (here as small as 4, and bursts of 10x by the fault point ``bus.flood``); a publish
    caused after the application learned of a subscription sees it (so a publisher
    spawned after a subscriber's spawn returned, or messages a publisher sends after it
    handled a mark the application sent once that spawn returned); a worker's death ends
    its tasks (``TaskFailed`` naming ``WorkerDied``, then ``WorkerExited``) and drops its
    bus routes, and the other workers run on. Nothing is promised about what was in flight
    to a task that died.

    Checked: every delivery is on a channel the subscriber asked for, from a publisher of
    that channel; per (subscriber, publisher) the sequence numbers delivered are strictly
    increasing and without gaps (FIFO, nothing twice, nothing lost in between), and were
    published; a subscriber alive at the end got every message of its window: from seq 0
    (publisher spawned after it) or from the publisher's answer to its mark, up to the
    last burst the publisher reported (before its worker died, or in all); no bus drop;
    one ``WorkerExited`` and one restart per kill; after the shutdown every task ended
    exactly once (``TaskEnded``, or ``TaskFailed`` with its worker).
    """
    await BusWorld(sim).run()


SCENARIOS = {
    "room_churn": room_churn,
    "room_churn_float": room_churn_float,
    "udp_echo": udp_echo,
    "bus_crash": bus_crash,
}
"""The scenarios that must pass on every seed (``room_churn_float`` found the idle end's
floating-point bug, since fixed)."""
