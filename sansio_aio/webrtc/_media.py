"""Media helpers of the driver: per-session state, codec matching, media statistics.

No loop is created here; :func:`stop_relay` and :func:`media_stats` run on the
caller's loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.contrib.media import MediaRelay
from aiortc.sdp import SessionDescription

from ._passthrough import DecodedSource, EncodedSource, ViewerTrack
from ._udpguard import PeerGuard

log = logging.getLogger("sansio_aio.webrtc")

__all__ = [
    "MediaSample",
    "Peer",
    "clock_rate",
    "close_pc",
    "media_stats",
    "negotiated_codecs",
    "offers_codec",
    "only_codec",
    "quietly",
    "stop_relay",
]


def negotiated_codecs(sdp: str) -> dict[str, str]:
    """``kind -> codec name`` (``video: VP8``, ``audio: opus``) chosen in an answer."""
    out: dict[str, str] = {}
    for media in SessionDescription.parse(sdp).media:
        if media.kind in ("audio", "video") and media.rtp.codecs and media.kind not in out:
            out[media.kind] = str(media.rtp.codecs[0].mimeType.split("/", 1)[1])
    return out


def offers_codec(offer: str, kind: str, codec: str) -> bool:
    """True if the first ``kind`` section of ``offer`` lists ``codec``."""
    for media in SessionDescription.parse(offer).media:
        if media.kind == kind:
            names = {c.mimeType.split("/", 1)[1].upper() for c in media.rtp.codecs}
            return codec.upper() in names
    return False


def only_codec(offer: str, kind: str, codec: str) -> str:
    """``offer`` with its ``kind`` sections listing only ``codec`` (and its RTX).

    aiortc answers with the first codec both sides have, in its own order of
    preference, and codec preferences set after ``setRemoteDescription`` are ignored;
    narrowing the offer is the public way to make it pick ``codec``.
    """
    desc = SessionDescription.parse(offer)
    for media in desc.media:
        if media.kind != kind:
            continue
        keep = [c for c in media.rtp.codecs if _name(c) == codec.upper()]
        types = {c.payloadType for c in keep}
        rtx = [
            c
            for c in media.rtp.codecs
            if _name(c) == "RTX" and int(str(c.parameters.get("apt", -1))) in types
        ]
        media.rtp.codecs = keep + rtx
        media.fmt = [c.payloadType for c in media.rtp.codecs]
    return str(desc)


def _name(codec: Any) -> str:
    return str(codec.mimeType.split("/", 1)[1]).upper()


class MediaSample:
    """The transport's byte counters at one moment (for bitrates between two samples)."""

    __slots__ = ("at", "bytes_in", "bytes_out")

    def __init__(self, at: float, bytes_in: int, bytes_out: int) -> None:
        self.at = at
        self.bytes_in = bytes_in
        self.bytes_out = bytes_out


class Peer:
    """One session's peer connection and what hangs off it (owned by the driver)."""

    __slots__ = (
        "codecs",
        "decoded",
        "encoded",
        "follow",
        "guard",
        "jobs",
        "last_keyframe",
        "media",
        "outputs",
        "pc",
        "quiet",
        "relay",
        "reported",
        "role",
        "sample",
        "state",
        "tracks",
        "video_frames",
    )

    def __init__(self, role: str) -> None:
        self.pc: RTCPeerConnection | None = None  # built by _open, on the loop
        self.encoded: dict[str, EncodedSource] = {}  # publisher: kind -> encoded fan-out
        self.decoded: dict[str, DecodedSource] = {}  # publisher: kind -> decoded fan-out
        #: The negotiated codec of each kind (``"VP8"``, ``"opus"``), from the answer.
        self.codecs: dict[str, str] = {}
        self.last_keyframe = float("-inf")
        self.role = role
        self.jobs: set[asyncio.Task[None]] = set()
        self.relay: MediaRelay | None = None
        self.tracks: dict[str, MediaStreamTrack] = {}  # publisher: kind -> remote track
        self.outputs: dict[str, ViewerTrack] = {}  # viewer: kind -> its outgoing track
        self.follow: str | None = None  # viewer: the publisher session it is fed from
        self.video_frames = 0  # publisher: video frames received
        self.reported: tuple[Any, ...] | None = None  # the last PeerMedia values sent
        self.sample: MediaSample | None = None  # the last transport byte counters
        #: The last statistics: bitrate_in, bitrate_out, packets_lost, jitter, rtt.
        self.media: tuple[int | None, int | None, int | None, float | None, float | None] = (
            None,
            None,
            None,
            None,
            None,
        )
        self.guard: PeerGuard | None = None  # its datagram guard (liveness: heard_at)
        self.state = "new"  # the peer connection's connectionState
        self.quiet = False  # reported "disconnected" for silence, not yet heard again

    def frames(self) -> int:
        """Video frames received (publisher) or handed to the sender (viewer)."""
        if self.role == "whip":
            return self.video_frames
        track = self.outputs.get("video")
        return track.frames if track is not None else 0


#: RTP clock rates of the audio codecs aiortc speaks (video is always 90 kHz).
_AUDIO_CLOCKS = {"OPUS": 48000, "PCMU": 8000, "PCMA": 8000, "G722": 8000}


def clock_rate(kind: str, codec: str | None) -> int:
    """The RTP clock rate of ``codec`` (a ``kind`` stream): jitter's unit."""
    if kind == "video":
        return 90000
    return _AUDIO_CLOCKS.get((codec or "opus").upper(), 48000)


async def media_stats(peer: Peer, now: float) -> None:
    """Refresh ``peer.media`` from aiortc's statistics (``RTCRtpReceiver.getStats`` for a
    publisher's streams, ``RTCRtpSender.getStats`` for a viewer's, and the transport's
    byte counters). Bitrates need two samples: ``None`` at the first."""
    pc = peer.pc
    if pc is None:
        return
    lost: int | None = None
    jitter: float | None = None
    rtt: float | None = None
    transport: Any = None
    for transceiver in pc.getTransceivers():
        kind = transceiver.kind
        try:
            if peer.role == "whip":
                report = await transceiver.receiver.getStats()
            else:
                if transceiver.sender.track is None:
                    continue
                report = await transceiver.sender.getStats()
        except Exception:  # a transceiver without transport (yet): nothing to read
            continue
        rate = clock_rate(kind, peer.codecs.get(kind))
        for stats in report.values():
            kind_of = stats.type
            if kind_of == "transport":
                transport = stats
            elif kind_of in ("inbound-rtp", "remote-inbound-rtp"):
                lost = (lost or 0) + max(0, int(stats.packetsLost))
                seconds = float(stats.jitter) / rate
                jitter = seconds if jitter is None else max(jitter, seconds)
                trip = getattr(stats, "roundTripTime", None)
                if trip is not None:
                    rtt = float(trip) if rtt is None else max(rtt, float(trip))
    bitrate_in: int | None = None
    bitrate_out: int | None = None
    if transport is not None:
        sample = MediaSample(now, int(transport.bytesReceived), int(transport.bytesSent))
        last = peer.sample
        if last is not None and now > last.at:
            span = now - last.at
            bitrate_in = max(0, int((sample.bytes_in - last.bytes_in) * 8 / span))
            bitrate_out = max(0, int((sample.bytes_out - last.bytes_out) * 8 / span))
        peer.sample = sample
    peer.media = (
        bitrate_in,
        bitrate_out,
        lost,
        None if jitter is None else round(jitter, 6),
        None if rtt is None else round(rtt, 6),
    )


async def quietly(coro: Coroutine[Any, Any, Any]) -> None:
    """Await ``coro``, logging (not raising) its failure."""
    try:
        await coro
    except Exception:
        log.debug("a keyframe request failed", exc_info=True)


def stop_relay(relay: MediaRelay) -> None:
    """Cancel the tasks ``relay`` reads its source tracks with.

    A relay task waits on its source track until the track ends; a publisher's track
    only ends through its receiver's decoder, which never started if the peer never
    connected. Left pending, the task is garbage-collected with the relay and asyncio
    logs "Task was destroyed but it is pending!". ``MediaRelay`` keeps the tasks in a
    private dict (aiortc 1.16: ``__tasks``, track -> task); without it nothing is done.
    """
    tasks = getattr(relay, "_MediaRelay__tasks", None)
    if isinstance(tasks, dict):
        for task in list(tasks.values()):
            if isinstance(task, asyncio.Future):
                task.cancel()


async def close_pc(pc: RTCPeerConnection) -> None:
    """Close ``pc``, logging (not raising) a failure."""
    try:
        await pc.close()
    except Exception:
        log.debug("closing a peer connection failed", exc_info=True)
