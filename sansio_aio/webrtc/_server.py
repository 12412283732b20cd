"""The HTTP face of the WHIP/WHEP server: aiohttp on the application's loop.

Theory of operation
-------------------
:class:`WhipServer` owns a :class:`~sansio_aio.Runtime` whose task kind is ``"room"``
(:class:`~sansio_aio.webrtc._room.Room`) and whose driver is the aiortc
:class:`~sansio_aio.webrtc._driver.WebRtcDriver`. The HTTP layer does only HTTP: methods,
content types, body limits, bearer tokens, CORS, the total session limit, and the map
``room name -> TaskRef`` and ``session id -> room``. Everything about sessions is decided
by the room task, reached with ``await rt.request(ref, msg)``; its reply value
(``Created``, ``Done``, ``Refused``, ``RoomSnapshot``) becomes the HTTP response.

Each request is checked in a fixed order, cheapest and least revealing first: rate
limit (429), authorization (:class:`~sansio_aio.webrtc._auth.Authority`, maybe the auth
webhook: 401/403/503), room name (400), content type (415), body (413, 408 after
``body_timeout``), then for WHEP a room that does not exist is answered
``no_publisher_status`` at once, and the offer is checked with
:func:`~sansio_aio.webrtc._sdp.check_offer` (400/422); only then is a room spawned or
asked. So refused requests never spawn rooms. A session remembers the digest of the
credential that created it; PATCH and DELETE must carry it (or an operator token).
``/stats`` shows real session ids to operators only, labels to everyone else; each
session carries the numbers the driver read from aiortc (``bitrate_in``,
``bitrate_out``, ``packets_lost``, ``jitter``, ``rtt``) and each room its ``grace_left``.
``/metrics`` has per-room aggregates of them (:func:`room_metrics`, no session ids). The
``/dashboard`` page is static: it polls ``/stats`` with the token of its URL fragment.

Rooms are spawned on first use (the runtime places them on the least-loaded worker) and
end by themselves when idle. The server reads the runtime's event stream: a room's
``SessionEnded`` output forgets a session, a ``TaskEnded`` forgets a room. A request that
races a room's end (``UnknownTarget`` / ``TaskFailedError``) is retried once on a fresh
room. Session ids and ETags come from :mod:`secrets` here, so rooms stay deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict
from importlib import resources
from typing import Any, NamedTuple

from aiohttp import web
from aiohttp.typedefs import Middleware

from .._errors import (
    RequestTimeout,
    RuntimeClosed,
    SansioAioError,
    TaskFailedError,
    UnknownTarget,
)
from .._events import TaskEnded, TaskFailed, TaskOutput, TaskRef
from .._runtime import Runtime
from ._auth import AskWebhook, Authority, Deny, Webhook, session_label
from ._config import ServerConfig, is_room_name, with_keys_file
from ._errors import SdpError
from ._events import (
    CloseSession,
    Created,
    Done,
    OpenSession,
    PatchSession,
    Refused,
    Role,
    RoomInfo,
    RoomSnapshot,
    SessionEnded,
)
from ._httpguard import ConnectionGuard
from ._ratelimit import TokenBuckets
from ._router import ClusterRouter, cluster_metrics
from ._sdp import check_offer

__all__ = ["WhipServer", "room_metrics"]

log = logging.getLogger("sansio_aio.webrtc")

_EXPOSE = "Location, ETag, Link, Accept-Patch, Accept-Post, Retry-After"
_ENDPOINT_METHODS = "POST, OPTIONS"
_SESSION_METHODS = "PATCH, DELETE, OPTIONS"
_FRAG_TYPE = "application/trickle-ice-sdpfrag"
_PAGES = {
    "": "index.html",
    "publish": "publish.html",
    "view": "view.html",
    "dashboard": "dashboard.html",
    "whip.js": "whip.js",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_DASHBOARD_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

_ENDED_KEPT = 4096
_ROOM_RULE = "room names are 1-64 characters of [A-Za-z0-9_.~-], not . or .."


class _Entry(NamedTuple):
    """What the server knows of one session."""

    room: str
    ref: TaskRef
    role: Role
    #: Digest of the credential that created it (``None``: its URL is the capability).
    owner: bytes | None


class WhipServer:
    """WHIP (ingest) and WHEP (egress) endpoints over a running :class:`Runtime`.

    Use :func:`~sansio_aio.webrtc._runner.open_server` to get one with its runtime and
    HTTP site started.
    """

    def __init__(self, rt: Runtime, config: ServerConfig) -> None:
        config = with_keys_file(config)  # open_server already did: then a no-op
        self.rt = rt
        self.config = config
        self.rooms: dict[str, TaskRef] = {}
        self.sessions: dict[str, _Entry] = {}
        self._spawning: dict[str, asyncio.Future[TaskRef]] = {}
        #: Recently ended sessions and their owners (oldest first, bounded): their owner
        #: gets 404, not 401, for a late PATCH/DELETE.
        self._ended: dict[str, bytes | None] = {}
        self._opening = 0
        #: Sessions being opened, per room (a cluster keeps such a room's lease).
        self._opening_rooms: dict[str, int] = {}
        self._events_task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._buckets = (
            TokenBuckets(config.rate_limit, config.rate_burst) if config.rate_limit > 0 else None
        )
        #: The base URL the server listens on (set by :func:`open_server`).
        self.url = ""
        #: Every base URL it listens on (the configured address first).
        self.urls: list[str] = []
        #: Counted events (each is ``whip_<name>_total`` in ``/metrics``).
        self.counters = {
            "created": 0,
            "refused": 0,
            "deleted": 0,
            "ended": 0,
            "unauthorized": 0,
            "http_refused": 0,
            "http_header_timeouts": 0,
            "http_body_timeouts": 0,
            "webhook_errors": 0,
        }
        #: Who may do what (tokens, stream keys, webhook, derived room names).
        self.auth = Authority(
            tokens=config.tokens,
            keys=config.keys,
            metrics_token=config.metrics_token,
            token_is_room=config.token_is_room,
            webhook=config.auth_webhook is not None,
        )
        #: The auth webhook's client (``None`` when not configured).
        self.webhook = (
            Webhook(config.auth_webhook, config.webhook_timeout, counters=self.counters)
            if config.auth_webhook is not None
            else None
        )
        #: The connection guard in front of aiohttp (set by :func:`open_server`).
        self.guard: ConnectionGuard | None = None
        #: Routing between the nodes of a cluster (set by :func:`open_server` when
        #: ``config.cluster`` is set; ``None``: a single node).
        self.router: ClusterRouter | None = None

    # ------------------------------------------------------------------ app

    def app(self, middlewares: Iterable[Middleware] = ()) -> web.Application:
        """The aiohttp application with every route (``middlewares``: e.g. the
        connection guard's)."""
        cfg = self.config
        app = web.Application(client_max_size=cfg.max_body, middlewares=list(middlewares))
        p = cfg.prefix
        r = app.router
        r.add_route("*", p + "/whip/{room}", self._endpoint("whip"))
        r.add_route("*", p + "/whep/{room}", self._endpoint("whep"))
        # no room in the path: a stream key's room, token_is_room's, or the webhook's
        r.add_route("*", p + "/whip", self._endpoint("whip"))
        r.add_route("*", p + "/whep", self._endpoint("whep"))
        r.add_route("*", p + "/session/{session}", self._session)
        r.add_get(p + "/stats", self._stats)
        r.add_get(p + "/metrics", self._metrics)
        if cfg.pages:
            for name in _PAGES:
                r.add_get(f"{p}/{name}", self._page)
        return app

    def start(self) -> None:
        """Start reading the runtime's events (call on the application's loop)."""
        if self._events_task is None:
            self._events_task = asyncio.get_running_loop().create_task(self._read_events())

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds, re-checked after each batch of runtime events
        (a session or room ending); return its final value after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            left = deadline - loop.time()
            if left <= 0:
                return False
            if self._changed is None:
                self._changed = asyncio.Event()
            changed = self._changed
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)
        return True

    async def close(self) -> None:
        """Stop reading events; close the webhook's client."""
        task, self._events_task = self._events_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.webhook is not None:
            await self.webhook.close()

    # ------------------------------------------------------------------ handlers

    def _endpoint(self, role: Role) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            if request.method == "OPTIONS":
                return self._options(_ENDPOINT_METHODS, {"Accept-Post": "application/sdp"})
            if request.method != "POST":
                return self._error(405, "use POST with an SDP offer", Allow=_ENDPOINT_METHODS)
            return await self._post(request, role)

        return handler

    async def _post(self, request: web.Request, role: Role) -> web.StreamResponse:
        cfg = self.config
        limited = self._rate_limited(request)
        if limited is not None:
            return limited
        bearer = _bearer(request)
        decision = self.auth.decide(role, bearer, request.match_info.get("room"))
        if isinstance(decision, AskWebhook):
            assert self.webhook is not None  # the Authority asks only when there is one
            answer = await self.webhook.ask(
                decision.action, decision.room, decision.key, request.remote
            )
            if answer.status >= 500:
                retry = {"Retry-After": str(cfg.retry_after)} if answer.status == 503 else {}
                return self._error(answer.status, answer.reason, **retry)
            decision = self.auth.after_webhook(decision, answer.status == 200, answer.room)
        if isinstance(decision, Deny):
            return self._denied(decision.status, decision.reason, bearer)
        room = decision.room
        if room is None:
            return self._error(400, f"name the room: POST {cfg.prefix}/{role}/ROOM")
        if not is_room_name(room):
            return self._error(400, _ROOM_RULE)
        if request.content_type != "application/sdp":
            return self._error(415, "the offer must be sent as application/sdp")
        offer = await self._read_text(request, "offer")
        if not isinstance(offer, str):
            return offer
        if not offer.strip():
            return self._error(400, "empty offer")
        try:
            check_offer(offer, role, max_candidates=cfg.max_candidates)
        except SdpError as exc:  # before any room is spawned or asked
            return self._reply(Refused(exc.status, exc.reason))
        if self.router is not None:  # a cluster: the room may live on another node
            routed = await self.router.route(role, room, request)
            if routed is not None:
                return self._cors(routed)
        if role == "whep" and room not in self.rooms:
            # no room, so no publisher: answer without spawning one
            return self._reply(self._no_publisher(room))
        if self.full():
            self.counters["refused"] += 1
            if self.router is not None:
                elsewhere = self.router.elsewhere(room, request)
                if elsewhere is not None:
                    return self._cors(elsewhere)
            return self._error(503, "the server is full", **{"Retry-After": str(cfg.retry_after)})
        session, reply = await self.open_session(room, role, offer, decision.owner)
        if isinstance(reply, Created):
            headers = {
                "Location": f"{cfg.node_url or ''}{cfg.prefix}/session/{session}",
                "ETag": reply.etag,
                "Accept-Patch": _FRAG_TYPE,
            }
            resp = web.Response(
                status=201, text=reply.answer, content_type="application/sdp", headers=headers
            )
            for server in cfg.ice_servers:
                resp.headers.add("Link", server.link())
            return self._cors(resp)
        if self.router is not None and role == "whip":
            self.router.publish_failed(room)
        return self._reply(reply)

    def full(self) -> bool:
        """True when ``max_sessions`` sessions are open (or opening)."""
        return len(self.sessions) + self._opening >= self.config.max_sessions

    async def open_session(
        self, room: str, role: Role, offer: str, owner: bytes | None
    ) -> tuple[str, Created | Refused]:
        """Open a session in ``room`` (spawned for a publisher) with a checked ``offer``;
        return its id and the room's reply (the edges of a cluster use it too)."""
        session = secrets.token_urlsafe(24)
        etag = f'"{secrets.token_hex(8)}"'
        self._opening += 1
        self._opening_rooms[room] = self._opening_rooms.get(room, 0) + 1
        try:
            msg = OpenSession(session, role, offer, etag)
            ref, reply = await self._ask_room(room, msg, spawn=role == "whip")
        finally:
            self._opening -= 1
            left = self._opening_rooms.pop(room) - 1
            if left:
                self._opening_rooms[room] = left
        if isinstance(reply, Created):
            self.sessions[session] = _Entry(room, ref, role, owner)
            self.counters["created"] += 1
            return session, reply
        if isinstance(reply, Refused):
            return session, reply
        log.error("unexpected room reply %r", reply)  # pragma: no cover
        return session, Refused(500, "unexpected reply from the room")  # pragma: no cover

    def in_use(self, room: str) -> bool:
        """True while ``room`` has a session here, or one being opened (a publisher's
        viewers waiting for a new publisher included)."""
        return room in self._opening_rooms or any(e.room == room for e in self.sessions.values())

    async def close_session(self, session: str, *, grace: bool = True) -> None:
        """End ``session`` as a DELETE would (the edges of a cluster use it); with
        ``grace=False`` a publisher's viewers end at once too."""
        entry = self.sessions.get(session)
        if entry is None:
            return
        reply = await self._ask(entry.ref, CloseSession(session, grace))
        if isinstance(reply, Done) or (isinstance(reply, Refused) and reply.status == 404):
            self._forget_session(session)

    async def _session(self, request: web.Request) -> web.StreamResponse:
        sid = request.match_info["session"]
        if request.method == "OPTIONS":
            return self._options(_SESSION_METHODS, {"Accept-Patch": _FRAG_TYPE})
        if request.method not in ("PATCH", "DELETE"):
            return self._error(405, "sessions accept PATCH and DELETE", Allow=_SESSION_METHODS)
        limited = self._rate_limited(request)
        if limited is not None:
            return limited
        bearer = _bearer(request)
        entry = self.sessions.get(sid)
        if entry is not None:
            denied = self.auth.session_access(bearer, "live", entry.owner)
        elif sid in self._ended:
            denied = self.auth.session_access(bearer, "ended", self._ended[sid])
        else:
            denied = self.auth.session_access(bearer, "unknown", None)
        if denied == 401:
            return self._denied(401, "this session needs the token it was created with", bearer)
        if denied is not None or entry is None:
            return self._error(404, "no such session")
        ref = entry.ref
        if request.method == "DELETE":
            reply = await self._ask(ref, CloseSession(sid))
            if isinstance(reply, Done) or (isinstance(reply, Refused) and reply.status == 404):
                self._forget_session(sid)
                self.counters["deleted"] += 1
            return self._reply(reply)
        if request.content_type != _FRAG_TYPE:
            return self._error(415, f"PATCH bodies must be {_FRAG_TYPE}")
        body = await self._read_text(request, "body")
        if not isinstance(body, str):
            return body
        # repeated If-Match headers are one list (RFC 9110 §5.3)
        if_match = ", ".join(request.headers.getall("If-Match", [])) or None
        reply = await self._ask(ref, PatchSession(sid, body, if_match))
        if isinstance(reply, Refused) and reply.status == 404:
            self._forget_session(sid)
        return self._reply(reply)

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        snap = await self._visible_snapshot(request)
        if not isinstance(snap, dict):
            return snap
        return self._cors(web.json_response(snap))

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        snap = await self._visible_snapshot(request)
        if not isinstance(snap, dict):
            return snap
        lines = [
            "# TYPE whip_sessions gauge",
            f"whip_sessions {snap['sessions']}",
            "# TYPE whip_rooms gauge",
            f"whip_rooms {len(snap['rooms'])}",
            "# TYPE whip_http_connections gauge",
            f"whip_http_connections {self.guard.open if self.guard is not None else 0}",
        ]
        for name, value in self.counters.items():
            lines += [f"# TYPE whip_{name}_total counter", f"whip_{name}_total {value}"]
        for w in snap["workers"]:
            wid = w["worker"]
            lines.append(f'sansio_worker_utilisation{{worker="{wid}"}} {w["utilisation"]}')
            lines.append(f'sansio_worker_tasks{{worker="{wid}"}} {w["tasks"]}')
            lines.append(f'sansio_worker_loop_lag_seconds{{worker="{wid}"}} {w["loop_lag"]}')
            for key, value in sorted(w["drivers"].items()):
                lines.append(f'sansio_{key}{{worker="{wid}"}} {value}')
        lines += room_metrics(snap["rooms"])
        if "cluster" in snap:
            lines += cluster_metrics(snap["cluster"])
        return self._cors(web.Response(text="\n".join(lines) + "\n", content_type="text/plain"))

    async def _visible_snapshot(self, request: web.Request) -> dict[str, Any] | web.StreamResponse:
        """The snapshot as the caller may see it, or the 401 (or 429) answer."""
        bearer = _bearer(request)
        access = self.auth.stats_access(bearer)
        if access == "denied":
            limited = self._rate_limited(request)  # failed attempts use up the budget
            if limited is not None:
                return limited
            return self._denied(401, "stats need an operator or metrics token", bearer)
        snap = await self.snapshot()
        if self.router is not None:
            snap["cluster"] = self.router.stats()
        if access != "operator":  # session ids are capabilities: labels only
            for room in snap["rooms"].values():
                for info in room["sessions"]:
                    info["session"] = session_label(info["session"])
        return snap

    async def _page(self, request: web.Request) -> web.StreamResponse:
        name = request.path[len(self.config.prefix) + 1 :]
        filename = _PAGES.get(name)
        if filename is None:  # pragma: no cover - routes only name known pages
            return self._error(404, "no such page")
        data = resources.files(__package__).joinpath("static", filename).read_bytes()
        ctype = "text/javascript" if filename.endswith(".js") else "text/html"
        resp = web.Response(body=data, content_type=ctype, charset="utf-8")
        if name == "dashboard":  # it reads /stats only: nothing else may load or connect
            resp.headers["Content-Security-Policy"] = _DASHBOARD_CSP
        return resp

    # ------------------------------------------------------------------ rooms

    async def snapshot(self) -> dict[str, Any]:
        """Worker stats and every room's sessions, as JSON-ready data."""
        stats = await self.rt.stats()
        rooms: dict[str, Any] = {}

        async def one(name: str, ref: TaskRef) -> None:
            reply = await self._ask(ref, RoomInfo())
            if isinstance(reply, RoomSnapshot):
                sessions = [asdict(s) for s in reply.sessions]
                rooms[name] = {
                    "worker": ref.worker,
                    "sessions": sessions,
                    "grace_left": reply.grace_left,
                }

        await asyncio.gather(*(one(n, r) for n, r in list(self.rooms.items())))
        return {
            "sessions": len(self.sessions),
            "rooms": rooms,
            "workers": [asdict(w) for w in stats.workers],
            "counters": dict(self.counters),
        }

    async def _room_ref(self, room: str) -> TaskRef:
        ref = self.rooms.get(room)
        if ref is not None:
            return ref
        pending = self._spawning.get(room)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[TaskRef] = asyncio.get_running_loop().create_future()
        self._spawning[room] = fut
        try:
            ref = await self.rt.spawn("room", self.config.room(room))
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._spawning.pop(room, None)
        self.rooms[room] = ref
        fut.set_result(ref)
        return ref

    def _no_publisher(self, room: str) -> Refused:
        status = self.config.no_publisher_status
        retry = self.config.retry_after if status == 409 else None
        return Refused(status, f"room {room!r} has no publisher", retry)

    async def _ask_room(self, room: str, msg: Any, *, spawn: bool = True) -> tuple[TaskRef, Any]:
        """Send ``msg`` to ``room`` (spawning it if needed and ``spawn``); retry once if it
        just ended. Without ``spawn`` (a viewer) a room that is gone means no publisher."""
        if not spawn and room not in self.rooms:
            return TaskRef(-1, "room", -1), self._no_publisher(room)
        try:
            ref = await self._room_ref(room)
        except SansioAioError as exc:
            retry = self.config.retry_after
            return TaskRef(-1, "room", -1), Refused(503, f"cannot start the room: {exc}", retry)
        for attempt in (1, 2):
            try:
                reply = await self.rt.request(ref, msg, timeout=self.config.request_timeout)
                return ref, reply
            except (UnknownTarget, TaskFailedError) as exc:
                self._forget_room(ref)
                if attempt == 2:
                    return ref, Refused(503, f"room unavailable: {exc}", self.config.retry_after)
                if not spawn and room not in self.rooms:
                    return ref, self._no_publisher(room)
                try:
                    ref = await self._room_ref(room)
                except SansioAioError as err:
                    retry = self.config.retry_after
                    return ref, Refused(503, f"cannot start the room: {err}", retry)
            except RequestTimeout:
                return ref, Refused(503, "the room did not answer in time", 1)
            except RuntimeClosed:
                return ref, Refused(503, "the server is shutting down", self.config.retry_after)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _ask(self, ref: TaskRef, msg: Any) -> Any:
        try:
            return await self.rt.request(ref, msg, timeout=self.config.request_timeout)
        except (UnknownTarget, TaskFailedError):
            self._forget_room(ref)
            return Refused(404, "no such session (its room has ended)")
        except RequestTimeout:
            return Refused(503, "the room did not answer in time", 1)
        except RuntimeClosed:
            return Refused(503, "the server is shutting down", self.config.retry_after)

    def _forget_session(self, sid: str) -> bool:
        """Forget a live session (remembering its owner a while, see ``_ended``)."""
        entry = self.sessions.pop(sid, None)
        if entry is None:
            return False
        self._ended[sid] = entry.owner
        while len(self._ended) > _ENDED_KEPT:
            del self._ended[next(iter(self._ended))]
        if self.router is not None:
            self.router.session_ended(sid, entry.room, entry.role)
        return True

    def _forget_room(self, ref: TaskRef) -> None:
        for name, known in list(self.rooms.items()):
            if known == ref:
                del self.rooms[name]
        for sid, entry in list(self.sessions.items()):
            if entry.ref == ref:
                self._forget_session(sid)

    async def _read_events(self) -> None:
        while True:
            try:
                batch = await self.rt.next_events()
            except RuntimeClosed:
                return
            if not batch:
                return
            for event in batch:
                if isinstance(event, TaskOutput) and isinstance(event.msg, SessionEnded):
                    if self._forget_session(event.msg.session):
                        self.counters["ended"] += 1
                elif isinstance(event, TaskEnded | TaskFailed):
                    if isinstance(event, TaskFailed):
                        log.error("room task %s failed:\n%s", event.task, event.traceback)
                    self._forget_room(event.task)
            if self._changed is not None:
                self._changed.set()

    # ------------------------------------------------------------------ responses

    def _rate_limited(self, request: web.Request) -> web.StreamResponse | None:
        if self._buckets is None:
            return None
        wait = self._buckets.take(request.remote or "", asyncio.get_running_loop().time())
        if wait is None:
            return None
        self.counters["refused"] += 1
        return self._error(429, "too many requests", **{"Retry-After": str(wait)})

    async def _read_text(self, request: web.Request, what: str) -> str | web.StreamResponse:
        """The request's body as text, or the error answer (413, 408, 400)."""
        cfg = self.config
        length = request.content_length
        if length is not None and length > cfg.max_body:
            return self._error(413, f"the {what} is larger than {cfg.max_body} bytes")
        try:
            return await asyncio.wait_for(request.text(), cfg.body_timeout)
        except web.HTTPRequestEntityTooLarge:
            return self._error(413, f"the {what} is larger than {cfg.max_body} bytes")
        except (UnicodeDecodeError, LookupError):  # LookupError: an unknown charset=
            return self._error(400, f"the {what} is not valid UTF-8 (or charset=) text")
        except TimeoutError:
            self.counters["http_body_timeouts"] += 1
            resp = self._error(408, f"the {what} did not arrive within {cfg.body_timeout:g} s")
            resp.force_close()
            # Send it now and close: aiohttp would otherwise linger, reading the rest.
            with contextlib.suppress(ConnectionError):
                await resp.prepare(request)
                await resp.write_eof()
            request.protocol.force_close()
            return resp

    def _denied(self, status: int, reason: str, bearer: str | None) -> web.StreamResponse:
        self.counters["unauthorized"] += 1
        if status != 401:
            return self._error(status, reason)
        challenge = 'Bearer realm="whip"'
        if bearer is not None:
            challenge += ', error="invalid_token"'
        return self._error(401, reason, **{"WWW-Authenticate": challenge})

    def _reply(self, reply: Any) -> web.StreamResponse:
        if isinstance(reply, Done):
            return self._cors(web.Response(status=reply.status))
        if isinstance(reply, Refused):
            self.counters["refused"] += 1
            headers = {}
            if reply.retry_after is not None:
                headers["Retry-After"] = str(reply.retry_after)
            return self._error(reply.status, reply.reason, **headers)
        log.error("unexpected room reply %r", reply)  # pragma: no cover
        return self._error(500, "unexpected reply from the room")  # pragma: no cover

    def _error(self, status: int, text: str, **headers: str) -> web.StreamResponse:
        return self._cors(web.Response(status=status, text=text + "\n", headers=headers))

    def _options(self, methods: str, extra: dict[str, str]) -> web.StreamResponse:
        resp = web.Response(status=200, headers={"Allow": methods, **extra})
        resp.headers["Access-Control-Allow-Methods"] = methods
        resp.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, If-Match"
        resp.headers["Access-Control-Max-Age"] = "600"
        return self._cors(resp)

    def _cors(self, resp: web.StreamResponse) -> web.StreamResponse:
        resp.headers["Access-Control-Allow-Origin"] = self.config.cors_origin
        resp.headers["Access-Control-Expose-Headers"] = _EXPOSE
        return resp


#: ``/metrics`` families per room: name, type, help, and how to get the value.
_ROOM_METRICS: tuple[tuple[str, str, str], ...] = (
    ("whip_room_sessions", "gauge", "sessions of the room (publisher and viewers)"),
    ("whip_room_viewers", "gauge", "viewer sessions of the room"),
    ("whip_room_publishers", "gauge", "1 while the room has a publisher session"),
    ("whip_room_waiting", "gauge", "1 while the room keeps its viewers for a new publisher"),
    ("whip_room_bitrate_in_bits_per_second", "gauge", "bits/s received from its sessions"),
    ("whip_room_bitrate_out_bits_per_second", "gauge", "bits/s sent to its sessions"),
    ("whip_room_packets_lost", "gauge", "RTP packets lost, summed over its live sessions"),
    ("whip_room_jitter_seconds", "gauge", "largest interarrival jitter of its sessions"),
    ("whip_room_rtt_seconds", "gauge", "largest round-trip time of its viewers"),
)


def room_metrics(rooms: dict[str, Any]) -> list[str]:
    """Prometheus lines with per-room aggregates of a snapshot's ``rooms`` (room names
    only, never a session id). A value no session knows yet is left out."""
    values: dict[str, list[str]] = {name: [] for name, _, _ in _ROOM_METRICS}
    for room, info in sorted(rooms.items()):
        sessions = info["sessions"]
        label = f'{{room="{room}"}}'

        def known(field: str, of: list[dict[str, Any]] = sessions) -> list[Any]:
            return [x[field] for x in of if x.get(field) is not None]

        viewers = [x for x in sessions if x["role"] == "whep"]
        found: dict[str, Any] = {
            "whip_room_sessions": len(sessions),
            "whip_room_viewers": len(viewers),
            "whip_room_publishers": sum(1 for x in sessions if x["role"] == "whip"),
            "whip_room_waiting": 0 if info.get("grace_left") is None else 1,
        }
        for name, field, merge in (
            ("whip_room_bitrate_in_bits_per_second", "bitrate_in", sum),
            ("whip_room_bitrate_out_bits_per_second", "bitrate_out", sum),
            ("whip_room_packets_lost", "packets_lost", sum),
            ("whip_room_jitter_seconds", "jitter", max),
        ):
            seen = known(field)
            if seen:
                found[name] = merge(seen)
        trips = known("rtt", viewers)
        if trips:
            found["whip_room_rtt_seconds"] = max(trips)
        for name, value in found.items():
            values[name].append(f"{name}{label} {value}")
    lines: list[str] = []
    for name, kind, text in _ROOM_METRICS:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *values[name]]
    return lines


def _bearer(request: web.Request) -> str | None:
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
