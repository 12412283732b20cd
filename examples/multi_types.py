"""Two task kinds on one worker, talking over the bus.

``Sensor`` tasks publish readings on the channel ``"readings"``; an ``Aggregator``
subscribes to it and, after every sensor finished, reports count/min/max/mean to the
application. Everything runs on one worker; nothing but the bus connects the tasks.

    python examples/multi_types.py --sensors 3 --readings 100
"""

from __future__ import annotations

import argparse
import asyncio
import random
from typing import Any

from sansio_aio import (
    BusMessage,
    Ext,
    ExtOut,
    Publish,
    Runtime,
    Subscribe,
    Task,
    TaskEnded,
    TaskOutput,
)

CHANNEL = "readings"


class Sensor(Task):
    """Publishes ``readings`` pseudo-random values (seeded by its id) on each tick."""

    def __init__(self, cfg: dict[str, int]) -> None:
        super().__init__(cfg)
        self.ident = cfg["id"]
        self.left = cfg["readings"]
        self.rng = random.Random(self.ident)

    def on_tick(self, now: float) -> None:
        batch = min(self.left, 25)
        for _ in range(batch):
            self.emit(Publish(CHANNEL, (self.ident, self.rng.uniform(10.0, 30.0))))
        self.left -= batch
        if self.left == 0:
            self.emit(Publish(CHANNEL, (self.ident, None)))  # "I am done"
            self.closing = True


class Aggregator(Task):
    """Collects readings until every sensor said it is done, then reports."""

    def __init__(self, cfg: int) -> None:
        super().__init__(cfg)
        self.expected = cfg
        self.values: list[float] = []
        self.done: set[int] = set()
        self.emit(Subscribe(CHANNEL))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is BusMessage:
            ident, value = event.msg
            if value is None:
                self.done.add(ident)
                if len(self.done) == self.expected:
                    v = self.values
                    summary = (len(v), min(v), max(v), sum(v) / len(v))
                    self.emit(ExtOut(("summary", *summary)))
                    self.closing = True
            else:
                self.values.append(value)
        elif type(event) is Ext:
            self.emit(ExtOut(("progress", len(self.values))))


async def main(sensors: int = 3, readings: int = 100, backend: str | None = None) -> tuple:
    kinds = {"sensor": Sensor, "aggregator": Aggregator}
    async with Runtime(kinds, workers=1, backend=backend, tick=0.01) as rt:
        agg = await rt.spawn("aggregator", sensors)
        refs = [await rt.spawn("sensor", {"id": i, "readings": readings}) for i in range(sensors)]
        kinds_on_worker = {r.kind for r in [agg, *refs] if r.worker == 0}
        summary = None
        ended = 0
        while summary is None or ended < sensors + 1:
            event = await asyncio.wait_for(rt.next_event(), 10)
            if isinstance(event, TaskOutput) and event.msg[0] == "summary":
                summary = event.msg[1:]
            elif isinstance(event, TaskEnded):
                ended += 1
    count, low, high, mean = summary
    print(
        f"multi_types: kinds {sorted(kinds_on_worker)} on worker 0; {sensors} sensors -> "
        f"aggregator: {count} readings, min {low:.2f}, max {high:.2f}, mean {mean:.2f}"
    )
    return summary


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sensors", type=int, default=3)
    p.add_argument("--readings", type=int, default=100)
    p.add_argument("--backend", default=None)
    a = p.parse_args()
    asyncio.run(main(a.sensors, a.readings, a.backend))
