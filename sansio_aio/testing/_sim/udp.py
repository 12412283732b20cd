"""The simulated UDP driver: the real UDP vocabulary over a :class:`SimNetwork`.

Theory of operation
-------------------
:class:`SimUdpDriver` implements :class:`sansio_aio._driver.Driver` for the outputs of
``sansio_aio.net._events`` (``UdpBind``, ``UdpUnbind``, ``UdpSend``, ``UdpSendMany``,
``UdpSendPairs``) and answers with the same inputs as the real
:class:`~sansio_aio.net._udp.UdpDriver` (``UdpBound``, ``UdpUnbound``, ``UdpPacket``,
``UdpError``), so a task runs unchanged on either. One instance serves one worker; the
address table is shared through the network, so tasks on different workers reach each
other.

Rules copied from the real driver and the kernel: addresses are validated by the same
``check_address`` (IP literals only); slots come from a per-driver counter and are never
reused, so a stale slot is an error input; a port in use is ``EADDRINUSE`` unless every
socket on it set ``reuse`` (then datagrams are spread by a hash of the source, like
SO_REUSEPORT); port 0 takes the next free ephemeral port; a wildcard bind (``""``,
``"0.0.0.0"``, ``"::"``) receives what no specific bind on that port takes; datagrams
over 65507 bytes (65527 on IPv6) fail with ``EMSGSIZE``; a datagram for an address
nobody bound is dropped (counted as ``unreachable``). IPv6 addresses are reported as
4-tuples ``(host, port, 0, 0)``, as the socket module does.
This module imports no asyncio.
"""

from __future__ import annotations

import errno as errno_mod
import itertools
import zlib
from collections.abc import Mapping
from typing import Any, ClassVar

from ..._driver import Driver, DriverContext
from ..._events import TaskRef
from ...net._events import (
    MAX_UDP_PAYLOAD,
    Address,
    UdpBind,
    UdpBound,
    UdpError,
    UdpPacket,
    UdpSend,
    UdpSendMany,
    UdpSendPairs,
    UdpUnbind,
    UdpUnbound,
)
from .addr import ANY, checked, sockaddr, source_host
from .net import SimNetwork

__all__ = ["SimUdpDriver"]

MAX_UDP6_PAYLOAD = 65527


class _Sock:
    __slots__ = ("driver", "host", "open", "owner", "port", "reuse", "slot", "version")

    def __init__(
        self,
        driver: SimUdpDriver,
        slot: int,
        owner: TaskRef,
        host: str,
        port: int,
        version: int,
        reuse: bool,
    ):
        self.driver = driver
        self.slot = slot
        self.owner = owner
        self.host = host
        self.port = port
        self.version = version
        self.reuse = reuse
        self.open = True

    def address(self, host: str | None = None) -> Address:
        return sockaddr(self.host if host is None else host, self.port, self.version)


class _Table:
    """Every bound simulated UDP socket of one network: (host, port) -> sockets."""

    def __init__(self, first_port: int) -> None:
        self.by_addr: dict[tuple[str, int], list[_Sock]] = {}
        self.next_port: dict[int, int] = {}
        self.first_port = first_port

    def users(self, host: str, port: int, version: int) -> list[_Sock]:
        """Sockets whose binding overlaps ``host:port`` (same host or a wildcard)."""
        out: list[_Sock] = []
        wildcard = host == ANY[version]
        for (h, p), socks in self.by_addr.items():
            if p != port:
                continue
            if wildcard or h == host or h == ANY[version]:
                out.extend(s for s in socks if s.version == version)
        return out

    def free_port(self, host: str, version: int) -> int:
        start = self.next_port.get(version, self.first_port)
        span = 65536 - self.first_port
        for i in range(span):
            port = self.first_port + (start - self.first_port + i) % span
            if not self.users(host, port, version):
                self.next_port[version] = port + 1 if port < 65535 else self.first_port
                return port
        raise OSError(errno_mod.EADDRINUSE, "no free ephemeral port")

    def add(self, s: _Sock) -> None:
        self.by_addr.setdefault((s.host, s.port), []).append(s)

    def remove(self, s: _Sock) -> None:
        socks = self.by_addr.get((s.host, s.port))
        if socks is not None and s in socks:
            socks.remove(s)
            if not socks:
                del self.by_addr[(s.host, s.port)]

    def lookup(self, host: str, port: int, version: int, src: Address) -> _Sock | None:
        socks = self.by_addr.get((host, port)) or self.by_addr.get((ANY[version], port))
        if not socks:
            return None
        if len(socks) == 1:
            return socks[0]
        return socks[zlib.crc32(repr(tuple(src[:2])).encode()) % len(socks)]


class SimUdpDriver(Driver):
    """Simulated UDP sockets for the tasks of one worker (see the module docs).

    Build it with ``net.udp_driver`` (a factory) and give it to ``SimRuntime``. Stats
    use the real driver's names: ``udp_sockets``, ``udp_rx``, ``udp_tx``,
    ``udp_tx_errors``, ``udp_bind_errors`` (and zeros for the kernel-only counters).
    """

    output_types: ClassVar[tuple[type, ...]] = (
        UdpBind,
        UdpUnbind,
        UdpSend,
        UdpSendMany,
        UdpSendPairs,
    )

    def __init__(self, net: SimNetwork) -> None:
        self.net = net
        table = net.registry.get("udp")
        if table is None:
            table = net.registry["udp"] = _Table(net.ephemeral)
        self._table: _Table = table
        self._ctx: DriverContext | None = None
        self._ids = itertools.count(1)
        self._socks: dict[int, _Sock] = {}
        self._by_task: dict[TaskRef, dict[int, _Sock]] = {}
        self.rx = 0
        self.tx = 0
        self.tx_errors = 0
        self.bind_errors = 0

    # ------------------------------------------------------------------ Driver

    def start(self, ctx: DriverContext) -> None:
        """Remember the worker's context."""
        self._ctx = ctx

    def handle(self, task: TaskRef, output: Any) -> None:
        """Perform one UDP output of ``task``; failures come back as inputs."""
        typ = type(output)
        if typ is UdpSend:
            s = self._own(task, output.slot)
            if s is None:
                self._not_ours(task, output.slot, output.dest)
            else:
                self._send(task, s, output.dest, output.data)
        elif typ is UdpSendMany:
            s = self._own(task, output.slot)
            if s is None:
                self._not_ours(task, output.slot, None)
                return
            try:
                dests = list(output.dests)
            except TypeError:
                self._error(task, output.slot, "dests must be a sequence", errno_mod.EINVAL)
                return
            for dest in dests:
                self._send(task, s, dest, output.data)
        elif typ is UdpSendPairs:
            try:
                pairs = [(slot, dest) for slot, dest in output.pairs]
            except (TypeError, ValueError):
                self._error(task, -1, "pairs must hold (slot, dest) tuples", errno_mod.EINVAL)
                return
            for slot, dest in pairs:
                s = self._own(task, slot)
                if s is None:
                    self._not_ours(task, slot, dest)
                else:
                    self._send(task, s, dest, output.data)
        elif typ is UdpBind:
            self._bind(task, output)
        elif typ is UdpUnbind:
            s = self._own(task, output.slot)
            if s is None:
                msg = f"slot {output.slot!r} is not a socket of this task"
                self._deliver(task, UdpUnbound(output.slot, msg))
                return
            self._close(s)
            self._deliver(task, UdpUnbound(output.slot))

    # release/close/stats mirror UdpDriver's on purpose: the same per-task socket table
    # and the same counter names, so a test reads the simulated driver like the real one.
    def release(self, task: TaskRef) -> None:
        """Close every socket ``task`` still holds."""
        socks = self._by_task.pop(task, None)
        if socks:
            for s in list(socks.values()):
                self._close(s)

    def close(self) -> None:
        """Close every socket of this worker."""
        for s in list(self._socks.values()):
            self._close(s)
        self._by_task.clear()

    def stats(self) -> Mapping[str, int]:
        """Counters merged into the worker's stats (the real driver's names)."""
        return {
            "udp_sockets": len(self._socks),
            "udp_rx": self.rx,
            "udp_tx": self.tx,
            "udp_tx_dropped": 0,
            "udp_tx_errors": self.tx_errors,
            "udp_rx_errors": 0,
            "udp_rx_full": 0,
            "udp_bind_errors": self.bind_errors,
        }

    # ------------------------------------------------------------------ sockets

    def _own(self, task: TaskRef, slot: Any) -> _Sock | None:
        s = self._socks.get(slot) if type(slot) is int else None
        if s is None or not (s.owner is task or s.owner == task):
            return None
        return s

    def _bind(self, task: TaskRef, out: UdpBind) -> None:
        try:
            addr, host, version = checked(out.addr)
            for name in ("rcvbuf", "sndbuf"):
                v = getattr(out, name)
                if v is not None and (type(v) is not int or v <= 0):
                    raise ValueError(f"{name} must be a positive int (bytes) or None, got {v!r}")
        except ValueError as exc:
            self.bind_errors += 1
            self._deliver(task, UdpBound(-1, None, out.tag, str(exc), errno_mod.EINVAL))
            return
        table = self._table
        port = addr[1]
        if port == 0:
            port = table.free_port(host, version)
        users = table.users(host, port, version)
        if users and not (out.reuse and all(u.reuse for u in users)):
            self.bind_errors += 1
            msg = f"bind {addr!r}: Address already in use (errno {errno_mod.EADDRINUSE})"
            self._deliver(task, UdpBound(-1, None, out.tag, msg, errno_mod.EADDRINUSE))
            return
        slot = next(self._ids)
        s = _Sock(self, slot, task, host, port, version, out.reuse)
        table.add(s)
        self._socks[slot] = s
        self._by_task.setdefault(task, {})[slot] = s
        self._deliver(task, UdpBound(slot, s.address(), out.tag))

    def _close(self, s: _Sock) -> None:
        if not s.open:
            return
        s.open = False
        self._table.remove(s)
        self._socks.pop(s.slot, None)
        owned = self._by_task.get(s.owner)
        if owned is not None:
            owned.pop(s.slot, None)
            if not owned:
                del self._by_task[s.owner]

    # ------------------------------------------------------------------ sending

    def _send(self, task: TaskRef, s: _Sock, dest: Any, data: Any) -> None:
        try:
            addr, host, version = checked(dest)
        except (ValueError, TypeError) as exc:
            self._error(task, s.slot, str(exc), errno_mod.EINVAL, dest)
            return
        if version != s.version:
            msg = f"IPv{s.version} socket cannot send to IPv{version} address {dest!r}"
            self._error(task, s.slot, msg, errno_mod.EAFNOSUPPORT, dest)
            return
        if not isinstance(data, bytes | bytearray | memoryview):
            msg = f"a bytes-like object is required, not {type(data).__name__!r}"
            self._error(task, s.slot, msg, 0, dest)
            return
        payload = bytes(data)
        limit = MAX_UDP_PAYLOAD if version == 4 else MAX_UDP6_PAYLOAD
        if len(payload) > limit:
            msg = f"Message too long (errno {errno_mod.EMSGSIZE})"
            self._error(task, s.slot, msg, errno_mod.EMSGSIZE, dest)
            return
        if host == ANY[version]:
            host = source_host(host, host, version)  # to "any": loopback, the kernel's choice
        src = s.address(source_host(s.host, host, version))
        self.tx += 1
        table = self._table
        port = addr[1]

        def arrive() -> None:
            target = table.lookup(host, port, version, src)
            if target is None or not target.open:
                self.net.stats.unreachable += 1
                self.net.trace.record(self.net.clock.now(), "net", "unreachable", f"{host}:{port}")
                return
            target.driver._received(target, src, payload)

        self.net.transmit(src, (host, port), len(payload), arrive)

    def _received(self, s: _Sock, src: Address, payload: bytes) -> None:
        self.rx += 1
        self._deliver(s.owner, UdpPacket(s.slot, src, payload))

    # ------------------------------------------------------------------ errors

    def _deliver(self, task: TaskRef, event: Any) -> None:
        assert self._ctx is not None, "the driver was not started"
        self._ctx.deliver(task, event)

    def _error(
        self, task: TaskRef, slot: Any, msg: str, code: int, dest: Address | None = None
    ) -> None:
        self.tx_errors += 1
        self._deliver(task, UdpError(slot, "send", msg, code, dest))

    def _not_ours(self, task: TaskRef, slot: Any, dest: Address | None) -> None:
        msg = f"slot {slot!r} is not a socket of this task (unbound, or never bound)"
        self._error(task, slot, msg, errno_mod.EBADF, dest)
