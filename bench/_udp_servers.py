"""The UDP echo servers that bench/udp_echo.py compares, one per process.

    python -m bench._udp_servers KIND [--host 127.0.0.1] [--port 0] [--reuse]

prints the bound port on its first line, then echoes until it is killed. KIND is one of
:data:`SERVERS`. With ``--reuse`` the socket sets SO_REUSEPORT, so several server
processes can share one port (bench/udp_scale.py's hand-written multi-process baseline:
the first binds port 0, the others the port it printed). Every server uses the same
socket setup (non-blocking, SO_RCVBUF and SO_SNDBUF 4 MiB) so only the echo path differs:

* ``runtime-uvloop`` / ``runtime-epoll``: sansio_aio, one worker, an echo task doing its
  I/O through the UdpDriver (``add_reader`` + a bounded ``recvfrom`` drain);
* ``uvloop-protocol``: a hand-written uvloop ``DatagramProtocol`` echo;
* ``asyncio-protocol``: the same on the stdlib asyncio loop;
* ``uvloop-reader``: hand-written uvloop ``add_reader`` + drain (the driver's path,
  without the runtime), to show what the choice of path is worth on uvloop;
* ``epoll-drain``: a hand-written ``select.epoll`` loop draining until EAGAIN.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

BUF = 4 << 20
#: Set by ``--reuse``: every socket made here sets SO_REUSEADDR and SO_REUSEPORT.
REUSE = False


def make_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if REUSE:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUF)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUF)
    sock.setblocking(False)
    sock.bind((host, port))
    return sock


def announce(port: int) -> None:
    print(port, flush=True)


# ---------------------------------------------------------------- hand-written


def serve_epoll(host: str, port: int) -> None:
    sock = make_socket(host, port)
    announce(sock.getsockname()[1])
    ep = select.epoll()
    ep.register(sock.fileno(), select.EPOLLIN)
    recvfrom, sendto = sock.recvfrom, sock.sendto
    while True:
        ep.poll()
        while True:
            try:
                data, addr = recvfrom(65536)
            except BlockingIOError:
                break
            try:
                sendto(data, addr)
            except BlockingIOError:
                pass


def _run_loop(
    loop: asyncio.AbstractEventLoop, setup: Callable[[asyncio.AbstractEventLoop], Any]
) -> None:
    asyncio.set_event_loop(loop)
    loop.run_until_complete(setup(loop))
    loop.run_forever()


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sendto = transport.sendto  # type: ignore[attr-defined]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.sendto(data, addr)


def serve_protocol(host: str, port: int, use_uvloop: bool) -> None:
    sock = make_socket(host, port)

    async def setup(loop: asyncio.AbstractEventLoop) -> None:
        await loop.create_datagram_endpoint(_Echo, sock=sock)
        announce(sock.getsockname()[1])

    if use_uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.SelectorEventLoop()
    _run_loop(loop, setup)


def serve_reader(host: str, port: int) -> None:
    import uvloop

    sock = make_socket(host, port)
    recvfrom, sendto = sock.recvfrom, sock.sendto

    def on_readable() -> None:
        for _ in range(64):
            try:
                data, addr = recvfrom(65536)
            except BlockingIOError:
                return
            try:
                sendto(data, addr)
            except BlockingIOError:
                pass

    async def setup(loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(sock.fileno(), on_readable)
        announce(sock.getsockname()[1])

    _run_loop(uvloop.new_event_loop(), setup)


# ---------------------------------------------------------------- the runtime


def serve_runtime(host: str, port: int, backend: str, batch: bool = False) -> None:
    from sansio_aio import ExtOut, Runtime, Task
    from sansio_aio.net import UdpBind, UdpDriver, UdpPacket, UdpPackets, UdpSend, UdpSendBatch

    class Echo(Task):
        """Per datagram (UdpPacket -> UdpSend) or, with ``batch``, per readiness
        (UdpPackets -> UdpSendBatch)."""

        def __init__(self, cfg: Any) -> None:
            super().__init__(cfg)
            self.emit(UdpBind(cfg, rcvbuf=BUF, sndbuf=BUF, batch=batch))

        def on_event(self, now: float, event: Any) -> None:
            if type(event) is UdpPacket:
                self.emit(UdpSend(event.slot, event.source, event.data))
            elif type(event) is UdpPackets:
                self.emit(UdpSendBatch(event.slot, event.packets))
            else:
                self.emit(ExtOut(event))

    async def main() -> None:
        async with Runtime({"echo": Echo}, workers=1, backend=backend, drivers=[UdpDriver]) as rt:
            await rt.spawn("echo", (host, port))
            ev = await rt.next_event()
            bound = ev.msg  # type: ignore[union-attr]
            if not bound.ok:
                raise SystemExit(f"bind failed: {bound.error}")
            announce(bound.addr[1])
            await asyncio.Event().wait()  # serve until killed

    asyncio.run(main())


SERVERS: dict[str, Callable[[str, int], None]] = {
    "runtime-uvloop": lambda h, p: serve_runtime(h, p, "uvloop"),
    "runtime-epoll": lambda h, p: serve_runtime(h, p, "epoll"),
    "runtime-uvloop-batch": lambda h, p: serve_runtime(h, p, "uvloop", batch=True),
    "runtime-epoll-batch": lambda h, p: serve_runtime(h, p, "epoll", batch=True),
    "uvloop-protocol": lambda h, p: serve_protocol(h, p, True),
    "asyncio-protocol": lambda h, p: serve_protocol(h, p, False),
    "uvloop-reader": serve_reader,
    "epoll-drain": serve_epoll,
}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="one UDP echo server of bench/udp_echo.py")
    p.add_argument("kind", choices=sorted(SERVERS))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--reuse", action="store_true", help="set SO_REUSEPORT (share the port)")
    args = p.parse_args(argv)
    global REUSE
    REUSE = args.reuse
    # the process ends when the bench kills it; a watchdog bounds a forgotten one
    watchdog = threading.Timer(600, os._exit, args=(0,))
    watchdog.daemon = True
    watchdog.start()
    SERVERS[args.kind](args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
