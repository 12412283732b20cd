"""A small WHIP/WHEP client on aiortc: publish a track, view a room, count frames.

Used by the tests, the benchmark and as a command-line client::

    python -m sansio_aio.webrtc.client publish http://127.0.0.1:8080/whip/demo --seconds 30
    python -m sansio_aio.webrtc.client view http://127.0.0.1:8080/whep/demo --frames 100

Every aiortc object is created inside the coroutine that uses it, so run these on the
loop that should drive the peer (in tests: a loop inside a private network namespace).
No ICE server is used unless given (never Google's STUN default).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from yarl import URL

from ._errors import WhipError

__all__ = ["PatternTrack", "WhipSession", "main", "publish", "view"]

VIDEO_CLOCK = 90000


class PatternTrack(MediaStreamTrack):
    """A generated moving video pattern at ``fps`` (a camera stand-in)."""

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: int = 30) -> None:
        super().__init__()
        import av

        self._fps = fps
        self._start: float | None = None
        self._count = 0
        self._frames = []
        ramp = bytes(range(256)) * ((width + height) // 256 + 3)
        for i in range(fps):  # one second of diagonal stripes moving to the left
            frame = av.VideoFrame(width, height, "yuv420p")
            for index, plane in enumerate(frame.planes):
                pad = bytes(plane.line_size - plane.width)
                if index == 0:
                    rows = [
                        ramp[(y + i * 8) % 256 : (y + i * 8) % 256 + plane.width] + pad
                        for y in range(plane.height)
                    ]
                    plane.update(b"".join(rows))
                else:
                    value = 128 + (i % 16) if index == 1 else 128
                    plane.update((bytes([value]) * plane.width + pad) * plane.height)
            self._frames.append(frame)

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = self._start + self._count / self._fps
        if due > now:
            await asyncio.sleep(due - now)
        frame = self._frames[self._count % len(self._frames)]
        frame.pts = self._count * VIDEO_CLOCK // self._fps
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._count += 1
        return frame


#: Redirects a client follows before it gives up.
MAX_REDIRECTS = 5


class WhipSession:
    """One WHIP or WHEP session from the client's side."""

    def __init__(
        self,
        pc: RTCPeerConnection,
        url: str,
        location: str,
        etag: str | None,
        token: str | None = None,
    ) -> None:
        self.pc = pc
        self.url = url
        self.location = location
        self.etag = etag
        #: The bearer token the session was created with (sent again on DELETE).
        self.token = token
        #: Video frames decoded so far (viewers).
        self.frames = 0
        #: Audio frames decoded so far (viewers with ``audio=True``).
        self.audio_frames = 0
        #: Decoded video frames per ``(width, height)``, in the order sizes were seen.
        self.sizes: dict[tuple[int, int], int] = {}
        self.first_frame = asyncio.get_running_loop().create_future()
        self._jobs: set[asyncio.Task[None]] = set()
        self._counting = asyncio.Event()

    def _consume(self, track: MediaStreamTrack) -> None:
        job = asyncio.ensure_future(self._read(track))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _read(self, track: MediaStreamTrack) -> None:
        video = track.kind == "video"
        try:
            while True:
                frame: Any = await track.recv()
                if video:
                    size = (int(frame.width), int(frame.height))
                    self.sizes[size] = self.sizes.get(size, 0) + 1
                    self._frame_seen()
                else:
                    self.audio_frames += 1
        except MediaStreamError:
            return

    def _frame_seen(self) -> None:
        self.frames += 1
        if not self.first_frame.done():
            self.first_frame.set_result(time.monotonic())
        self._counting.set()

    async def wait_frames(self, count: int, timeout: float) -> int:
        """Wait until ``count`` video frames were decoded; return the count reached."""
        deadline = time.monotonic() + timeout
        while self.frames < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._counting.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._counting.wait(), left)
        return self.frames

    async def delete(self, http: aiohttp.ClientSession | None = None) -> int:
        """``DELETE`` the session URL (with the session's token, if any); return the status."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with _http(http) as h, h.delete(self.location, headers=headers) as resp:
            status: int = resp.status
            return status

    async def close(self) -> None:
        """Close the peer connection (without telling the server)."""
        for job in list(self._jobs):
            job.cancel()
        await self.pc.close()


@contextlib.asynccontextmanager
async def _http(http: aiohttp.ClientSession | None) -> Any:
    if http is not None:
        yield http
        return
    async with aiohttp.ClientSession() as own:
        yield own


async def _negotiate(
    pc: RTCPeerConnection,
    url: str,
    token: str | None,
    http: aiohttp.ClientSession | None,
) -> WhipSession:
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    target = URL(url)
    async with _http(http) as h:
        # Redirects are followed here, not by aiohttp: it drops ``Authorization`` when a
        # redirect leaves the host, and a cluster node redirects to another node (307,
        # RFC 9725 §4.5: the client SHALL follow it, with the same offer and token).
        for _ in range(MAX_REDIRECTS + 1):
            async with h.post(
                target, data=pc.localDescription.sdp, headers=headers, allow_redirects=False
            ) as resp:
                text = await resp.text()
                if resp.status in (307, 308) and "Location" in resp.headers:
                    target = target.join(URL(resp.headers["Location"]))
                    continue
                if resp.status != 201:
                    await pc.close()
                    raise WhipError(resp.status, text)
                location = str(target.join(URL(resp.headers["Location"])))
                etag = resp.headers.get("ETag")
                break
        else:
            await pc.close()
            raise WhipError(310, f"more than {MAX_REDIRECTS} redirects from {url}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
    return WhipSession(pc, str(target), location, etag, token)


def _pc(ice_servers: Sequence[str]) -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(u) for u in ice_servers]))


async def publish(
    url: str,
    tracks: Sequence[MediaStreamTrack],
    *,
    token: str | None = None,
    http: aiohttp.ClientSession | None = None,
    ice_servers: Sequence[str] = (),
    video_codec: str | None = None,
) -> WhipSession:
    """Publish ``tracks`` to a WHIP endpoint; raises :class:`WhipError` if refused.

    ``video_codec`` (``"VP8"``, ``"H264"``) offers only that video codec.
    """
    pc = _pc(ice_servers)
    for track in tracks:
        transceiver = pc.addTransceiver(track, direction="sendonly")
        if video_codec is not None and track.kind == "video":
            caps = RTCRtpSender.getCapabilities("video").codecs
            wanted = {video_codec.upper(), "RTX"}
            transceiver.setCodecPreferences(
                [c for c in caps if c.mimeType.split("/", 1)[1].upper() in wanted]
            )
    return await _negotiate(pc, url, token, http)


async def view(
    url: str,
    *,
    token: str | None = None,
    http: aiohttp.ClientSession | None = None,
    audio: bool = False,
    decode: bool = True,
    ice_servers: Sequence[str] = (),
) -> WhipSession:
    """View a WHEP endpoint; the session counts decoded video frames.

    With ``decode=False`` it counts complete encoded video frames as they are
    reassembled and never decodes them (a light load generator for benchmarks).
    """
    pc = _pc(ice_servers)
    video = pc.addTransceiver("video", direction="recvonly")
    if audio:
        pc.addTransceiver("audio", direction="recvonly")
    holder: list[WhipSession] = []
    early: list[MediaStreamTrack] = []
    if not decode:
        _count_encoded(video.receiver, holder)

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if holder:
            holder[0]._consume(track)
        else:
            early.append(track)

    session = await _negotiate(pc, url, token, http)
    holder.append(session)
    for track in early:
        session._consume(track)
    return session


def _count_encoded(receiver: Any, holder: list[WhipSession]) -> None:
    """Count the receiver's encoded video frames instead of decoding them."""
    queue = getattr(receiver, "_RTCRtpReceiver__decoder_queue", None)  # private aiortc
    if queue is None:
        raise WhipError(0, "this aiortc cannot count encoded frames: use decode=True")
    put = queue.put

    def count(item: Any, *args: Any, **kwargs: Any) -> None:
        if item is None:
            put(item, *args, **kwargs)  # lets the decoder thread end
        elif holder:
            holder[0]._frame_seen()

    queue.put = count


async def _main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m sansio_aio.webrtc.client")
    p.add_argument("mode", choices=["publish", "view"])
    p.add_argument("url", help="the WHIP or WHEP endpoint, e.g. http://127.0.0.1:8080/whip/demo")
    p.add_argument("--token", default=None)
    p.add_argument("--seconds", type=float, default=30.0, help="how long to run")
    p.add_argument("--frames", type=int, default=0, help="view: stop after this many frames")
    p.add_argument("--size", default="320x240")
    p.add_argument("--fps", type=int, default=30)
    a = p.parse_args(argv)
    if a.mode == "publish":
        width, height = (int(x) for x in a.size.split("x"))
        session = await publish(a.url, [PatternTrack(width, height, a.fps)], token=a.token)
        print(f"publishing to {a.url}: session {session.location}", flush=True)
        await asyncio.sleep(a.seconds)
    else:
        session = await view(a.url, token=a.token)
        print(f"viewing {a.url}: session {session.location}", flush=True)
        target = a.frames or 10**9
        got = await session.wait_frames(target, a.seconds)
        print(f"decoded {got} video frames", flush=True)
    await session.delete()
    await session.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command line client: ``publish`` a test pattern or ``view`` a stream."""
    return asyncio.run(_main(sys.argv[1:] if argv is None else argv))
