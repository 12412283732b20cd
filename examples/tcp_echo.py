"""A TCP echo server and its clients, all Sans-I/O tasks on one runtime.

    python examples/tcp_echo.py                       # 20 clients x 200 messages
    python examples/tcp_echo.py --clients 100 --messages 50 --size 4096
    python examples/tcp_echo.py --quick

Worker 0 runs the server task: it listens, echoes every chunk it receives on the
connection it came from, and closes a connection once the client has half-closed it.
Worker 1 runs one client task per connection: it connects, sends ``--messages``
messages of ``--size`` bytes one at a time (each waits for its whole echo, so the RTT
is measured), half-closes, and reports when the connection is closed. The example
prints one summary line and exits 0 when every client got every byte back.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from sansio_aio import ExtOut, Reply, Request, Runtime, Task, TaskEnded, TaskFailed, TaskOutput
from sansio_aio.net import (
    TcpAccepted,
    TcpClose,
    TcpClosed,
    TcpConnect,
    TcpConnected,
    TcpData,
    TcpDriver,
    TcpEof,
    TcpListen,
    TcpListening,
    TcpSend,
    TcpShutdown,
)


class TcpEchoServer(Task):
    """Listens on ``cfg`` (an address) and echoes every connection until its EOF."""

    def __init__(self, cfg: tuple[str, int]) -> None:
        super().__init__(cfg)
        self.accepted = 0
        self.echoed = 0
        self.emit(TcpListen(cfg, backlog=1024))

    def on_event(self, now: float, event: Any) -> None:
        kind = type(event)
        if kind is TcpData:
            self.echoed += len(event.data)
            self.emit(TcpSend(event.slot, event.data))
        elif kind is TcpEof:
            self.emit(TcpClose(event.slot))  # the client is done: flush and close
        elif kind is TcpAccepted:
            self.accepted += 1
        elif kind is TcpListening:
            self.emit(ExtOut(event))
            if not event.ok:
                self.closing = True
        elif kind is Request:
            self.emit(Reply(event.id, (self.accepted, self.echoed)))


class TcpEchoClient(Task):
    """Connects to ``cfg["dest"]``, sends ``messages`` messages of ``size`` bytes one by
    one, each after the previous one's echo is complete, then half-closes. Emits a
    summary dict when the connection is closed (or failed), then ends."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        self.messages: int = cfg["messages"]
        self.payload = bytes(range(256)) * (cfg["size"] // 256) + bytes(cfg["size"] % 256)
        self.slot = -1
        self.sent = 0
        self.pending = 0  # bytes of the current message still to come back
        self.echo = bytearray()
        self.ok = True
        self.rtts: list[float] = []
        self.t_sent = 0.0
        self.t_start = 0.0
        self.done = False
        self.emit(TcpConnect(cfg["dest"]))

    def _next(self, now: float) -> None:
        if self.sent == self.messages:
            self.emit(TcpShutdown(self.slot))
            return
        self.sent += 1
        self.pending = len(self.payload)
        self.t_sent = now
        self.emit(TcpSend(self.slot, self.payload))

    def on_event(self, now: float, event: Any) -> None:
        kind = type(event)
        if kind is TcpData:
            self.echo += event.data
            self.pending -= len(event.data)
            if self.pending <= 0:
                self.ok = self.ok and self.pending == 0 and self.echo == self.payload
                self.echo.clear()
                self.rtts.append(now - self.t_sent)
                self._next(now)
        elif kind is TcpConnected:
            if not event.ok:
                self._report(now, event.error)
                return
            self.slot = event.slot
            self.t_start = now
            self._next(now)
        elif kind is TcpClosed:
            self._report(now, event.error)

    def _report(self, now: float, error: str | None) -> None:
        complete = self.ok and error is None and len(self.rtts) == self.messages
        self.emit(
            ExtOut(
                {
                    "complete": complete,
                    "error": error,
                    "rtts": self.rtts,
                    "bytes": len(self.rtts) * len(self.payload),
                    "elapsed": now - self.t_start,
                }
            )
        )
        self.done = True

    def is_empty(self) -> bool:
        return self.done and not self._outputs


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0..100) by nearest rank; 0.0 if empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))]


async def main(args: argparse.Namespace) -> int:
    kinds = {"server": TcpEchoServer, "client": TcpEchoClient}
    async with Runtime(kinds, workers=2, backend=args.backend, drivers=[TcpDriver]) as rt:
        server = await rt.spawn("server", ("127.0.0.1", 0), worker=0)
        ev = await asyncio.wait_for(rt.next_event(), 5)
        assert isinstance(ev, TaskOutput) and isinstance(ev.msg, TcpListening)
        if not ev.msg.ok or ev.msg.addr is None:
            print(f"tcp_echo: cannot listen: {ev.msg.error}", file=sys.stderr)
            return 1
        dest = ev.msg.addr
        print(
            f"tcp echo server on {dest[0]}:{dest[1]} (worker 0); {args.clients} clients "
            f"x {args.messages} messages of {args.size} B (worker 1), backend {rt.backend_name}",
            flush=True,
        )
        t0 = time.monotonic()
        cfg = {"dest": dest, "messages": args.messages, "size": args.size}
        clients = {await rt.spawn("client", cfg, worker=1) for _ in range(args.clients)}
        results: list[dict[str, Any]] = []
        failures: list[str] = []
        limit = 30 + args.clients * args.messages / 500  # bounded, even on a slow machine
        deadline = time.monotonic() + limit
        remaining = set(clients)
        while remaining:
            ev2 = await asyncio.wait_for(rt.next_event(), max(0.1, deadline - time.monotonic()))
            if isinstance(ev2, TaskOutput) and ev2.task in clients:
                results.append(ev2.msg)
            elif isinstance(ev2, TaskFailed):
                failures.append(f"{ev2.task}: {ev2.error}")
                remaining.discard(ev2.task)
            elif isinstance(ev2, TaskEnded):
                remaining.discard(ev2.task)
        elapsed = time.monotonic() - t0
        accepted, echoed = await rt.request(server, "count")
    rtts = [r for res in results for r in res["rtts"]]
    complete = sum(1 for r in results if r["complete"])
    total = sum(r["bytes"] for r in results)
    print(
        f"summary: {complete}/{args.clients} clients complete, {len(rtts)} messages "
        f"({total / 1e6:.1f} MB) echoed in {elapsed:.2f} s: {len(rtts) / elapsed:.0f} msg/s, "
        f"{total / elapsed / 1e6:.1f} MB/s, RTT p50 {percentile(rtts, 50) * 1e6:.0f} us "
        f"p99 {percentile(rtts, 99) * 1e6:.0f} us; server accepted {accepted}, "
        f"echoed {echoed} B",
        flush=True,
    )
    for f in failures:
        print(f"failed: {f}", file=sys.stderr)
    for r in results:
        if r["error"]:
            print(f"client error: {r['error']}", file=sys.stderr)
    return 0 if complete == args.clients else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--clients", type=int, default=20, help="concurrent connections")
    p.add_argument("--messages", type=int, default=200, help="messages per connection")
    p.add_argument("--size", type=int, default=1000, help="message size in bytes")
    p.add_argument("--backend", default=None, help="uvloop, epoll or poll (default: uvloop)")
    p.add_argument("--quick", action="store_true", help="10 clients x 50 messages")
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.messages = min(args.clients, 10), min(args.messages, 50)
    if args.clients < 1 or args.messages < 1 or args.size < 1:
        p.error("--clients, --messages and --size must be >= 1")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
