"""Edges of a cluster (``--cascade on``): a room's stream pulled once from its node.

Theory of operation
-------------------
A viewer asks this node for a room whose publisher is on another node (the origin).
Instead of redirecting the viewer there, :class:`EdgeManager` makes this node a viewer
of the origin, once per room, and a publisher of the same stream into a local room:

1. **pull**: an aiortc peer connection (receive-only audio and video) posts its offer to
   the origin's WHEP endpoint (with the first operator token, as every node of a cluster
   shares its configuration) and receives the origin's tracks;
2. **push**: a second peer connection sends those tracks (through a ``MediaRelay``) as
   a WHIP publisher into a local room, opened in-process with
   :meth:`~sansio_aio.webrtc._server.WhipServer.open_session` (no HTTP, no lease: the
   room's lease stays the origin's);
3. the local room serves every local viewer, as it would a local publisher.

So the origin sends one copy of the stream per edge node, and viewers scale with nodes.
The cost: one decode and one re-encode per relayed stream on the edge (aiortc has no
public API to forward encoded frames between peer connections), and the latency of
that extra hop.

An edge ends, and with it the local room's viewers (as when a publisher leaves), when
the origin node has left the cluster's directory (it died: its node entry expired), when
the origin's connection fails or closes, when no frame came from the origin for
``silence_timeout`` seconds (the origin node died, or its publisher left), or when the
local room has had no viewer for ``idle_timeout`` seconds. Its origin session is then
deleted (best effort). Concurrent viewers of a room wait for the same edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError
from yarl import URL

from ._cluster import Owner
from ._events import Created

if TYPE_CHECKING:
    from ._server import WhipServer

__all__ = ["EdgeManager"]

log = logging.getLogger("sansio_aio.webrtc")

#: Longest an edge may take to start (origin POST, ICE, first answer), seconds.
START_TIMEOUT = 15.0
#: Longest the origin's answer body may be, bytes.
MAX_ANSWER = 64 * 1024


@dataclass(eq=False)
class _Edge:
    room: str
    origin: Owner
    pull: RTCPeerConnection
    push: RTCPeerConnection | None = None
    relay: MediaRelay = field(default_factory=MediaRelay)
    session: str | None = None  # the local publisher session
    location: str | None = None  # the origin session's URL
    started: float = field(default_factory=time.monotonic)
    last_frame: float = field(default_factory=time.monotonic)
    frames: int = 0
    idle_since: float | None = None
    jobs: set[asyncio.Task[None]] = field(default_factory=set)
    closing: bool = False


class EdgeManager:
    """The edges of this node: at most one per room, started on demand.

    Args:
        server: this node's HTTP layer (for local sessions and the configuration).
        token: bearer sent to origins (the cluster's operator token), or ``None``.
        idle_timeout: seconds without a local viewer before an edge stops.
        silence_timeout: seconds without a frame from the origin before an edge ends.
        check_interval: seconds between two checks of every edge.
        alive: ``alive(node_id)`` is False once that origin node has left the cluster
            (default: always True).
    """

    def __init__(
        self,
        server: WhipServer,
        *,
        token: str | None,
        idle_timeout: float = 10.0,
        silence_timeout: float = 10.0,
        check_interval: float = 0.5,
        alive: Callable[[str], bool] | None = None,
    ) -> None:
        self.server = server
        self.token = token
        self.idle_timeout = idle_timeout
        self.silence_timeout = silence_timeout
        self.check_interval = check_interval
        self._alive = alive or (lambda node: True)
        self.edges: dict[str, _Edge] = {}
        self._starting: dict[str, asyncio.Future[str | None]] = {}
        self._by_session: dict[str, _Edge] = {}
        self._checker: asyncio.Task[None] | None = None
        self.counters = {"started": 0, "failed": 0, "ended": 0}
        cfg = server.config
        self._ice = [
            RTCIceServer(urls=s.url, username=s.username, credential=s.credential)
            for s in cfg.ice_servers
        ]

    async def ensure(self, room: str, origin: Owner) -> str | None:
        """Make sure an edge of ``room`` from ``origin`` runs here; ``None`` when it does,
        else why it could not start."""
        edge = self.edges.get(room)
        if edge is not None and not edge.closing:
            return None
        pending = self._starting.get(room)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._starting[room] = fut
        try:
            failure = await self._start(room, origin)
        except Exception as exc:  # a bug or a broken peer: an answer, never a hang
            log.exception("starting the edge of room %s failed", room)
            failure = f"internal error: {exc!r}"
        finally:
            self._starting.pop(room, None)
        fut.set_result(failure)
        if self._checker is None:
            self._checker = asyncio.get_running_loop().create_task(self._check_forever())
        return failure

    def session_ended(self, session: str) -> bool:
        """Our local publisher ``session`` ended (the room ended it): tear its edge down.
        True when ``session`` was an edge's."""
        edge = self._by_session.pop(session, None)
        if edge is None:
            return False
        edge.session = None  # already gone: nothing to close locally
        self._spawn_end(edge, "its local session ended")
        return True

    async def close(self) -> None:
        """End every edge (bounded)."""
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
            self._checker = None
        await asyncio.gather(
            *(self._end(e, "the node is stopping") for e in list(self.edges.values())),
            return_exceptions=True,
        )

    def stats(self) -> list[dict[str, Any]]:
        """One entry per edge: room, origin node, frames pulled, age."""
        now = time.monotonic()
        return [
            {
                "room": e.room,
                "origin": e.origin.node,
                "frames": e.frames,
                "age": round(now - e.started, 3),
            }
            for e in self.edges.values()
        ]

    # ------------------------------------------------------------------ start

    async def _start(self, room: str, origin: Owner) -> str | None:
        pull = RTCPeerConnection(RTCConfiguration(iceServers=list(self._ice)))
        edge = _Edge(room, origin, pull)
        tracks: dict[str, MediaStreamTrack] = {}

        @pull.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            tracks.setdefault(track.kind, track)

        try:
            failure = await asyncio.wait_for(self._connect(edge, tracks), START_TIMEOUT)
        except TimeoutError:
            failure = f"the origin did not answer within {START_TIMEOUT:g} s"
        if failure is not None:
            self.counters["failed"] += 1
            await self._end(edge, failure, counted=False)
            return failure
        self.edges[room] = edge
        self.counters["started"] += 1
        log.info("edge of room %s from node %s started", room, origin.node)
        return None

    async def _connect(self, edge: _Edge, tracks: dict[str, MediaStreamTrack]) -> str | None:
        pull = edge.pull
        pull.addTransceiver("video", direction="recvonly")
        pull.addTransceiver("audio", direction="recvonly")
        await pull.setLocalDescription(await pull.createOffer())
        url = f"{edge.origin.url}{self.server.config.prefix}/whep/{edge.room}"
        status, text, location = await self._post(url, pull.localDescription.sdp)
        if status != 201 or location is None:
            return f"the origin answered {status}: {text.strip()[:200]}"
        edge.location = location
        await pull.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
        if not tracks:
            return "the origin sent no track"
        push = RTCPeerConnection(RTCConfiguration(iceServers=list(self._ice)))
        edge.push = push
        for kind in ("video", "audio"):
            track = tracks.get(kind)
            if track is None:
                continue
            push.addTrack(edge.relay.subscribe(track, buffered=False))
            if kind == "video":  # count frames: the edge's liveness
                sink = edge.relay.subscribe(track, buffered=False)
                edge.jobs.add(asyncio.ensure_future(self._watch(edge, sink)))
            else:  # keep the pulled audio flowing even if nobody else reads it
                sink = edge.relay.subscribe(track, buffered=False)
                edge.jobs.add(asyncio.ensure_future(_drain(sink)))
        await push.setLocalDescription(await push.createOffer())
        session, reply = await self.server.open_session(
            edge.room, "whip", push.localDescription.sdp, None
        )
        if not isinstance(reply, Created):
            return f"the local room refused the relayed stream: {reply.status} {reply.reason}"
        edge.session = session
        self._by_session[session] = edge
        await push.setRemoteDescription(RTCSessionDescription(sdp=reply.answer, type="answer"))
        return None

    async def _post(self, url: str, offer: str) -> tuple[int, str, str | None]:
        headers = {"Content-Type": "application/sdp"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        timeout = aiohttp.ClientTimeout(total=self.server.config.request_timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.post(url, data=offer, headers=headers, allow_redirects=False) as resp,
            ):
                body = await resp.content.read(MAX_ANSWER + 1)
                if len(body) > MAX_ANSWER:
                    return 502, "the origin's answer is too large", None
                text = body.decode("utf-8", "replace")
                location = resp.headers.get("Location")
                if location is not None:
                    location = str(resp.url.join(URL(location)))
                return resp.status, text, location
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return 502, f"cannot reach the origin: {exc!r}", None

    # ------------------------------------------------------------------ run, end

    async def _watch(self, edge: _Edge, track: MediaStreamTrack) -> None:
        try:
            while True:
                await track.recv()
                edge.frames += 1
                edge.last_frame = time.monotonic()
        except MediaStreamError:
            return

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)  # a periodic check, not a sync
            now = time.monotonic()
            for edge in list(self.edges.values()):
                reason = self._why_end(edge, now)
                if reason is not None:
                    self._spawn_end(edge, reason)

    def _why_end(self, edge: _Edge, now: float) -> str | None:
        if edge.closing:
            return None
        if not self._alive(edge.origin.node):
            return f"the origin node {edge.origin.node} left the cluster"
        state = edge.pull.connectionState
        if state in ("failed", "closed"):
            return f"the origin's connection is {state}"
        if now - edge.last_frame > self.silence_timeout:
            return f"no frame from the origin for {self.silence_timeout:g} s"
        viewers = sum(
            1 for e in self.server.sessions.values() if e.room == edge.room and e.role == "whep"
        )
        if viewers:
            edge.idle_since = None
        elif edge.idle_since is None:
            edge.idle_since = now
        elif now - edge.idle_since >= self.idle_timeout:
            return f"no viewer for {self.idle_timeout:g} s"
        return None

    def _spawn_end(self, edge: _Edge, reason: str) -> None:
        if edge.closing:
            return
        job = asyncio.get_running_loop().create_task(self._end(edge, reason))
        edge.jobs.add(job)

    async def _end(self, edge: _Edge, reason: str, *, counted: bool = True) -> None:
        if edge.closing:
            return
        edge.closing = True
        if self.edges.get(edge.room) is edge:
            del self.edges[edge.room]
            if counted:
                self.counters["ended"] += 1
                log.info("edge of room %s ends: %s", edge.room, reason)
        current = asyncio.current_task()
        for job in list(edge.jobs):
            if job is not current:
                job.cancel()
        if edge.session is not None:
            self._by_session.pop(edge.session, None)
            with contextlib.suppress(Exception):
                # its viewers end with it (no grace: nothing would come back to them)
                await self.server.close_session(edge.session, grace=False)
        if edge.location is not None:
            with contextlib.suppress(Exception):
                await self._delete(edge.location)
        for pc in (edge.push, edge.pull):
            if pc is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pc.close(), 5.0)

    async def _delete(self, location: str) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.delete(location, headers=headers) as resp,
        ):
            await resp.read()


async def _drain(track: MediaStreamTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()
