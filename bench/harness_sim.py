"""harness_sim: what 10,000 simulated packets cost through the test harness.

One UDP echo task (the same class everywhere) receives 10,000 datagrams and answers
each, driven four ways in the same run, rounds interleaved, medians kept:

* ``hand`` (the baseline): a plain loop calls ``on_event`` then ``pop_output`` until
  ``None`` for each prepared ``UdpPacket``, as a hand-written test would;
* ``harness``: ``TaskHarness.feed`` for each packet (fake clock, strict protocol checks,
  trace on, every output collected);
* ``sim``: ``SimRuntime`` on 1 worker with the simulated network: a client task sends
  the 10,000 datagrams over a 1 ms link, the echo answers, the client counts the
  replies (so 20,000 network packets, every one through the real ``WorkerCore`` drain,
  the simulated UDP driver and a clock timer), trace off;
* ``sim_traced``: the same with the trace on (every input, output and packet fate
  formatted as text).

The metric is the wall time of the ``sim`` run for 10,000 datagrams (lower is better);
the ratio is hand / sim. Nothing here is asserted: run ``python -m bench harness_sim``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.common import interleaved, median, write_result
from sansio_aio import ExtOut, Task
from sansio_aio.net import UdpBind, UdpBound, UdpPacket, UdpSend
from sansio_aio.testing import LinkConditions, SimRuntime, TaskHarness

PACKETS = 10_000
ROUNDS = 5
PEER = ("127.0.0.1", 40001)


class Echo(Task):
    """Binds 127.0.0.1:7 and sends every datagram back to its source."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.emit(UdpBind(("127.0.0.1", 7)))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is UdpPacket:
            self.emit(UdpSend(event.slot, event.source, event.data))


class Client(Task):
    """Sends ``cfg`` datagrams to the echo at once; reports when all came back."""

    def __init__(self, cfg: int) -> None:
        super().__init__(cfg)
        self.left = cfg
        self.emit(UdpBind(("127.0.0.1", 0)))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is UdpBound:
            payload = b"x" * 64
            for _ in range(self.cfg):
                self.emit(UdpSend(event.slot, ("127.0.0.1", 7), payload))
        elif type(event) is UdpPacket:
            self.left -= 1
            if self.left == 0:
                self.emit(ExtOut(("done", now)))


def _packets(n: int) -> list[UdpPacket]:
    return [UdpPacket(1, PEER, b"x" * 64) for _ in range(n)]


def hand(n: int) -> dict[str, float]:
    """The baseline: a plain loop over the task protocol."""
    packets = _packets(n)
    task = Echo()
    while task.pop_output(0.0) is not None:
        pass
    sent = 0
    t0 = time.perf_counter()
    on_event, pop = task.on_event, task.pop_output
    now = 0.0
    for packet in packets:
        on_event(now, packet)
        out = pop(now)
        while out is not None:
            sent += 1
            out = pop(now)
    took = time.perf_counter() - t0
    assert sent == n
    return {"seconds": took}


def harness(n: int) -> dict[str, float]:
    """``TaskHarness.feed`` per packet (strict, traced)."""
    packets = _packets(n)
    h = TaskHarness(Echo, tick=None)
    h.feed(UdpBound(1, ("127.0.0.1", 7)))
    t0 = time.perf_counter()
    feed = h.feed
    for packet in packets:
        feed(packet)
    took = time.perf_counter() - t0
    assert len(h.log) == n + 1
    return {"seconds": took}


def sim(n: int, *, traced: bool) -> dict[str, float]:
    """Client and echo on a SimRuntime over a 1 ms simulated link."""

    async def scenario() -> float:
        rt = SimRuntime({"echo": Echo, "client": Client}, workers=1, trace=traced)
        rt.net.set_default(LinkConditions(latency=0.001))
        async with rt:
            await rt.spawn("echo")
            t0 = time.perf_counter()
            await rt.spawn("client", n)
            event = await rt.next_event()
            took = time.perf_counter() - t0
            assert event.msg[0] == "done", event  # type: ignore[union-attr]
            assert rt.net.stats.delivered == 2 * n
        return took

    return {"seconds": asyncio.run(scenario())}


def run(packets: int = PACKETS, rounds: int = ROUNDS) -> dict[str, Any]:
    """Measure the four variants side by side and write ``bench/results/harness_sim.json``."""
    results = interleaved(
        {
            "hand": lambda: hand(packets),
            "harness": lambda: harness(packets),
            "sim": lambda: sim(packets, traced=False),
            "sim_traced": lambda: sim(packets, traced=True),
        },
        rounds,
    )
    med = {name: median([r["seconds"] for r in rs]) for name, rs in results.items()}
    per_packet_us = {name: 1e6 * s / packets for name, s in med.items()}
    return write_result(
        "harness_sim",
        metric=f"seconds for {packets} datagrams through SimRuntime + SimNetwork (echoed)",
        value=round(med["sim"], 4),
        baseline="the same echo task driven by hand in a plain loop",
        baseline_value=round(med["hand"], 4),
        higher_is_better=False,
        params={"packets": packets, "rounds": rounds, "payload": 64, "latency": 0.001},
        seconds=med,
        us_per_packet={k: round(v, 3) for k, v in per_packet_us.items()},
        packets_per_s={k: round(packets / s) for k, s in med.items()},
        note=(
            "hand: on_event + pop_output loop; harness: TaskHarness.feed (strict, traced); "
            "sim: SimRuntime, 1 worker, client+echo over SimNetwork (2 network packets per "
            "datagram), trace off; sim_traced: same with the trace on"
        ),
    )


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
