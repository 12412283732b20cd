"""Lanes across a process boundary: pickled batches over a stream socket, with credits.

Theory of operation
-------------------
In process mode a worker is another process, connected to the controller by one
``socketpair`` (``AF_UNIX``, ``SOCK_STREAM``). The :class:`~sansio_aio._lane.Lane`
interface stays the only way across; what changes is what is behind it:

* **Frames.** Each direction carries frames: a 4-byte big-endian length, then one pickle.
  :class:`FrameWriter` writes from the producer's loop without blocking (what the kernel
  does not take waits in a buffer, and a writer callback finishes it);
  :class:`FrameReader` reads what is there on each readiness and hands every complete
  frame over. One frame carries one *batch*: everything a loop callback produced for
  that peer, so a batch costs one ``pickle.dumps``, one ``send`` and one wake-up of the
  other side (its reader), whatever its size.
* **The producer end** is a :class:`ProcLane`: a Lane whose deque is the batch being
  built. Its wake-up (called on empty -> non-empty, and deferred by the caller to the end
  of the current callback, exactly as for threads) is :meth:`ProcLane.flush`, which
  pickles what the deque holds and writes one frame. FIFO per sender holds because one
  socket carries one direction in order.
* **Bounds.** The consumer is in another process, so the producer cannot look at its
  queue. It counts instead: every item it flushed is *in flight* until the consumer
  returns a credit for it (the worker piggybacks the count of inbox items it handled on
  its next frame back). ``ProcLane.capacity`` is kept at ``inbox_capacity - in flight``,
  so the unchanged Lane checks (``push``, the controller's inlined hot path) enforce the
  same bound as in threads, and room waiters (``await send``) are told when credits
  return.
* **Failures.** An item that cannot be pickled must not take its batch with it: a batch
  that fails to pickle is retried item by item, the bad items are dropped, logged and
  returned to the caller to report.

This module imports no asyncio (the loop is passed in).
"""

from __future__ import annotations

import logging
import pickle
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._lane import Lane

if TYPE_CHECKING:
    import asyncio

__all__ = ["FrameReader", "FrameWriter", "ProcLane", "dumps_batch"]

log = logging.getLogger("sansio_aio")

_HEADER = struct.Struct("!I")
#: Largest frame accepted (a batch of big datagrams fits; anything larger is a bug).
MAX_FRAME = 1 << 30
_READ = 1 << 18

_PROTOCOL = pickle.HIGHEST_PROTOCOL


def dumps_batch(items: list[Any]) -> tuple[bytes, int, list[tuple[Any, BaseException]]]:
    """Pickle ``items`` as one list; items that cannot be pickled are left out.

    Returns the pickle, how many of ``items`` it holds, and the ``(item, error)`` pairs
    that were dropped (usually none: the whole batch is pickled at once, and only a
    failure makes it go item by item; a list of task outputs keeps its good outputs).
    """
    try:
        return pickle.dumps(items, _PROTOCOL), len(items), []
    except Exception:
        pass
    kept: list[Any] = []
    dropped: list[tuple[Any, BaseException]] = []
    for item in items:
        if type(item) is list:  # a batch of task outputs: keep the outputs that pickle
            good = []
            for sub in item:
                try:
                    pickle.dumps(sub, _PROTOCOL)
                except Exception as exc:
                    dropped.append((sub, exc))
                else:
                    good.append(sub)
            if good:
                kept.append(good)
            continue
        try:
            pickle.dumps(item, _PROTOCOL)
        except Exception as exc:
            dropped.append((item, exc))
        else:
            kept.append(item)
    return pickle.dumps(kept, _PROTOCOL), len(kept), dropped


class FrameWriter:
    """Writes length-prefixed frames to a non-blocking socket from one loop."""

    __slots__ = ("_buf", "_fd", "_loop", "_sock", "_writing", "broken")

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop | None) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = loop
        self._buf = bytearray()
        self._writing = False
        #: Set once a write failed (the peer is gone): later frames are dropped.
        self.broken = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write through ``loop`` from now on (non-blocking, with a writer callback)."""
        self._loop = loop

    def write(self, payload: bytes) -> None:
        """Queue one frame; send what the kernel takes now, the rest when it can."""
        if self.broken:
            return
        frame = _HEADER.pack(len(payload)) + payload
        if self._buf:
            self._buf += frame
            return
        try:
            sent = self._sock.send(frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.broken = True
            return
        if sent < len(frame):
            self._buf += frame[sent:]
            self._start_writing()

    def _start_writing(self) -> None:
        if self._writing:
            return
        if self._loop is None or self._loop.is_closed():
            self.flush_blocking()
            return
        self._writing = True
        self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        try:
            sent = self._sock.send(self._buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.broken = True
            sent = len(self._buf)
        del self._buf[:sent]
        if not self._buf:
            self._stop_writing()

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_writer(self._fd)

    def pending(self) -> int:
        """Bytes waiting to be written."""
        return len(self._buf)

    def flush_blocking(self, timeout: float = 5.0) -> None:
        """Write everything now, blocking at most ``timeout`` seconds (at close)."""
        self._stop_writing()
        if not self._buf or self.broken:
            return
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(self._buf)
        except OSError:
            self.broken = True
        finally:
            self._buf.clear()
            try:
                self._sock.setblocking(False)
            except OSError:
                pass

    def close(self) -> None:
        """Stop writing (the socket is the owner's to close)."""
        self._stop_writing()
        self._buf.clear()


class FrameReader:
    """Reads length-prefixed frames from a non-blocking socket.

    ``on_frames(payloads)`` gets every complete frame a readiness produced, in order;
    ``on_eof()`` is called once when the peer closed (or the socket failed).
    """

    __slots__ = ("_buf", "_done", "_on_eof", "_on_frames", "_sock")

    def __init__(
        self,
        sock: socket.socket,
        on_frames: Callable[[list[bytes]], None],
        on_eof: Callable[[], None],
    ) -> None:
        self._sock = sock
        self._on_frames = on_frames
        self._on_eof = on_eof
        self._buf = bytearray()
        self._done = False

    def on_readable(self) -> None:
        """The socket is readable: read what is there, hand over the complete frames."""
        if self._done:
            return
        eof = False
        buf = self._buf
        for _ in range(16):  # bounded: other fds of the loop get their turn
            try:
                data = self._sock.recv(_READ)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                eof = True
                break
            if not data:
                eof = True
                break
            buf += data
            if len(data) < _READ:
                break
        frames: list[bytes] = []
        view = memoryview(buf)
        pos = 0
        size = len(buf)
        try:
            while size - pos >= 4:
                (length,) = _HEADER.unpack_from(view, pos)
                if length > MAX_FRAME:
                    log.error("ipc: a frame of %d bytes: the stream is corrupt", length)
                    eof = True
                    break
                if size - pos - 4 < length:
                    break
                frames.append(bytes(view[pos + 4 : pos + 4 + length]))
                pos += 4 + length
        finally:
            view.release()
        if pos:
            del buf[:pos]
        if frames:
            self._on_frames(frames)
        if eof:
            self._done = True
            self._on_eof()


class ProcLane(Lane):
    """The producer end of a lane whose consumer is in another process (module docs).

    ``capacity`` is the room left: the bound minus what is in flight. The lane's wake-up
    is :meth:`flush` (callers defer it to the end of their callback, as for threads).
    """

    __slots__ = ("_on_dropped", "_total", "_writer", "in_flight")

    def __init__(
        self,
        capacity: int,
        writer: FrameWriter,
        on_dropped: Callable[[list[tuple[Any, BaseException]]], None] | None = None,
    ) -> None:
        super().__init__(capacity, _nothing)
        self.wake = self.flush
        self._total = capacity
        self._writer = writer
        self._on_dropped = on_dropped
        #: Items sent and not yet credited back by the consumer.
        self.in_flight = 0

    def flush(self) -> None:
        """Send what the lane holds as one frame (one pickle, one write)."""
        q = self.q
        n = len(q)
        if not n:
            return
        items = [q.popleft() for _ in range(n)]
        payload, kept, dropped = dumps_batch(items)
        if kept:
            self._writer.write(payload)
            self.in_flight += kept
            self.capacity -= kept
        if dropped:
            if self._on_dropped is not None:
                self._on_dropped(dropped)
            else:
                for item, exc in dropped:
                    log.error("ipc: dropped an item that cannot be pickled (%r): %r", exc, item)

    def push_weighted(self, item: Any, weight: int) -> None:
        """Append ``item``, which stands for ``weight`` items of the consumer (a relayed
        batch), past the bound: the consumer will credit ``weight``."""
        extra = weight - 1
        self.in_flight += extra
        self.capacity -= extra
        self.push_force(item)

    def credit(self, n: int) -> None:
        """The consumer handled ``n`` more items: there is room for ``n`` more."""
        if n <= 0:
            return
        self.in_flight -= n
        self.capacity += n
        if len(self.q) < self.capacity:
            try:
                self.notify_room()
            except Exception:  # a waiter's failure must not cost the frame it came in
                log.exception("ipc: a room callback failed")

    def depth(self) -> int:
        """Items waiting here or in flight to the consumer."""
        return self.in_flight + len(self.q)


def _nothing() -> None:
    pass
