"""Bounds on the WHIP/WHEP server's HTTP connections: caps, header timeout, one-line logs.

Theory of operation
-------------------
aiohttp's ``RequestHandler`` limits the size of a request head but not the time a client
takes to send it, and it accepts any number of connections. :class:`ConnectionGuard`
sits between the listening sockets and aiohttp: :func:`listen` serves with
``loop.create_server(guard.protocol, ...)``, and each accepted connection gets a small
proxy protocol that

* refuses it at once (closes it, sending nothing) when ``max_connections`` connections
  are open, or ``max_connections_per_ip`` from the same address; otherwise it wraps a
  fresh aiohttp ``RequestHandler`` (``AppRunner.server()``, public API) and forwards
  every protocol callback to it;
* runs one timer: a connection with no request being handled is aborted
  ``header_timeout`` after it opened or after its last handler returned. The guard's
  :meth:`~ConnectionGuard.middleware` marks a request in flight from the moment aiohttp
  has parsed its head until its handler returns. So the timer bounds a slow request head
  (one byte a second), an idle keep-alive connection, and a client that does not read
  its response, and never cuts a request being handled. Request bodies are bounded by
  the handlers (``body_timeout``, 408); handlers themselves by the room's
  ``request_timeout``. aiohttp's own keep-alive timer stays as a backstop
  (:func:`handler_args`).

Refused connections and head timeouts are counted in the server's counters
(``http_refused``, ``http_header_timeouts``); a run of refusals is logged once.
aiohttp logs every malformed request with a traceback; :func:`handler_args` gives it a
logger (``sansio_aio.webrtc.http``) whose filter turns each into one warning line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

__all__ = [
    "ConnectionGuard",
    "close_servers",
    "handler_args",
    "http_logger",
    "listen",
    "server_urls",
]

log = logging.getLogger("sansio_aio.webrtc")

_HTTP_LOG = "sansio_aio.webrtc.http"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _OneLine(logging.Filter):
    """Malformed requests (aiohttp's ``HttpProcessingError``): one warning line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            what = str(exc.message or exc).splitlines()[0][:200]
            record.msg = "bad HTTP request from %s: %s %s"
            record.args = (remote, exc.code, what)
            record.exc_info = None
            record.exc_text = None
            if record.levelno > logging.WARNING:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def http_logger() -> logging.Logger:
    """The logger given to aiohttp's request handlers (with the one-line filter)."""
    logger = logging.getLogger(_HTTP_LOG)
    if not any(isinstance(f, _OneLine) for f in logger.filters):
        logger.addFilter(_OneLine())
    return logger


def handler_args(header_timeout: float) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner`` (passed on to each ``RequestHandler``)."""
    return {
        "logger": http_logger(),
        "access_log": None,
        # aiohttp closes a connection idle this long (also before its first request):
        # a backstop behind the guard's own timer, which fires first.
        "keepalive_timeout": max(2 * header_timeout, header_timeout + 1.0),
    }


def _peer_ip(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return ""


@final
class _Guarded(asyncio.Protocol):
    """One connection: refused, or forwarded to aiohttp's handler under the timer."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.ip = ""
        self.in_flight = 0
        self.seen = False  # bytes arrived since the connection opened or the last handler
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        guard = self.guard
        self.ip = _peer_ip(transport)
        if not guard.admit(self.ip):
            transport.abort()  # nothing was read or sent: the peer sees the close
            return
        self.transport = transport
        self.inner = guard.make_protocol()
        guard.opened(self)
        self._arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.seen = True
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        inner, self.inner = self.inner, None
        if inner is not None:
            self.guard.closed(self, inner)
            inner.connection_lost(exc)
        self.transport = None

    # ------------------------------------------------------------------ the timer

    def request_started(self) -> None:
        self.in_flight += 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def request_finished(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        if self.in_flight == 0 and self.transport is not None:
            self.seen = False
            self._arm()

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.guard.header_timeout, self._expire)

    def _expire(self) -> None:
        self.timer = None
        if self.in_flight or self.transport is None or self.transport.is_closing():
            return
        if self.seen:  # a request head began and never completed in time
            self.guard.count("http_header_timeouts")
        self.transport.abort()  # abort: drop unsent data too (a client not reading)


@final
class ConnectionGuard:
    """Connection caps and the no-request timer; see the module doc.

    Args:
        make_protocol: makes aiohttp's protocol for one connection (``runner.server``).
        max_connections: open connections in all.
        max_per_ip: open connections from one address.
        header_timeout: seconds a connection may spend without a request in flight.
        counters: the server's counters (``http_refused``, ``http_header_timeouts``).
    """

    def __init__(
        self,
        make_protocol: Callable[[], asyncio.Protocol],
        *,
        max_connections: int,
        max_per_ip: int,
        header_timeout: float,
        counters: dict[str, int],
    ) -> None:
        self.make_protocol = make_protocol
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.header_timeout = header_timeout
        self.counters = counters
        self._per_ip: Counter[str] = Counter()
        self._by_inner: dict[asyncio.Protocol, _Guarded] = {}
        self._refusing = False

    @property
    def open(self) -> int:
        """Connections open now."""
        return len(self._by_inner)

    def open_from(self, ip: str) -> int:
        """Connections open now from ``ip``."""
        return self._per_ip.get(ip, 0)

    def protocol(self) -> asyncio.Protocol:
        """The protocol factory for ``loop.create_server``."""
        return _Guarded(self)

    def count(self, name: str) -> None:
        """Add one to counter ``name``."""
        self.counters[name] = self.counters.get(name, 0) + 1

    def admit(self, ip: str) -> bool:
        """May a new connection from ``ip`` open? (Counts and logs a refusal.)"""
        if self.open < self.max_connections and self._per_ip[ip] < self.max_per_ip:
            self._refusing = False
            return True
        self.count("http_refused")
        if not self._refusing:  # once per run of refusals
            self._refusing = True
            log.warning(
                "HTTP connection limit reached (%d open, %d from %s): refusing connections",
                self.open,
                self._per_ip[ip],
                ip or "?",
            )
        return False

    def opened(self, conn: _Guarded) -> None:
        """Track an admitted connection."""
        assert conn.inner is not None
        self._by_inner[conn.inner] = conn
        self._per_ip[conn.ip] += 1

    def closed(self, conn: _Guarded, inner: asyncio.Protocol) -> None:
        """Forget a connection."""
        if self._by_inner.pop(inner, None) is not None:
            self._per_ip[conn.ip] -= 1
            if self._per_ip[conn.ip] <= 0:
                del self._per_ip[conn.ip]

    def abort_all(self) -> None:
        """Abort every open connection (after aiohttp's graceful shutdown)."""
        for conn in list(self._by_inner.values()):
            if conn.transport is not None:
                conn.transport.abort()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Marks a request in flight while its handler runs (add it to the app)."""
        conn = self._by_inner.get(request.protocol)
        if conn is None:
            return await handler(request)
        conn.request_started()
        try:
            return await handler(request)
        finally:
            conn.request_finished()


async def listen(
    guard: ConnectionGuard,
    host: str,
    port: int,
    socks: Sequence[socket.socket] = (),
    *,
    backlog: int = 128,
) -> list[asyncio.Server]:
    """Serve ``guard`` on ``host:port`` and on each of ``socks`` (already listening)."""
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    try:
        servers.append(await loop.create_server(guard.protocol, host, port, backlog=backlog))
        for sock in socks:
            extra = await loop.create_server(guard.protocol, sock=sock, backlog=backlog)
            servers.append(extra)
    except BaseException:
        await close_servers(servers)
        raise
    return servers


async def close_servers(servers: Sequence[asyncio.Server], timeout: float = 5.0) -> None:
    """Stop listening (open connections are left to aiohttp's shutdown)."""
    for server in servers:
        server.close()
    for server in servers:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout)


def server_urls(servers: Sequence[asyncio.Server], prefix: str) -> list[str]:
    """``http://host:port{prefix}`` of every listening socket, in order."""
    urls = []
    for server in servers:
        for sock in server.sockets:
            addr = sock.getsockname()
            if isinstance(addr, tuple):
                host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
                urls.append(f"http://{host}:{addr[1]}{prefix}")
    return urls
