"""One UDP port per worker: every session's ICE, DTLS and SRTP through shared sockets.

Theory of operation
-------------------
aioice binds a socket per candidate on a port the OS picks, so a server needs its whole
ephemeral range open in the firewall. With ``udp_port=P``, worker ``i``'s
:class:`UdpMux` binds port ``P + i`` on each host address at start (aioice's own list of
addresses; an IPv4 address that cannot be bound is a :class:`~.._errors.ConfigError`
naming the port, an IPv6 one is skipped) and every session of that worker uses it.

Each session's ICE connection gets, per host address, a guarded aioice protocol
(:class:`~._udpguard.GuardedStunProtocol`) whose transport is a :class:`MuxTransport`:
``sendto`` writes to the shared socket, ``close()`` unregisters it and calls the
protocol's ``connection_lost(None)`` soon after (what aioice awaits),
``get_extra_info("sockname")`` is the shared address. Incoming datagrams are routed:

* STUN requests by the ICE ufrag, the part of USERNAME before the colon (the guard gives
  each connection a fresh 16-character ufrag, so they never collide);
* STUN responses by transaction id: each request sent through a :class:`MuxTransport`
  records its id, and :meth:`UdpMux.sweep` forgets ids whose transaction ended;
* anything else by the remote address, once the session's guard validated it.

Whatever matches no session is dropped and counted (``unknown`` for STUN,
``unverified`` otherwise); the size checks and STUN parsing happen once, here, and the
session's protocol applies the rest of the guard. Receiving uses the runtime's UDP
driver pattern (:mod:`sansio_aio.net._udp`): a non-blocking socket, ``loop.add_reader``,
a bounded drain of ``recvfrom`` per readiness wrapped in ``ctx.timed``; ``sendto``
drops and counts a datagram the kernel has no room for (EAGAIN, ENOBUFS). Each worker
(thread or process) owns its port; nothing is shared between workers.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import logging
import secrets
import socket
import string
from collections.abc import Callable
from typing import Any

from aioice import Connection, stun
from aioice.ice import get_host_addresses

from .._driver import DriverContext
from .._errors import ConfigError
from ._udpguard import (
    UNKNOWN,
    UNVERIFIED,
    Address,
    GuardedStunProtocol,
    PeerGuard,
    bad_size,
    parse_stun,
)

__all__ = ["MuxTransport", "UdpMux"]

log = logging.getLogger("sansio_aio.webrtc")

#: Bytes asked of each ``recvfrom``: more than ``MAX_DATAGRAM``, so a longer datagram
#: reads as longer (and is dropped) without allocating 64 KiB per read.
RECV_SIZE = 2048
#: Receive buffer asked for each shared socket (the kernel caps it at ``rmem_max``).
RCVBUF = 4 * 1024 * 1024
UFRAG_LENGTH = 16

_UFRAG_CHARS = string.ascii_letters + string.digits
_DROP_ERRNOS = frozenset({errno_mod.EAGAIN, errno_mod.EWOULDBLOCK, errno_mod.ENOBUFS})
_REQUEST = stun.Class.REQUEST
_RESPONSE = stun.Class.RESPONSE
_ERROR = stun.Class.ERROR


class _Shared:
    """One bound socket of the mux and the sessions it carries."""

    __slots__ = ("fd", "open", "remotes", "sendto", "sock", "sockname", "ufrags")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.sendto = sock.sendto
        self.sockname: tuple[Any, ...] = sock.getsockname()
        self.open = True
        #: ICE ufrag -> the protocol of that connection on this socket.
        self.ufrags: dict[str, GuardedStunProtocol] = {}
        #: Validated remote address -> protocol.
        self.remotes: dict[Address, GuardedStunProtocol] = {}


class MuxTransport(asyncio.DatagramTransport):
    """A session protocol's view of the shared socket (a virtual datagram transport)."""

    def __init__(self, mux: UdpMux, shared: _Shared, protocol: GuardedStunProtocol) -> None:
        super().__init__({"sockname": shared.sockname})
        self._mux = mux
        self._shared = shared
        self._protocol = protocol
        self._closed = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        """Send through the shared socket; STUN requests are noted for their responses."""
        if self._closed:
            return
        if len(data) >= 20 and data[0] < 4 and not data[0] & 0x01 and not data[1] & 0x10:
            self._mux.txids[bytes(data[8:20])] = self._protocol  # a request: C1 = C0 = 0
        try:
            self._shared.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self._mux.counters["webrtc_udp_tx_dropped"] += 1
        except OSError as exc:
            if exc.errno in _DROP_ERRNOS:
                self._mux.counters["webrtc_udp_tx_dropped"] += 1
            else:
                self._mux.counters["webrtc_udp_tx_errors"] += 1
                log.debug("shared UDP port: sendto %s failed: %s", addr, exc)

    def learn(self, addr: Address) -> None:
        """Route the shared socket's non-STUN datagrams from ``addr`` to this protocol."""
        if not self._closed:
            self._shared.remotes[addr] = self._protocol

    def forget(self, addr: Address) -> None:
        """Stop routing ``addr`` here."""
        if self._shared.remotes.get(addr) is self._protocol:
            del self._shared.remotes[addr]

    def close(self) -> None:
        """Unregister; the protocol's ``connection_lost(None)`` follows on the loop."""
        if self._closed:
            return
        self._closed = True
        protocol = self._protocol
        shared = self._shared
        for ufrag, owner in list(shared.ufrags.items()):
            if owner is protocol:
                del shared.ufrags[ufrag]
        for addr in list(protocol.validated):
            self.forget(addr)
        for addr, owner in list(shared.remotes.items()):
            if owner is protocol:
                del shared.remotes[addr]
        loop = self._mux.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon(protocol.connection_lost, None)
        else:
            protocol.connection_lost(None)

    def abort(self) -> None:
        """Same as :meth:`close` (nothing is buffered)."""
        self.close()

    def is_closing(self) -> bool:
        """True once closed."""
        return self._closed


class UdpMux:
    """The shared UDP port of one worker (see the module doc).

    Args:
        port: the port to bind on every host address.
        counters: the driver's counters (the guard's, plus ``webrtc_udp_tx_dropped``,
            ``webrtc_udp_tx_errors``, ``webrtc_udp_rx_errors``, ``webrtc_udp_rx_full``).
        batch: most datagrams read from one socket per readiness.
    """

    def __init__(self, port: int, counters: dict[str, int], *, batch: int = 64) -> None:
        self.port = port
        self.counters = counters
        for name in ("tx_dropped", "tx_errors", "rx_errors", "rx_full"):
            counters.setdefault(f"webrtc_udp_{name}", 0)
        self.batch = batch
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ctx: DriverContext | None = None
        self._shared: dict[str, _Shared] = {}
        self._failed: set[str] = set()
        #: STUN transaction id of a request sent -> the protocol that sent it.
        self.txids: dict[bytes, GuardedStunProtocol] = {}

    # ------------------------------------------------------------------ life

    def start(self, ctx: DriverContext) -> None:
        """Bind ``port`` on every host address (IPv4 required, IPv6 best effort).

        Raises:
            ConfigError: an IPv4 address cannot be bound (the port is taken...).
        """
        self._ctx = ctx
        self.loop = ctx.loop
        try:
            for address in get_host_addresses(use_ipv4=True, use_ipv6=True):
                self._bind(address, required=":" not in address)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close every shared socket (sessions were closed before)."""
        for shared in self._shared.values():
            if not shared.open:
                continue
            shared.open = False
            if self.loop is not None and not self.loop.is_closed():
                try:
                    self.loop.remove_reader(shared.fd)
                except Exception:
                    log.debug("remove_reader(%d) failed", shared.fd, exc_info=True)
            shared.sock.close()
        self._shared.clear()
        self.txids.clear()

    def _bind(self, address: str, *, required: bool) -> _Shared | None:
        ctx = self._ctx
        assert ctx is not None
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError as exc:
            self._bind_failed(address, exc, required)
            return None
        try:
            sock.setblocking(False)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((address, self.port))
            shared = _Shared(sock)
            ctx.loop.add_reader(shared.fd, ctx.timed(self._reader(shared)))
        except OSError as exc:
            sock.close()
            self._bind_failed(address, exc, required)
            return None
        self._shared[address] = shared
        return shared

    def _bind_failed(self, address: str, exc: OSError, required: bool) -> None:
        self._failed.add(address)
        where = f"UDP port {self.port} on {address}"
        worker = self._ctx.worker_id if self._ctx is not None else "?"
        if required:
            raise ConfigError(
                f"cannot bind {where} (worker {worker}): {exc.strerror or exc}"
            ) from exc
        log.debug("shared UDP port: skipping %s: %s", where, exc)

    # ------------------------------------------------------------------ sessions

    def new_ufrag(self) -> str:
        """A fresh random ICE ufrag (16 characters: collisions are out of reach)."""
        return "".join(secrets.choice(_UFRAG_CHARS) for _ in range(UFRAG_LENGTH))

    def open(self, conn: Connection, guard: PeerGuard, address: str) -> GuardedStunProtocol | None:
        """A guarded protocol of ``conn`` on the shared socket of ``address``.

        None if that address has no shared socket (one that appeared after start is
        bound now, once; it may fail) or if the ufrag is taken.
        """
        shared = self._shared.get(address)
        if shared is None:
            if address in self._failed or self._ctx is None:
                return None
            try:
                shared = self._bind(address, required=False)
            except ConfigError:  # pragma: no cover - required=False never raises
                shared = None
            if shared is None:
                return None
        ufrag = conn.local_username
        if ufrag in shared.ufrags:
            log.warning("shared UDP port: ufrag %r is already in use", ufrag)
            return None
        protocol = GuardedStunProtocol(conn, guard)
        transport = MuxTransport(self, shared, protocol)
        protocol.book = transport
        protocol.connection_made(transport)
        shared.ufrags[ufrag] = protocol
        return protocol

    def sweep(self) -> None:
        """Forget the transaction ids of ended transactions (called periodically)."""
        stale = [
            txid
            for txid, protocol in self.txids.items()
            if txid not in protocol.transactions or protocol.transport.is_closing()
        ]
        for txid in stale:
            del self.txids[txid]

    def stats(self) -> dict[str, int]:
        """Shared sockets bound and ICE connections carried."""
        connections = {id(p.receiver) for s in self._shared.values() for p in s.ufrags.values()}
        return {
            "webrtc_udp_sockets": len(self._shared),
            "webrtc_udp_mux_sessions": len(connections),
        }

    # ------------------------------------------------------------------ receiving

    def _reader(self, shared: _Shared) -> Callable[[], None]:
        """The readiness callback of one shared socket: a bounded drain."""
        recvfrom = shared.sock.recvfrom
        dispatch = self._dispatch
        batch = self.batch
        counters = self.counters

        def on_readable() -> None:
            try:
                for _ in range(batch):
                    data, source = recvfrom(RECV_SIZE)
                    dispatch(shared, data, source)
                counters["webrtc_udp_rx_full"] += 1
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                if shared.open:
                    counters["webrtc_udp_rx_errors"] += 1
                    log.debug("shared UDP port: recv failed: %s", exc)

        return on_readable

    def _dispatch(self, shared: _Shared, data: bytes, source: tuple[Any, ...]) -> None:
        counters = self.counters
        if bad_size(len(data), counters):
            return
        addr = (source[0], source[1])
        if data[0] < 4:
            message = parse_stun(data, counters)
            if message is None:
                return
            klass = message.message_class
            protocol: GuardedStunProtocol | None = None
            if klass is _REQUEST:
                username = message.attributes.get("USERNAME")
                if isinstance(username, str):
                    protocol = shared.ufrags.get(username.partition(":")[0])
            elif klass is _RESPONSE or klass is _ERROR:
                protocol = self.txids.get(message.transaction_id)
            if protocol is None:
                counters[UNKNOWN] += 1
                return
            protocol.stun_received(message, addr)
            return
        protocol = shared.remotes.get(addr)
        if protocol is None:
            counters[UNVERIFIED] += 1
            return
        protocol.data_received_from(data, addr)
