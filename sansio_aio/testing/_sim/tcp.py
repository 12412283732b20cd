"""The simulated TCP driver: reliable ordered byte streams over a :class:`SimNetwork`.

Theory of operation
-------------------
:class:`SimTcpDriver` speaks the TCP vocabulary of ``sansio_aio.net._events``
(``TcpListen``/``TcpListening``, ``TcpConnect``/``TcpConnected``/``TcpAccepted``,
``TcpSend``/``TcpData``, ``TcpShutdown``/``TcpEof``, ``TcpClose``/``TcpClosed``, pause
and resume, ``TcpError``) so a task runs unchanged on it and on the real driver.

The model is TCP as a task sees it, not TCP's internals:

* **handshake.** A connect sends a SYN over the network (one trip); if a listener is
  bound at the destination the listener's task gets ``TcpAccepted`` and a SYN-ACK goes
  back; the client gets ``TcpConnected`` when it arrives. No listener: the client gets
  ``ECONNREFUSED`` one round trip later. No answer within ``timeout`` (a partition):
  ``ETIMEDOUT``.
* **data.** ``TcpSend`` cuts the bytes into segments of the link's MSS (1460, or
  ``mtu - 40``) sent as reliable transfers: a "lost" segment arrives one ``rto`` late, a
  partition holds segments until it heals, and the receiver reassembles them by
  sequence number, so the task sees every byte once, in order, in chunks whose
  boundaries are the segments' (a stream, not messages).
* **backpressure.** Bytes sent and not yet arrived count against the connection's
  write buffer: above ``high`` the task gets ``TcpPaused`` (and the connection
  stops reading), below ``low`` ``TcpResumed``; a send past ``max_buffer`` is
  refused whole with ``TcpError`` (``ENOBUFS``).
* **closing.** ``TcpShutdown`` sends FIN after the queued data (the peer gets
  ``TcpEof``); once both sides sent FIN the connection closes by itself and each side
  gets ``TcpClosed``; ``TcpClose`` sends FIN and acknowledges with ``TcpClosed`` at once;
  ``TcpClose(abort=True)``, a task that ends, or data for a closed connection reset the
  peer (``TcpClosed`` with ``ECONNRESET``).

Slots are per driver and never reused, as in the real driver.
This module imports no asyncio.
"""

from __future__ import annotations

import errno as errno_mod
import itertools
from collections.abc import Mapping
from typing import Any, ClassVar

from ..._driver import Driver, DriverContext
from ..._events import TaskRef
from ...net._addr import check_buffer_limits
from ...net._events import (
    TCP_OUTPUTS,
    Address,
    TcpAccepted,
    TcpClose,
    TcpClosed,
    TcpConnect,
    TcpConnected,
    TcpData,
    TcpEof,
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
from .._clock import Timer
from .addr import ANY, checked, sockaddr, source_host
from .net import HEADER_BYTES, SimNetwork
from .streams import Conn, Listener, StreamTable

__all__ = ["SimTcpDriver"]

MSS = 1460


class SimTcpDriver(Driver):
    """Simulated TCP for the tasks of one worker (see the module docs).

    Build it with ``net.tcp_driver`` (a factory). The water marks and the hard limit are
    in bytes of data sent and not yet arrived.
    """

    output_types: ClassVar[tuple[type, ...]] = TCP_OUTPUTS

    def __init__(
        self,
        net: SimNetwork,
        *,
        high: int = 256 * 1024,
        low: int = 64 * 1024,
        max_buffer: int = 4 * 1024 * 1024,
    ) -> None:
        check_buffer_limits(high, low, max_buffer)
        self.net = net
        table = net.registry.get("tcp")
        if table is None:
            table = net.registry["tcp"] = StreamTable(net.ephemeral)
        self._table: StreamTable = table
        self._ctx: DriverContext | None = None
        self._ids = itertools.count(1)
        self._conns: dict[int, Conn] = {}
        self._listeners: dict[int, Listener] = {}
        self.high = high
        self.low = low
        self.max_buffer = max_buffer
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.errors = 0

    # ------------------------------------------------------------------ Driver

    def start(self, ctx: DriverContext) -> None:
        """Remember the worker's context."""
        self._ctx = ctx

    def handle(self, task: TaskRef, output: Any) -> None:
        """Perform one TCP output of ``task``; failures come back as inputs."""
        typ = type(output)
        if typ is TcpSend:
            self._send(task, output)
        elif typ is TcpListen:
            self._listen(task, output)
        elif typ is TcpConnect:
            self._connect(task, output)
        elif typ is TcpClose:
            self._close_slot(task, output.slot, output.abort)
        else:
            c = self._own(task, output.slot)
            if c is None:
                self._error(task, output.slot, typ.__name__, "not a connection of this task")
            elif typ is TcpShutdown:
                self._shutdown(c)
            elif typ is TcpPauseReading:
                c.read_paused = True
            elif typ is TcpResumeReading:
                c.read_paused = False
                self._flush_held(c)

    def release(self, task: TaskRef) -> None:
        """Reset every connection and close every listener ``task`` holds."""
        for c in [c for c in self._conns.values() if c.owner == task]:
            self._reset(c, notify_self=False)
        for lst in [x for x in self._listeners.values() if x.owner == task]:
            self._drop_listener(lst)

    def close(self) -> None:
        """Close everything of this worker."""
        for c in list(self._conns.values()):
            self._reset(c, notify_self=False)
        for lst in list(self._listeners.values()):
            self._drop_listener(lst)

    def crash(self) -> None:
        """The worker's process died: the kernel closes its sockets. A connection ends
        with FIN (the peer reads end-of-file), or with RST when data it had received was
        left unread; listeners vanish (connects are refused)."""
        for c in list(self._conns.values()):
            if c.held:
                self._reset(c, notify_self=False)
            else:
                self._fin(c)
                self._forget(c)
        for lst in list(self._listeners.values()):
            self._drop_listener(lst)

    def stats(self) -> Mapping[str, int]:
        """Counters merged into the worker's stats."""
        return {
            "tcp_listeners": len(self._listeners),
            "tcp_conns": len(self._conns),
            "tcp_rx_bytes": self.rx_bytes,
            "tcp_tx_bytes": self.tx_bytes,
            "tcp_errors": self.errors,
        }

    # ------------------------------------------------------------------ helpers

    def _deliver(self, task: TaskRef, event: Any) -> None:
        assert self._ctx is not None, "the driver was not started"
        self._ctx.deliver(task, event)

    def _error(
        self, task: TaskRef, slot: Any, op: str, msg: str, code: int = errno_mod.EBADF
    ) -> None:
        self.errors += 1
        self._deliver(task, TcpError(slot, op, msg, code))

    def _own(self, task: TaskRef, slot: Any) -> Conn | None:
        c = self._conns.get(slot) if type(slot) is int else None
        return c if c is not None and c.owner == task else None

    # ------------------------------------------------------------------ listening

    def _listen(self, task: TaskRef, out: TcpListen) -> None:
        try:
            addr, host, version = checked(out.addr)
        except ValueError as exc:
            self.errors += 1
            self._deliver(task, TcpListening(-1, None, out.tag, str(exc), errno_mod.EINVAL))
            return
        table = self._table
        port = addr[1] or table.free_port(host, version)
        busy = table.port_busy(host, port, version)
        if busy and not (out.reuse_port and all(x.reuse for x in busy)):
            self.errors += 1
            msg = f"listen {addr!r}: Address already in use (errno {errno_mod.EADDRINUSE})"
            self._deliver(task, TcpListening(-1, None, out.tag, msg, errno_mod.EADDRINUSE))
            return
        slot = next(self._ids)
        lst = Listener(self, slot, task, host, port, version, out.reuse_port)
        table.listeners.setdefault((host, port), []).append(lst)
        self._listeners[slot] = lst
        self._deliver(task, TcpListening(slot, sockaddr(host, port, version), out.tag))

    def _drop_listener(self, lst: Listener) -> None:
        lst.open = False
        self._listeners.pop(lst.slot, None)
        lst_list = self._table.listeners.get((lst.host, lst.port))
        if lst_list is not None and lst in lst_list:
            lst_list.remove(lst)
            if not lst_list:
                del self._table.listeners[(lst.host, lst.port)]

    # ------------------------------------------------------------------ connecting

    def _connect(self, task: TaskRef, out: TcpConnect) -> None:
        try:
            addr, host, version = checked(out.addr)
            if out.bind is not None:
                baddr, bhost, bversion = checked(out.bind)
                if bversion != version:
                    raise ValueError(f"bind {out.bind!r} and {out.addr!r} differ in family")
            else:
                bhost = source_host(ANY[version], host, version)
                baddr = (bhost, 0)
        except ValueError as exc:
            self.errors += 1
            self._deliver(task, TcpConnected(-1, None, None, out.tag, str(exc), errno_mod.EINVAL))
            return
        if host == ANY[version]:
            host = source_host(host, host, version)  # to "any": loopback
        table = self._table
        lport = baddr[1] or table.free_port(bhost, version)
        table.used.add((bhost, lport))
        local = sockaddr(bhost, lport, version)
        remote = sockaddr(host, addr[1], version)
        state: dict[str, Any] = {"done": False}
        net = self.net
        clock = net.clock

        def give_up() -> None:
            if not state["done"]:
                state["done"] = True
                table.used.discard((bhost, lport))
                msg = f"connect {out.addr!r}: Connection timed out (errno {errno_mod.ETIMEDOUT})"
                self.errors += 1
                self._deliver(task, TcpConnected(-1, None, None, out.tag, msg, errno_mod.ETIMEDOUT))

        timer: Timer = clock.call_later(max(0.0, out.timeout), give_up)

        def refused() -> None:
            if state["done"]:
                return
            state["done"] = True
            timer.cancel()
            table.used.discard((bhost, lport))
            msg = f"connect {out.addr!r}: Connection refused (errno {errno_mod.ECONNREFUSED})"
            self.errors += 1
            self._deliver(task, TcpConnected(-1, None, None, out.tag, msg, errno_mod.ECONNREFUSED))

        def syn_arrives() -> None:
            lst = table.find(host, addr[1], version, local)
            if lst is None or not lst.open:
                net.transmit(remote, local, 0, refused, what="tcp-rst", stream=("syn", local))
                return
            server = lst.driver._accept(lst, remote_addr=local, local_addr=remote)

            def synack_arrives() -> None:
                if state["done"]:  # the client gave up meanwhile: reset the server side
                    server.driver._on_segment(server, -1, "rst", b"")
                    return
                state["done"] = True
                timer.cancel()
                client = self._new_conn(task, local, remote)
                client.peer, server.peer = server, client
                self._deliver(task, TcpConnected(client.slot, local, remote, out.tag))

            net.transmit(remote, local, 0, synack_arrives, what="tcp-synack", stream=("syn", local))

        net.transmit(local, remote, 0, syn_arrives, what="tcp-syn", stream=("syn", local))

    def _new_conn(self, task: TaskRef, local: Address, remote: Address) -> Conn:
        slot = next(self._ids)
        c = Conn(self, slot, task, local, remote, next(self._table.uids))
        self._conns[slot] = c
        return c

    def _accept(self, lst: Listener, *, remote_addr: Address, local_addr: Address) -> Conn:
        c = self._new_conn(lst.owner, local_addr, remote_addr)
        self._deliver(lst.owner, TcpAccepted(lst.slot, c.slot, remote_addr, local_addr))
        return c

    # ------------------------------------------------------------------ sending

    def _send(self, task: TaskRef, out: TcpSend) -> None:
        c = self._own(task, out.slot)
        if c is None:
            self._error(
                task, out.slot, "send", f"slot {out.slot!r} is not a connection of this task"
            )
            return
        if c.wr_closed:
            self._error(
                task, c.slot, "send", "the connection was shut down for writing", errno_mod.EPIPE
            )
            return
        if not isinstance(out.data, bytes | bytearray | memoryview):
            self._error(
                task,
                c.slot,
                "send",
                f"data must be bytes, not {type(out.data).__name__}",
                errno_mod.EINVAL,
            )
            return
        data = bytes(out.data)
        if c.inflight + len(data) > self.max_buffer:
            self._error(
                task,
                c.slot,
                "send",
                f"write buffer full ({c.inflight} bytes queued)",
                errno_mod.ENOBUFS,
            )
            return
        cond = self.net.conditions(c.local, c.peer_addr)
        mss = MSS if cond.mtu is None else max(1, min(MSS, cond.mtu - HEADER_BYTES - 12))
        for i in range(0, len(data), mss):
            self._segment(c, "data", data[i : i + mss])
        self.tx_bytes += len(data)
        if not c.write_paused and c.inflight > self.high:
            c.write_paused = True
            self._deliver(task, TcpPaused(c.slot, c.inflight))

    def _segment(self, c: Conn, kind: str, data: bytes) -> None:
        seq = c.send_seq
        c.send_seq += 1
        c.inflight += len(data)
        peer = c.peer

        def arrive() -> None:
            self._sent_arrived(c, len(data))
            if peer is not None:
                peer.driver._on_segment(peer, seq, kind, data)

        self.net.transmit(
            c.local, c.peer_addr, len(data), arrive, what=f"tcp-{kind}", stream=("tcp", c.uid)
        )

    def _sent_arrived(self, c: Conn, size: int) -> None:
        c.inflight -= size
        if c.write_paused and c.inflight <= self.low and c.open:
            c.write_paused = False
            self._deliver(c.owner, TcpResumed(c.slot))
            self._flush_held(c)

    def _fin(self, c: Conn) -> None:
        if not c.wr_closed:
            c.wr_closed = True
            self._segment(c, "fin", b"")

    def _shutdown(self, c: Conn) -> None:
        """Half-close; if the peer already finished too, the connection closes."""
        if c.wr_closed:
            return
        self._fin(c)
        if c.eof_seen:
            self._forget(c)
            self._deliver(c.owner, TcpClosed(c.slot))

    # ------------------------------------------------------------------ receiving

    def _on_segment(self, c: Conn, seq: int, kind: str, data: bytes) -> None:
        if kind == "rst":
            if c.open:
                self._reset(c, notify_self=True, peer_reset=True)
            return
        if not c.open:
            if kind == "data" and c.peer is not None and c.peer.open:
                c.peer.driver._on_segment(c.peer, -1, "rst", b"")  # data for a closed end
            return
        if seq != c.expected:
            c.reorder[seq] = (kind, data)
            return
        c.held.append((kind, data))
        c.expected += 1
        while c.expected in c.reorder:
            c.held.append(c.reorder.pop(c.expected))
            c.expected += 1
        self._flush_held(c)

    def _flush_held(self, c: Conn) -> None:
        while c.held and c.open and not c.read_paused and not c.write_paused:
            kind, data = c.held.pop(0)
            if kind == "data":
                self.rx_bytes += len(data)
                self._deliver(c.owner, TcpData(c.slot, data))
            elif kind == "fin" and not c.eof_seen:
                c.eof_seen = True
                self._deliver(c.owner, TcpEof(c.slot))
                if c.wr_closed and c.open:  # both sides sent FIN: closed by itself
                    self._forget(c)
                    self._deliver(c.owner, TcpClosed(c.slot))

    # ------------------------------------------------------------------ closing

    def _close_slot(self, task: TaskRef, slot: Any, abort: bool) -> None:
        lst = self._listeners.get(slot) if type(slot) is int else None
        if lst is not None and lst.owner == task:
            self._drop_listener(lst)
            self._deliver(task, TcpClosed(slot))
            return
        c = self._own(task, slot)
        if c is None:
            self._error(task, slot, "close", f"slot {slot!r} is not a socket of this task")
            return
        if abort:
            self._reset(c, notify_self=False)
        else:
            self._fin(c)
            self._forget(c)
        self._deliver(task, TcpClosed(slot))

    def _forget(self, c: Conn) -> None:
        c.open = False
        self._conns.pop(c.slot, None)
        self._table.used.discard(tuple(c.local[:2]))
        self.net.forget_stream(("tcp", c.uid))

    def _reset(self, c: Conn, *, notify_self: bool, peer_reset: bool = False) -> None:
        """Close ``c`` at once; the peer learns of it by a reset (unless it sent one)."""
        if not c.open:
            return
        self._forget(c)
        if notify_self:
            msg = f"Connection reset by peer (errno {errno_mod.ECONNRESET})"
            self._deliver(c.owner, TcpClosed(c.slot, msg, errno_mod.ECONNRESET))
        peer = c.peer
        if not peer_reset and peer is not None and peer.open:

            def arrive() -> None:
                peer.driver._on_segment(peer, -1, "rst", b"")

            self.net.transmit(
                c.local, c.peer_addr, 0, arrive, what="tcp-rst", stream=("tcp", c.uid)
            )
