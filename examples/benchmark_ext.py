"""Controller <-> worker echo: the seed's "external communication" benchmark.

N messages are kept in flight between the application and one echo task; each is
re-sent as soon as it comes back. Prints msgs/s and the mean/p99 wait (send -> return).

    python examples/benchmark_ext.py --in-flight 400 --count 1000000 --backend uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from sansio_aio import Ext, ExtOut, Runtime, Task, TaskOutput


class Echo(Task):
    """Sends every application message straight back."""

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            self.emit(ExtOut(event.msg))


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main(args: argparse.Namespace) -> dict[str, float]:
    perf = time.perf_counter
    async with Runtime({"echo": Echo}, workers=args.workers, backend=args.backend) as rt:
        refs = [await rt.spawn("echo") for _ in range(args.workers)]
        for i in range(args.in_flight):
            rt.send_nowait(refs[i % len(refs)], perf())
        waits: list[float] = []
        received = sent = args.in_flight
        t0 = perf()
        while received < args.count + args.in_flight:
            batch = await rt.next_events()
            now = perf()
            for event in batch:
                if not isinstance(event, TaskOutput):
                    continue
                received += 1
                if received % 16 == 0:
                    waits.append(now - event.msg)
                if sent < args.count + args.in_flight:
                    rt.send_nowait(event.task, now)
                    sent += 1
        took = perf() - t0
    result = {
        "msgs_per_s": args.count / took,
        "mean_wait_ms": 1e3 * sum(waits) / max(1, len(waits)),
        "p99_wait_ms": 1e3 * percentile(waits, 99) if waits else 0.0,
    }
    print(
        f"benchmark_ext: {args.count} messages, {args.in_flight} in flight, "
        f"backend {rt.backend_name}, {args.workers} worker(s): "
        f"{result['msgs_per_s']:,.0f} msgs/s, mean wait {result['mean_wait_ms']:.3f} ms, "
        f"p99 wait {result['p99_wait_ms']:.3f} ms"
    )
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--in-flight", type=int, default=400)
    p.add_argument("--count", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--backend", default=None, help="uvloop, epoll, poll (default: uvloop)")
    p.add_argument("--quick", action="store_true", help="a short run (20,000 messages)")
    args = p.parse_args(argv)
    if args.quick:
        args.count = 20_000
    return args


if __name__ == "__main__":
    asyncio.run(main(parse()))
