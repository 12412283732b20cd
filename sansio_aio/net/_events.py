"""The UDP and TCP vocabulary: the outputs a task emits and the inputs it gets back.

A task asks for network I/O by emitting outputs (``UdpBind``, ``UdpSend``,
``TcpListen``, ``TcpSend``, ...); the worker's :class:`~sansio_aio.net._udp.UdpDriver`
and :class:`~sansio_aio.net._tcp.TcpDriver` perform them and feed the results back as
inputs (``UdpBound``, ``UdpPacket``, ``TcpAccepted``, ``TcpData``, ...).

Sockets are named by **slots**: small integers a driver hands out, per worker, that
are never reused while the worker runs. An output naming a slot that was closed (or
that belongs to another task) is refused with an error input, never sent through a
different socket.

Addresses are tuples as the ``socket`` module uses them: ``(host, port)`` for IPv4 and
``(host, port, flowinfo, scope_id)`` (or just ``(host, port)``) for IPv6. Hosts are IP
literals: the drivers never resolve names (a blocking DNS lookup would stall every task
on the worker); a bind, listen or connect to a name is refused with an error input.

Every result that can fail carries ``error`` (a message, ``None`` on success) and
``errno`` (the OS error number, ``0`` if none). This module imports no asyncio.

Events are small slotted dataclasses, cheap on the per-packet path. Treat them as
immutable and don't subclass them: the worker routes outputs by exact type.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, final

__all__ = [
    "MAX_UDP_PAYLOAD",
    "TCP_OUTPUTS",
    "Address",
    "TcpAccepted",
    "TcpClose",
    "TcpClosed",
    "TcpConnect",
    "TcpConnected",
    "TcpData",
    "TcpEof",
    "TcpError",
    "TcpListen",
    "TcpListening",
    "TcpPauseReading",
    "TcpPaused",
    "TcpResumeReading",
    "TcpResumed",
    "TcpSend",
    "TcpShutdown",
    "UdpBind",
    "UdpBound",
    "UdpError",
    "UdpPacket",
    "UdpPackets",
    "UdpSend",
    "UdpSendBatch",
    "UdpSendMany",
    "UdpSendPairs",
    "UdpUnbind",
    "UdpUnbound",
]

#: A socket address: ``(host, port)`` or ``(host, port, flowinfo, scope_id)``.
Address = tuple[Any, ...]

#: The largest UDP payload over IPv4 (65535 - 20 IP header - 8 UDP header).
MAX_UDP_PAYLOAD = 65507


# ============================================================================ UDP
# ---------------------------------------------------------------- UDP outputs


@final
@dataclass(slots=True)
class UdpBind:
    """Open a UDP socket bound to ``addr``; the result comes back as :class:`UdpBound`.

    ``("127.0.0.1", 0)`` binds an ephemeral port; ``("::1", 0)`` an IPv6 one;
    ``("", port)`` every IPv4 address. With ``reuse`` the socket sets SO_REUSEADDR and
    SO_REUSEPORT, so several sockets (one per worker, say) can share the port.
    ``rcvbuf`` / ``sndbuf`` set the kernel buffer sizes (bytes) when given.
    ``tag`` is echoed in the result so a task can tell its binds apart.
    With ``batch`` each readiness of the socket arrives as one :class:`UdpPackets`
    (up to the driver's batch bound) instead of one :class:`UdpPacket` per datagram:
    fewer objects and calls per datagram, for high-rate tasks.
    """

    addr: Address
    reuse: bool = False
    tag: Hashable = None
    rcvbuf: int | None = None
    sndbuf: int | None = None
    batch: bool = False


@final
@dataclass(slots=True)
class UdpUnbind:
    """Close the socket in ``slot``; acknowledged by :class:`UdpUnbound`."""

    slot: int


@final
@dataclass(slots=True)
class UdpSend:
    """Send one datagram ``data`` from ``slot`` to ``dest``.

    A send the kernel refuses for lack of buffer room (EAGAIN, ENOBUFS) is dropped and
    counted in the worker stats (``udp_tx_dropped``), as UDP would drop it on the wire;
    any other failure (stale slot, bad address, oversize datagram) comes back as
    :class:`UdpError`.
    """

    slot: int
    dest: Address
    data: bytes


@final
@dataclass(slots=True)
class UdpSendMany:
    """Send the same ``data`` from ``slot`` to every address in ``dests``."""

    slot: int
    dests: Sequence[Address]
    data: bytes


@final
@dataclass(slots=True)
class UdpSendBatch:
    """Send each ``(dest, data)`` of ``items`` from ``slot``, in order (the batch echo of
    :class:`UdpPackets`)."""

    slot: int
    items: Sequence[tuple[Address, bytes]]


@final
@dataclass(slots=True)
class UdpSendPairs:
    """Send the same ``data`` once per ``(slot, dest)`` pair in ``pairs``."""

    pairs: Sequence[tuple[int, Address]]
    data: bytes


# ----------------------------------------------------------------- UDP inputs


@final
@dataclass(slots=True)
class UdpBound:
    """The result of :class:`UdpBind`: the new ``slot`` and its local ``addr``, or an error.

    On failure ``slot`` is ``-1``, ``addr`` is ``None`` and ``error`` says why (``errno``
    is e.g. ``errno.EADDRINUSE``).
    """

    slot: int
    addr: Address | None
    tag: Hashable = None
    error: str | None = None
    errno: int = 0

    @property
    def ok(self) -> bool:
        """True if the socket is bound."""
        return self.error is None


@final
@dataclass(slots=True)
class UdpUnbound:
    """:class:`UdpUnbind` of ``slot`` is done (``error`` if the slot was not ours)."""

    slot: int
    error: str | None = None


@final
@dataclass(slots=True)
class UdpPacket:
    """One whole datagram received on ``slot`` from ``source``."""

    slot: int
    source: Address
    data: bytes


@final
@dataclass(slots=True)
class UdpPackets:
    """Datagrams received on a ``batch`` socket in one readiness, oldest first.

    ``packets`` holds ``(source, data)`` pairs; each datagram is whole.
    """

    slot: int
    packets: list[tuple[Address, bytes]]


@final
@dataclass(slots=True)
class UdpError:
    """An output on ``slot`` failed: ``op`` names it (``"send"``, ``"unbind"``, ...).

    ``dest`` is the destination of a failed send, if there was one.
    """

    slot: int
    op: str
    error: str
    errno: int = 0
    dest: Address | None = None


# ============================================================================ TCP
# ---------------------------------------------------------------- TCP outputs


@final
@dataclass(slots=True)
class TcpListen:
    """Listen on ``addr``; the result comes back as :class:`TcpListening`.

    Each accepted connection becomes a new slot owned by this task, announced by
    :class:`TcpAccepted`. SO_REUSEADDR is always set (a restarted server can rebind a
    port in TIME_WAIT); ``reuse_port`` adds SO_REUSEPORT so several listeners (one per
    worker, say) share the port.
    """

    addr: Address
    tag: Hashable = None
    backlog: int = 128
    reuse_port: bool = False


@final
@dataclass(slots=True)
class TcpConnect:
    """Connect to ``addr``; the result comes back as :class:`TcpConnected`.

    ``timeout`` (seconds) bounds the attempt; ``bind`` optionally sets the local address.
    """

    addr: Address
    tag: Hashable = None
    timeout: float = 10.0
    bind: Address | None = None


@final
@dataclass(slots=True)
class TcpSend:
    """Queue ``data`` on connection ``slot``.

    The driver's write buffer per connection is bounded: above its high-water mark the
    task gets :class:`TcpPaused` (and the connection stops reading), below the low-water
    mark :class:`TcpResumed`. A send that would take the buffer past its hard limit is
    refused whole with :class:`TcpError` (nothing partial is queued).
    """

    slot: int
    data: bytes


@final
@dataclass(slots=True)
class TcpShutdown:
    """Half-close ``slot``: flush what is queued, then send FIN. Reading goes on."""

    slot: int


@final
@dataclass(slots=True)
class TcpClose:
    """Close connection or listener ``slot``; :class:`TcpClosed` acknowledges it.

    A connection flushes its queued data first, unless ``abort`` (then it is reset).
    """

    slot: int
    abort: bool = False


@final
@dataclass(slots=True)
class TcpPauseReading:
    """Stop reading from connection ``slot`` (the peer then feels TCP backpressure)."""

    slot: int


@final
@dataclass(slots=True)
class TcpResumeReading:
    """Resume reading from connection ``slot`` after :class:`TcpPauseReading`."""

    slot: int


# ----------------------------------------------------------------- TCP inputs


@final
@dataclass(slots=True)
class TcpListening:
    """The result of :class:`TcpListen`: the listener's ``slot`` and ``addr``, or an error.

    On failure ``slot`` is ``-1`` and ``addr`` is ``None``.
    """

    slot: int
    addr: Address | None
    tag: Hashable = None
    error: str | None = None
    errno: int = 0

    @property
    def ok(self) -> bool:
        """True if the listener is open."""
        return self.error is None


@final
@dataclass(slots=True)
class TcpAccepted:
    """Listener ``listener`` accepted a connection, now in ``slot``, from ``remote``."""

    listener: int
    slot: int
    remote: Address
    local: Address


@final
@dataclass(slots=True)
class TcpConnected:
    """The result of :class:`TcpConnect`: the connection's ``slot``, or an error.

    On failure ``slot`` is ``-1`` and the addresses are ``None``.
    """

    slot: int
    local: Address | None
    remote: Address | None
    tag: Hashable = None
    error: str | None = None
    errno: int = 0

    @property
    def ok(self) -> bool:
        """True if the connection is established."""
        return self.error is None


@final
@dataclass(slots=True)
class TcpData:
    """Bytes received on connection ``slot`` (a chunk of the stream, not a message)."""

    slot: int
    data: bytes


@final
@dataclass(slots=True)
class TcpEof:
    """The peer of ``slot`` half-closed: no more data will arrive; sending still works.

    Emit :class:`TcpClose` (or :class:`TcpShutdown`) when done sending. If this side
    had already sent its FIN, the connection closes by itself and ``TcpClosed`` follows.
    """

    slot: int


@final
@dataclass(slots=True)
class TcpPaused:
    """The write buffer of ``slot`` passed its high-water mark; reading is paused."""

    slot: int
    buffered: int


@final
@dataclass(slots=True)
class TcpResumed:
    """The write buffer of ``slot`` drained below its low-water mark; reading resumed."""

    slot: int


@final
@dataclass(slots=True)
class TcpClosed:
    """Connection or listener ``slot`` is closed and its slot freed.

    Sent once per slot, whoever closed it: ``error`` is ``None`` after a clean close
    (by the task, or by the peer after both sides finished) and names the cause after a
    reset or failure.
    """

    slot: int
    error: str | None = None
    errno: int = 0


@final
@dataclass(slots=True)
class TcpError:
    """An output on ``slot`` failed (``op`` names it); the connection itself lives on."""

    slot: int
    op: str
    error: str
    errno: int = 0


#: Every TCP output, in the order the drivers dispatch them: the real driver and the
#: simulated one (``testing``) handle exactly these.
TCP_OUTPUTS: tuple[type, ...] = (
    TcpListen,
    TcpConnect,
    TcpSend,
    TcpShutdown,
    TcpClose,
    TcpPauseReading,
    TcpResumeReading,
)
