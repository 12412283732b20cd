"""Encoded-frame forwarding: viewers get the publisher's frames as sent, not a re-encode.

aiortc relays decoded frames, so every viewer's sender encodes its own copy of the
stream (about 4% of a core per 320x240 viewer here). It has no public API to forward
encoded frames. Its sender does accept pre-encoded ``av.Packet`` objects from a track
(``MediaPlayer(decode=False)`` uses that), and its receiver puts every reassembled
encoded frame on its decoder queue. :class:`EncodedSource` taps that queue: each
``(codec, frame)`` is still decoded as usual, and a copy goes to every
:class:`EncodedTrack`. A viewer's sender only packetizes and encrypts. This works for
video (VP8, H264) and audio (Opus, G.711): aiortc's encoders all have ``pack``.

This touches two private names of aiortc 1.x: the receiver's decoder queue and the
sender's ``_send_keyframe``. :func:`tap_receiver` returns None when they are missing,
and the driver then falls back to the decoded relay. Rules that keep the video
decodable (audio frames stand alone and need none):

* a viewer starts at a keyframe; the frames before it are dropped, and a keyframe is
  requested from the publisher (RTCP PLI);
* a viewer that falls ``capacity`` frames behind is emptied and waits for the next
  keyframe (bounded memory, no stall);
* a viewer's own PLI/FIR (it lost a picture) becomes a keyframe request to the
  publisher, rate-limited per publisher.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

__all__ = ["EncodedSource", "EncodedTrack", "is_keyframe", "tap_receiver"]

log = logging.getLogger("sansio_aio.webrtc")

_VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"


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


class EncodedTrack(MediaStreamTrack):
    """A viewer's track fed with the publisher's encoded frames (audio or video)."""

    def __init__(self, source: EncodedSource, capacity: int) -> None:
        super().__init__()
        self.kind = source.kind
        self._source = source
        self._capacity = capacity
        self._queue: deque[Any] = deque()
        self._ready = asyncio.Event()
        self._waiting_key = source.kind == "video"  # audio frames stand alone
        self._ended = False
        #: Frames handed to the viewer's sender.
        self.frames = 0
        #: Frames dropped (before the first keyframe or after falling behind).
        self.dropped = 0

    def push(self, codec: str, frame: Any) -> None:
        """Queue one encoded frame (called on the loop thread by the source)."""
        if self._waiting_key:
            if not is_keyframe(codec, frame.data):
                self.dropped += 1
                return
            self._waiting_key = False
        if len(self._queue) >= self._capacity:
            self.dropped += len(self._queue) + 1
            self._queue.clear()
            if self.kind == "video":
                self._waiting_key = True
                self._source.request_keyframe()
            return
        self._queue.append(frame)
        self._ready.set()

    def end(self) -> None:
        """The publisher's track ended."""
        self._ended = True
        self._ready.set()

    def on_viewer_keyframe_request(self) -> None:
        """The viewer lost a picture: ask the publisher for a keyframe."""
        self._source.request_keyframe()

    async def recv(self) -> Any:
        import av

        while not self._queue:
            if self._ended or self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        frame = self._queue.popleft()
        packet = av.Packet(frame.data)
        packet.pts = frame.timestamp
        packet.time_base = self._source.time_base
        self.frames += 1
        return packet

    def stop(self) -> None:
        super().stop()
        self._source.unsubscribe(self)
        self._ready.set()


class EncodedSource:
    """Fans a publisher's encoded frames (one track) out to :class:`EncodedTrack` viewers."""

    def __init__(self, kind: str, request_keyframe: Callable[[], None]) -> None:
        self.kind = kind
        #: The RTP clock of the frames' timestamps (from the codec once known).
        self.time_base = _VIDEO_TIME_BASE if kind == "video" else fractions.Fraction(1, 48000)
        self._request_keyframe = request_keyframe
        self.tracks: set[EncodedTrack] = set()
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
        for track in list(self.tracks):
            track.push(name, frame)

    def on_end(self) -> None:
        """The receiver stopped: end every viewer track."""
        for track in list(self.tracks):
            track.end()

    def subscribe(self, capacity: int = 90) -> EncodedTrack:
        """A new viewer track; for video, asks the publisher for a keyframe to start from."""
        track = EncodedTrack(self, capacity)
        self.tracks.add(track)
        if self.kind == "video":
            self.request_keyframe()
        return track

    def unsubscribe(self, track: EncodedTrack) -> None:
        """Forget ``track`` (it stopped)."""
        self.tracks.discard(track)

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe (the driver rate-limits)."""
        try:
            self._request_keyframe()
        except Exception:
            log.debug("keyframe request failed", exc_info=True)


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


def hook_viewer_keyframes(sender: Any, track: EncodedTrack) -> None:
    """Turn the viewer's PLI/FIR (handled by ``sender._send_keyframe``) into requests."""
    original = getattr(sender, "_send_keyframe", None)
    if original is None:
        return

    def send_keyframe() -> None:
        original()
        track.on_viewer_keyframe_request()

    sender._send_keyframe = send_keyframe
