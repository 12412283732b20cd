"""TCP echo: the runtime's echo task against hand-written asyncio echoes, 64 connections.

    python -m bench tcp_echo                 # about 20 s
    BENCH_QUICK=1 python -m bench tcp_echo   # a few seconds

The C load generator (``bench/loadgen.c``, pinned to CPU 0) opens 64 connections and
keeps up to 64 KiB unechoed on each, in 16 KiB writes; the figure is echoed bytes per
second. Servers (``python -m bench.tcp_echo serve KIND``, pinned to CPU 1):

* ``runtime-uvloop``, ``runtime-epoll``: sansio_aio, one worker, one echo task through
  the TcpDriver (asyncio protocols under the hood);
* ``streams-uvloop``, ``streams-asyncio``: a hand-written asyncio streams echo
  (``start_server``, ``read``/``write``/``drain``): the baseline of the issue;
* ``protocol-uvloop``: a hand-written ``asyncio.Protocol`` echo (the driver's path alone);
* ``raw-uvloop``: raw non-blocking sockets with ``add_reader``/``add_writer`` (the
  path the driver did not take), to show what that choice is worth.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import _udp_loadgen as lg
from bench.common import median, write_result

SERVERS = [
    "runtime-uvloop",
    "streams-uvloop",
    "protocol-uvloop",
    "raw-uvloop",
    "runtime-epoll",
    "streams-asyncio",
]
CONNS, CHUNK, WINDOW = 64, 16384, 65536


def run() -> dict[str, Any]:
    """Run the comparison, write ``bench/results/tcp_echo.json``, return the record."""
    quick = os.environ.get("BENCH_QUICK") == "1"
    seconds = 0.5 if quick else 1.5
    rounds = 1 if quick else 2
    samples: dict[str, list[dict[str, float]]] = {s: [] for s in SERVERS}
    for r in range(rounds):
        for name in SERVERS[r % len(SERVERS) :] + SERVERS[: r % len(SERVERS)]:
            argv = [sys.executable, "-m", "bench.tcp_echo", "serve", name]
            with lg.start_server(argv) as (port, pid):
                cpu0 = lg.cpu_seconds(pid)
                rec = lg.tcp(port, CONNS, CHUNK, WINDOW, seconds)
                cpu = lg.cpu_seconds(pid) - cpu0
            bps = float(rec["bytes_per_s"])
            m = {"bytes_per_s": bps, "cpu_s_per_gb": cpu / max(1.0, bps * (seconds + 0.2)) * 1e9}
            samples[name].append(m)
            print(
                f"  {name:16s} {bps / 1e6:8.1f} MB/s  {m['cpu_s_per_gb']:.2f} cpu-s/GB",
                file=sys.stderr,
                flush=True,
            )
    table = {n: {k: median([m[k] for m in ms]) for k in ms[0]} for n, ms in samples.items()}
    rt, base = table["runtime-uvloop"], table["streams-uvloop"]
    return write_result(
        "tcp_echo",
        metric="bytes_per_s_64_conns",
        value=round(rt["bytes_per_s"]),
        baseline="asyncio streams echo on uvloop",
        baseline_value=round(base["bytes_per_s"]),
        params={
            "conns": CONNS,
            "chunk": CHUNK,
            "window_per_conn": WINDOW,
            "seconds": seconds,
            "rounds": rounds,
            "generator": "c" if lg.build() else "python",
            "quick": quick,
        },
        results=table,
        ratios={
            "runtime_epoll_vs_streams_asyncio": round(
                table["runtime-epoll"]["bytes_per_s"] / table["streams-asyncio"]["bytes_per_s"], 3
            ),
            "runtime_uvloop_vs_protocol_uvloop": round(
                rt["bytes_per_s"] / table["protocol-uvloop"]["bytes_per_s"], 3
            ),
            "raw_uvloop_vs_protocol_uvloop": round(
                table["raw-uvloop"]["bytes_per_s"] / table["protocol-uvloop"]["bytes_per_s"], 3
            ),
        },
    )


# ====================================================================== servers


def _listen() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind.endswith("uvloop"):
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.SelectorEventLoop()


async def _streams(sock: socket.socket) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    await asyncio.start_server(echo, sock=sock)
    print(sock.getsockname()[1], flush=True)
    await asyncio.Event().wait()


class _EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


async def _protocol(sock: socket.socket) -> None:
    await asyncio.get_running_loop().create_server(_EchoProtocol, sock=sock)
    print(sock.getsockname()[1], flush=True)
    await asyncio.Event().wait()


async def _raw(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()

    def serve(conn: socket.socket) -> None:
        fd = conn.fileno()
        pending = bytearray()

        def on_read() -> None:
            try:
                data = conn.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(fd)
                loop.remove_writer(fd)
                conn.close()
                return
            if pending:
                pending.extend(data)
                return
            try:
                sent = conn.send(data)
            except BlockingIOError:
                sent = 0
            if sent < len(data):
                pending.extend(data[sent:])
                loop.remove_reader(fd)  # backpressure: read again once flushed
                loop.add_writer(fd, on_write)

        def on_write() -> None:
            try:
                sent = conn.send(pending)
            except BlockingIOError:
                return
            del pending[:sent]
            if not pending:
                loop.remove_writer(fd)
                loop.add_reader(fd, on_read)

        loop.add_reader(fd, on_read)

    def on_accept() -> None:
        for _ in range(64):
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            serve(conn)

    loop.add_reader(sock.fileno(), on_accept)
    print(sock.getsockname()[1], flush=True)
    await asyncio.Event().wait()


def _runtime(backend: str) -> None:
    from sansio_aio import ExtOut, Runtime, Task
    from sansio_aio.net import TcpClose, TcpData, TcpDriver, TcpEof, TcpListen, TcpSend

    class Echo(Task):
        def __init__(self, cfg: Any) -> None:
            super().__init__(cfg)
            self.emit(TcpListen(("127.0.0.1", 0), backlog=1024))

        def on_event(self, now: float, event: Any) -> None:
            kind = type(event)
            if kind is TcpData:
                self.emit(TcpSend(event.slot, event.data))
            elif kind is TcpEof:
                self.emit(TcpClose(event.slot))
            elif not hasattr(event, "data"):
                self.emit(ExtOut(event))

    async def main() -> None:
        async with Runtime({"echo": Echo}, backend=backend, drivers=[TcpDriver]) as rt:
            await rt.spawn("echo")
            ev = await rt.next_event()
            print(ev.msg.addr[1], flush=True)  # type: ignore[union-attr]
            await asyncio.Event().wait()

    asyncio.run(main())


def serve(kind: str) -> None:
    """Run one echo server of :data:`SERVERS` until killed (prints its port first)."""
    import threading

    watchdog = threading.Timer(600, os._exit, args=(0,))
    watchdog.daemon = True
    watchdog.start()
    if kind.startswith("runtime-"):
        _runtime(kind.removeprefix("runtime-"))
        return
    impl = {"streams": _streams, "protocol": _protocol, "raw": _raw}[kind.split("-")[0]]
    loop = _new_loop(kind)
    asyncio.set_event_loop(loop)
    loop.run_until_complete(impl(_listen()))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve" and sys.argv[2] in SERVERS:
        serve(sys.argv[2])
    else:
        print(f"usage: python -m bench.tcp_echo serve {{{','.join(SERVERS)}}}", file=sys.stderr)
        sys.exit(2)
