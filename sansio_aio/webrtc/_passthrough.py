"""Viewer tracks and the sources that feed them: encoded forwarding and the decoded relay.

Theory of operation
-------------------
aiortc relays decoded frames, so every viewer's sender encodes its own copy of the
stream (about 4% of a core per 320x240 viewer here). It has no public API to forward
encoded frames. Its sender does accept pre-encoded ``av.Packet`` objects from a track
(``MediaPlayer(decode=False)`` uses that), and its receiver puts every reassembled
encoded frame on its decoder queue. :class:`EncodedSource` taps that queue: each
``(codec, frame)`` is still decoded as usual, and a copy goes to every subscribed
viewer track. A viewer's sender then only packetizes and encrypts. This works for video
(VP8, H264) and audio (Opus, G.711): aiortc's encoders all have ``pack``.
:class:`DecodedSource` fans the publisher's decoded frames out the same way (the driver
reads every decoded frame anyway, to keep aiortc's receive queue empty); a viewer fed
from it is re-encoded by its sender, aiortc's own way.

A viewer's sender holds one :class:`ViewerTrack` per kind for the whole session. The
track is fed by at most one source at a time and can be **switched** to another
(:meth:`ViewerTrack.attach`): when the room's publisher is replaced (an encoder restart)
the driver re-attaches each viewer's tracks to the new publisher's sources, encoded when
the codec the viewer negotiated is the new publisher's, else decoded (the sender's
encoder object packs packets and encodes frames alike, so the same sender does both).
When its source goes (:meth:`ViewerTrack.detach`: the publisher left) the track idles:
``recv`` waits, the sender sends nothing, and the peer connection stays up. Only
:meth:`~ViewerTrack.stop` (the viewer's session closing) ends it.

Timestamps. Two publishers' RTP timestamps are unrelated (random starts): forwarded as
they are, a viewer's stream would jump by hours, backwards half the time, where RFC 3550
expects one media clock. Chromium 156 recovers from such a jump (checked here), other
receivers' jitter buffers and playout may not. A :class:`Timeline` per room and kind maps
each publisher's timestamps onto one continuous output clock: the first frame of a new
publisher is placed after the last frame sent, by the wall time elapsed between them;
the encoded and decoded paths of one publisher share its offset.

This touches two private names of aiortc 1.x: the receiver's decoder queue and the
sender's ``_send_keyframe``. :func:`tap_receiver` returns False when they are missing,
and the driver then uses the decoded relay. Rules that keep the video decodable (audio
frames stand alone and need none):

* an encoded viewer starts at a keyframe (after an attach too); the frames before it
  are dropped, and a keyframe is requested from the publisher (RTCP PLI, rate-limited
  by the driver) while it waits;
* a viewer that falls ``capacity`` frames behind is emptied and waits for the next
  keyframe (bounded memory, no stall); a decoded viewer keeps the newest frame only;
* a viewer's own PLI/FIR (it lost a picture) becomes a keyframe request to the
  publisher when it is fed encoded (its sender's encoder makes one when decoded).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

__all__ = [
    "DecodedSource",
    "EncodedSource",
    "Timeline",
    "ViewerTrack",
    "hook_viewer_keyframes",
    "is_keyframe",
    "tap_receiver",
]

log = logging.getLogger("sansio_aio.webrtc")

_VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
_AUDIO_TIME_BASE = fractions.Fraction(1, 48000)
_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"
_WRAP = 1 << 32
_HALF = 1 << 31


def is_keyframe(codec: str, data: bytes) -> bool:
    """True if ``data`` (a depayloaded VP8 frame or H264 Annex-B access unit) is a keyframe."""
    if not data:
        return False
    if codec == "VP8":
        return not data[0] & 0x01  # frame tag: P bit 0 = key frame (RFC 6386 §9.1)
    if codec == "H264":
        i = data.find(b"\x00\x00\x01")
        while i >= 0 and i + 3 < len(data):
            if data[i + 3] & 0x1F in (5, 7):  # IDR slice or SPS
                return True
            i = data.find(b"\x00\x00\x01", i + 3)
        return False
    return False


class Timeline:
    """One continuous output clock for a room's stream of one kind, across publishers.

    ``clock`` is the RTP clock rate (90000 for video, 48000 for Opus audio).
    """

    __slots__ = ("_last_at", "_last_out", "_offset", "_owner", "clock")

    def __init__(self, clock: int) -> None:
        self.clock = clock
        self._owner: object | None = None  # the publisher whose offset is current
        self._offset = 0
        self._last_out: int | None = None
        self._last_at = 0.0

    def map(self, owner: object, timestamp: int) -> int:
        """``timestamp`` of publisher ``owner`` on the output clock (modulo 2**32)."""
        now = time.monotonic()
        if owner is not self._owner:
            self._owner = owner
            if self._last_out is None:
                self._offset = 0  # the room's first publisher: its timestamps as they are
            else:
                gap = max(1, int((now - self._last_at) * self.clock))
                self._offset = self._last_out + gap - timestamp
        out = (timestamp + self._offset) % _WRAP
        last = self._last_out
        if last is None or (out - last) % _WRAP < _HALF:  # ahead (the decoded path lags)
            self._last_out = out
            self._last_at = now
        return out


class ViewerTrack(MediaStreamTrack):
    """A viewer's outgoing track of one kind, fed by a switchable source (see the module
    docs): encoded packets from an :class:`EncodedSource`, or decoded frames from a
    :class:`DecodedSource`, or nothing (idle) while it has no source."""

    def __init__(self, kind: str, capacity: int = 90) -> None:
        super().__init__()
        self.kind = kind
        self._capacity = capacity
        self._queue: deque[Any] = deque()
        self._ready = asyncio.Event()
        self._source: EncodedSource | DecodedSource | None = None
        self._waiting_key = False
        #: Frames handed to the viewer's sender.
        self.frames = 0
        #: Frames dropped (before a keyframe, after falling behind, or superseded).
        self.dropped = 0

    @property
    def source(self) -> EncodedSource | DecodedSource | None:
        """What feeds the track now (``None``: idle)."""
        return self._source

    def attach(self, source: EncodedSource | DecodedSource) -> None:
        """Feed the track from ``source`` from now on (frames queued from the previous
        source are dropped; encoded video starts again at a keyframe)."""
        if source is self._source:
            return
        self.detach()
        if self.readyState != "live":
            return
        self._source = source
        self._waiting_key = isinstance(source, EncodedSource) and self.kind == "video"
        source.add(self)

    def detach(self) -> None:
        """Stop feeding the track: it idles (``recv`` waits) until the next attach."""
        source, self._source = self._source, None
        if source is not None:
            source.discard(self)
        self.dropped += len(self._queue)
        self._queue.clear()

    def push_encoded(
        self, codec: str, timestamp: int, data: bytes, time_base: fractions.Fraction
    ) -> None:
        """Queue one encoded frame (called on the loop thread by the source)."""
        if self._waiting_key:
            if not is_keyframe(codec, data):
                self.dropped += 1
                self._request_keyframe()
                return
            self._waiting_key = False
        if len(self._queue) >= self._capacity:
            self.dropped += len(self._queue) + 1
            self._queue.clear()
            if self.kind == "video":
                self._waiting_key = True
                self._request_keyframe()
            return
        self._queue.append((timestamp, data, time_base))
        self._ready.set()

    def push_decoded(self, frame: Any) -> None:
        """Offer one decoded frame; only the newest waits for the sender."""
        if self._queue:
            self.dropped += len(self._queue)
            self._queue.clear()
        self._queue.append(frame)
        self._ready.set()

    def on_viewer_keyframe_request(self) -> None:
        """The viewer lost a picture: ask the publisher for a keyframe (encoded only)."""
        self._request_keyframe()

    def _request_keyframe(self) -> None:
        source = self._source
        if isinstance(source, EncodedSource):
            source.request_keyframe()

    async def recv(self) -> Any:
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        item = self._queue.popleft()
        self.frames += 1
        if not isinstance(item, tuple):
            return item  # a decoded frame (its pts already on the room's timeline)
        import av

        packet = av.Packet(item[1])
        packet.pts = item[0]
        packet.time_base = item[2]
        return packet

    def stop(self) -> None:
        super().stop()
        self.detach()
        self._ready.set()


class EncodedSource:
    """Fans a publisher's encoded frames (one track) out to :class:`ViewerTrack` viewers."""

    def __init__(
        self,
        kind: str,
        request_keyframe: Callable[[], None],
        timeline: Timeline | None = None,
        owner: object = None,
    ) -> None:
        self.kind = kind
        #: The RTP clock of the frames' timestamps (from the codec once known).
        self.time_base = _VIDEO_TIME_BASE if kind == "video" else _AUDIO_TIME_BASE
        self._request_keyframe = request_keyframe
        self.timeline = timeline
        #: Whose offset the timeline applies: the publisher (its decoded path shares it).
        self.owner: object = owner if owner is not None else self
        self.tracks: set[ViewerTrack] = set()
        #: The codec of the frames seen so far (``"VP8"``, ``"H264"``), once known.
        self.codec: str | None = None
        self.frames = 0

    def on_frame(self, codec: Any, frame: Any) -> None:
        """One encoded frame from the receiver (on the loop thread)."""
        name = str(codec.name)
        if self.codec != name:
            self.codec = name
            rate = getattr(codec, "clockRate", None)
            if rate:
                self.time_base = fractions.Fraction(1, int(rate))
        self.frames += 1
        if not self.tracks:
            return
        stamp = int(frame.timestamp)
        if self.timeline is not None:
            stamp = self.timeline.map(self.owner, stamp)
        data, time_base = frame.data, self.time_base
        for track in list(self.tracks):
            track.push_encoded(name, stamp, data, time_base)

    def on_end(self) -> None:
        """The receiver stopped: every viewer track idles until it is attached again."""
        self.detach_all()

    def detach_all(self) -> None:
        """Let go of every viewer track (they idle)."""
        for track in list(self.tracks):
            track.detach()

    def add(self, track: ViewerTrack) -> None:
        """Feed ``track`` (use :meth:`ViewerTrack.attach`); asks for a keyframe (video)."""
        self.tracks.add(track)
        if self.kind == "video":
            self.request_keyframe()

    def discard(self, track: ViewerTrack) -> None:
        """Stop feeding ``track``."""
        self.tracks.discard(track)

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe (the driver rate-limits)."""
        try:
            self._request_keyframe()
        except Exception:
            log.debug("keyframe request failed", exc_info=True)


class DecodedSource:
    """Fans a publisher's decoded frames (one track) out to :class:`ViewerTrack` viewers,
    their timestamps mapped onto the room's :class:`Timeline` (in place: the frame is
    the one object every reader of this publisher's track shares)."""

    def __init__(self, kind: str, timeline: Timeline | None = None, owner: object = None) -> None:
        self.kind = kind
        self.timeline = timeline
        #: Whose offset the timeline applies: the publisher (its encoded path shares it).
        self.owner: object = owner if owner is not None else self
        self.tracks: set[ViewerTrack] = set()

    def on_frame(self, frame: Any) -> None:
        """One decoded frame (on the loop thread)."""
        if not self.tracks:
            return
        if self.timeline is not None and frame.pts is not None:
            frame.pts = self.timeline.map(self.owner, int(frame.pts))
        for track in list(self.tracks):
            track.push_decoded(frame)

    def detach_all(self) -> None:
        """Let go of every viewer track (they idle)."""
        for track in list(self.tracks):
            track.detach()

    def add(self, track: ViewerTrack) -> None:
        """Feed ``track`` (use :meth:`ViewerTrack.attach`)."""
        self.tracks.add(track)

    def discard(self, track: ViewerTrack) -> None:
        """Stop feeding ``track``."""
        self.tracks.discard(track)


def tap_receiver(receiver: Any, source: EncodedSource) -> bool:
    """Copy every encoded frame ``receiver`` reassembles to ``source``.

    Returns False (and changes nothing) if this aiortc has no decoder queue to tap.
    """
    queue = getattr(receiver, _QUEUE_ATTR, None)
    put = getattr(queue, "put", None)
    if queue is None or put is None:
        return False

    def tapped_put(item: Any, *args: Any, **kwargs: Any) -> None:
        if item is None:
            source.on_end()
        else:
            try:
                source.on_frame(item[0], item[1])
            except Exception:
                log.exception("forwarding an encoded frame failed")
        put(item, *args, **kwargs)

    queue.put = tapped_put
    return True


def hook_viewer_keyframes(sender: Any, track: ViewerTrack) -> None:
    """Turn the viewer's PLI/FIR (handled by ``sender._send_keyframe``) into requests."""
    original = getattr(sender, "_send_keyframe", None)
    if original is None:
        return

    def send_keyframe() -> None:
        original()
        track.on_viewer_keyframe_request()

    sender._send_keyframe = send_keyframe
