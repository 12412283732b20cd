"""The UDP demo: an echo server and a client in one runtime, with live worker stats.

    python examples/udp_demo.py              # 200k datagrams, a stats line every second
    python examples/udp_demo.py --quick      # 10k datagrams

Worker 0 runs the echo server task, worker 1 the client task (both Sans-I/O tasks
doing their I/O through the UDP driver). Once a second the demo prints each worker's
utilisation and UDP counters; at the end (or on Ctrl-C, which stops the client early)
it prints the client's summary: rate and RTT percentiles. It ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time

from udp_echo_client import EchoClient, run_client, summary_line
from udp_echo_server import EchoServer, start_servers

from sansio_aio import Runtime
from sansio_aio.net import UdpDriver


async def print_stats(rt: Runtime, t0: float) -> None:
    """Print one line of worker stats every second (until cancelled)."""
    while True:
        await asyncio.sleep(1.0)
        parts = []
        for w in (await rt.stats()).workers:
            d = w.drivers
            parts.append(
                f"w{w.worker}: util {w.utilisation:4.0%} rx {d.get('udp_rx', 0):>8} "
                f"tx {d.get('udp_tx', 0):>8} drops {d.get('udp_tx_dropped', 0)}"
            )
        print(f"[{time.monotonic() - t0:4.1f} s] " + " | ".join(parts), flush=True)


async def main(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    kinds = {"echo": EchoServer, "client": EchoClient}
    async with Runtime(
        kinds, workers=2, backend=args.backend, drivers=[UdpDriver], stats_interval=0.5
    ) as rt:
        dest = await start_servers(rt, "127.0.0.1", 0, 1)
        print(
            f"udp demo: echo server on {dest[0]}:{dest[1]} (worker 0), client on worker 1: "
            f"{args.count} datagrams of {args.size} B, window {args.window}, "
            f"backend {rt.backend_name}",
            flush=True,
        )
        t0 = time.monotonic()
        client = asyncio.create_task(
            run_client(rt, dest, args.count, args.window, args.size, 1.0, worker=1)
        )
        stats = asyncio.create_task(print_stats(rt, t0))
        stopped = asyncio.create_task(stop.wait())
        limit = args.count / 1000 + 60  # bounded even if the machine is very slow
        await asyncio.wait({client, stopped}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        if not client.done():
            print("stopping early: the client reports what it did so far", flush=True)
            await rt.shutdown()  # the client's on_shutdown emits its summary
        summary = await asyncio.wait_for(client, 10)
        for t in (stats, stopped):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    print(summary_line(summary, args.size, args.window), flush=True)
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--count", type=int, default=200_000, help="datagrams the client sends")
    p.add_argument("--window", type=int, default=64, help="datagrams in flight")
    p.add_argument("--size", type=int, default=100, help="datagram size (8..65507)")
    p.add_argument("--backend", default=None, help="uvloop, epoll or poll (default: uvloop)")
    p.add_argument("--quick", action="store_true", help="10k datagrams")
    args = p.parse_args(argv)
    if args.quick:
        args.count = min(args.count, 10_000)
    if not 8 <= args.size <= 65507 or args.count < 1 or args.window < 1:
        p.error("need --size in 8..65507, --count >= 1, --window >= 1")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
