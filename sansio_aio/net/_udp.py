"""The UDP driver: tasks bind, send and receive datagrams through slots.

Theory of operation
-------------------
One :class:`UdpDriver` per worker owns every UDP socket of that worker's tasks. A task
emits :class:`~sansio_aio.net._events.UdpBind`; the driver opens a non-blocking socket,
binds it at once (binding never blocks) and answers ``UdpBound(slot, addr)`` or
``UdpBound(-1, None, error=...)``. Slots come from a per-driver counter and are never
reused, so an output naming a closed slot (or another task's) can only be refused with
an error input: it never reaches a socket that took the slot's place.

Receiving: each socket's fd is registered with ``loop.add_reader``, on every backend.
Each readiness runs one bounded drain: up to ``batch`` datagrams, each read whole (a
65536-byte buffer is larger than any UDP payload, so nothing is ever truncated). With the
C speedups (``.._fast``) up to 64 are read by one ``recvmmsg`` and fed to the owning task
with one ``ctx.batch_feeder`` call, each as its own ``UdpPacket``, in order; if the task
closes the slot meanwhile, ``_close`` clears the rest of that read. Without them (pure
mode, or a ``socket_factory`` subclass) each is read with ``recvfrom(65536)`` and fed at
once through ``ctx.feeder``, so an echo's ``UdpSend`` leaves before the next read. A
``UdpSendBatch`` leaves through ``sendmmsg`` when compiled. A socket that still has data
after ``batch`` reads yields to the loop, which serves the other ready fds and timers
before coming back (level-triggered), so one flooded socket cannot starve the rest. The
drain is wrapped in ``ctx.timed`` so its time counts in the worker's utilisation.

Why not the loop's datagram transport: the same echo measured on uvloop ran as fast or
faster through ``add_reader`` + drain (``bench/udp_echo.py`` keeps both side by side),
the drain bound is ours to choose, and one code path serves every backend. On the
stdlib loops the datagram transport is several times slower (a 256 KiB buffer per read).

Sending: ``sock.sendto`` straight from ``handle``, no queue. EAGAIN and ENOBUFS mean
the kernel has no room; the datagram is dropped, as on a congested wire, and counted in
``udp_tx_dropped`` (worker stats). Any other failure (stale slot, bad address, oversize)
is an error input, :class:`~sansio_aio.net._events.UdpError`. When a task ends, the
runtime calls :meth:`UdpDriver.release` and its sockets are closed.
"""

from __future__ import annotations

import errno as errno_mod
import itertools
import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from .._driver import Driver, DriverContext
from .._errors import ConfigError
from .._events import TaskRef
from .._fast import constructor, speedups
from ._addr import check_address, describe, lookup_slot
from ._events import (
    Address,
    UdpBind,
    UdpBound,
    UdpError,
    UdpPacket,
    UdpPackets,
    UdpSend,
    UdpSendBatch,
    UdpSendMany,
    UdpSendPairs,
    UdpUnbind,
    UdpUnbound,
)

__all__ = ["UdpDriver"]

log = logging.getLogger("sansio_aio")

#: Bytes asked of each ``recvfrom``: more than any UDP payload (65527 over IPv6).
RECV_SIZE = 65536

_DROP_ERRNOS = frozenset({errno_mod.EAGAIN, errno_mod.EWOULDBLOCK, errno_mod.ENOBUFS})

SocketFactory = Callable[[int, int], socket.socket]


class _Sock:
    """One UDP socket of one task."""

    __slots__ = ("batch", "family", "fast", "fd", "open", "owner", "sendto", "slot", "sock")

    def __init__(self, slot: int, sock: socket.socket, owner: TaskRef, batch: bool) -> None:
        self.slot = slot
        self.batch = batch
        self.sock = sock
        self.fd = sock.fileno()
        self.owner = owner
        self.sendto = sock.sendto
        self.open = True
        self.family = int(sock.family)
        # the compiled paths read and write the fd directly: only for plain sockets, so a
        # socket_factory's subclass (fault injection) keeps its own recvfrom/sendto
        self.fast = (
            speedups is not None
            and type(sock) is socket.socket
            and self.family in (socket.AF_INET, socket.AF_INET6)
        )


class UdpDriver(Driver):
    """Performs the UDP outputs of the tasks of one worker (how: docs/net.md).

    Args:
        batch: most datagrams read from one socket per readiness (fairness bound).
        socket_factory: ``(family, type) -> socket``; ``socket.socket`` by default.
            Tests pass a subclass to inject faults.

    Stats (in ``WorkerStats.drivers``): ``udp_sockets`` open now, ``udp_rx`` and
    ``udp_tx`` datagrams, ``udp_tx_dropped`` (EAGAIN/ENOBUFS), ``udp_tx_errors``
    (failed sends reported to the task), ``udp_rx_errors``, ``udp_rx_full`` (drains
    that hit ``batch`` and yielded with data left), ``udp_bind_errors``.
    """

    output_types: ClassVar[tuple[type, ...]] = (
        UdpBind,
        UdpUnbind,
        UdpSend,
        UdpSendMany,
        UdpSendPairs,
        UdpSendBatch,
    )

    def __init__(self, *, batch: int = 64, socket_factory: SocketFactory | None = None) -> None:
        if not isinstance(batch, int) or batch < 1:
            raise ConfigError(f"batch must be an int >= 1, got {batch!r}")
        self.batch = batch
        self._socket_factory: SocketFactory = socket_factory or socket.socket
        self._ctx: DriverContext | None = None
        self._ids = itertools.count(1)
        self._socks: dict[int, _Sock] = {}
        self._by_task: dict[TaskRef, dict[int, _Sock]] = {}
        self._slow: dict[type, Callable[[TaskRef, Any], None]] = {
            UdpBind: self._bind,
            UdpUnbind: self._unbind,
            UdpSendMany: self._send_many,
            UdpSendPairs: self._send_pairs,
            UdpSendBatch: self._send_batch,
        }
        #: (socket, its events being fed now) during a per-datagram ``feed_all``
        self._feeding: tuple[_Sock, list[Any]] | None = None
        self.rx = 0
        self.tx = 0
        self.tx_dropped = 0
        self.tx_errors = 0
        self.rx_errors = 0
        self.rx_full = 0
        self.bind_errors = 0

    # ------------------------------------------------------------------ Driver

    def start(self, ctx: DriverContext) -> None:
        """Remember the worker's context (loop, deliver, timed)."""
        self._ctx = ctx

    def handle(self, task: TaskRef, output: Any) -> None:
        """Perform one UDP output of ``task``; failures come back as inputs."""
        if type(output) is UdpSend:  # the per-packet path, kept flat
            try:
                s = self._socks.get(output.slot)
            except TypeError:  # an unhashable slot is no slot of ours
                s = None
            if s is not None and (s.owner is task or s.owner == task):
                try:
                    s.sendto(output.data, output.dest)
                except Exception as exc:
                    self._send_failed(task, output.slot, output.dest, exc)
                else:
                    self.tx += 1
                return
            self._not_ours(task, output.slot, "send", output.dest)
            return
        self._slow[type(output)](task, output)

    def release(self, task: TaskRef) -> None:
        """Close every socket ``task`` still holds."""
        socks = self._by_task.pop(task, None)
        if socks:
            for s in list(socks.values()):
                self._close(s)

    def close(self) -> None:
        """Close every socket (the worker is stopping)."""
        for s in list(self._socks.values()):
            self._close(s)
        self._by_task.clear()

    def stats(self) -> Mapping[str, int]:
        """Counters merged into the worker's stats."""
        return {
            "udp_sockets": len(self._socks),
            "udp_rx": self.rx,
            "udp_tx": self.tx,
            "udp_tx_dropped": self.tx_dropped,
            "udp_tx_errors": self.tx_errors,
            "udp_rx_errors": self.rx_errors,
            "udp_compiled": int(speedups is not None),
            "udp_rx_full": self.rx_full,
            "udp_bind_errors": self.bind_errors,
        }

    # ------------------------------------------------------------------ binding

    def _bind(self, task: TaskRef, out: UdpBind) -> None:
        ctx = self._ctx
        assert ctx is not None
        try:
            family, addr = check_address(out.addr)
            _check_bufsize(out.rcvbuf, "rcvbuf")
            _check_bufsize(out.sndbuf, "sndbuf")
        except ValueError as exc:
            self.bind_errors += 1
            ctx.deliver(task, UdpBound(-1, None, out.tag, str(exc), errno_mod.EINVAL))
            return
        try:
            sock = self._socket_factory(family, socket.SOCK_DGRAM)
        except OSError as exc:
            self.bind_errors += 1
            msg = f"socket: {describe(exc)}"
            ctx.deliver(task, UdpBound(-1, None, out.tag, msg, exc.errno or 0))
            return
        try:
            sock.setblocking(False)
            if out.reuse:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if hasattr(socket, "SO_REUSEPORT"):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if out.rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, out.rcvbuf)
            if out.sndbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, out.sndbuf)
            sock.bind(addr)
            local = sock.getsockname()
            slot = next(self._ids)
            s = _Sock(slot, sock, task, bool(out.batch))
            ctx.loop.add_reader(s.fd, ctx.timed(self._reader(s)))
        except Exception as exc:
            sock.close()
            self.bind_errors += 1
            code = exc.errno if isinstance(exc, OSError) and exc.errno else errno_mod.EINVAL
            msg = f"bind {addr!r}: {describe(exc)}"
            ctx.deliver(task, UdpBound(-1, None, out.tag, msg, code))
            return
        self._socks[slot] = s
        self._by_task.setdefault(task, {})[slot] = s
        ctx.deliver(task, UdpBound(slot, local, out.tag))

    def _unbind(self, task: TaskRef, out: UdpUnbind) -> None:
        ctx = self._ctx
        assert ctx is not None
        s = lookup_slot(self._socks, out.slot)
        if s is None or not (s.owner is task or s.owner == task):
            ctx.deliver(
                task, UdpUnbound(out.slot, f"slot {out.slot!r} is not a socket of this task")
            )
            return
        self._close(s)
        ctx.deliver(task, UdpUnbound(out.slot))

    def _close(self, s: _Sock) -> None:
        if not s.open:
            return
        s.open = False
        feeding = self._feeding
        if feeding is not None and feeding[0] is s:
            feeding[1].clear()  # datagrams of this socket read but not fed yet: dropped
        self._socks.pop(s.slot, None)
        owned = self._by_task.get(s.owner)
        if owned is not None:
            owned.pop(s.slot, None)
            if not owned:
                del self._by_task[s.owner]
        ctx = self._ctx
        try:
            if ctx is not None:
                ctx.loop.remove_reader(s.fd)
        except Exception:
            log.debug("remove_reader(%d) failed", s.fd, exc_info=True)
        s.sock.close()

    # ------------------------------------------------------------------ receiving

    def _reader(self, s: _Sock) -> Callable[[], None]:
        """The readiness callback of one socket: a bounded drain."""
        assert self._ctx is not None
        if s.fast:
            return self._fast_reader(s)
        feed = self._ctx.feeder(s.owner)
        recvfrom = s.sock.recvfrom
        slot = s.slot
        batch = self.batch

        def on_readable() -> None:
            got = 0
            try:
                for got in range(batch):  # noqa: B007 - got counts the datagrams read
                    data, source = recvfrom(RECV_SIZE)
                    feed(UdpPacket(slot, source, data))
                got = batch
                self.rx_full += 1
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._recv_failed(s, exc)
            finally:
                self.rx += got

        def on_readable_batch() -> None:
            packets: list[tuple[Address, bytes]] = []
            append = packets.append
            try:
                for _ in range(batch):
                    data, source = recvfrom(RECV_SIZE)
                    append((source, data))
                self.rx_full += 1
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._recv_failed(s, exc)
            if packets:
                self.rx += len(packets)
                feed(UdpPackets(slot, packets))

        return on_readable_batch if s.batch else on_readable

    def _fast_reader(self, s: _Sock) -> Callable[[], None]:
        """The same drains with ``recvmmsg``: up to 64 datagrams per system call.

        Per datagram, each datagram of a chunk is still fed on its own, in order (one
        ``feed_all`` for the chunk); if the task closes the slot meanwhile, the rest of
        the chunk is discarded (:meth:`_close` clears it), as the kernel discards what a
        closed socket held.
        """
        assert self._ctx is not None and speedups is not None
        feed = self._ctx.feeder(s.owner)
        feed_all = self._ctx.batch_feeder(s.owner)
        recvmmsg = speedups.recvmmsg
        most = speedups.MAX_BATCH
        fd = s.fd
        slot = s.slot
        batch = self.batch
        packet = constructor(UdpPacket)

        def on_readable() -> None:
            got = 0
            try:
                while got < batch:
                    want = min(batch - got, most)
                    events = recvmmsg(fd, want, packet, slot)  # UdpPacket(slot, src, data)s
                    if events:
                        got += len(events)
                        self._feeding = (s, events)
                        feed_all(events)
                        if not s.open:
                            return
                        if len(events) < want:
                            return
                    else:
                        return
                self.rx_full += 1
            except OSError as exc:
                self._recv_failed(s, exc)
            finally:
                self._feeding = None
                self.rx += got

        def on_readable_batch() -> None:
            packets: list[tuple[Address, bytes]] = []
            try:
                while len(packets) < batch:
                    want = min(batch - len(packets), most)
                    chunk = recvmmsg(fd, want)
                    packets += chunk
                    if len(chunk) < want:
                        break
                else:
                    self.rx_full += 1
            except OSError as exc:
                self._recv_failed(s, exc)
            if packets:
                self.rx += len(packets)
                feed(UdpPackets(slot, packets))

        return on_readable_batch if s.batch else on_readable

    def _recv_failed(self, s: _Sock, exc: OSError) -> None:
        if s.open:  # (a socket the task closed meanwhile reads EBADF: not an error)
            # e.g. ECONNREFUSED queued by an ICMP error: count it, keep the socket
            self.rx_errors += 1
            log.debug("udp slot %d: recv failed: %s", s.slot, describe(exc))

    # ------------------------------------------------------------------ sending

    def _send_many(self, task: TaskRef, out: UdpSendMany) -> None:
        s = lookup_slot(self._socks, out.slot)
        if s is None or not (s.owner is task or s.owner == task):
            self._not_ours(task, out.slot, "send", None)
            return
        try:
            dests = list(out.dests)
        except TypeError:
            self._send_failed(task, out.slot, None, TypeError("dests must be a sequence"))
            return
        sendto = s.sendto
        data = out.data
        for dest in dests:
            try:
                sendto(data, dest)
            except Exception as exc:
                self._send_failed(task, out.slot, dest, exc)
            else:
                self.tx += 1

    def _send_batch(self, task: TaskRef, out: UdpSendBatch) -> None:
        s = lookup_slot(self._socks, out.slot)
        if s is None or not (s.owner is task or s.owner == task):
            self._not_ours(task, out.slot, "send", None)
            return
        items = out.items
        if s.fast and type(items) in (list, tuple):
            self._send_batch_fast(task, s, items)  # type: ignore[arg-type]
            return
        sendto = s.sendto
        sent = 0
        try:
            for dest, data in items:
                try:
                    sendto(data, dest)
                except Exception as exc:
                    self._send_failed(task, out.slot, dest, exc)
                else:
                    sent += 1
        except (TypeError, ValueError):
            self._send_failed(task, out.slot, None, TypeError("items must hold (dest, data)"))
        self.tx += sent

    def _send_batch_fast(self, task: TaskRef, s: _Sock, items: list[Any] | tuple[Any, ...]) -> None:
        """:meth:`_send_batch` with ``sendmmsg``; an item the C side stops at (a refused
        send, or one it does not parse) goes through ``sendto`` exactly as before."""
        assert speedups is not None
        sendmmsg = speedups.sendmmsg
        i, n, sent = 0, len(items), 0
        while i < n:
            j = sendmmsg(s.fd, s.family, items, i)
            sent += j - i
            if j >= n:
                break
            try:
                dest, data = items[j]
            except (TypeError, ValueError):
                self._send_failed(task, s.slot, None, TypeError("items must hold (dest, data)"))
                break
            try:
                s.sendto(data, dest)
            except Exception as exc:
                self._send_failed(task, s.slot, dest, exc)
            else:
                sent += 1
            i = j + 1
        self.tx += sent

    def _send_pairs(self, task: TaskRef, out: UdpSendPairs) -> None:
        data = out.data
        socks = self._socks
        try:
            pairs = [(slot, dest) for slot, dest in out.pairs]
        except (TypeError, ValueError):
            self._send_failed(task, -1, None, TypeError("pairs must hold (slot, dest) tuples"))
            return
        for slot, dest in pairs:
            s = lookup_slot(socks, slot)
            if s is None or not (s.owner is task or s.owner == task):
                self._not_ours(task, slot, "send", dest)
                continue
            try:
                s.sendto(data, dest)
            except Exception as exc:
                self._send_failed(task, slot, dest, exc)
            else:
                self.tx += 1

    def _send_failed(
        self, task: TaskRef, slot: int, dest: Address | None, exc: BaseException
    ) -> None:
        code = exc.errno if isinstance(exc, OSError) else None
        if isinstance(exc, BlockingIOError) or code in _DROP_ERRNOS:
            self.tx_dropped += 1  # no room in the kernel: dropped, as on the wire
            return
        self.tx_errors += 1
        assert self._ctx is not None
        self._ctx.deliver(task, UdpError(slot, "send", describe(exc), code or 0, dest))

    def _not_ours(self, task: TaskRef, slot: Any, op: str, dest: Address | None) -> None:
        self.tx_errors += 1
        assert self._ctx is not None
        msg = f"slot {slot!r} is not a socket of this task (unbound, or never bound)"
        self._ctx.deliver(task, UdpError(slot, op, msg, errno_mod.EBADF, dest))


def _check_bufsize(value: Any, name: str) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ConfigError(f"{name} must be a positive int (bytes) or None, got {value!r}")
