"""Media helpers of the driver: per-session state, a frame-counting track, codec matching.

No loop is created here; the track's ``recv`` and :func:`stop_relay` run on the
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

from ._passthrough import EncodedSource, EncodedTrack
from ._udpguard import PeerGuard

log = logging.getLogger("sansio_aio.webrtc")

__all__ = [
    "CountingTrack",
    "Peer",
    "close_pc",
    "negotiated_codecs",
    "offers_codec",
    "only_codec",
    "quietly",
    "stop_relay",
]


class CountingTrack(MediaStreamTrack):
    """A pass-through track that counts the frames a viewer's sender pulls."""

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = source.kind
        self._source = source
        self.frames = 0

    async def recv(self) -> Any:
        frame = await self._source.recv()
        self.frames += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self._source.stop()


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


class Peer:
    """One session's peer connection and what hangs off it (owned by the driver)."""

    __slots__ = (
        "codecs",
        "counters",
        "encoded",
        "guard",
        "jobs",
        "last_keyframe",
        "pc",
        "quiet",
        "relay",
        "reported",
        "role",
        "state",
        "tracks",
        "video_frames",
    )

    def __init__(self, role: str) -> None:
        self.pc: RTCPeerConnection | None = None  # built by _open, on the loop
        self.encoded: dict[str, EncodedSource] = {}  # publisher: kind -> encoded fan-out
        self.codecs: dict[str, str] = {}  # publisher: kind -> negotiated codec ("VP8", ...)
        self.last_keyframe = float("-inf")
        self.role = role
        self.jobs: set[asyncio.Task[None]] = set()
        self.relay: MediaRelay | None = None
        self.tracks: dict[str, MediaStreamTrack] = {}  # publisher: kind -> remote track
        self.counters: list[CountingTrack | EncodedTrack] = []  # viewer: its tracks
        self.video_frames = 0  # publisher: video frames received
        self.reported = -1
        self.guard: PeerGuard | None = None  # its datagram guard (liveness: heard_at)
        self.state = "new"  # the peer connection's connectionState
        self.quiet = False  # reported "disconnected" for silence, not yet heard again

    def frames(self) -> int:
        """Video frames received (publisher) or handed to the sender (viewer)."""
        if self.role == "whip":
            return self.video_frames
        return sum(t.frames for t in self.counters if t.kind == "video")


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
