"""The datagram guard: every UDP datagram a server peer connection receives is checked.

Theory of operation
-------------------
aioice's ``StunProtocol.datagram_received`` hands anything that is not STUN to its ICE
connection's receive queue, from any source address and without limit, and aiortc's DTLS
transport reads that queue once ICE completes. Found with aioice 0.13 / aiortc 1.16:
one empty datagram (aiortc reads ``data[0]``) or one of more than 1500 bytes starting
0x80 (pylibsrtp raises ``ValueError``, which aiortc does not catch) ends the session,
from any address; malformed STUN makes ``datagram_received`` raise (a traceback logged
per datagram); 45 MB sent before ICE completes are held in memory.

:class:`GuardedStunProtocol` is aioice's ``StunProtocol`` with a checked
``datagram_received``:

1. an empty datagram, or one over :data:`MAX_DATAGRAM` bytes, is dropped;
2. a first byte 0-3 is STUN (RFC 7983). A parse failure, a wrong magic cookie, or an
   exception while aioice handles the message is ``malformed_stun``: counted, at most a
   debug log. Requests go to aioice, which answers them; one that authenticates (our
   ufrag in USERNAME, MESSAGE-INTEGRITY with our password) validates its source
   address. Responses go to the transaction that sent the request, else are
   ``unknown``; an authenticated success response validates its source too;
3. anything else (DTLS, SRTP) reaches aiortc only from a validated address: once ICE
   has nominated a pair, only that pair's remote address on this very socket; before
   that, an address validated in step 2 (the :data:`MAX_VALIDATED` most recent ones;
   the nominated address is never forgotten). A peer's DTLS may arrive before our own
   check of its address succeeded: its authenticated check came first, so it is not
   lost. Otherwise the datagram is ``unverified``; when the connection's receive queue
   already holds :data:`QUEUE_LIMIT` datagrams it is ``queue_full``.

Drops are counted in the driver's counters, ``webrtc_udp_dropped_<reason>``; accepted
datagrams in ``webrtc_udp_accepted``. Each accepted datagram (and each authenticated
STUN message) stamps :attr:`PeerGuard.heard_at`, which the driver's silence check reads.

Installation is per peer connection, never global (the application may run aiortc peers
of its own in the same process; the tests' clients do): :func:`guard_peer_connection`
replaces the ``get_component_candidates`` method of each aioice ``Connection`` of the
peer connection, between ``setRemoteDescription`` (which creates them) and
``setLocalDescription`` (which gathers through that method). The replacement makes the
same candidates as aioice 0.13 does (host, server-reflexive, relayed), each with a
guarded protocol: on a socket of its own (``udp_port=0``) or through the worker's shared
port (:mod:`._udpmux`). :func:`check_guarded` verifies afterwards that every protocol of
every connection is guarded. The private names relied on are checked before use; if
they are not what this module expects, :class:`IceInternalsError` is raised (the driver
answers 500): never a silently unguarded session. They are, in aiortc 1.16:
``RTCPeerConnection.__iceTransports`` (the set ``setLocalDescription`` gathers),
``RTCIceTransport._connection``; in aioice 0.13: ``Connection.get_component_candidates``
(its signature), ``._protocols``, ``._queue`` (an ``asyncio.Queue``), ``._nominated``
(component -> ``CandidatePair``), ``._transport_policy``, ``._local_username`` (shared
port only), ``StunProtocol.transactions``, ``ice.server_reflexive_candidate`` and
``ice.relayed_candidate``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from aioice import Candidate, Connection, TransportPolicy, stun, turn
from aioice import ice as aioice_ice
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import StunProtocol

__all__ = [
    "DROP_REASONS",
    "MAX_DATAGRAM",
    "MAX_VALIDATED",
    "QUEUE_LIMIT",
    "GuardedStunProtocol",
    "IceInternalsError",
    "PeerGuard",
    "SharedPort",
    "check_guarded",
    "guard_counters",
    "guard_peer_connection",
    "parse_stun",
]

log = logging.getLogger("sansio_aio.webrtc")

#: Largest datagram accepted (bytes): the path MTU WebRTC stacks assume. pylibsrtp
#: refuses longer SRTP packets, with an exception aiortc does not catch.
MAX_DATAGRAM = 1500
#: Most datagrams waiting in one ICE connection's receive queue (aiortc reads it once ICE
#: completes): about 1.5 MB at most, far more than a keyframe burst.
QUEUE_LIMIT = 1024
#: Most validated remote addresses remembered per protocol before nomination.
MAX_VALIDATED = 8

#: Why a datagram was dropped: counted as ``webrtc_udp_dropped_<reason>``.
DROP_REASONS = ("empty", "oversize", "unverified", "malformed_stun", "queue_full", "unknown")

EMPTY = "webrtc_udp_dropped_empty"
OVERSIZE = "webrtc_udp_dropped_oversize"
UNVERIFIED = "webrtc_udp_dropped_unverified"
MALFORMED = "webrtc_udp_dropped_malformed_stun"
QUEUE_FULL = "webrtc_udp_dropped_queue_full"
UNKNOWN = "webrtc_udp_dropped_unknown"
ACCEPTED = "webrtc_udp_accepted"

_COOKIE = stun.COOKIE.to_bytes(4, "big")
_REQUEST = stun.Class.REQUEST
_RESPONSE = stun.Class.RESPONSE
_ERROR = stun.Class.ERROR
_GATHER_PARAMS = ["self", "component", "addresses", "timeout"]

Address = tuple[str, int]


class IceInternalsError(RuntimeError):
    """aiortc/aioice are not what the guard was written against: no session is opened."""


def guard_counters() -> dict[str, int]:
    """The counters the guard (and the shared port) increment, all zero."""
    out = {f"webrtc_udp_dropped_{reason}": 0 for reason in DROP_REASONS}
    out[ACCEPTED] = 0
    return out


class SharedPort(Protocol):
    """What the guard needs of a shared UDP port (:class:`~._udpmux.UdpMux`)."""

    def open(self, conn: Connection, guard: PeerGuard, address: str) -> GuardedStunProtocol | None:
        """A guarded protocol of ``conn`` on the shared socket of ``address`` (or None)."""

    def new_ufrag(self) -> str:
        """A fresh ICE ufrag, unique among the sessions of this port."""


class AddressBook(Protocol):
    """Told which remote addresses a protocol validated (the shared port routes by them)."""

    def learn(self, addr: Address) -> None:
        """``addr`` is validated: route its datagrams to this protocol."""

    def forget(self, addr: Address) -> None:
        """``addr`` is no longer validated."""


class PeerGuard:
    """What the guarded protocols of one peer connection share.

    Args:
        counters: the driver's counters (see :func:`guard_counters`).
        mux: the worker's shared port, or None for a socket per candidate.
        public_ip: advertised instead of the first host address of its family.
    """

    __slots__ = ("counters", "heard_at", "mux", "public_ip")

    def __init__(
        self,
        counters: dict[str, int],
        *,
        mux: SharedPort | None = None,
        public_ip: str | None = None,
    ) -> None:
        self.counters = counters
        self.mux = mux
        self.public_ip = public_ip
        #: ``time.monotonic()`` of the last datagram accepted from the peer.
        self.heard_at = time.monotonic()


def bad_size(size: int, counters: dict[str, int]) -> bool:
    """True (and counted) for a datagram that is empty or over :data:`MAX_DATAGRAM`."""
    if size == 0:
        counters[EMPTY] += 1
        return True
    if size > MAX_DATAGRAM:
        counters[OVERSIZE] += 1
        return True
    return False


def parse_stun(data: bytes, counters: dict[str, int]) -> stun.Message | None:
    """``data`` (first byte 0-3) as a STUN message, or None (counted as malformed)."""
    try:
        if data[4:8] != _COOKIE:
            raise ValueError("no STUN magic cookie")
        return stun.parse_message(data)
    except Exception as exc:  # any malformed attribute: never a traceback per datagram
        counters[MALFORMED] += 1
        log.debug("malformed STUN datagram dropped: %r", exc)
        return None


class GuardedStunProtocol(StunProtocol):
    """aioice's ``StunProtocol`` that checks every datagram first (see the module doc)."""

    def __init__(self, receiver: Connection, guard: PeerGuard) -> None:
        super().__init__(receiver)
        self.guard = guard
        #: Remote addresses validated before nomination (insertion ordered).
        self.validated: dict[Address, None] = {}
        #: Set by the shared port: told about validated addresses.
        self.book: AddressBook | None = None

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        """Check one datagram and pass it on (or count why not)."""
        counters = self.guard.counters
        if bad_size(len(data), counters):
            return
        if not isinstance(data, bytes):  # pragma: no cover - UDP never gives str
            return
        source = (addr[0], addr[1])
        if data[0] < 4:
            message = parse_stun(data, counters)
            if message is not None:
                self.stun_received(message, source)
        else:
            self.data_received_from(data, source)

    def stun_received(self, message: stun.Message, addr: Address) -> None:
        """A parsed STUN message from ``addr``: to aioice, validating ``addr`` if it
        authenticates."""
        guard = self.guard
        try:
            klass = message.message_class
            if klass is _REQUEST:
                if self._authentic_request(message):
                    guard.heard_at = time.monotonic()
                    self._validate(addr)
                self.receiver.request_received(message, addr, self)
            elif klass is _RESPONSE or klass is _ERROR:
                transaction = self.transactions.get(message.transaction_id)
                if transaction is None:
                    guard.counters[UNKNOWN] += 1
                    return
                transaction.response_received(message, addr)
                if klass is _RESPONSE and self._authentic_response(message):
                    guard.heard_at = time.monotonic()
                    self._validate(addr)
            # indications: ignored, as aioice does
        except Exception as exc:  # a missing or malformed attribute
            guard.counters[MALFORMED] += 1
            log.debug("STUN message from %s dropped: %r", addr, exc)

    def data_received_from(self, data: bytes, addr: Address) -> None:
        """A non-STUN datagram: queued for aiortc only from a validated address."""
        guard = self.guard
        conn = self.receiver
        nominated = conn._nominated
        if nominated:
            pair = nominated.get(self.local_candidate.component)
            ok = pair is not None and pair.protocol is self and pair.remote_addr == addr
        else:
            ok = addr in self.validated
        if not ok:
            guard.counters[UNVERIFIED] += 1
            return
        if conn._queue.qsize() >= QUEUE_LIMIT:
            guard.counters[QUEUE_FULL] += 1
            return
        guard.heard_at = time.monotonic()
        guard.counters[ACCEPTED] += 1
        conn.data_received(data, self.local_candidate.component)

    def _authentic_request(self, message: stun.Message) -> bool:
        conn = self.receiver
        username = message.attributes.get("USERNAME")
        if not isinstance(username, str):
            return False
        local, colon, remote = username.partition(":")
        if colon != ":" or local != conn.local_username:
            return False
        if conn.remote_username is not None and remote != conn.remote_username:
            return False
        return message.check_message_integrity(conn.local_password.encode("utf8"))

    def _authentic_response(self, message: stun.Message) -> bool:
        password = self.receiver.remote_password
        return password is not None and message.check_message_integrity(password.encode("utf8"))

    def _validate(self, addr: Address) -> None:
        """Remember ``addr`` (most recent last); forget the least recent one beyond
        :data:`MAX_VALIDATED`, never the nominated pair's address."""
        validated = self.validated
        if addr in validated:
            del validated[addr]  # re-inserted below: most recent last
            validated[addr] = None
            return
        validated[addr] = None
        book = self.book
        if book is not None:
            book.learn(addr)
        if len(validated) > MAX_VALIDATED:
            pair = self.receiver._nominated.get(self.local_candidate.component)
            keep = pair.remote_addr if pair is not None and pair.protocol is self else None
            oldest = next(a for a in validated if a != keep)
            del validated[oldest]
            if book is not None:
                book.forget(oldest)


# ---------------------------------------------------------------------- installing


def guard_peer_connection(pc: Any, guard: PeerGuard) -> None:
    """Make every ICE connection of ``pc`` gather guarded protocols only.

    Call it after ``setRemoteDescription`` and before ``setLocalDescription``. With a
    shared port, each connection also gets a fresh ufrag unique on that port.

    Raises:
        IceInternalsError: aiortc/aioice are not the versions this was written for.
    """
    for ice in _ice_transports(pc):
        conn = getattr(ice, "_connection", None)
        _check_connection(conn)
        assert isinstance(conn, Connection)
        if ice.iceGatherer.state != "new":
            raise IceInternalsError("the peer connection already gathered its candidates")
        if guard.mux is not None:
            conn._local_username = guard.mux.new_ufrag()
        # An instance attribute shadows the method for this connection only.
        conn.get_component_candidates = _guarded_gatherer(conn, guard)  # type: ignore[method-assign,assignment]


def check_guarded(pc: Any) -> None:
    """Raise :class:`IceInternalsError` unless every socket of ``pc`` is guarded."""
    for ice in _ice_transports(pc):
        conn = getattr(ice, "_connection", None)
        for protocol in getattr(conn, "_protocols", ()):
            if not isinstance(protocol, GuardedStunProtocol):
                raise IceInternalsError(
                    f"aioice opened an unguarded socket ({type(protocol).__name__}): "
                    "this aioice gathers candidates in a way the guard does not know"
                )


def _ice_transports(pc: Any) -> list[Any]:
    transports = getattr(pc, "_RTCPeerConnection__iceTransports", None)
    if not isinstance(transports, set):
        raise IceInternalsError(
            "RTCPeerConnection has no __iceTransports set: this aiortc is not 1.x as known"
        )
    return list(transports)


def _check_connection(conn: Any) -> None:
    if not isinstance(conn, Connection):
        raise IceInternalsError(f"RTCIceTransport._connection is {type(conn).__name__}")
    method = getattr(type(conn), "get_component_candidates", None)
    params = list(inspect.signature(method).parameters) if callable(method) else []
    checks = {
        "get_component_candidates(component, addresses, timeout)": params == _GATHER_PARAMS,
        "_queue is an asyncio.Queue": isinstance(getattr(conn, "_queue", None), asyncio.Queue),
        "_nominated is a dict": isinstance(getattr(conn, "_nominated", None), dict),
        "_protocols is a list": isinstance(getattr(conn, "_protocols", None), list),
        "_transport_policy": isinstance(getattr(conn, "_transport_policy", None), TransportPolicy),
        "_local_username": isinstance(getattr(conn, "_local_username", None), str),
        "ice.server_reflexive_candidate": callable(
            getattr(aioice_ice, "server_reflexive_candidate", None)
        ),
        "ice.relayed_candidate": callable(getattr(aioice_ice, "relayed_candidate", None)),
    }
    missing = [name for name, ok in checks.items() if not ok]
    if missing:
        raise IceInternalsError(
            "aioice.Connection is not what the datagram guard expects: " + ", ".join(missing)
        )


def _advertised(addresses: list[str], public_ip: str | None) -> list[tuple[str, str]]:
    """``(bind address, advertised address)`` pairs: ``public_ip`` stands for the first
    address of its family, the others of that family are not offered."""
    if public_ip is None:
        return [(a, a) for a in addresses]
    v6 = ":" in public_ip
    out: list[tuple[str, str]] = []
    replaced = False
    for address in addresses:
        if (":" in address) != v6:
            out.append((address, address))
        elif not replaced:
            out.append((address, public_ip))
            replaced = True
    return out


def _guarded_gatherer(
    conn: Connection, guard: PeerGuard
) -> Callable[[int, list[str], int], Coroutine[Any, Any, list[Candidate]]]:
    """aioice 0.13's ``Connection.get_component_candidates``, with guarded protocols."""

    async def get_component_candidates(
        component: int, addresses: list[str], timeout: int = 5
    ) -> list[Candidate]:
        loop = asyncio.get_running_loop()
        candidates: list[Candidate] = []
        host_protocols: list[GuardedStunProtocol] = []

        def factory() -> GuardedStunProtocol:
            return GuardedStunProtocol(conn, guard)

        for address, advertised in _advertised(addresses, guard.public_ip):
            protocol: GuardedStunProtocol | None
            if guard.mux is not None:
                protocol = guard.mux.open(conn, guard, address)
                if protocol is None:
                    continue
            else:
                try:
                    transport, protocol = await loop.create_datagram_endpoint(
                        factory, local_addr=(address, 0)
                    )
                    sock = transport.get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_RCVBUF, turn.UDP_SOCKET_BUFFER_SIZE
                        )
                except OSError as exc:
                    log.debug("could not bind a candidate on %s: %s", address, exc)
                    continue
            port = protocol.transport.get_extra_info("sockname")[1]
            protocol.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", advertised),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host"),
                host=advertised,
                port=port,
                type="host",
            )
            host_protocols.append(protocol)
            candidates.append(protocol.local_candidate)
        conn._protocols += host_protocols

        tasks: list[asyncio.Task[tuple[Candidate, StunProtocol | None]]] = []
        if conn.stun_server:  # server-reflexive (IPv4 only), as aioice
            for host in host_protocols:
                if ":" not in host.local_candidate.host:
                    coro = aioice_ice.server_reflexive_candidate(host, conn.stun_server)
                    tasks.append(asyncio.create_task(coro))
        if conn.turn_server:  # relayed, through a guarded protocol too
            relay = aioice_ice.relayed_candidate(
                component=component,
                hide_related_address=conn._transport_policy == TransportPolicy.RELAY,
                protocol_factory=factory,
                turn_server=conn.turn_server,
                turn_username=conn.turn_username,
                turn_password=conn.turn_password,
                turn_ssl=conn.turn_ssl,
                turn_transport=conn.turn_transport,
            )
            tasks.append(asyncio.create_task(relay))
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in done:
                if task.exception() is None:
                    candidate, relay_protocol = task.result()
                    candidates.append(candidate)
                    if relay_protocol is not None:
                        conn._protocols.append(relay_protocol)
            for task in pending:
                task.cancel()
        return candidates

    return get_component_candidates
