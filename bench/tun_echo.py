"""TUN echo throughput: the runtime's echo task against a hand-written responder.

Both run in one private network namespace made for the run, on the same kind of event
loop, with the same echo logic (``examples/tun_echo.echo_ipv4``), on a TUN device of
their own (IPv6 off, so no chatter):

* **sansio_aio**: ``Runtime(workers=1, drivers=[TunDriver])`` with one ``EchoTask``;
  packets go os.read -> ``TunPacket`` -> task -> ``TunSend`` -> os.write through the
  worker's drain.
* **baseline**: a plain ``loop.add_reader`` callback that reads up to 64 packets per
  readiness with os.read, then calls ``echo_ipv4`` and os.write for each, and nothing
  else (the same read-a-batch-then-answer shape as the task's batch mode).
* **per_packet** (reported too): the same task with ``batch=False``: one ``TunPacket``
  input and one ``TunSend`` output per packet.

Load: ``packets`` UDP datagrams (84-byte IP packets, one flow) are queued in the
device's transmit queue while the responder cannot read (for the runtime, from inside
its worker thread through ``run_on_worker``; its queue length is raised to hold them
all). The responder then drains them and times itself from the first echoed packet to
the last: packets/s = (packets - 1) / (last - first). Rounds alternate the two variants
(A B, B A, ...); the record holds the medians and every round.

``python -m bench tun_echo`` runs the full set (100 k packets x 5 rounds, well under a
minute); ``run(packets=5000, rounds=1)`` is a quick check.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import interleaved, median, write_result
from sansio_aio._fast import compiled

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.tun_echo import EchoConfig, EchoTask, echo_ipv4  # noqa: E402
from sansio_aio import Runtime, TaskOutput  # noqa: E402
from sansio_aio._backends import resolve_backend  # noqa: E402
from sansio_aio.net import TunDriver, tun_unavailable_reason  # noqa: E402
from sansio_aio.testing import (  # noqa: E402
    netns_unavailable_reason,
    run_in_netns,
    set_sysctl,
    set_txqueuelen,
)

LOCAL = "10.77.0.1"
REMOTE = "10.77.0.2"
PAYLOAD = bytes(56)  # 20 IP + 8 UDP + 56 = 84-byte packets, the size of a default ping
BATCH = 64


def _queue_datagrams(count: int) -> None:
    """Send ``count`` datagrams towards the device (they wait in its queue)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOCAL, 0))
        s.connect((REMOTE, 9))
        send = s.send
        for _ in range(count):
            send(PAYLOAD)


async def _runtime_round(
    packets: int, backend: str, name: str, batch: bool, pure: bool = False
) -> dict[str, float]:
    """One round of the runtime's echo; ``pure`` runs the driver's pure-Python reads (the
    code before the C speedups: thread mode, so switching the module reference is enough)."""
    from sansio_aio.net import _tun as tun_module

    _tun: Any = tun_module
    saved = _tun.speedups
    if pure:
        _tun.speedups = None
    try:
        return await _runtime_round_on(packets, backend, name, batch)
    finally:
        _tun.speedups = saved


async def _runtime_round_on(packets: int, backend: str, name: str, batch: bool) -> dict[str, float]:
    cfg = EchoConfig(
        name=name, address=LOCAL, netmask="255.255.255.0", notify_after=packets, batch=batch
    )
    async with Runtime({"echo": EchoTask}, workers=1, backend=backend, drivers=[TunDriver]) as rt:
        ref = await rt.spawn("echo", cfg, worker=0)
        bound = await asyncio.wait_for(rt.next_event(), 5)
        assert isinstance(bound, TaskOutput) and bound.msg[0] == "bound", bound
        set_txqueuelen(name, packets + 1024)
        await rt.run_on_worker(0, lambda core: _queue_datagrams(packets))
        done = await asyncio.wait_for(rt.next_event(), 60)
        assert isinstance(done, TaskOutput) and done.msg[0] == "done", done
        stats = done.msg[1]
        await rt.request(ref, "stats")  # the task is still healthy
    took = stats["last_at"] - stats["first_at"]
    return {"pps": (packets - 1) / took if took > 0 else 0.0, "seconds": took}


def _baseline_round(packets: int, backend: str, name: str) -> dict[str, float]:
    import pytun

    _, factory = resolve_backend(backend)
    loop = factory()
    dev = pytun.TunTapDevice(name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
    try:
        dev.addr = LOCAL
        dev.netmask = "255.255.255.0"
        dev.mtu = 1500
        dev.up()
        fd = dev.fileno()
        os.set_blocking(fd, False)
        set_txqueuelen(name, packets + 1024)
        _queue_datagrams(packets)
        done: asyncio.Future[None] = loop.create_future()
        state = {"echoed": 0, "first": 0.0, "last": 0.0}
        read, write, monotonic = os.read, os.write, time.monotonic
        size = dev.mtu + 1
        packets_wanted = packets

        def on_readable() -> None:
            packets = []
            for _ in range(BATCH):
                try:
                    packets.append(read(fd, size))
                except BlockingIOError:
                    break
            if not packets:
                return
            now = monotonic()  # one clock reading per batch, as the worker takes
            echoed = state["echoed"]
            if not echoed:
                state["first"] = now
            for data in packets:
                reply = echo_ipv4(data)
                if reply is not None:
                    write(fd, reply)
                    echoed += 1
            state["echoed"] = echoed
            if echoed >= packets_wanted and not done.done():
                state["last"] = now
                done.set_result(None)

        loop.add_reader(fd, on_readable)
        loop.run_until_complete(asyncio.wait_for(done, 60))
        loop.remove_reader(fd)
    finally:
        dev.close()
        loop.close()
    took = state["last"] - state["first"]
    return {"pps": (packets - 1) / took if took > 0 else 0.0, "seconds": took}


def _measure(packets: int, rounds: int, backend: str) -> dict[str, list[dict[str, float]]]:
    set_sysctl("net/ipv6/conf/default/disable_ipv6", 1)
    return interleaved(
        {
            "sansio_aio": lambda: asyncio.run(_runtime_round(packets, backend, "tunrt", True)),
            "per_packet": lambda: asyncio.run(_runtime_round(packets, backend, "tunpp", False)),
            "sansio_aio_pure": lambda: asyncio.run(
                _runtime_round(packets, backend, "tunrq", True, pure=True)
            ),
            "per_packet_pure": lambda: asyncio.run(
                _runtime_round(packets, backend, "tunpq", False, pure=True)
            ),
            "baseline": lambda: _baseline_round(packets, backend, "tunbase"),
        },
        rounds,
    )


def _median_ratio(results: dict[str, list[dict[str, float]]], name: str) -> float:
    """Median over rounds of ``name``'s pps / the baseline's in the same round."""
    pairs = zip(results[name], results["baseline"], strict=True)
    return round(median([a["pps"] / b["pps"] for a, b in pairs if b["pps"]]), 3)


def run(packets: int = 100_000, rounds: int = 5, backend: str = "uvloop") -> dict[str, Any]:
    """Measure and write ``bench/results/tun_echo.json``; return the record."""
    reason = tun_unavailable_reason() or netns_unavailable_reason()
    if reason is not None:
        raise SystemExit(f"tun_echo bench cannot run here: {reason}")
    results = run_in_netns(_measure, packets, rounds, backend)
    ours = [r["pps"] for r in results["sansio_aio"]]
    base = [r["pps"] for r in results["baseline"]]
    single = [r["pps"] for r in results["per_packet"]]
    ratios = [a / b for a, b in zip(ours, base, strict=True) if b]
    single_ratios = [a / b for a, b in zip(single, base, strict=True) if b]
    return write_result(
        "tun_echo",
        metric="packets/s",
        value=round(median(ours)),
        baseline="hand-written add_reader responder (same echo logic, 64 per readiness)",
        baseline_value=round(median(base)),
        params={"packets": packets, "rounds": rounds, "backend": backend, "packet_bytes": 84},
        ratio_per_round=[round(r, 3) for r in ratios],
        median_ratio_per_round=round(median(ratios), 3),
        per_packet_value=round(median(single)),
        per_packet_ratio=round(median(single) / median(base), 3) if base else 0.0,
        per_packet_ratio_per_round=[round(r, 3) for r in single_ratios],
        rounds_pps={name: [round(r["pps"]) for r in rs] for name, rs in results.items()},
        compiled=compiled(),
        pure_path={  # the same runtime with the pure-Python reads: before the C speedups
            "batch_ratio": _median_ratio(results, "sansio_aio_pure"),
            "per_packet_ratio": _median_ratio(results, "per_packet_pure"),
        },
        targets={"per_packet_ratio": 0.9, "batch_ratio": 1.0},
    )


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
