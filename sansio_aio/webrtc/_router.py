"""Routing between the nodes of a cluster: which node serves a WHIP or WHEP request.

Theory of operation
-------------------
With ``--cluster`` every node keeps a :class:`~sansio_aio.webrtc._cluster.Directory` in
Redis (nodes and their load, rooms and the node that holds each). The HTTP layer asks
:meth:`ClusterRouter.route` after a request passed its own checks (auth, room name,
offer), and before it opens anything locally:

* **WHIP** (a publisher): a room this node holds, or one it can claim (free, or its
  node is dead), is served here; a room held by another live node gets **307** to that
  node (RFC 9725 §4.5; the client re-POSTs the same offer and token there). A full node
  redirects a publisher to the least-loaded node with room left, or answers 503.
* **WHEP** (a viewer): a room with a local room task (its publisher, or an edge, is
  here) is served here; a room held elsewhere gets **307** to its node
  (``cascade=False``), or (``cascade=True``) this node starts an edge
  (:mod:`._edge`): it pulls the stream once over WHEP and publishes it into a local
  room, and serves the viewer from that. A room nobody holds is answered locally
  (``no_publisher_status``).
* Redis unreachable: what is local keeps working; anything that needs the directory
  gets **503** + ``Retry-After`` (the :class:`Directory` logs it once).

The lease of a room is released when the room has no session left here (none being
opened either): its publisher ended (DELETE, timeout, the room ending) and so did its
viewers. A room whose publisher left keeps its viewers for ``publisher_grace`` seconds
(see :mod:`._room`), and so keeps its lease: a new publisher of the room (an encoder
restarting), on any node, is sent here and takes the viewers over. Once the grace
passes without one, the room ends its viewers, and the lease is released.

Redirects are absolute (``node_url`` + the request's path), and so are session URLs, so
PATCH and DELETE reach the node that holds the session directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ._cluster import ClusterUnavailable, Directory, Owner
from ._edge import EdgeManager

if TYPE_CHECKING:
    from ._server import WhipServer

__all__ = ["ClusterRouter", "cluster_metrics"]

log = logging.getLogger("sansio_aio.webrtc")

#: Rooms listed in ``/stats`` (``room_count`` has them all).
MAX_ROOMS_SHOWN = 1000


class ClusterRouter:
    """Decides, for each WHIP/WHEP POST, whether this node serves it or which node does.

    Args:
        server: this node's HTTP layer.
        directory: this node's view of the cluster (started and closed by the caller).
        cascade: serve viewers of remote rooms through a local edge (else: redirect).
        edges: the edge manager (required with ``cascade``).
    """

    def __init__(
        self,
        server: WhipServer,
        directory: Directory,
        *,
        cascade: bool = False,
        edges: EdgeManager | None = None,
    ) -> None:
        if cascade and edges is None:
            raise ValueError("cascade needs an EdgeManager")
        self.server = server
        self.directory = directory
        self.cascade = cascade
        self.edges = edges
        self.counters = {"redirects": 0, "unavailable": 0, "claims": 0, "releases": 0}
        self._cpu = (time.process_time(), time.monotonic())
        self._jobs: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ routing

    async def route(self, role: str, room: str, request: web.Request) -> web.StreamResponse | None:
        """``None``: serve it here; else the answer (307 to the node that serves it, 503)."""
        if role == "whip":
            return await self._route_publisher(room, request)
        return await self._route_viewer(room, request)

    async def _route_publisher(self, room: str, request: web.Request) -> web.StreamResponse | None:
        if self._publisher_here(room) or room in self.directory.held():
            return None  # ours: the room answers (409 if it has a publisher already)
        if self.server.full():
            return self.elsewhere(room, request) or self._full()
        try:
            owner = await self.directory.claim(room)
        except ClusterUnavailable as exc:
            return self._unavailable(exc)
        if owner.mine:
            self.counters["claims"] += 1
            return None
        return self._redirect(owner, request)

    async def _route_viewer(self, room: str, request: web.Request) -> web.StreamResponse | None:
        if room in self.server.rooms:
            return None  # its publisher (or an edge of it) is here
        try:
            owner = await self.directory.lookup(room)
        except ClusterUnavailable as exc:
            return self._unavailable(exc)
        if owner is None or owner.mine:
            return None  # nobody publishes it (the room answers no_publisher_status)
        if not self.cascade:
            return self._redirect(owner, request)
        if self.server.full():
            return self.elsewhere(room, request) or self._full()
        assert self.edges is not None
        failure = await self.edges.ensure(room, owner)
        if failure is not None:
            return _error(502, f"cannot relay room {room!r} from {owner.node}: {failure}")
        return None

    def elsewhere(self, room: str, request: web.Request) -> web.StreamResponse | None:
        """A 307 to the least-loaded other node with room left, or ``None`` (none has)."""
        node = self.directory.least_loaded(exclude=self.directory.node_id)
        if node is None:
            return None
        return self._redirect(Owner(node.id, node.url, False), request)

    # ------------------------------------------------------------------ session events

    def publish_failed(self, room: str) -> None:
        """A publisher's POST was refused here: give the room back if it is unused."""
        self._release_if_unused(room)

    def session_ended(self, session: str, room: str, role: str) -> None:
        """A session ended here: the room's last one (a publisher with no viewer, or the
        last viewer after the publisher's grace) releases the room's lease."""
        if self.edges is not None and self.edges.session_ended(session):
            return  # an edge's own publisher session: the lease is the origin's
        self._release_if_unused(room)

    def _release_if_unused(self, room: str) -> None:
        if room in self.directory.held() and not self.server.in_use(room):
            self._release(room)

    def lost(self, room: str) -> None:
        """The directory gave ``room`` to another node (this one stalled or was cut off
        from Redis past its node TTL): end its sessions here, so one room name never has
        two publishers (its viewers end at once too, with no grace)."""
        sessions = [(sid, e) for sid, e in self.server.sessions.items() if e.room == room]
        if sessions:
            log.warning("room %s was taken over by another node: its sessions here end", room)
        for sid, _entry in sorted(sessions, key=lambda item: item[1].role != "whip"):
            closing = self.server.close_session(sid, grace=False)
            job = asyncio.get_running_loop().create_task(closing)
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)

    def _release(self, room: str) -> None:
        self.counters["releases"] += 1
        job = asyncio.get_running_loop().create_task(self._release_now(room))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _release_now(self, room: str) -> None:
        with contextlib.suppress(ClusterUnavailable):
            await self.directory.release(room)

    async def close(self) -> None:
        """Finish pending releases (bounded) and stop the edges."""
        if self._jobs:
            await asyncio.wait(set(self._jobs), timeout=2.0)
        if self.edges is not None:
            await self.edges.close()

    # ------------------------------------------------------------------ load, stats

    def load(self) -> Mapping[str, float]:
        """This node's load for the directory: sessions, viewers, CPU, capacity."""
        sessions = self.server.sessions
        cpu_now, wall_now = time.process_time(), time.monotonic()
        cpu_then, wall_then = self._cpu
        self._cpu = (cpu_now, wall_now)
        cpu = (cpu_now - cpu_then) / (wall_now - wall_then) if wall_now > wall_then else 0.0
        return {
            "sessions": len(sessions),
            "viewers": sum(1 for e in sessions.values() if e.role == "whep"),
            "cpu": round(cpu, 3),
            "capacity": self.server.config.max_sessions,
        }

    def stats(self) -> dict[str, Any]:
        """The node's view of the cluster, JSON-ready (``/stats`` shows it as ``cluster``)."""
        out = dict(self.directory.stats())
        rooms = out.get("rooms", {})
        if len(rooms) > MAX_ROOMS_SHOWN:  # /stats stays small; the count stays true
            out["rooms"] = dict(sorted(rooms.items())[:MAX_ROOMS_SHOWN])
            out["rooms_truncated"] = True
        out["room_count"] = len(rooms)
        out["cascade"] = self.cascade
        out["routing"] = dict(self.counters)
        out["edges"] = self.edges.stats() if self.edges is not None else []
        return out

    # ------------------------------------------------------------------ helpers

    def _publisher_here(self, room: str) -> bool:
        return any(e.room == room and e.role == "whip" for e in self.server.sessions.values())

    def _redirect(self, owner: Owner, request: web.Request) -> web.StreamResponse:
        self.counters["redirects"] += 1
        target = owner.url + request.rel_url.path_qs
        return web.Response(
            status=307,
            text=f"room served by node {owner.node}: {target}\n",
            headers={"Location": target},
        )

    def _unavailable(self, exc: ClusterUnavailable) -> web.StreamResponse:
        self.counters["unavailable"] += 1
        retry = str(self.server.config.retry_after)
        reason = f"the cluster directory is unreachable ({exc}); new rooms are refused"
        return _error(503, reason, **{"Retry-After": retry})

    def _full(self) -> web.StreamResponse:
        retry = str(self.server.config.retry_after)
        return _error(503, "every node of the cluster is full", **{"Retry-After": retry})


def _error(status: int, text: str, **headers: str) -> web.StreamResponse:
    return web.Response(status=status, text=text + "\n", headers=headers)


def cluster_metrics(cluster: Mapping[str, Any]) -> list[str]:
    """Prometheus lines for the ``cluster`` part of a snapshot."""
    nodes = cluster.get("nodes", [])
    lines = [
        "# TYPE whip_cluster_up gauge",
        f"whip_cluster_up {1 if cluster.get('up') else 0}",
        "# TYPE whip_cluster_nodes gauge",
        f"whip_cluster_nodes {len(nodes)}",
        "# TYPE whip_cluster_rooms gauge",
        f"whip_cluster_rooms {cluster.get('room_count', len(cluster.get('rooms', {})))}",
        "# TYPE whip_cluster_edges gauge",
        f"whip_cluster_edges {len(cluster.get('edges', []))}",
    ]
    for name, value in sorted(cluster.get("routing", {}).items()):
        lines += [f"# TYPE whip_cluster_{name}_total counter", f"whip_cluster_{name}_total {value}"]
    for node in nodes:
        lines.append(f'whip_cluster_node_sessions{{node="{node["id"]}"}} {node["sessions"]}')
    return lines
