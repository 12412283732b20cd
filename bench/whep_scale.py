"""whep_scale: the WHIP/WHEP server on 2 worker processes vs 1 worker, same run.

A room lives on one worker, so a server spreads over cores by rooms: each server here
gets two rooms with a publisher each (320x240 at 30 fps), and a step of N viewers puts
N/2 on each room. Viewers use the decoded relay (``relay="decoded"``: aiortc re-encodes
VP8 per viewer), the server's CPU-bound mode, so the server and not the load generator is
what runs out first (the encoded relay costs ~0.002 core per viewer: on this 2-core
machine the load generator would saturate long before the server, see whep_fanout).

* **one worker**: ``workers=1`` (thread mode), both rooms on it, the server process
  pinned to CPU 1;
* **two worker processes**: ``workers=2, mode="process"``: one room per worker process,
  on both CPUs (the load generator, pinned to CPU 0, shares one of them).

A step holds when every viewer gets >= 25 fps; the servers take turns step by step. The
metric is the most viewers held by the 2-process server, the baseline the 1-worker one.
``python -m bench whep_scale`` (about 2 minutes); ``run(quick=True)`` checks it works.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from bench.common import write_result
from bench.whep_fanout import FPS_FLOOR, ROOT, _Server, _step, run_pinned

FULL_STEPS = (4, 8, 12, 16, 20, 24, 32, 40, 48, 56, 64)
QUICK_STEPS = (2,)
ROOMS = ("a", "b")


async def _start(kind: str, net: Any) -> _Server:
    workers, mode = ("2", "process") if kind == "two_processes" else ("1", "thread")
    env = {
        **os.environ,
        "WHEP_FANOUT_WORKERS": workers,
        "WHEP_FANOUT_MODE": mode,
        "WHEP_FANOUT_CPUS": "0,1" if kind == "two_processes" else "1",
        "PYTHONPATH": str(ROOT),
    }
    proc = net.popen(
        [sys.executable, "-m", "bench.whep_fanout", "serve", "sansio_aio_decoded"],
        cwd=str(ROOT),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        return _Server(kind, proc, int(line.split()[1]))
    except BaseException:
        proc.kill()
        proc.wait()
        raise


async def _load(servers: list[_Server], steps: Sequence[int], settle: float, window: float) -> None:
    from sansio_aio import webrtc as client

    for server in servers:
        for room in ROOMS:
            track = client.PatternTrack(320, 240, 30)
            publisher = await client.publish(f"{server.base}/whip/{room}", [track])
            server.publishers.append(publisher)
    try:
        for i, viewers in enumerate(steps):
            order = servers[i % len(servers) :] + servers[: i % len(servers)]
            for server in order:
                if server.failed:
                    continue
                row = await _step(server, viewers, settle, window, ROOMS)
                server.rows.append(row)
                server.failed = row["min_fps"] < FPS_FLOOR
            if all(server.failed for server in servers):
                break
    finally:
        for server in servers:
            for publisher in server.publishers:
                await publisher.close()


async def _measure(steps: Sequence[int], settle: float, window: float) -> dict[str, Any]:
    from sansio_aio.testing import PrivateNetwork

    net = PrivateNetwork()
    peers = net.loop_thread("scale-peers")
    servers: list[_Server] = []
    try:
        for kind in ("one_worker", "two_processes"):
            servers.append(await _start(kind, net))  # noqa: PERF401
        await peers.run(_load(servers, steps, settle, window), 900)
        out = {}
        for server in servers:
            held = [r for r in server.rows if r["min_fps"] >= FPS_FLOOR]
            out[server.kind] = {
                "max_viewers": held[-1]["viewers"] if held else 0,
                "steps": server.rows,
            }
        return out
    finally:
        for server in servers:
            await asyncio.to_thread(server.stop)
        peers.stop()
        net.close()


def run(quick: bool = False) -> dict[str, Any]:
    """Measure and write ``bench/results/whep_scale.json``; return the record."""
    steps = QUICK_STEPS if quick else FULL_STEPS
    settle, window = (0.5, 1.0) if quick else (1.5, 2.5)
    results = run_pinned("whep_scale", _measure(steps, settle, window))
    two, one = results["two_processes"], results["one_worker"]
    return write_result(
        "whep_scale",
        metric=f"viewers held at >= {FPS_FLOOR:g} fps, decoded relay, 2 rooms",
        value=two["max_viewers"],
        baseline="the same server with one worker (both rooms on it)",
        baseline_value=one["max_viewers"],
        params={
            "steps": list(steps),
            "settle_s": settle,
            "window_s": window,
            "video": "320x240@30 VP8, re-encoded per viewer",
            "rooms": len(ROOMS),
            "quick": quick,
        },
        target_ratio=1.6,
        steps={k: v["steps"] for k, v in results.items()},
    )
