"""The aiortc I/O driver: peer connections on a worker's loop, for room tasks.

Theory of operation
-------------------
:class:`WebRtcDriver` is an ordinary :class:`~sansio_aio._driver.Driver`: the worker routes
the room task's peer commands (``PeerOpen``, ``PeerTrickle``, ``PeerKeyframe``,
``PeerClose``) to :meth:`~WebRtcDriver.handle`, which starts a coroutine on the worker's
loop (``ctx.loop``: every aiortc object is created there, inside a coroutine, as aiortc
requires). Results come back to the task as inputs through ``ctx.deliver``:
``PeerAnswered`` / ``PeerFailed`` when negotiation ends, ``PeerState`` on every
``connectionState`` change, ``PeerMedia`` about once a second (frames, and the
session's bitrates, packet loss, jitter and round-trip time read from aiortc's
``getStats`` of its receivers or senders and transport, see :func:`._media.media_stats`).

Media: each publisher's tracks go into one ``MediaRelay``; one sink per track always
reads it (so aiortc's unbounded receive queue never grows, with or without viewers) and
hands each decoded frame to the track's :class:`~._passthrough.DecodedSource`. A room
lives on one worker, so a viewer's publisher is always in this driver. With
``relay="encoded"`` (the default) the publisher's receivers are also tapped
(:mod:`._passthrough`, an :class:`~._passthrough.EncodedSource` per track): a viewer
whose offer accepts the publisher's codec gets the encoded frames as they arrived, so
its sender only packetizes (no re-encode); video starts on a keyframe requested from
the publisher. Other viewers, and every viewer with ``relay="decoded"``, get the decoded
frames (the newest only: a slow viewer skips frames instead of queueing them) and their
sender re-encodes.

A viewer's sender holds one :class:`~._passthrough.ViewerTrack` per kind of its offer
for its whole session, fed by the publisher it follows (``Peer.follow``). Closing a
publisher detaches its viewers' tracks (they idle, their peer connections stay up);
``PeerSwitch(new, viewers)`` re-attaches them to a new publisher's sources: encoded
when the codec the viewer negotiated is the new publisher's, else decoded (re-encoded by
the viewer's sender with its own codec). A viewer's timestamps stay continuous across
publishers (one :class:`~._passthrough.Timeline` per room and kind).

UDP: every peer connection's datagrams pass the guard (:mod:`._udpguard`: source
address checks, size limits, a bounded receive queue, malformed STUN counted, not
logged); with ``udp_port=P`` all sessions of worker ``i`` share port ``P + i``
(:mod:`._udpmux`), else each gets its own sockets as aiortc does.

Silence: aiortc only notices a vanished peer when ICE consent expires (about 30 s), and
never reports "disconnected". The guard stamps the time of every datagram accepted from
a peer (RTCP arrives about once a second, ICE consent checks every 5 s); every
:data:`WATCH_INTERVAL` the driver reports a connected peer silent for half the
``silence_timeout`` (at most 3 s) as ``PeerState("disconnected")`` (``"connected"``
again if it is heard), and one silent for ``silence_timeout`` as ``PeerFailed(410)``,
closing it. So a peer that vanishes is dropped ``silence_timeout`` to
``silence_timeout + WATCH_INTERVAL`` seconds after its last datagram.

Peers are keyed by ``(task, session)``. ``release(task)`` closes every peer the task
held; closing a publisher also cancels its relay's reading tasks (none is left pending
for the garbage collector); ``close()`` (loop stopped) runs the outstanding closes to
completion so no transport is left half-open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription, candidate_from_sdp

from .._driver import Driver, DriverContext
from .._errors import ConfigError
from .._events import TaskRef
from ._config import IceServer
from ._events import (
    PeerAnswered,
    PeerClose,
    PeerFailed,
    PeerKeyframe,
    PeerMedia,
    PeerOpen,
    PeerState,
    PeerSwitch,
    PeerTrickle,
)
from ._media import (
    Peer,
    close_pc,
    media_stats,
    negotiated_codecs,
    offers_codec,
    only_codec,
    quietly,
    stop_relay,
)
from ._passthrough import (
    DecodedSource,
    EncodedSource,
    Timeline,
    ViewerTrack,
    hook_viewer_keyframes,
    tap_receiver,
)
from ._udpguard import (
    IceInternalsError,
    PeerGuard,
    check_guarded,
    guard_counters,
    guard_peer_connection,
)
from ._udpmux import UdpMux

__all__ = ["WebRtcDriver"]

log = logging.getLogger("sansio_aio.webrtc")

_Key = tuple[TaskRef, str]

#: Seconds between two silence checks (and sweeps of the shared port's STUN ids).
WATCH_INTERVAL = 0.25


class WebRtcDriver(Driver):
    """Performs room tasks' peer commands with aiortc on the worker's loop.

    Args:
        ice_servers: STUN/TURN servers for every peer connection (default: none, so
            aiortc never contacts Google's STUN server).
        relay: ``"encoded"`` forwards the publisher's encoded audio and video to every
            viewer whose offer accepts their codecs (no re-encode; see
            ``passthrough``), the others get the decoded relay; ``"decoded"`` always
            re-encodes per viewer (aiortc's own way).
        media_interval: seconds between ``PeerMedia`` reports.
        keyframe_interval: least seconds between two keyframe requests the driver
            sends a publisher on behalf of encoded viewers.
        udp_port: ``0``: each peer connection binds its own UDP sockets (aiortc's way);
            else this worker's sessions all share port ``udp_port + worker_id``, bound
            at start.
        public_ip: advertised in the candidates instead of the first host address of
            its family (1:1 NAT, containers).
        silence_timeout: seconds without a datagram from a connected peer before it is
            dropped (``PeerFailed`` 410).

    Stats: peers and media counters, ``webrtc_udp_dropped_<reason>`` (``empty``,
    ``oversize``, ``unverified``, ``malformed_stun``, ``queue_full``, ``unknown``),
    ``webrtc_udp_accepted``, ``webrtc_silenced`` (peers dropped for silence),
    ``webrtc_closing`` (closes still running), and with a shared port
    ``webrtc_udp_sockets``, ``webrtc_udp_mux_sessions``, ``webrtc_udp_tx_dropped``,
    ``webrtc_udp_tx_errors``, ``webrtc_udp_rx_errors``, ``webrtc_udp_rx_full``.
    """

    output_types = (PeerOpen, PeerTrickle, PeerKeyframe, PeerClose, PeerSwitch)

    def __init__(
        self,
        ice_servers: Sequence[IceServer] = (),
        *,
        relay: str = "encoded",
        media_interval: float = 1.0,
        keyframe_interval: float = 0.5,
        udp_port: int = 0,
        public_ip: str | None = None,
        silence_timeout: float = 10.0,
    ) -> None:
        if relay not in ("encoded", "decoded"):
            raise ConfigError(f"relay must be 'encoded' or 'decoded', got {relay!r}")
        if not isinstance(udp_port, int) or not 0 <= udp_port < 65536:
            raise ConfigError(f"udp_port must be an int in 0..65535, got {udp_port!r}")
        if not silence_timeout > 0:
            raise ConfigError(f"silence_timeout must be > 0, got {silence_timeout!r}")
        self._relay_mode = relay
        self._udp_port = udp_port
        self._public_ip = public_ip
        self._silence_timeout = silence_timeout
        self._keyframe_interval = keyframe_interval
        self._ice = [
            RTCIceServer(urls=s.url, username=s.username, credential=s.credential)
            for s in ice_servers
        ]
        self._media_interval = media_interval
        self._ctx: DriverContext | None = None
        self._peers: dict[_Key, Peer] = {}
        #: One output clock per room (task) and kind, across its publishers.
        self._timelines: dict[tuple[TaskRef, str], Timeline] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._gathering: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._watch: asyncio.TimerHandle | None = None
        self._mux: UdpMux | None = None
        self._counters = {
            "webrtc_opened": 0,
            "webrtc_open_failed": 0,
            "webrtc_closed": 0,
            "webrtc_keyframes": 0,
            "webrtc_candidates": 0,
            "webrtc_bad_candidates": 0,
            "webrtc_passthrough_video": 0,
            "webrtc_passthrough_audio": 0,
            "webrtc_reencode_video": 0,
            "webrtc_reencode_audio": 0,
            "webrtc_switched": 0,
            "webrtc_thread_cpu_ms": 0,
            "webrtc_silenced": 0,
            **guard_counters(),
        }

    # ------------------------------------------------------------------ Driver

    def start(self, ctx: DriverContext) -> None:
        """Bind the shared UDP port (if any), start the media and silence timers.

        Raises:
            ConfigError: the shared UDP port cannot be bound (the message names it).
        """
        self._ctx = ctx
        if self._udp_port:
            mux = UdpMux(self._udp_port + ctx.worker_id, self._counters)
            mux.start(ctx)
            self._mux = mux
        self._timer = ctx.loop.call_later(self._media_interval, ctx.timed(self._report))
        self._watch = ctx.loop.call_later(WATCH_INTERVAL, ctx.timed(self._watchdog))

    def handle(self, task: TaskRef, output: Any) -> None:
        """Start the coroutine that performs ``output`` for ``task``."""
        kind = type(output)
        if type(output.session) is not str:  # a malformed command: never a key of ours
            if kind is PeerOpen:
                self._counters["webrtc_open_failed"] += 1
                reason = f"session must be a str, got {output.session!r}"
                self._deliver(task, PeerFailed(output.session, 400, reason))
            return
        if kind is PeerOpen:
            if output.role not in ("whip", "whep"):
                self._counters["webrtc_open_failed"] += 1
                reason = f"role must be 'whip' or 'whep', got {output.role!r}"
                self._deliver(task, PeerFailed(output.session, 400, reason))
                return
            fresh = (task, output.session) not in self._peers
            self._spawn(task, output.session, self._open(task, output), new=output.role)
            peer = self._peers.get((task, output.session))
            if fresh and peer is not None and output.role == "whep":
                # now, not in the coroutine: a PeerSwitch may come before it runs
                peer.follow = output.source if type(output.source) is str else None
        elif kind is PeerTrickle:
            self._spawn(task, output.session, self._trickle(task, output))
        elif kind is PeerKeyframe:
            self._keyframe(task, output.session)
        elif kind is PeerClose:
            self._close_peer((task, output.session))
        elif kind is PeerSwitch:
            self._switch(task, output)

    def release(self, task: TaskRef) -> None:
        """Close every peer connection ``task`` held."""
        for key in [k for k in self._peers if k[0] == task]:
            self._close_peer(key)
        for line in [k for k in self._timelines if k[0] == task]:
            del self._timelines[line]

    def close(self) -> None:
        """The worker stops: close what is left and finish closes still running."""
        for timer in (self._timer, self._watch):
            if timer is not None:
                timer.cancel()
        pending = set[asyncio.Task[None]]()
        if self._gathering is not None:  # cancelled, it still needs a turn of the loop
            self._gathering.cancel()
            pending.add(self._gathering)
        for key in list(self._peers):
            self._close_peer(key)
        pending |= self._closing
        ctx = self._ctx
        if ctx is not None and pending:
            loop = ctx.loop
            if not (loop.is_running() or loop.is_closed()):
                with contextlib.suppress(Exception):
                    loop.run_until_complete(asyncio.wait(pending, timeout=5.0))
        if self._mux is not None:
            self._mux.close()

    def stats(self) -> Mapping[str, int]:
        """Peer counts and counters, merged into the worker's stats."""
        out = dict(self._counters)
        out["webrtc_publishers"] = sum(1 for p in self._peers.values() if p.role == "whip")
        out["webrtc_viewers"] = sum(1 for p in self._peers.values() if p.role == "whep")
        out["webrtc_frames_in"] = sum(
            p.video_frames for p in self._peers.values() if p.role == "whip"
        )
        out["webrtc_closing"] = len(self._closing)
        if self._mux is not None:
            out.update(self._mux.stats())
        return out

    # ------------------------------------------------------------------ commands

    def _spawn(
        self,
        task: TaskRef,
        session: str,
        coro: Coroutine[Any, Any, None],
        new: str | None = None,
    ) -> None:
        assert self._ctx is not None
        key = (task, session)
        if new is not None:
            if key in self._peers:
                coro.close()
                self._deliver(task, PeerFailed(session, 409, "session already open"))
                return
            self._peers[key] = Peer(new)
        peer = self._peers.get(key)
        if peer is None:
            coro.close()
            return
        job = self._ctx.loop.create_task(coro)
        peer.jobs.add(job)
        job.add_done_callback(peer.jobs.discard)

    async def _open(self, task: TaskRef, cmd: PeerOpen) -> None:
        try:
            await self._negotiate(task, cmd)
        except Exception as exc:  # a bug or a broken environment: answer, never hang
            log.exception("negotiating %s of %s failed", cmd.session, task)
            self._fail((task, cmd.session), 500, f"internal error: {exc!r}")

    async def _negotiate(self, task: TaskRef, cmd: PeerOpen) -> None:
        key = (task, cmd.session)
        peer = self._peers[key]
        try:
            SessionDescription.parse(cmd.offer)
        except Exception as exc:
            self._fail(key, 400, f"malformed SDP: {exc!r}")
            return
        source: Peer | None = None
        if cmd.role == "whep":
            # ``None`` (the room waits for a new publisher, or it just left): the viewer
            # idles until a ``PeerSwitch`` gives it one.
            found = self._peers.get((task, peer.follow or ""))
            if found is not None and found.role == "whip" and found.relay is not None:
                source = found
        pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self._ice)))
        peer.pc = pc
        guard = PeerGuard(self._counters, mux=self._mux, public_ip=self._public_ip)
        peer.guard = guard

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if self._peers.get(key) is peer:
                peer.state = pc.connectionState
                peer.quiet = False
                if peer.state == "connected":
                    guard.heard_at = time.monotonic()  # DTLS just completed: heard
                self._deliver(task, PeerState(cmd.session, pc.connectionState))

        if cmd.role == "whip":
            peer.relay = MediaRelay()

            @pc.on("track")
            def on_track(track: MediaStreamTrack) -> None:
                if peer.relay is None or track.kind in peer.tracks:
                    return
                peer.tracks[track.kind] = track
                timeline = self._timeline(task, track.kind)
                if self._relay_mode == "encoded":
                    self._tap(peer, pc, track, timeline)
                fanout = DecodedSource(track.kind, timeline, owner=peer)
                peer.decoded[track.kind] = fanout
                sink = peer.relay.subscribe(track, buffered=False)
                job = asyncio.ensure_future(self._consume(peer, sink, fanout))
                peer.jobs.add(job)
                job.add_done_callback(peer.jobs.discard)

        offer = cmd.offer
        if source is not None:
            # Kinds forwarded encoded: the viewer must get exactly the publisher's codec,
            # so the other codecs are taken out of its offer before aiortc answers it.
            for kind, codec in source.codecs.items():
                if kind in source.encoded and offers_codec(offer, kind, codec):
                    offer = only_codec(offer, kind, codec)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            if cmd.role == "whep":
                self._add_viewer_tracks(peer, pc)
            guard_peer_connection(pc, guard)  # before setLocalDescription gathers
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
            check_guarded(pc)
            peer.codecs = negotiated_codecs(pc.localDescription.sdp)
        except IceInternalsError as exc:
            log.error("session %s not opened: %s", cmd.session, exc)
            self._fail(key, 500, f"internal error: {exc}")
            return
        except Exception as exc:
            self._fail(key, 422, f"cannot answer this offer: {exc}")
            return
        if self._peers.get(key) is not peer:
            return  # closed while negotiating
        if cmd.role == "whep":
            self._attach(task, peer)  # to the publisher it follows now (maybe switched)
        self._counters["webrtc_opened"] += 1
        self._deliver(task, PeerAnswered(cmd.session, pc.localDescription.sdp))

    def _timeline(self, task: TaskRef, kind: str) -> Timeline:
        line = self._timelines.get((task, kind))
        if line is None:
            line = Timeline(90000 if kind == "video" else 48000)
            self._timelines[(task, kind)] = line
        return line

    def _tap(
        self, peer: Peer, pc: RTCPeerConnection, track: MediaStreamTrack, timeline: Timeline
    ) -> None:
        """Fan a publisher track out encoded (the decoded relay stays as the fallback)."""
        for transceiver in pc.getTransceivers():
            if transceiver.receiver.track is track:
                source = EncodedSource(
                    track.kind, lambda: self._request_keyframe(peer), timeline, owner=peer
                )
                if tap_receiver(transceiver.receiver, source):
                    peer.encoded[track.kind] = source
                return

    def _add_viewer_tracks(self, peer: Peer, pc: RTCPeerConnection) -> None:
        """Give a viewer one (idle) outgoing track per audio/video kind of its offer."""
        for transceiver in pc.getTransceivers():
            kind = transceiver.kind
            if kind not in ("audio", "video") or kind in peer.outputs:
                continue
            track = ViewerTrack(kind)
            sender = pc.addTrack(track)
            if kind == "video":
                hook_viewer_keyframes(sender, track)
            peer.outputs[kind] = track

    def _attach(self, task: TaskRef, viewer: Peer) -> None:
        """Feed ``viewer``'s tracks from the publisher it follows: encoded when it
        negotiated that publisher's codec, else decoded; idle without one."""
        source = self._peers.get((task, viewer.follow or ""))
        if source is not None and source.role != "whip":
            source = None
        for kind, track in viewer.outputs.items():
            if source is None:
                track.detach()
                continue
            encoded = source.encoded.get(kind)
            codec, mine = source.codecs.get(kind), viewer.codecs.get(kind)
            if encoded is not None and codec and mine and codec.upper() == mine.upper():
                if track.source is not encoded:
                    track.attach(encoded)
                    self._counters[f"webrtc_passthrough_{kind}"] += 1
                continue
            decoded = source.decoded.get(kind)
            if decoded is None:
                track.detach()  # the publisher sends no such track
            elif track.source is not decoded:
                track.attach(decoded)
                self._counters[f"webrtc_reencode_{kind}"] += 1

    def _switch(self, task: TaskRef, cmd: PeerSwitch) -> None:
        """Re-attach ``cmd.viewers`` to the publisher ``cmd.session``."""
        try:
            viewers = [v for v in cmd.viewers if type(v) is str]
        except TypeError:  # not a sequence: a malformed command, nothing to do
            return
        for session in viewers:
            viewer = self._peers.get((task, session))
            if viewer is None or viewer.role != "whep":
                continue
            viewer.follow = cmd.session
            if viewer.outputs and viewer.codecs:  # else: still negotiating, attaches then
                self._attach(task, viewer)
                self._counters["webrtc_switched"] += 1

    def _request_keyframe(self, peer: Peer) -> None:
        """Ask ``peer`` (a publisher) for a keyframe, at most once per interval."""
        if self._ctx is None:
            return
        now = self._ctx.now()
        if now - peer.last_keyframe < self._keyframe_interval:
            return
        peer.last_keyframe = now
        self._send_pli(peer)

    async def _consume(self, peer: Peer, track: MediaStreamTrack, fanout: DecodedSource) -> None:
        """Read a publisher track for ever (keeps aiortc's receive queue empty); hand each
        decoded frame to the viewers fed decoded."""
        video = track.kind == "video"
        try:
            while True:
                frame = await track.recv()
                if video:
                    peer.video_frames += 1
                try:
                    fanout.on_frame(frame)
                except Exception:  # a viewer's problem must not stop the reading
                    log.exception("handing a decoded frame to the viewers failed")
        except MediaStreamError:
            return
        except Exception:
            log.exception("reading a publisher track failed; the track is dropped")
            track.stop()

    async def _trickle(self, task: TaskRef, cmd: PeerTrickle) -> None:
        peer = self._peers.get((task, cmd.session))
        if peer is None:
            return
        pc = peer.pc
        if pc is None:
            return
        try:
            candidates = [(mid, line) for mid, line in cmd.candidates]
        except (TypeError, ValueError):  # not (mid, line) pairs: count it, add none
            candidates = []
            self._counters["webrtc_bad_candidates"] += 1
        for mid, line in candidates:
            try:
                cand = candidate_from_sdp(line.split(":", 1)[1])
                if mid is not None:
                    cand.sdpMid = mid
                else:
                    cand.sdpMLineIndex = 0
                await pc.addIceCandidate(cand)
                self._counters["webrtc_candidates"] += 1
            except Exception:
                self._counters["webrtc_bad_candidates"] += 1
        if cmd.end:
            with contextlib.suppress(Exception):
                await pc.addIceCandidate(None)

    def _keyframe(self, task: TaskRef, session: str) -> None:
        peer = self._peers.get((task, session))
        if peer is not None:
            self._send_pli(peer)

    def _send_pli(self, peer: Peer) -> None:
        if peer.pc is None or self._ctx is None:
            return
        for tr in peer.pc.getTransceivers():
            receiver = tr.receiver
            send_pli = getattr(receiver, "_send_rtcp_pli", None)  # no public API in aiortc
            if tr.kind != "video" or send_pli is None:
                continue
            for src in receiver.getSynchronizationSources():
                job = self._ctx.loop.create_task(quietly(send_pli(src.source)))
                peer.jobs.add(job)
                job.add_done_callback(peer.jobs.discard)
                self._counters["webrtc_keyframes"] += 1

    # ------------------------------------------------------------------ closing

    def _fail(self, key: _Key, status: int, reason: str) -> None:
        self._counters["webrtc_open_failed"] += 1
        self._close_peer(key)
        self._deliver(key[0], PeerFailed(key[1], status, reason))

    def _close_peer(self, key: _Key) -> None:
        peer = self._peers.pop(key, None)
        if peer is None or self._ctx is None:
            return
        self._counters["webrtc_closed"] += 1
        relay, peer.relay = peer.relay, None
        if relay is not None:
            stop_relay(relay)
        current = asyncio.current_task() if self._ctx.loop.is_running() else None
        for job in list(peer.jobs):
            if job is not current:
                job.cancel()
        for output in peer.outputs.values():
            output.stop()
        sources: list[EncodedSource | DecodedSource] = [*peer.encoded.values()]
        sources += peer.decoded.values()
        for source in sources:
            source.detach_all()  # its viewers idle: a new publisher may take them over
        peer.encoded = {}
        peer.decoded = {}
        if peer.pc is None or self._ctx.loop.is_closed():
            return
        job = self._ctx.loop.create_task(close_pc(peer.pc))
        self._closing.add(job)
        job.add_done_callback(self._closing.discard)

    # ------------------------------------------------------------------ reports

    def _report(self) -> None:
        ctx = self._ctx
        assert ctx is not None
        # CPU of this worker thread, aiortc's coroutines included (the same measure as
        # the worker's utilisation, as a running total).
        self._counters["webrtc_thread_cpu_ms"] = int(time.thread_time() * 1000)
        if self._gathering is None and self._peers:  # one gathering at a time
            self._gathering = ctx.loop.create_task(self._gather())
        self._timer = ctx.loop.call_later(self._media_interval, ctx.timed(self._report))

    async def _gather(self) -> None:
        """Read every connected peer's statistics, then report what changed."""
        try:
            for key, peer in list(self._peers.items()):
                if peer.state == "connected" and self._peers.get(key) is peer:
                    try:
                        await media_stats(peer, time.monotonic())
                    except Exception:  # statistics are best effort, never fatal
                        log.debug("reading the statistics of %s failed", key, exc_info=True)
                values = (peer.frames(), *peer.media)
                if values != peer.reported and self._peers.get(key) is peer:
                    peer.reported = values
                    self._deliver(key[0], PeerMedia(key[1], *values))
        finally:
            self._gathering = None

    def _watchdog(self) -> None:
        """Report silent peers, drop those silent for ``silence_timeout``; sweep the mux."""
        ctx = self._ctx
        assert ctx is not None
        now = time.monotonic()  # the guard's clock
        timeout = self._silence_timeout
        quiet_after = min(timeout / 2, 3.0)
        for key, peer in list(self._peers.items()):
            guard = peer.guard
            if guard is None or peer.state != "connected":
                continue
            silent = now - guard.heard_at
            if silent >= timeout:
                self._counters["webrtc_silenced"] += 1
                self._close_peer(key)
                reason = f"no packets from the peer for {timeout:g} s (ICE consent lost)"
                self._deliver(key[0], PeerFailed(key[1], 410, reason))
            elif silent >= quiet_after and not peer.quiet:
                peer.quiet = True
                self._deliver(key[0], PeerState(key[1], "disconnected"))
            elif silent < quiet_after and peer.quiet:
                peer.quiet = False
                self._deliver(key[0], PeerState(key[1], "connected"))
        if self._mux is not None:
            self._mux.sweep()
        self._watch = ctx.loop.call_later(WATCH_INTERVAL, ctx.timed(self._watchdog))

    def _deliver(self, task: TaskRef, event: Any) -> None:
        if self._ctx is not None:
            self._ctx.deliver(task, event)
