"""I/O across worker processes: one UDP port or one TCP port shared by every worker
process (SO_REUSEPORT), the kernel spreading flows among them; real sockets on loopback.

The tasks are module-level classes: worker processes import them by name.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from sansio_aio import Ext, ExtOut, Runtime, Task, TaskOutput
from sansio_aio.net import (
    TcpAccepted,
    TcpData,
    TcpDriver,
    TcpListen,
    TcpListening,
    TcpSend,
    UdpBind,
    UdpBound,
    UdpDriver,
    UdpPacket,
    UdpSend,
)
from tests.helpers import LO, T

FLOWS = 32  # client sockets: enough that the kernel's hash reaches both workers


class PidUdpEcho(Task):
    """Binds ``cfg`` (a shared port) and echoes each datagram prefixed with its pid."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.emit(UdpBind((LO, port), reuse=True))
        self.prefix = b"%d:" % os.getpid()

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is UdpPacket:
            self.emit(UdpSend(event.slot, event.source, self.prefix + event.data))
        elif type(event) is UdpBound:
            self.emit(ExtOut(("bound", event.ok, event.error)))


class PidTcpEcho(Task):
    """Listens on ``cfg`` (a shared port) and echoes with its pid in front, per chunk."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.emit(TcpListen((LO, port), reuse_port=True))
        self.prefix = b"%d:" % os.getpid()

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is TcpData:
            self.emit(TcpSend(event.slot, self.prefix + event.data))
        elif type(event) is TcpListening:
            self.emit(ExtOut(("listening", event.ok, event.error)))
        elif type(event) is TcpAccepted or type(event) is Ext:
            pass


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LO, 0))
        port: int = s.getsockname()[1]
        return port


async def bound(rt: Runtime, n: int) -> None:
    got = 0
    while got < n:
        for event in await asyncio.wait_for(rt.next_events(), T):
            assert isinstance(event, TaskOutput), event
            assert event.msg[1], event.msg  # bound or listening: ok
            got += 1


async def test_worker_processes_share_one_udp_port() -> None:
    port = free_port(socket.SOCK_DGRAM)
    async with Runtime({"echo": PidUdpEcho}, workers=2, mode="process", drivers=[UdpDriver]) as rt:
        for w in range(2):
            await rt.spawn("echo", port, worker=w)
        await bound(rt, 2)
        loop = asyncio.get_running_loop()
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(FLOWS)]
        try:
            for i, c in enumerate(clients):
                c.setblocking(False)
                c.bind((LO, 0))
                c.sendto(b"hello %d" % i, (LO, port))
            pids = set()
            for i, c in enumerate(clients):
                data = await asyncio.wait_for(loop.sock_recv(c, 2048), T)
                pid, _, rest = data.partition(b":")
                assert rest == b"hello %d" % i
                pids.add(int(pid))
            assert len(pids) == 2  # both worker processes served flows
            assert os.getpid() not in pids
        finally:
            for c in clients:
                c.close()


async def test_worker_processes_share_one_tcp_port() -> None:
    port = free_port(socket.SOCK_STREAM)
    async with Runtime({"echo": PidTcpEcho}, workers=2, mode="process", drivers=[TcpDriver]) as rt:
        for w in range(2):
            await rt.spawn("echo", port, worker=w)
        await bound(rt, 2)
        pids = set()
        for i in range(FLOWS):
            reader, writer = await asyncio.wait_for(asyncio.open_connection(LO, port), T)
            try:
                want = b"ping %d" % i
                writer.write(want)
                await writer.drain()
                data = b""
                while not data.endswith(want):  # a stream: the echo may come in pieces
                    chunk = await asyncio.wait_for(reader.read(100), T)
                    assert chunk, "the connection closed early"
                    data += chunk
                pid, _, rest = data.partition(b":")
                assert rest == want
                pids.add(int(pid))
            finally:
                writer.close()
                await writer.wait_closed()
        assert len(pids) == 2
