"""WHEP fan-out: CPU per viewer and the most viewers one worker holds at >= 25 fps.

Three servers, measured the same way in the same run, each in its own process (pinned
to CPU 1) inside one private network namespace made for the run:

* **sansio_aio**: ``examples/whip_whep``'s server (``open_server``) with ``workers=1``
  and its default ``relay="encoded"``: the room task on one worker, the aiortc driver
  forwarding the publisher's encoded VP8 frames to every viewer (no re-encode).
* **sansio_aio_decoded**: the same server with ``relay="decoded"``: one ``MediaRelay``
  (``buffered=False``) of decoded frames, re-encoded by every viewer's sender, which
  is aiortc's own way and the apples-to-apples check of the runtime's overhead.
* **baseline**: aiortc's own MediaRelay example setup, written by hand: one aiohttp app
  and every peer connection on one asyncio loop, ``relay.subscribe(track)`` per viewer
  and a ``MediaBlackhole`` keeping the publisher consumed, behind the same WHIP/WHEP
  POSTs (so the client code is identical).

Load (the bench process, pinned to CPU 0, peers in the namespace): one publisher per
server sending a generated 320x240 video at 30 fps, then steps of N viewers. Viewers
count complete encoded frames without decoding them (``view(decode=False)``), so the
load generator stays light. A step opens N viewers on one server, lets them settle,
measures every viewer's fps and the server process's CPU (``/proc/<pid>/stat``) over a
window, and closes them. The servers take turns step by step, in a rotating order, so
machine noise hits all of them. A step "holds" when every viewer gets >= 25 fps; a
server stops at its first failed step. Reported: the most viewers held (the metric),
CPU per viewer (CPU above the publisher-only level, divided by the viewers, at the
largest step held), and every step with the load generator's own CPU (``load_cpu``).

Knobs for experiments (environment of the run): ``WHEP_FANOUT_BACKEND`` picks the
sansio_aio worker backend (default uvloop); ``WHEP_FANOUT_UNBUFFERED=1`` makes the
baseline subscribe with ``buffered=False`` like sansio_aio does; ``WHEP_FANOUT_WORKERS``
and ``WHEP_FANOUT_MODE`` set the server's workers (``bench/whep_scale.py`` uses them).

``python -m bench whep_fanout`` runs the full set (viewer steps up to 128, about two
minutes); ``run(quick=True)`` is a quick check (1 and 2 viewers, short windows).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bench.common import write_result

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FPS_FLOOR = 25.0
FULL_STEPS = (1, 8, 16, 24, 32, 48, 64, 96, 128)
QUICK_STEPS = (1, 2)
CLK_TCK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


# ------------------------------------------------------------------ servers (child side)


async def _serve_sansio(ready: asyncio.Future[int]) -> None:
    from sansio_aio.webrtc import ServerConfig, open_server

    backend = os.environ.get("WHEP_FANOUT_BACKEND") or None
    cpus = os.environ.get("WHEP_FANOUT_CPUS")
    if cpus:  # before the workers start: they inherit it
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    config = ServerConfig(
        port=0,
        workers=int(os.environ.get("WHEP_FANOUT_WORKERS", "1")),
        mode=os.environ.get("WHEP_FANOUT_MODE", "thread"),
        pages=False,
        max_sessions=1000,
        max_sessions_per_room=1000,
        backend=backend,
        relay=os.environ.get("WHEP_FANOUT_RELAY", "encoded"),
    )
    async with open_server(config) as server:
        ready.set_result(int(server.url.rsplit(":", 1)[1]))
        await asyncio.Event().wait()


async def _serve_baseline(ready: asyncio.Future[int]) -> None:
    """aiortc's MediaRelay example setup, behind WHIP/WHEP POSTs, on one loop."""
    from aiohttp import web
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaBlackhole, MediaRelay

    relay = MediaRelay()
    tracks: dict[str, Any] = {}
    pcs: set[RTCPeerConnection] = set()
    holes: list[MediaBlackhole] = []
    jobs: set[asyncio.Future[None]] = set()

    async def answer(pc: RTCPeerConnection, offer: str) -> web.Response:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        return await finish(pc)

    async def finish(pc: RTCPeerConnection) -> web.Response:
        await pc.setLocalDescription(await pc.createAnswer())
        return web.Response(
            status=201,
            text=pc.localDescription.sdp,
            content_type="application/sdp",
            headers={"Location": f"/session/{id(pc)}"},
        )

    async def whip(request: web.Request) -> web.Response:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.add(pc)

        @pc.on("track")
        def on_track(track: Any) -> None:
            tracks[track.kind] = track
            hole = MediaBlackhole()  # the example keeps incoming media consumed
            hole.addTrack(relay.subscribe(track))
            holes.append(hole)
            jobs.add(asyncio.ensure_future(hole.start()))

        return await answer(pc, await request.text())

    async def whep(request: web.Request) -> web.Response:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.add(pc)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=await request.text(), type="offer"))
        if "video" in tracks:
            buffered = os.environ.get("WHEP_FANOUT_UNBUFFERED") != "1"
            pc.addTrack(relay.subscribe(tracks["video"], buffered=buffered))
        return await finish(pc)

    app = web.Application()
    app.router.add_post("/whip/{room}", whip)
    app.router.add_post("/whep/{room}", whep)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    ready.set_result(int(runner.addresses[0][1]))
    try:
        await asyncio.Event().wait()
    finally:
        for pc in pcs:
            await pc.close()
        await runner.cleanup()


def serve_main(kind: str) -> None:
    """Child process entry: serve, print ``PORT <n>``, run until SIGTERM."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[int] = loop.create_future()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        if kind == "sansio_aio_decoded":
            os.environ["WHEP_FANOUT_RELAY"] = "decoded"
        serve = _serve_baseline if kind == "baseline" else _serve_sansio
        job = asyncio.ensure_future(serve(ready))
        print(f"PORT {await ready}", flush=True)
        await stop.wait()
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job

    asyncio.run(main())


# ------------------------------------------------------------------ load (bench side)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


class _Server:
    """One server process under test, with its publisher."""

    def __init__(self, kind: str, proc: subprocess.Popen[bytes], port: int) -> None:
        self.kind = kind
        self.proc = proc
        self.base = f"http://127.0.0.1:{port}"
        self.publisher: Any = None
        self.publishers: list[Any] = []  # several rooms (whep_scale)
        self.rows: list[dict[str, Any]] = []
        self.failed = False

    def cpu(self) -> float:
        """CPU seconds of the server process and of its children (worker processes)."""
        return tree_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _start_server(kind: str, net: Any) -> _Server:
    proc = net.popen(
        [sys.executable, "-m", "bench.whep_fanout", "serve", kind],
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    with contextlib.suppress(OSError):
        os.sched_setaffinity(proc.pid, {1})
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        return _Server(kind, proc, int(line.split()[1]))
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of process ``pid`` and of its children (e.g. worker processes)."""
    total = _cpu_seconds(pid)
    for child in _children(pid):
        with contextlib.suppress(OSError):
            total += _cpu_seconds(child)
    return total


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


async def _step(
    server: _Server,
    viewers: int,
    settle: float,
    window: float,
    rooms: Sequence[str] = ("bench",),
) -> dict[str, Any]:
    """Open ``viewers`` viewers on ``server`` (spread over ``rooms``), measure one window,
    close them."""
    from sansio_aio import webrtc as client  # view, publish, PatternTrack

    sessions = [
        await client.view(f"{server.base}/whep/{rooms[i % len(rooms)]}", decode=False)
        for i in range(viewers)
    ]
    try:
        await asyncio.sleep(settle)
        frames0 = [v.frames for v in sessions]
        cpu0, load0, t0 = server.cpu(), _cpu_seconds(os.getpid()), time.monotonic()
        await asyncio.sleep(window)
        cpu1, load1, t1 = server.cpu(), _cpu_seconds(os.getpid()), time.monotonic()
    finally:
        for v in sessions:
            await v.close()
    span = t1 - t0
    fps = [(v.frames - f) / span for v, f in zip(sessions, frames0, strict=True)]
    return {
        "viewers": viewers,
        "server_cpu": round((cpu1 - cpu0) / span, 3),
        "load_cpu": round((load1 - load0) / span, 3),
        "min_fps": round(min(fps), 1) if fps else None,
        "mean_fps": round(sum(fps) / len(fps), 1) if fps else None,
    }


async def _load(servers: list[_Server], steps: Sequence[int], settle: float, window: float) -> None:
    """Runs on the peers' loop: publishers, then viewer steps alternating the servers."""
    from sansio_aio import webrtc as client  # view, publish, PatternTrack

    for server in servers:
        track = client.PatternTrack(320, 240, 30)
        server.publisher = await client.publish(f"{server.base}/whip/bench", [track])
    try:
        for server in servers:
            server.rows.append(await _step(server, 0, settle, window))
        for i, viewers in enumerate(steps):
            order = servers[i % len(servers) :] + servers[: i % len(servers)]
            for server in order:
                if server.failed:
                    continue
                row = await _step(server, viewers, settle, window)
                server.rows.append(row)
                server.failed = row["min_fps"] < FPS_FLOOR
            if all(server.failed for server in servers):
                break
    finally:
        for server in servers:
            if server.publisher is not None:
                await server.publisher.close()


def _summary(server: _Server) -> dict[str, Any]:
    rows = server.rows
    idle = rows[0]["server_cpu"]
    held = [r for r in rows[1:] if r["min_fps"] >= FPS_FLOOR]
    best = held[-1] if held else None
    ref = best or (rows[1] if len(rows) > 1 else None)
    return {
        "steps": rows,
        "publisher_only_cpu": idle,
        "max_viewers": best["viewers"] if best else 0,
        "cpu_per_viewer": (
            round((ref["server_cpu"] - idle) / ref["viewers"], 4)
            if ref and ref["viewers"]
            else None
        ),
    }


async def _measure(steps: Sequence[int], settle: float, window: float) -> dict[str, Any]:
    from sansio_aio.testing import PrivateNetwork

    net = PrivateNetwork()
    peers = net.loop_thread("fanout-peers")
    servers: list[_Server] = []
    try:
        for kind in ("sansio_aio", "sansio_aio_decoded", "baseline"):
            servers.append(await _start_server(kind, net))  # noqa: PERF401
        await peers.run(_load(servers, steps, settle, window), 900)
        return {server.kind: _summary(server) for server in servers}
    finally:
        for server in servers:
            await asyncio.to_thread(server.stop)
        peers.stop()
        net.close()


def run_pinned(name: str, measure: Coroutine[Any, Any, T]) -> T:
    """Run ``measure`` with this (load) process pinned to CPU 0, in a place where private
    network namespaces can be made (else exit saying why)."""
    from sansio_aio.testing import privnet_unavailable_reason

    reason = privnet_unavailable_reason()
    if reason is not None:
        measure.close()
        raise SystemExit(f"{name} bench cannot run here: {reason}")
    old = os.sched_getaffinity(0)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {0})
    try:
        return asyncio.run(measure)
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, old)


def run(quick: bool = False) -> dict[str, Any]:
    """Measure and write ``bench/results/whep_fanout.json``; return the record."""
    steps = QUICK_STEPS if quick else FULL_STEPS
    settle, window = (0.5, 1.0) if quick else (1.0, 2.5)
    results = run_pinned("whep_fanout", _measure(steps, settle, window))
    ours, base = results["sansio_aio"], results["baseline"]
    decoded = results["sansio_aio_decoded"]
    return write_result(
        "whep_fanout",
        metric=f"viewers held at >= {FPS_FLOOR:g} fps (320x240 30 fps, one worker)",
        value=ours["max_viewers"],
        baseline="aiortc MediaRelay example setup (one loop, relay.subscribe per viewer)",
        baseline_value=base["max_viewers"],
        params={
            "steps": list(steps),
            "settle_s": settle,
            "window_s": window,
            "video": "320x240@30 VP8",
            "quick": quick,
            "cpu_pinning": "server on CPU 1, load on CPU 0",
        },
        cpu_per_viewer=ours["cpu_per_viewer"],
        baseline_cpu_per_viewer=base["cpu_per_viewer"],
        cpu_per_viewer_ratio=(
            round(base["cpu_per_viewer"] / ours["cpu_per_viewer"], 3)
            if ours["cpu_per_viewer"] and base["cpu_per_viewer"]
            else None
        ),
        publisher_only_cpu=ours["publisher_only_cpu"],
        baseline_publisher_only_cpu=base["publisher_only_cpu"],
        decoded_relay_value=decoded["max_viewers"],
        decoded_relay_cpu_per_viewer=decoded["cpu_per_viewer"],
        decoded_relay_ratio=(
            round(decoded["max_viewers"] / base["max_viewers"], 3) if base["max_viewers"] else None
        ),
        steps={k: v["steps"] for k, v in results.items()},
    )


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        serve_main(sys.argv[2])
    else:
        import json

        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
