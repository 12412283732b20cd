"""The TCP driver's per-connection objects: listeners and the connection protocol.

A :class:`Conn` is the asyncio protocol of one connection; it turns transport callbacks
(data, EOF, loss, write-buffer high/low water) into calls on its ``TcpDriver``, which
owns the slots and feeds the tasks. The driver hands each connection the callbacks it
may call as :class:`ConnHooks` (bound methods), so this module needs nothing else of the
driver. See ``sansio_aio.net._tcp`` for the whole story.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, NamedTuple, cast

from .._events import TaskRef
from ._events import Address, TcpData, TcpEof

__all__ = ["BufferedConn", "Conn", "ConnHooks", "Listener", "errno_of"]


def errno_of(exc: BaseException | None) -> int:
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return 0


class Listener:
    """One listening socket of one task."""

    __slots__ = ("addr", "open", "owner", "slot", "sock")

    def __init__(self, slot: int, sock: socket.socket, owner: TaskRef, addr: Address) -> None:
        self.slot = slot
        self.sock = sock
        self.owner = owner
        self.addr = addr
        self.open = True


class ConnHooks(NamedTuple):
    """What a connection calls on its driver (built once per driver)."""

    #: The transport is up: ``made(conn)``.
    made: Callable[[Conn], None]
    #: Feed a task input from a loop callback: ``feed(task, event)``.
    feed: Callable[[TaskRef, Any], None]
    #: The connection is gone: ``lost(conn, exc)``.
    lost: Callable[[Conn, Exception | None], None]
    #: The transport's write buffer went above / below its water marks.
    pause_writing: Callable[[Conn], None]
    resume_writing: Callable[[Conn], None]
    #: Count received bytes.
    received: Callable[[int], None]
    #: The driver's one reusable read buffer (``BufferedConn``).
    read_buffer: memoryview


class Conn(asyncio.Protocol):
    """The protocol of one connection: turns transport callbacks into task inputs."""

    __slots__ = (
        "closing",
        "eof_got",
        "eof_sent",
        "hooks",
        "linger",
        "listener",
        "open",
        "owner",
        "paused_by_buffer",
        "paused_by_task",
        "slot",
        "tag",
        "timed_out",
        "transport",
    )

    def __init__(
        self,
        hooks: ConnHooks,
        owner: TaskRef,
        listener: Listener | None,
        slot: int = -1,
        tag: Any = None,
    ) -> None:
        self.hooks = hooks
        self.owner = owner
        self.listener = listener
        self.slot = slot
        self.tag = tag
        self.transport: asyncio.Transport | None = None
        self.open = False  # True once announced to the task, until TcpClosed
        self.closing = False  # the task asked to close (or the task ended)
        self.eof_sent = False
        self.eof_got = False
        self.paused_by_buffer = False
        self.paused_by_task = False
        self.linger: asyncio.TimerHandle | None = None  # close_timeout of a closing conn
        self.timed_out = False  # reset by close_timeout

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have its methods
        self.transport = cast(asyncio.Transport, transport)
        self.hooks.made(self)

    def data_received(self, data: bytes) -> None:
        if self.open and not self.closing:
            self.hooks.received(len(data))
            self.hooks.feed(self.owner, TcpData(self.slot, data))

    def eof_received(self) -> bool:
        self.eof_got = True
        if self.open and not self.closing:
            self.hooks.feed(self.owner, TcpEof(self.slot))
        # keep the transport open while the task may still send (half-close); once both
        # sides have sent FIN, let it close (TcpClosed follows)
        return not self.eof_sent

    def connection_lost(self, exc: Exception | None) -> None:
        self.hooks.lost(self, exc)

    def pause_writing(self) -> None:
        self.hooks.pause_writing(self)

    def resume_writing(self) -> None:
        self.hooks.resume_writing(self)


class BufferedConn(Conn, asyncio.BufferedProtocol):
    """``Conn`` reading into the driver's one preallocated buffer (stdlib loops).

    The stdlib transport's plain ``recv(256 KiB)`` allocates a new 256 KiB object per
    read, which glibc serves with mmap/munmap in a worker thread: it halved TCP
    throughput. Reading into a reused buffer and copying out only the bytes read avoids
    it. (uvloop reads into its own buffer already, so it keeps the plain protocol.)
    """

    __slots__ = ()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.hooks.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.hooks.read_buffer[:nbytes].tobytes())
