"""The TCP driver: tasks listen, accept, connect, send and receive through slots.

Theory of operation
-------------------
One :class:`TcpDriver` per worker owns the listeners and connections of that worker's
tasks. Every listener and connection is a **slot** (an int from a per-driver counter,
never reused), owned by one task; an output naming a slot that is closed or not the
task's own is refused with :class:`~sansio_aio.net._events.TcpError`.

* ``TcpListen``: the driver binds and listens at once (so the answer,
  ``TcpListening(slot, addr)`` or an error, comes right after the task's drain) and
  registers the socket with ``loop.add_reader``; each readiness accepts a bounded batch
  and wraps each socket with ``loop.connect_accepted_socket``. Each accepted connection
  becomes a new slot owned by the listening task, announced by
  ``TcpAccepted(listener, slot, ...)``. Closing a listener is synchronous (the port is
  free at once), which ``loop.create_server`` could not promise.
* ``TcpConnect``: a coroutine on the worker's loop connects a non-blocking socket
  (``loop.sock_connect`` under a timeout; IP literals only, so no resolver thread and no
  DNS) and wraps it with ``loop.create_connection(sock=...)``. ``TcpConnected`` comes
  from the protocol's ``connection_made``, so it always precedes the first ``TcpData``.
* Data: the loop's stream transport (C in uvloop, ``_SelectorSocketTransport`` on the
  stdlib loops) reads; ``data_received`` feeds ``TcpData`` to the owner at once
  (``ctx.deliver``, drained before the loop reads again). ``TcpSend`` is
  ``transport.write``: the transport sends what the kernel takes and buffers the rest.

Backpressure, with bounded memory: each connection's transport has write-buffer limits
(``high``/``low``). Above ``high`` the transport calls ``pause_writing``; the driver stops
reading that connection (so an echo, or a proxy, slows its own source) and tells the
task ``TcpPaused``. Below ``low`` it resumes reading and sends ``TcpResumed``. A
``TcpSend`` that would take the buffer past ``max_buffer`` is refused whole with a
``TcpError`` (counted in ``tcp_send_refused``): memory per connection never exceeds
``max_buffer`` plus one read chunk.

Closing: the peer's FIN arrives as ``TcpEof`` and the connection stays open for sending
(half-close) until the task emits ``TcpClose`` or ``TcpShutdown``, which half-closes our
side; once both sides have sent FIN the connection closes by itself.
Every slot ends with exactly one ``TcpClosed`` (after the transport really closed),
whoever closed it, unless its task ended first: then :meth:`TcpDriver.release` closes
everything the task held (connections flush what is buffered, listeners stop).

Why asyncio's protocols rather than raw sockets with ``add_reader``: TCP moves chunks,
not packets, so the per-call overhead that decides UDP matters less, and the transports
bring buffering, partial writes and the high/low-water callbacks; on uvloop they are C.
``bench/tcp_echo.py`` compares the result with a hand-written asyncio streams echo.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import itertools
import logging
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, ClassVar

from .._driver import Driver, DriverContext
from .._errors import ConfigError
from .._events import TaskRef
from ._addr import check_address, check_buffer_limits, describe, lookup_slot
from ._events import (
    TCP_OUTPUTS,
    Address,
    TcpAccepted,
    TcpClose,
    TcpClosed,
    TcpConnect,
    TcpConnected,
    TcpError,
    TcpListen,
    TcpListening,
    TcpPaused,
    TcpPauseReading,
    TcpResumed,
    TcpResumeReading,
    TcpSend,
    TcpShutdown,
)
from ._tcp_conn import BufferedConn, Conn, ConnHooks, Listener, errno_of

__all__ = ["TcpDriver"]

log = logging.getLogger("sansio_aio")

#: Most connections accepted per readiness of a listening socket.
ACCEPT_BATCH = 64
#: Seconds a listener waits before accepting again after EMFILE and the like.
ACCEPT_BACKOFF = 0.1
#: Bytes read per ``recv`` on the stdlib loops (see ``BufferedConn``).
READ_SIZE = 65536


class TcpDriver(Driver):
    """Performs the TCP outputs of the tasks of one worker (how: docs/net.md).

    Args:
        high: write-buffer high-water mark per connection (bytes): above it the task
            gets ``TcpPaused`` and the connection stops reading.
        low: low-water mark: below it reading resumes and the task gets ``TcpResumed``.
        max_buffer: hard bound of a connection's write buffer; a ``TcpSend`` past it is
            refused whole with ``TcpError``.
        close_timeout: seconds a closing connection (``TcpClose``, or its task ended)
            may take to flush its write buffer; then it is reset (``TcpClosed`` names
            the timeout, ``ETIMEDOUT``), so peers that stop reading cannot pin buffers
            and fds for ever. ``None``: wait for ever.

    Stats (in ``WorkerStats.drivers``): ``tcp_listeners``, ``tcp_conns`` open now,
    ``tcp_accepted``, ``tcp_connected``, ``tcp_rx_bytes``, ``tcp_tx_bytes``,
    ``tcp_paused`` (pause events), ``tcp_send_refused``, ``tcp_errors`` (outputs
    refused with ``TcpError`` or failed listens/connects), ``tcp_write_buffered``
    (bytes waiting in write buffers now).
    """

    output_types: ClassVar[tuple[type, ...]] = TCP_OUTPUTS

    def __init__(
        self,
        *,
        high: int = 256 * 1024,
        low: int = 64 * 1024,
        max_buffer: int = 4 * 1024 * 1024,
        close_timeout: float | None = 60.0,
    ) -> None:
        check_buffer_limits(high, low, max_buffer)
        self.high = high
        self.low = low
        self.max_buffer = max_buffer
        if close_timeout is not None and not close_timeout > 0:
            raise ConfigError(f"close_timeout must be > 0 seconds or None, got {close_timeout!r}")
        self.close_timeout = close_timeout
        self._ctx: DriverContext | None = None
        self._ids = itertools.count(1)
        self._conns: dict[int, Conn] = {}
        self._listeners: dict[int, Listener] = {}
        self._connecting: dict[Conn, asyncio.Task[None]] = {}
        self._by_task: dict[TaskRef, set[int]] = {}
        self._ops: dict[type, Callable[[TaskRef, Any], None]] = {
            TcpListen: self._listen,
            TcpConnect: self._connect,
            TcpShutdown: self._shutdown,
            TcpClose: self._close,
            TcpPauseReading: self._pause_reading,
            TcpResumeReading: self._resume_reading,
        }
        self._hooks = ConnHooks(
            self._made,
            self._feed,
            self._lost,
            self._pause_writing,
            self._resume_writing,
            self._received,
            memoryview(bytearray(READ_SIZE)),
        )
        self._conn_class: type[Conn] = BufferedConn
        self._timed_feed: Callable[[], None] = self._feed_args
        self._args: tuple[TaskRef, Any] | None = None
        self._feeding = False
        self.accepted = 0
        self.connected = 0
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.paused = 0
        self.send_refused = 0
        self.errors = 0

    # ------------------------------------------------------------------ Driver

    def start(self, ctx: DriverContext) -> None:
        """Remember the worker's context (loop, deliver, timed)."""
        self._ctx = ctx
        self._timed_feed = ctx.timed(self._feed_args)
        if type(ctx.loop).__module__.startswith("uvloop"):
            self._conn_class = Conn

    def handle(self, task: TaskRef, output: Any) -> None:
        """Perform one TCP output of ``task``; failures come back as inputs."""
        if type(output) is TcpSend:
            try:
                conn = self._conns.get(output.slot)
            except TypeError:  # an unhashable slot is no slot of ours
                conn = None
            if conn is None or not (conn.owner is task or conn.owner == task):
                self._refuse(task, output.slot, "send", "is not a connection of this task")
                return
            self._send(task, conn, output.data)
            return
        self._ops[type(output)](task, output)

    def release(self, task: TaskRef) -> None:
        """Close every listener and connection ``task`` still holds."""
        slots = self._by_task.pop(task, None)
        if slots:
            for slot in list(slots):
                listener = self._listeners.get(slot)
                if listener is not None:
                    self._close_listener(listener)
                conn = self._conns.get(slot)
                if conn is not None:
                    self._drop(conn)
                    if conn.transport is not None:
                        self._close_flushing(conn)  # flush what is buffered, then FIN
        for conn, fut in list(self._connecting.items()):
            if conn.owner == task:
                conn.closing = True
                fut.cancel()

    def close(self) -> None:
        """Close everything (the worker is stopping)."""
        for listener in list(self._listeners.values()):
            self._close_listener(listener)
        for conn in list(self._conns.values()):
            self._drop(conn)
            if conn.transport is not None:
                conn.transport.abort()
        for conn, fut in list(self._connecting.items()):
            conn.closing = True
            fut.cancel()
        self._by_task.clear()

    def stats(self) -> Mapping[str, int]:
        """Counters merged into the worker's stats."""
        return {
            "tcp_listeners": len(self._listeners),
            "tcp_conns": len(self._conns),
            "tcp_accepted": self.accepted,
            "tcp_connected": self.connected,
            "tcp_rx_bytes": self.rx_bytes,
            "tcp_tx_bytes": self.tx_bytes,
            "tcp_paused": self.paused,
            "tcp_send_refused": self.send_refused,
            "tcp_errors": self.errors,
            "tcp_write_buffered": sum(
                c.transport.get_write_buffer_size()
                for c in self._conns.values()
                if c.transport is not None
            ),
        }

    # ------------------------------------------------------------------ feeding

    def _received(self, nbytes: int) -> None:
        self.rx_bytes += nbytes

    def _feed(self, task: TaskRef, event: Any) -> None:
        """Deliver from a loop callback, counting the time as the worker's busy time."""
        if self._feeding:  # nested (a write paused inside a drain): core queues it
            assert self._ctx is not None
            self._ctx.deliver(task, event)
            return
        self._args = (task, event)
        self._feeding = True
        try:
            self._timed_feed()
        finally:
            self._feeding = False

    def _feed_args(self) -> None:
        args = self._args
        self._args = None
        if args is not None:
            assert self._ctx is not None
            self._ctx.deliver(args[0], args[1])

    def _deliver(self, task: TaskRef, event: Any) -> None:
        """Deliver from inside ``handle`` (queued by the core behind the drain)."""
        assert self._ctx is not None
        self._ctx.deliver(task, event)

    def _refuse(self, task: TaskRef, slot: Any, op: str, why: str, code: int = 0) -> None:
        self.errors += 1
        msg = f"slot {slot!r} {why}"
        self._deliver(task, TcpError(slot, op, msg, code or errno_mod.EBADF))

    def _own(self, task: TaskRef, slot: int) -> None:
        self._by_task.setdefault(task, set()).add(slot)

    def _disown(self, task: TaskRef, slot: int) -> None:
        slots = self._by_task.get(task)
        if slots is not None:
            slots.discard(slot)
            if not slots:
                del self._by_task[task]

    # ------------------------------------------------------------------ listening

    def _listen(self, task: TaskRef, out: TcpListen) -> None:
        ctx = self._ctx
        assert ctx is not None
        try:
            family, addr = check_address(out.addr)
            if not isinstance(out.backlog, int) or out.backlog < 1:
                raise ValueError(f"backlog must be an int >= 1, got {out.backlog!r}")
        except ValueError as exc:
            self.errors += 1
            self._deliver(task, TcpListening(-1, None, out.tag, str(exc), errno_mod.EINVAL))
            return
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            self.errors += 1
            msg = f"socket: {describe(exc)}"
            self._deliver(task, TcpListening(-1, None, out.tag, msg, errno_of(exc)))
            return
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if out.reuse_port and hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(addr)
            sock.listen(out.backlog)
            local = sock.getsockname()
            slot = next(self._ids)
            listener = Listener(slot, sock, task, local)
            ctx.loop.add_reader(sock.fileno(), ctx.timed(self._acceptor(listener)))
        except Exception as exc:  # OSError; TypeError/OverflowError for a malformed field
            sock.close()
            self.errors += 1
            msg = f"listen {addr!r}: {describe(exc)}"
            code = errno_of(exc) or errno_mod.EINVAL
            self._deliver(task, TcpListening(-1, None, out.tag, msg, code))
            return
        self._listeners[slot] = listener
        self._own(task, slot)
        self._deliver(task, TcpListening(slot, local, out.tag))

    def _acceptor(self, listener: Listener) -> Callable[[], None]:
        """The readiness callback of a listening socket: accept a bounded batch."""
        ctx = self._ctx
        assert ctx is not None
        loop = ctx.loop
        accept = listener.sock.accept

        def on_readable() -> None:
            for _ in range(ACCEPT_BATCH):
                if not listener.open:
                    return
                try:
                    sock, _ = accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    return
                except OSError as exc:
                    # EMFILE/ENFILE/ENOBUFS: the fd stays readable; back off instead of
                    # spinning, and try again shortly.
                    self.errors += 1
                    log.warning("tcp listener %d: accept failed: %s", listener.slot, describe(exc))
                    loop.remove_reader(listener.sock.fileno())
                    loop.call_later(ACCEPT_BACKOFF, self._rearm, listener)
                    return
                sock.setblocking(False)
                conn = self._conn_class(self._hooks, listener.owner, listener)
                self._track(conn, self._adopt(conn, sock), sock)

        return on_readable

    def _rearm(self, listener: Listener) -> None:
        if listener.open:
            ctx = self._ctx
            assert ctx is not None
            ctx.loop.add_reader(listener.sock.fileno(), ctx.timed(self._acceptor(listener)))

    async def _adopt(self, conn: Conn, sock: socket.socket) -> None:
        """Wrap an accepted socket in a transport (``_made`` announces it)."""
        ctx = self._ctx
        assert ctx is not None
        await ctx.loop.connect_accepted_socket(lambda: conn, sock)

    def _track(self, conn: Conn, coro: Coroutine[Any, Any, None], sock: socket.socket) -> None:
        """Run the coroutine that brings ``conn`` up; close ``sock`` if it never does.

        A task cancelled before it starts never runs its ``finally``: the done callback
        closes the socket in every case where no transport took it over.
        """
        ctx = self._ctx
        assert ctx is not None
        fut = ctx.loop.create_task(coro)
        self._connecting[conn] = fut

        def done(f: asyncio.Task[None]) -> None:
            self._connecting.pop(conn, None)
            if f.cancelled() or f.exception() is not None:
                if not f.cancelled():
                    log.debug("tcp: bringing up a connection failed", exc_info=f.exception())
                sock.close()

        fut.add_done_callback(done)

    def _close_listener(self, listener: Listener) -> None:
        if not listener.open:
            return
        listener.open = False
        self._listeners.pop(listener.slot, None)
        self._disown(listener.owner, listener.slot)
        ctx = self._ctx
        try:
            if ctx is not None:
                ctx.loop.remove_reader(listener.sock.fileno())
        except Exception:
            log.debug("remove_reader of listener %d failed", listener.slot, exc_info=True)
        listener.sock.close()

    # ------------------------------------------------------------------ connecting

    def _connect(self, task: TaskRef, out: TcpConnect) -> None:
        ctx = self._ctx
        assert ctx is not None
        try:
            family, addr = check_address(out.addr)
            local = check_address(out.bind)[1] if out.bind is not None else None
            if not isinstance(out.timeout, int | float) or not out.timeout > 0:
                raise ValueError(f"timeout must be > 0 seconds, got {out.timeout!r}")
        except ValueError as exc:
            self.errors += 1
            self._deliver(task, TcpConnected(-1, None, None, out.tag, str(exc), errno_mod.EINVAL))
            return
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            self.errors += 1
            msg = f"socket: {describe(exc)}"
            self._deliver(task, TcpConnected(-1, None, None, out.tag, msg, errno_of(exc)))
            return
        conn = self._conn_class(self._hooks, task, None, next(self._ids), out.tag)
        self._track(conn, self._dial(conn, sock, addr, local, float(out.timeout)), sock)

    async def _dial(
        self,
        conn: Conn,
        sock: socket.socket,
        addr: Address,
        local: Address | None,
        timeout: float,
    ) -> None:
        ctx = self._ctx
        assert ctx is not None
        loop = ctx.loop
        deadline = time.monotonic() + timeout
        try:
            sock.setblocking(False)
            if local is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(local)
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, addr)
            remaining = max(0.001, deadline - time.monotonic())
            async with asyncio.timeout(remaining):
                await loop.create_connection(lambda: conn, sock=sock)
        except Exception as exc:
            sock.close()
            if not conn.closing:
                self.errors += 1
                if isinstance(exc, TimeoutError):
                    msg = f"connect {addr!r}: timed out after {timeout} s"
                    code = errno_mod.ETIMEDOUT
                else:
                    msg, code = f"connect {addr!r}: {describe(exc)}", errno_of(exc)
                self._feed(conn.owner, TcpConnected(-1, None, None, conn.tag, msg, code))

    # ------------------------------------------------------------------ connections

    def _made(self, conn: Conn) -> None:
        """A transport is up (accepted or connected): announce the slot to its task."""
        transport = conn.transport
        assert transport is not None
        listener = conn.listener
        if listener is not None:
            if not listener.open:
                transport.abort()  # accepted after its listener (or task) closed
                return
            conn.slot = next(self._ids)
        elif conn.closing:
            transport.abort()  # the connecting task ended meanwhile
            return
        transport.set_write_buffer_limits(high=self.high, low=self.low)
        conn.open = True
        self._conns[conn.slot] = conn
        self._own(conn.owner, conn.slot)
        remote = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        if listener is not None:
            self.accepted += 1
            self._feed(conn.owner, TcpAccepted(listener.slot, conn.slot, remote, local))
        else:
            self.connected += 1
            self._feed(conn.owner, TcpConnected(conn.slot, local, remote, conn.tag))

    def _drop(self, conn: Conn) -> None:
        """Forget ``conn`` (its task will hear nothing more of it)."""
        conn.closing = True
        if self._conns.pop(conn.slot, None) is not None:
            self._disown(conn.owner, conn.slot)

    def _lost(self, conn: Conn, exc: Exception | None) -> None:
        if not conn.open:
            return
        conn.open = False
        if conn.linger is not None:
            conn.linger.cancel()
            conn.linger = None
        if conn.timed_out and exc is None:
            exc = TimeoutError(
                errno_mod.ETIMEDOUT,
                f"reset: the write buffer did not flush within close_timeout "
                f"({self.close_timeout} s)",
            )
        announce = conn.slot in self._conns
        self._drop(conn)
        if announce:
            error = describe(exc) if exc is not None else None
            self._feed(conn.owner, TcpClosed(conn.slot, error, errno_of(exc)))

    def _send(self, task: TaskRef, conn: Conn, data: Any) -> None:
        transport = conn.transport
        assert transport is not None
        if conn.closing or conn.eof_sent:
            why = "is closing" if conn.closing else "was shut down for sending (TcpShutdown)"
            self._refuse(task, conn.slot, "send", why, errno_mod.EPIPE)
            return
        try:
            size = len(data)
            if transport.get_write_buffer_size() + size > self.max_buffer:
                self.send_refused += 1
                self._refuse(
                    task,
                    conn.slot,
                    "send",
                    f"write buffer full: {transport.get_write_buffer_size()} bytes queued "
                    f"+ {size} > max_buffer {self.max_buffer}; wait for TcpResumed",
                    errno_mod.ENOBUFS,
                )
                return
            transport.write(data)
        except Exception as exc:
            self._refuse(task, conn.slot, "send", f"send failed: {describe(exc)}", errno_of(exc))
            return
        self.tx_bytes += size

    def _conn_of(self, task: TaskRef, slot: Any, op: str) -> Conn | None:
        conn: Conn | None = lookup_slot(self._conns, slot)
        if conn is None or not (conn.owner is task or conn.owner == task):
            self._refuse(task, slot, op, "is not a connection of this task")
            return None
        return conn

    def _shutdown(self, task: TaskRef, out: TcpShutdown) -> None:
        conn = self._conn_of(task, out.slot, "shutdown")
        if conn is None or conn.eof_sent:
            return
        assert conn.transport is not None
        conn.eof_sent = True
        try:
            if conn.eof_got:  # both sides done: flush, FIN, close (TcpClosed follows)
                self._close_flushing(conn)
            else:
                conn.transport.write_eof()
        except Exception as exc:
            self._refuse(task, out.slot, "shutdown", f"failed: {describe(exc)}", errno_of(exc))

    def _close(self, task: TaskRef, out: TcpClose) -> None:
        listener: Listener | None = lookup_slot(self._listeners, out.slot)
        if listener is not None and (listener.owner is task or listener.owner == task):
            self._close_listener(listener)
            self._deliver(task, TcpClosed(out.slot))
            return
        conn = self._conn_of(task, out.slot, "close")
        if conn is None or conn.closing:
            return
        assert conn.transport is not None
        conn.closing = True  # TcpClosed follows from connection_lost
        if out.abort:
            conn.transport.abort()
        else:
            self._close_flushing(conn)

    def _close_flushing(self, conn: Conn) -> None:
        """Close ``conn`` after its buffer flushes, resetting it after ``close_timeout``."""
        transport = conn.transport
        assert transport is not None and self._ctx is not None
        transport.close()
        if self.close_timeout is not None and conn.linger is None and conn.open:
            conn.linger = self._ctx.loop.call_later(self.close_timeout, self._linger_over, conn)

    def _linger_over(self, conn: Conn) -> None:
        """A closing connection did not flush in ``close_timeout``: reset it."""
        conn.linger = None
        if conn.open and conn.transport is not None:
            conn.timed_out = True
            self.errors += 1
            conn.transport.abort()

    def _pause_reading(self, task: TaskRef, out: TcpPauseReading) -> None:
        conn = self._conn_of(task, out.slot, "pause")
        if conn is not None and not conn.paused_by_task:
            conn.paused_by_task = True
            if not conn.paused_by_buffer and not conn.closing:
                assert conn.transport is not None
                conn.transport.pause_reading()

    def _resume_reading(self, task: TaskRef, out: TcpResumeReading) -> None:
        conn = self._conn_of(task, out.slot, "resume")
        if conn is not None and conn.paused_by_task:
            conn.paused_by_task = False
            if not conn.paused_by_buffer and not conn.closing:
                assert conn.transport is not None
                conn.transport.resume_reading()

    def _pause_writing(self, conn: Conn) -> None:
        if not conn.open or conn.paused_by_buffer:
            return
        conn.paused_by_buffer = True
        self.paused += 1
        transport = conn.transport
        assert transport is not None
        if not conn.paused_by_task and not conn.closing:
            transport.pause_reading()
        if not conn.closing:
            self._feed(conn.owner, TcpPaused(conn.slot, transport.get_write_buffer_size()))

    def _resume_writing(self, conn: Conn) -> None:
        if not conn.open or not conn.paused_by_buffer:
            return
        conn.paused_by_buffer = False
        if conn.closing:
            return
        assert conn.transport is not None
        if not conn.paused_by_task:
            conn.transport.resume_reading()
        self._feed(conn.owner, TcpResumed(conn.slot))
