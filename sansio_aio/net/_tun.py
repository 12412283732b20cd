"""The TUN/TAP driver: Linux TUN/TAP device queues as readers on a worker's event loop.

Theory of operation
-------------------
A task emits :class:`~sansio_aio.net._tun_events.TunBind`; the driver opens a queue of
the device with python-pytun (always ``IFF_NO_PI``, so a read is one bare IP packet or
Ethernet frame), makes the fd non-blocking and close-on-exec, configures the device if
asked (address, netmask, MTU, up; the ioctls act in the worker thread's network
namespace), registers the fd with ``loop.add_reader`` and answers ``TunBound`` with a
*slot*. Slots count up per driver and are never reused, so a stale slot is an error,
never a write to another device.

Reading: the fd is level-triggered. Each readiness drains at most ``batch`` packets with
``os.read`` (read size = MTU + link header + 1; with the C speedups, one call into C reads
them all and builds the ``TunPacket``s, fed with one ``ctx.batch_feeder`` call, a queue
closed meanwhile clearing the rest) and delivers each as ``TunPacket``; the
task's outputs (``TunSend`` answers) are written with ``os.write`` within the same call
chain (the drain rule). A read that fills the whole buffer means the packet was longer
than the MTU we sized for (it was raised behind our back): that packet is dropped and
reported as ``TunError``, the MTU is re-read, and later reads are sized to it: a packet
is never silently cut. EAGAIN ends the batch; any other read error (EBADFD once the
device is deleted or its namespace dies) removes the reader *before* closing the fd and
tells the task with ``TunClosed``, so a dead fd can never spin the loop.

Writing: a failed write is reported as ``TunError`` (EIO while the link is down, EINVAL
for a malformed packet, a stale slot, data that is not bytes-like) and counted; EBADFD
closes the slot as above.

Multi-queue: with ``multi_queue=True`` each worker's driver opens its own queue of the
same device (``IFF_MULTI_QUEUE``); the kernel steers flows by their hash, so a flow
stays on one worker. A task ending releases every queue it held: remove the reader, then
close. Each worker has its own driver instance, so nothing here is shared between
threads.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import socket
import struct
import sys
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from .._driver import Driver, DriverContext
from .._errors import ConfigError
from .._events import TaskRef
from .._fast import constructor, speedups
from ._addr import lookup_slot
from ._tun_events import (
    TunBind,
    TunBound,
    TunClosed,
    TunError,
    TunPacket,
    TunPackets,
    TunSend,
    TunSendMany,
    TunUnbind,
)

try:
    import pytun
except ImportError:  # pragma: no cover - the "tun" extra is not installed
    pytun = None

__all__ = ["TunDriver", "tun_unavailable_reason"]

_write = os.write  # the per-packet send (a global lookup fewer)

log = logging.getLogger("sansio_aio")

IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
_IFF_UP = 0x1
_SIOCGIFFLAGS = 0x8913
_TAP_HEADER = 18  # Ethernet header + one VLAN tag
_MAX_NAME = 15
_MIN_MTU = 68
_MAX_MTU = 65535
_FATAL_WRITE = frozenset({errno.EBADFD, errno.EBADF, errno.ENODEV, errno.ENXIO})


def tun_unavailable_reason() -> str | None:
    """Why TUN/TAP cannot be used by this process, or ``None`` if it looks usable.

    Checks the platform, python-pytun and ``/dev/net/tun``; permissions (EPERM without
    CAP_NET_ADMIN) only show when a device is opened.
    """
    if not sys.platform.startswith("linux"):
        return f"TUN/TAP needs Linux (this is {sys.platform})"
    if pytun is None:
        return "python-pytun is not installed: pip install 'sansio-aio[tun]'"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (no tun kernel module, or not mounted in a container)"
    return None


class _Queue:
    """One open device queue (one fd) held by one task."""

    __slots__ = ("batch", "bufsize", "dev", "fd", "header", "name", "owner", "slot")

    def __init__(
        self, slot: int, owner: TaskRef, dev: Any, name: str, header: int, batch: bool
    ) -> None:
        self.slot = slot
        self.batch = batch
        self.owner = owner
        self.dev = dev
        self.fd: int = dev.fileno()
        self.name = name
        self.header = header
        self.bufsize = 0


class TunDriver(Driver):
    """TUN/TAP devices for the tasks of one worker (handles ``TunBind``, ``TunSend``,
    ``TunUnbind``; delivers ``TunBound``, ``TunPacket``, ``TunClosed``, ``TunError``).

    Args:
        batch: the most packets read per readiness event of one queue, so a flooded
            device cannot starve the worker's other work. Pass other values with
            ``functools.partial(TunDriver, batch=...)``.

    Counters (in worker stats): ``tun_queues`` open, ``tun_rx``/``tun_tx`` packets,
    ``tun_rx_truncated`` (oversized packets dropped), ``tun_tx_errors`` (failed writes),
    ``tun_closed`` (queues closed by a device error), ``tun_read_wakeups``.
    """

    output_types: ClassVar[tuple[type, ...]] = (TunSend, TunSendMany, TunBind, TunUnbind)

    def __init__(self, *, batch: int = 64) -> None:
        if not isinstance(batch, int) or batch < 1:
            raise ConfigError(f"batch must be an int >= 1, got {batch!r}")
        self._batch = batch
        self._ctx: DriverContext | None = None
        self._slots: dict[int, _Queue] = {}
        self._by_owner: dict[TaskRef, set[int]] = {}
        self._ids = itertools.count(1)
        #: (queue, its events being fed now) during a per-packet ``feed_all``
        self._feeding: tuple[_Queue, list[Any]] | None = None
        self.rx = 0
        self.tx = 0
        self.rx_truncated = 0
        self.tx_errors = 0
        self.closed_by_error = 0
        self.read_wakeups = 0

    # ------------------------------------------------------------------ Driver

    def start(self, ctx: DriverContext) -> None:
        """Remember the worker's context (loop, deliver)."""
        self._ctx = ctx

    def handle(self, task: TaskRef, output: Any) -> None:
        """Perform a ``TunSend``, ``TunBind`` or ``TunUnbind`` of ``task``."""
        if type(output) is TunSend:
            try:
                q = self._slots.get(output.slot)
            except TypeError:  # an unhashable slot is no slot of ours
                q = None
            if q is not None and (q.owner is task or q.owner == task):
                try:
                    _write(q.fd, output.data)
                except (OSError, TypeError) as exc:
                    self._write_failed(q, output.data, exc)
                else:
                    self.tx += 1
            else:
                self._stale(task, output.slot)
        elif type(output) is TunSendMany:
            self._send_many(task, output)
        elif type(output) is TunBind:
            self._bind(task, output)
        elif type(output) is TunUnbind:
            q = lookup_slot(self._slots, output.slot)
            if q is not None and (q.owner is task or q.owner == task):
                self._close(q)

    def release(self, task: TaskRef) -> None:
        """``task`` ended: close every queue it held (reader removed first)."""
        for slot in sorted(self._by_owner.get(task, ())):
            q = self._slots.get(slot)
            if q is not None:
                self._close(q)

    def close(self) -> None:
        """The worker is stopping: close every queue still open."""
        for q in list(self._slots.values()):
            self._close(q)

    def stats(self) -> Mapping[str, int]:
        """Counters merged into the worker's stats."""
        return {
            "tun_queues": len(self._slots),
            "tun_compiled": int(speedups is not None),
            "tun_rx": self.rx,
            "tun_tx": self.tx,
            "tun_rx_truncated": self.rx_truncated,
            "tun_tx_errors": self.tx_errors,
            "tun_closed": self.closed_by_error,
            "tun_read_wakeups": self.read_wakeups,
        }

    # ------------------------------------------------------------------ bind

    def _bind(self, task: TaskRef, out: TunBind) -> None:
        ctx = self._ctx
        assert ctx is not None
        problem = _check_bind(out)
        if problem is not None:
            ctx.deliver(task, TunBound(None, out.name, problem, tag=out.tag))
            return
        flags = (IFF_TAP if out.tap else IFF_TUN) | IFF_NO_PI
        if out.multi_queue:
            flags |= IFF_MULTI_QUEUE
        try:
            dev = pytun.TunTapDevice(name=out.name or "", flags=flags)
        except OSError as exc:
            ctx.deliver(task, TunBound(None, out.name, _open_error(out, exc), tag=out.tag))
            return
        try:
            name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
            fd = dev.fileno()
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
            _configure(dev, name, out)
            mtu = int(dev.mtu)
        except OSError as exc:
            dev.close()
            error = f"cannot configure {out.name or 'the new device'}: {_describe(exc)}"
            ctx.deliver(task, TunBound(None, out.name, error, tag=out.tag))
            return
        slot = next(self._ids)
        q = _Queue(slot, task, dev, name, _TAP_HEADER if out.tap else 0, bool(out.batch))
        q.bufsize = mtu + q.header + 1
        try:
            ctx.loop.add_reader(q.fd, ctx.timed(self._reader(q)))
        except Exception as exc:
            dev.close()
            error = f"cannot watch the device: {exc!r}"
            ctx.deliver(task, TunBound(None, name, error, tag=out.tag))
            return
        self._slots[slot] = q
        self._by_owner.setdefault(task, set()).add(slot)
        ctx.deliver(task, TunBound(slot, name, None, mtu, out.tag))

    # ------------------------------------------------------------------ read

    def _reader(self, q: _Queue) -> Callable[[], None]:
        """Build the readiness callback of ``q`` (locals bound for the per-packet path)."""
        assert self._ctx is not None
        if speedups is not None:
            return self._fast_reader(q)
        read = os.read
        feed = self._ctx.feeder(q.owner)
        slot = q.slot
        batch = self._batch

        def on_readable() -> None:
            self.read_wakeups += 1
            fd = q.fd
            size = q.bufsize
            n = 0
            try:
                while n < batch:
                    try:
                        data = read(fd, size)
                    except BlockingIOError:
                        return
                    except OSError as exc:
                        self._fail(q, f"read failed: {_describe(exc)}")
                        return
                    n += 1
                    if len(data) >= size:
                        self._oversized(q, 1)
                        size = q.bufsize
                    else:
                        feed(TunPacket(slot, data))
                    if q.fd != fd:
                        return  # the task unbound or ended during its drain
            finally:
                self.rx += n

        def on_readable_batch() -> None:
            self.read_wakeups += 1
            fd = q.fd
            size = q.bufsize
            packets: list[bytes] = []
            append = packets.append
            error: OSError | None = None
            cut = 0
            for _ in range(batch):
                try:
                    data = read(fd, size)
                except BlockingIOError:
                    break
                except OSError as exc:
                    error = exc
                    break
                if len(data) < size:
                    append(data)
                else:
                    cut += 1
            self.rx += len(packets)
            if packets:
                feed(TunPackets(slot, packets))
            if cut and q.fd == fd:
                self._oversized(q, cut)
            if error is not None and q.fd == fd:
                self._fail(q, f"read failed: {_describe(error)}")

        return on_readable_batch if q.batch else on_readable

    def _fast_reader(self, q: _Queue) -> Callable[[], None]:
        """The drains with the reads done in C (one call for up to ``batch`` reads).

        Each packet is still fed on its own, in order (one ``feed_all`` for the chunk);
        a task that unbinds during the drain gets none of the rest (:meth:`_close` clears
        them). Packets read in the same call as a cut one were read with the same buffer
        size, so each is checked (and reported) on its own, in order.
        """
        assert self._ctx is not None and speedups is not None
        readmany = speedups.readmany
        feed = self._ctx.feeder(q.owner)
        feed_all = self._ctx.batch_feeder(q.owner)
        packet = constructor(TunPacket)
        slot = q.slot
        batch = self._batch

        def on_readable() -> None:
            self.read_wakeups += 1
            fd = q.fd
            size = q.bufsize
            n = 0
            try:
                try:  # TunPacket(slot, data) for each read, its bytes for a cut one
                    events = readmany(fd, batch, size, packet, slot)
                except OSError as exc:
                    self._fail(q, f"read failed: {_describe(exc)}")
                    return
                if bytes not in map(type, events):  # the usual case: none was cut
                    n = len(events)
                    self._feeding = (q, events)
                    feed_all(events)
                    return
                for event in events:
                    n += 1
                    if type(event) is bytes:
                        self._oversized(q, 1)
                    else:
                        feed(event)
                    if q.fd != fd:
                        return  # the task unbound or ended during its drain
            finally:
                self._feeding = None
                self.rx += n

        def on_readable_batch() -> None:
            self.read_wakeups += 1
            fd = q.fd
            size = q.bufsize
            try:
                chunk = readmany(fd, batch, size)
            except OSError as exc:
                self._fail(q, f"read failed: {_describe(exc)}")
                return
            packets = [data for data in chunk if len(data) < size]
            cut = len(chunk) - len(packets)
            self.rx += len(packets)
            if packets:
                feed(TunPackets(slot, packets))
            if cut and q.fd == fd:
                self._oversized(q, cut)

        return on_readable_batch if q.batch else on_readable

    def _oversized(self, q: _Queue, count: int) -> None:
        """Reads filled the buffer: those packets were cut. Drop, re-size, report."""
        self.rx_truncated += count
        old = q.bufsize
        try:
            wanted = int(q.dev.mtu) + q.header + 1
        except OSError:
            wanted = 0
        if wanted <= old:  # the MTU did not explain it: grow anyway, up to the IP maximum
            wanted = min(old * 2, _MAX_MTU + q.header + 1)
        q.bufsize = max(wanted, old)
        assert self._ctx is not None
        self._ctx.deliver(
            q.owner,
            TunError(
                q.slot,
                f"dropped {count} packet(s) longer than the read size ({old - 1} bytes; "
                f"the MTU was raised?): reads now take up to {q.bufsize - 1} bytes",
            ),
        )

    # ------------------------------------------------------------------ write

    def _send_many(self, task: TaskRef, out: TunSendMany) -> None:
        q = lookup_slot(self._slots, out.slot)
        if q is None or (q.owner is not task and q.owner != task):
            self._stale(task, out.slot)
            return
        write = os.write
        fd = q.fd
        sent = 0
        try:
            for data in out.packets:
                try:
                    write(fd, data)
                except (OSError, TypeError) as exc:
                    self._write_failed(q, data, exc)
                    if q.fd != fd:
                        return  # the device is gone: the rest cannot be written
                else:
                    sent += 1
        except TypeError:
            kind = type(out.packets).__name__
            self._error(task, out.slot, f"packets must be a sequence of bytes-like, not {kind}")
        finally:
            self.tx += sent

    def _write_failed(self, q: _Queue, data: object, exc: Exception) -> None:
        """Report a failed write of ``q``'s owner; close ``q`` if the device is gone."""
        if isinstance(exc, TypeError):
            error = f"data must be bytes-like, not {type(data).__name__}"
        elif isinstance(exc, BlockingIOError):
            error = "the device queue is full: packet dropped"
        else:
            assert isinstance(exc, OSError)
            error = f"write failed: {_describe(exc)}"
        self._error(q.owner, q.slot, error)
        if isinstance(exc, OSError) and exc.errno in _FATAL_WRITE:
            self._fail(q, error)

    def _stale(self, task: TaskRef, slot: int) -> None:
        self._error(task, slot, "no such slot (never bound, unbound or closed)")

    def _error(self, task: TaskRef, slot: int, error: str) -> None:
        self.tx_errors += 1
        assert self._ctx is not None
        self._ctx.deliver(task, TunError(slot, error))

    # ------------------------------------------------------------------ close

    def _fail(self, q: _Queue, error: str) -> None:
        """The device failed under us: close the queue and tell its owner."""
        self.closed_by_error += 1
        self._close(q)
        assert self._ctx is not None
        self._ctx.deliver(q.owner, TunClosed(q.slot, f"{q.name}: {error}"))

    def _close(self, q: _Queue) -> None:
        """Remove the reader, then close the fd (idempotent)."""
        if q.fd < 0:
            return
        fd = q.fd
        q.fd = -1
        feeding = self._feeding
        if feeding is not None and feeding[0] is q:
            feeding[1].clear()  # packets of this queue read but not fed yet: dropped
        self._slots.pop(q.slot, None)
        owned = self._by_owner.get(q.owner)
        if owned is not None:
            owned.discard(q.slot)
            if not owned:
                del self._by_owner[q.owner]
        assert self._ctx is not None
        try:
            self._ctx.loop.remove_reader(fd)
        except Exception:
            log.exception("tun: remove_reader(%d) failed for %s", fd, q.name)
        try:
            q.dev.close()
        except OSError:
            pass


# ---------------------------------------------------------------------- helpers


def _check_bind(out: TunBind) -> str | None:
    """What is wrong with a bind request (before touching the OS), or ``None``."""
    if pytun is None:
        return "python-pytun is not installed: pip install 'sansio-aio[tun]'"
    if out.name is not None:
        if not isinstance(out.name, str) or not out.name:
            return f"name must be a non-empty str or None, got {out.name!r}"
        if len(out.name.encode()) > _MAX_NAME or any(c in out.name for c in "/ \0"):
            return f"bad interface name {out.name!r}: at most 15 bytes, no '/', spaces or NUL"
    if out.mtu is not None and (
        not isinstance(out.mtu, int) or not _MIN_MTU <= out.mtu <= _MAX_MTU
    ):
        return f"mtu must be an int in [{_MIN_MTU}, {_MAX_MTU}] or None, got {out.mtu!r}"
    if out.address is not None:
        for field in ("address", "netmask"):
            value = getattr(out, field)
            try:
                socket.inet_aton(value)
            except (OSError, TypeError):
                return f"{field} must be an IPv4 address string, got {value!r}"
    return None


def _configure(dev: Any, name: str, out: TunBind) -> None:
    """Apply address, netmask, MTU and up as asked (only what differs)."""
    if out.address is not None:
        dev.addr = out.address
        dev.netmask = out.netmask
    if out.mtu is not None and int(dev.mtu) != out.mtu:
        dev.mtu = out.mtu
    if out.up and not _is_up(name):
        dev.up()


def _is_up(name: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        res = fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, struct.pack("16sH22x", name.encode(), 0))
    flags: int = struct.unpack("16sH22x", res)[1]
    return bool(flags & _IFF_UP)


def _describe(exc: OSError) -> str:
    if exc.errno is None:
        return str(exc.args[0] if exc.args else exc)
    code = errno.errorcode.get(exc.errno, str(exc.errno))
    return f"{code}: {os.strerror(exc.errno)}"


def _open_error(out: TunBind, exc: OSError) -> str:
    what = f"{'TAP' if out.tap else 'TUN'} device {out.name or '(kernel-named)'}"
    text = f"cannot open {what}: {_describe(exc)}"
    hints = {
        errno.EPERM: "needs CAP_NET_ADMIN (root), or a persistent device owned by this user",
        errno.EACCES: "no permission on /dev/net/tun",
        errno.ENOENT: "/dev/net/tun is missing",
        errno.EBUSY: "the name is in use by another open queue or device",
        errno.EINVAL: "the device exists with other flags (multi_queue or tun/tap mismatch)",
    }
    hint = hints.get(exc.errno or 0)
    return f"{text} ({hint})" if hint else text
