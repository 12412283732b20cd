"""A UDP echo client: a bounded number of datagrams with a window; rate and RTT.

    python examples/udp_echo_client.py --port 9000 --count 100000 --window 64 --size 100
    python examples/udp_echo_client.py --quick          # starts its own echo server too

The client is a Sans-I/O task on the runtime: it keeps ``--window`` datagrams in flight,
each stamped with a sequence number, matches the echoes, and counts a datagram lost
when its echo is ``--timeout`` seconds late (then sends the next one, so a lossy path
never stalls the run). Without ``--port`` it also runs an echo server on another
worker of the same runtime, so it works on its own. It ends with one summary line and
exits 0 once every datagram was answered or given up (1 if none came back).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import sys
from collections import OrderedDict
from typing import Any

from udp_echo_server import EchoServer, start_servers

from sansio_aio import ExtOut, Runtime, Task, TaskEnded, TaskFailed, TaskOutput
from sansio_aio.net import UdpBind, UdpBound, UdpDriver, UdpError, UdpPacket, UdpSend

HEADER = struct.Struct("!Q")


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0..100) by nearest rank; 0.0 if empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))]


class EchoClient(Task):
    """Sends ``count`` datagrams to ``dest`` with ``window`` in flight; reports a summary.

    cfg: ``dest``, ``count``, ``window``, ``size`` (>= 8 bytes), ``timeout`` (seconds).
    The summary (an ``ExtOut`` dict) comes when every datagram is answered or lost, or
    on shutdown with what was done so far; then the task ends.
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        self.dest = cfg["dest"]
        self.count: int = cfg["count"]
        self.window: int = cfg["window"]
        self.timeout: float = cfg.get("timeout", 1.0)
        self.padding = b"\x00" * (cfg["size"] - HEADER.size)
        self.slot = -1
        self.sent = 0
        self.received = 0
        self.lost = 0
        self.errors = 0
        self.inflight: OrderedDict[int, float] = OrderedDict()  # seq -> send time, oldest first
        self.rtts: list[float] = []
        self.t_start = 0.0
        self.t_end = 0.0
        self.done = False
        local = "::" if ":" in self.dest[0] else "0.0.0.0"
        self.emit(UdpBind((local, 0), rcvbuf=4 << 20))

    def _send(self, now: float) -> None:
        seq = self.sent
        self.sent += 1
        self.inflight[seq] = now
        self.emit(UdpSend(self.slot, self.dest, HEADER.pack(seq) + self.padding))

    def _fill(self, now: float) -> None:
        while len(self.inflight) < self.window and self.sent < self.count:
            self._send(now)
        if self.received + self.lost == self.count:
            self._finish(now)

    def _finish(self, now: float) -> None:
        if self.done:
            return
        self.t_end = now
        elapsed = max(1e-9, self.t_end - self.t_start)
        self.emit(
            ExtOut(
                {
                    "sent": self.sent,
                    "received": self.received,
                    "lost": self.lost + len(self.inflight),
                    "errors": self.errors,
                    "elapsed": elapsed,
                    "rate": self.received / elapsed,
                    "rtt_p50": percentile(self.rtts, 50),
                    "rtt_p99": percentile(self.rtts, 99),
                }
            )
        )
        self.done = True

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is UdpPacket:
            if len(event.data) >= HEADER.size:
                sent_at = self.inflight.pop(HEADER.unpack_from(event.data)[0], None)
                if sent_at is not None:  # (a late echo of a datagram counted lost is ignored)
                    self.received += 1
                    self.rtts.append(now - sent_at)
                    self._fill(now)
        elif type(event) is UdpBound:
            if not event.ok:
                self.emit(ExtOut({"error": event.error}))
                self.done = True
                return
            self.slot = event.slot
            self.t_start = now
            self._fill(now)
        elif type(event) is UdpError:
            self.errors += 1  # e.g. a destination of the wrong address family

    def next_deadline(self) -> float | None:
        if self.done or not self.inflight:
            return None
        return next(iter(self.inflight.values())) + self.timeout

    def on_tick(self, now: float) -> None:
        if self.done:
            return
        expired = now - self.timeout
        while self.inflight:
            seq, sent_at = next(iter(self.inflight.items()))
            if sent_at > expired:
                break
            del self.inflight[seq]
            self.lost += 1
        if self.slot >= 0:
            self._fill(now)

    def on_shutdown(self, now: float) -> None:
        self._finish(now)  # report what was done so far

    def is_empty(self) -> bool:
        return self.done and not self._outputs


def summary_line(s: dict[str, Any], size: int, window: int) -> str:
    """One human line for a client summary."""
    return (
        f"summary: {s['received']}/{s['sent']} datagrams of {size} B echoed, window {window}, "
        f"in {s['elapsed']:.2f} s: {s['rate']:.0f} pps, RTT p50 {s['rtt_p50'] * 1e6:.0f} us "
        f"p99 {s['rtt_p99'] * 1e6:.0f} us, lost {s['lost']}, errors {s['errors']}"
    )


async def run_client(
    rt: Runtime,
    dest: tuple[str, int],
    count: int,
    window: int,
    size: int,
    timeout: float,
    worker: int,
) -> dict[str, Any]:
    """Run one EchoClient task on ``rt`` and return its summary."""
    cfg = {"dest": dest, "count": count, "window": window, "size": size, "timeout": timeout}
    ref = await rt.spawn("client", cfg, worker=worker)
    summary: dict[str, Any] | None = None
    while True:
        ev = await rt.next_event()
        if isinstance(ev, TaskOutput) and ev.task == ref:
            summary = ev.msg
        elif isinstance(ev, TaskFailed) and ev.task == ref:
            raise RuntimeError(f"the client task failed: {ev.error}")
        elif isinstance(ev, TaskEnded) and ev.task == ref:
            break
    assert summary is not None
    if "error" in summary:
        raise OSError(summary["error"])
    return summary


async def main(args: argparse.Namespace) -> int:
    standalone = args.port is None
    kinds = {"client": EchoClient, "echo": EchoServer}
    async with Runtime(
        kinds, workers=2 if standalone else 1, backend=args.backend, drivers=[UdpDriver]
    ) as rt:
        dest: tuple[str, int] = (args.host, args.port or 0)
        if standalone:
            dest = await start_servers(rt, args.host, 0, 1)
            print(f"(no --port: started an echo server on {dest[0]}:{dest[1]})", flush=True)
        print(
            f"sending {args.count} datagrams of {args.size} B to {dest[0]}:{dest[1]}, "
            f"window {args.window}",
            flush=True,
        )
        # the whole run is bounded: every datagram is answered or times out
        limit = args.count / 1000 + args.timeout * 4 + 30
        s = await asyncio.wait_for(
            run_client(
                rt, dest, args.count, args.window, args.size, args.timeout, 1 if standalone else 0
            ),
            limit,
        )
    print(summary_line(s, args.size, args.window), flush=True)
    return 0 if s["received"] > 0 else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--host", default="127.0.0.1", help="server address (an IP literal)")
    p.add_argument("--port", type=int, default=None, help="server port (default: run one)")
    p.add_argument("--count", type=int, default=20000, help="datagrams to send")
    p.add_argument("--window", type=int, default=32, help="datagrams in flight")
    p.add_argument("--size", type=int, default=100, help="datagram size in bytes (8..65507)")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds before a datagram is lost")
    p.add_argument("--backend", default=None, help="uvloop, epoll or poll (default: uvloop)")
    p.add_argument("--quick", action="store_true", help="2000 datagrams")
    args = p.parse_args(argv)
    if args.quick:
        args.count = min(args.count, 2000)
    if not 8 <= args.size <= 65507:
        p.error("--size must be in 8..65507 (8 bytes carry the sequence number)")
    if args.count < 1 or args.window < 1:
        p.error("--count and --window must be >= 1")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in args.host else socket.AF_INET, args.host)
    except OSError:
        p.error(f"--host must be an IP address, got {args.host!r}")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
