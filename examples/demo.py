"""A small live demo of the runtime: two workers, a bus, stats every second.

Two ``Ping`` tasks (one per worker) publish a numbered message on the ``"pings"``
channel every 10 ms; two ``Count`` tasks (one per worker) subscribe and count what
reaches them from each worker. Once a second the demo prints every worker's stats.
Ctrl-C (or ``--duration``) stops it gracefully and prints a summary line.

    python examples/demo.py            # until Ctrl-C
    python examples/demo.py --duration 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from typing import Any

from sansio_aio import BusMessage, ExtOut, Publish, Reply, Request, Runtime, Subscribe, Task


class Ping(Task):
    """Publishes a numbered ping on every tick."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.n = 0

    def on_tick(self, now: float) -> None:
        self.n += 1
        self.emit(Publish("pings", self.n))


class Count(Task):
    """Counts the pings it receives, per source worker; answers requests with the counts."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.counts: dict[int, int] = {}
        self.emit(Subscribe("pings"))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is BusMessage:
            w = event.source.worker
            self.counts[w] = self.counts.get(w, 0) + 1
        elif type(event) is Request:
            self.emit(Reply(event.id, dict(self.counts)))

    def on_shutdown(self, now: float) -> None:
        super().on_shutdown(now)
        self.emit(ExtOut(("final", dict(self.counts))))


async def main(duration: float, backend: str | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    started = time.monotonic()
    async with Runtime({"ping": Ping, "count": Count}, workers=2, backend=backend, tick=0.01) as rt:
        counters = [await rt.spawn("count", worker=w) for w in (0, 1)]
        for w in (0, 1):
            await rt.spawn("ping", worker=w)
        print(f"demo: 2 workers on {rt.backend_name}; Ctrl-C to stop", flush=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            stats = await rt.stats()
            line = "  ".join(
                f"w{s.worker}: {s.tasks} tasks, util {s.utilisation:5.1%}, "
                f"in {s.msgs_in}, lag {s.loop_lag * 1e3:.1f} ms"
                for s in stats.workers
            )
            counts = [await rt.request(c, "counts") for c in counters]
            print(f"[{time.monotonic() - started:5.1f} s] {line}  received {counts}", flush=True)
            if duration and time.monotonic() - started >= duration:
                break
    finals = [e.msg[1] for e in rt.poll_events() if getattr(e, "msg", (None,))[0] == "final"]
    total = sum(sum(c.values()) for c in finals)
    print(
        f"demo: stopped cleanly after {time.monotonic() - started:.1f} s; "
        f"{total} bus messages delivered across 2 workers"
    )
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=0.0, help="seconds; 0 = until Ctrl-C")
    p.add_argument("--backend", default=None)
    a = p.parse_args()
    raise SystemExit(asyncio.run(main(a.duration, a.backend)))
