"""A UDP echo server: one Sans-I/O echo task per worker, all on one port.

    python examples/udp_echo_server.py --port 9000 --workers 2 --duration 0   # Ctrl-C ends
    python examples/udp_echo_server.py --quick                               # 1 s, ephemeral

With several workers each echo task binds the same port with SO_REUSEPORT and the
kernel spreads the clients' flows over them. The server prints its address, then a
summary line when it ends (after ``--duration`` seconds, or on Ctrl-C / SIGTERM).
Try it with ``examples/udp_echo_client.py --port PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from typing import Any

from sansio_aio import ExtOut, Reply, Request, Runtime, Task, TaskOutput
from sansio_aio.lowlevel import WorkerCore
from sansio_aio.net import (
    UdpBind,
    UdpBound,
    UdpDriver,
    UdpError,
    UdpPacket,
    UdpPackets,
    UdpSend,
    UdpSendBatch,
)


class EchoServer(Task):
    """Binds ``cfg["addr"]`` and sends every datagram back to where it came from.

    Reports its ``UdpBound`` to the application; answers the request ``"count"`` with
    the number of datagrams echoed and send errors seen.
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        self.echoed = 0
        self.errors = 0
        self.emit(
            UdpBind(
                cfg["addr"],
                reuse=cfg.get("reuse", False),
                rcvbuf=cfg.get("rcvbuf"),
                batch=cfg.get("batch", False),
            )
        )

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is UdpPacket:
            self.echoed += 1
            self.emit(UdpSend(event.slot, event.source, event.data))
        elif type(event) is UdpPackets:  # batch mode: a whole readiness at once
            self.echoed += len(event.packets)
            self.emit(UdpSendBatch(event.slot, event.packets))
        elif type(event) is UdpError:
            self.errors += 1
        elif type(event) is UdpBound:
            self.emit(ExtOut(event))
            if not event.ok:
                self.closing = True  # nothing to serve: end
        elif type(event) is Request:
            self.emit(Reply(event.id, (self.echoed, self.errors)))


async def start_servers(
    rt: Runtime,
    host: str,
    port: int,
    workers: int,
    rcvbuf: int | None = 4 << 20,
    batch: bool = False,
) -> tuple[str, int]:
    """Spawn one echo task per worker on ``(host, port)``; return the bound address.

    Raises ``OSError`` if the first bind fails.
    """
    reuse = workers > 1
    addr: tuple[str, int] = (host, port)
    for w in range(workers):
        cfg = {"addr": addr, "reuse": reuse, "rcvbuf": rcvbuf, "batch": batch}
        await rt.spawn("echo", cfg, worker=w)
        while True:  # the bind result (other events, if any, are not ours to judge)
            ev = await asyncio.wait_for(rt.next_event(), 5)
            if isinstance(ev, TaskOutput) and isinstance(ev.msg, UdpBound):
                break
        bound = ev.msg
        if not bound.ok:
            raise OSError(bound.errno, f"worker {w}: {bound.error}")
        assert bound.addr is not None
        addr = (bound.addr[0], bound.addr[1])
    return addr


def drivers_stats(core: WorkerCore) -> list[dict[str, int]]:
    """Run on a worker: its drivers' counters (module level, so it reaches processes too)."""
    return [dict(driver.stats()) for driver in core.drivers]


async def driver_totals(rt: Runtime) -> dict[str, int]:
    """Driver counters summed over the workers, read on each worker's own thread."""
    totals: dict[str, int] = {}
    for w in range(rt.workers):
        per_driver = await rt.run_on_worker(w, drivers_stats)
        for counters in per_driver:
            for name, value in counters.items():
                totals[name] = totals.get(name, 0) + value
    return totals


async def serve(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    kinds = {"echo": EchoServer}
    async with Runtime(
        kinds, workers=args.workers, backend=args.backend, drivers=[UdpDriver], mode=args.mode
    ) as rt:
        try:
            host, port = await start_servers(
                rt, args.host, args.port, args.workers, batch=args.batch
            )
        except OSError as exc:
            print(f"udp_echo_server: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
        print(
            f"udp echo server on {host}:{port}: {args.workers} worker(s) as {args.mode}es, "
            f"backend {rt.backend_name}; "
            + (f"for {args.duration:g} s" if args.duration > 0 else "Ctrl-C to stop"),
            flush=True,
        )
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(stop.wait(), args.duration if args.duration > 0 else None)
        except TimeoutError:
            pass
        elapsed = time.monotonic() - t0
        totals = await driver_totals(rt)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    rx, tx = totals.get("udp_rx", 0), totals.get("udp_tx", 0)
    print(
        f"summary: echoed {tx} of {rx} datagrams in {elapsed:.1f} s "
        f"({tx / elapsed if elapsed else 0:.0f}/s) on {args.workers} worker(s); "
        f"send drops {totals.get('udp_tx_dropped', 0)}, errors {totals.get('udp_tx_errors', 0)}",
        flush=True,
    )
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (an IP literal)")
    p.add_argument("--port", type=int, default=None, help="UDP port (default 9000; 0 = any)")
    p.add_argument("--workers", type=int, default=1, help="workers (one echo task each)")
    p.add_argument(
        "--mode",
        choices=["thread", "process"],
        default="thread",
        help="workers as threads, or one process each (SO_REUSEPORT spreads flows)",
    )
    p.add_argument("--backend", default=None, help="uvloop, epoll or poll (default: uvloop)")
    p.add_argument(
        "--duration", type=float, default=None, help="seconds to run; 0 = until Ctrl-C (default 10)"
    )
    p.add_argument("--quick", action="store_true", help="1 s on an ephemeral port")
    p.add_argument("--batch", action="store_true", help="one UdpPackets per readiness (batch mode)")
    args = p.parse_args(argv)
    if args.port is None:
        args.port = 0 if args.quick else 9000
    if args.duration is None:
        args.duration = 1.0 if args.quick else 10.0
    if args.workers < 1:
        p.error("--workers must be >= 1")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(serve(parse())))
