"""bus_relay: bus messages between two workers, worker threads vs worker processes.

In thread mode a ``Publish`` to a subscriber on another worker is one append to that
worker's inbox lane. In process mode it is relayed by the controller: the publishing
worker's batch is pickled to the controller, which pushes each message into the
subscriber's lane and pickles that batch on (``docs/architecture.md``, "Cores"). This
measures what the relay costs, side by side in one run:

* **throughput**: a publisher on worker 0 publishes ``BURST`` messages per application
  trigger (one drain), a subscriber on worker 1 counts them; messages per second over
  ``ROUNDS`` interleaved rounds of ``TOTAL`` messages;
* **latency**: a ping-pong between the two workers (publish, answer with ``SendTo``),
  ``PINGS`` round trips, p50 and p99.

Baseline: the same tasks in thread mode, same run.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.common import interleaved, median, percentile, write_result
from sansio_aio import BusMessage, Direct, Ext, ExtOut, Publish, Runtime, SendTo, Subscribe, Task

TOTAL = 200_000
BURST = 500
PINGS = 2_000
ROUNDS = 3


class Publisher(Task):
    """On ``("burst", n)`` publishes ``n`` messages; on ``("ping", ...)`` starts a ping."""

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            kind, n = event.msg
            if kind == "burst":
                for i in range(n):
                    self.emit(Publish("load", i))
            else:
                self.emit(Publish("ping", time.perf_counter()))
        elif type(event) is Direct:  # the pong: report the round trip
            self.emit(ExtOut(time.perf_counter() - event.msg))


class Subscriber(Task):
    """Counts ``load`` messages (reports every ``cfg``-th), answers pings."""

    def __init__(self, every: int) -> None:
        super().__init__(every)
        self.every = every
        self.count = 0
        self.emit(Subscribe("load"))
        self.emit(Subscribe("ping"))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is BusMessage:
            if event.channel == "load":
                self.count += 1
                if self.count % self.every == 0:
                    self.emit(ExtOut(self.count))
            else:
                self.emit(SendTo(event.source, event.msg))


KINDS = {"pub": Publisher, "sub": Subscriber}


async def _measure(mode: str) -> dict[str, float]:
    async with Runtime(KINDS, workers=2, mode=mode, inbox_capacity=1 << 20) as rt:
        sub = await rt.spawn("sub", TOTAL, worker=1)
        pub = await rt.spawn("pub", worker=0)
        del sub
        # throughput: bursts until the subscriber has counted TOTAL
        t0 = time.perf_counter()
        for _ in range(TOTAL // BURST):
            rt.send_force(pub, ("burst", BURST))
        while True:
            events = await asyncio.wait_for(rt.next_events(), 60)
            if any(getattr(e, "msg", None) == TOTAL for e in events):
                break
        rate = TOTAL / (time.perf_counter() - t0)
        # latency: one ping at a time
        rtts = []
        for _ in range(PINGS):
            rt.send_nowait(pub, ("ping", 0))
            event = await asyncio.wait_for(rt.next_event(), 10)
            rtts.append(getattr(event, "msg", 0.0))
    return {
        "msgs_per_s": rate,
        "rtt_p50_us": percentile(rtts, 50) * 1e6,
        "rtt_p99_us": percentile(rtts, 99) * 1e6,
    }


def run() -> dict[str, Any]:
    """Run the rounds and write ``bench/results/bus_relay.json``."""
    rounds = interleaved(
        {
            "thread": lambda: asyncio.run(_measure("thread")),
            "process": lambda: asyncio.run(_measure("process")),
        },
        ROUNDS,
    )
    summary = {
        mode: {k: median([r[k] for r in runs]) for k in runs[0]} for mode, runs in rounds.items()
    }
    return write_result(
        "bus_relay",
        metric="msgs_per_s",
        value=round(summary["process"]["msgs_per_s"]),
        baseline="the same publisher and subscriber on two worker threads",
        baseline_value=round(summary["thread"]["msgs_per_s"]),
        params={"total": TOTAL, "burst": BURST, "pings": PINGS, "rounds": ROUNDS},
        summary={m: {k: round(v, 1) for k, v in s.items()} for m, s in summary.items()},
        rounds={
            m: [{k: round(v, 1) for k, v in r.items()} for r in runs] for m, runs in rounds.items()
        },
    )
