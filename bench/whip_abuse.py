"""whip_abuse: the WHIP/WHEP server under sustained hostile input, resources measured.

The server runs as its own process inside a private network namespace (two worker
threads, a token, a stream key, one UDP port per worker). Two rooms each get a publisher
and two viewers. Then every attack of ``bench/_abuse.py`` runs 3 rounds at scale
(HTTP: unauthenticated reads, hijacks, abusive offers, bad rooms, WHEP to nowhere, bad
trickle, bursts, slow clients, held connections, broken heads; UDP: bad datagrams and a
flood to each session's port from another address).

Measured: the server's memory (RSS), open fds and threads before the attacks, after each
round and after a settle; the sessions that survived; the viewers' frames during the
attacks; every status the attacks got. Two servers, one after the other: the defaults,
where most attacks meet the rate limit and the per-address connection cap (429s and
closed connections), and the same server with those two off, so every request reaches
the checks behind them (the baseline). The metric is the share of live sessions that
survived (1.0 is the goal); the resource growth of each server is beside it.
``python -m bench whip_abuse`` (about a minute); ``run(quick=True)`` checks it works.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench._abuse import (
    Report,
    Scale,
    answer_port,
    answer_ufrag,
    held_connections,
    http_attacks,
    malformed_http,
    slow_clients,
    udp_attacks,
)
from bench.common import write_result
from bench.whep_fanout import run_pinned

ROOT = Path(__file__).resolve().parent.parent
OPERATOR = "bench-operator-token"
KEYS = {"a": "key-a-0123456789", "b": "key-b-0123456789"}
SERVER_ADDR = "10.99.0.1"
UDP_PORT = 41000


#: The two servers measured: the defaults (rate limit and connection caps at the front
#: door), and the same with those off, so every attack reaches the checks behind them.
CONFIGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "no_front_door": {"rate_limit": 0.0, "max_connections_per_ip": 1000},
}


def serve_main(kind: str) -> None:
    """Child process: run the server, print ``PORT <n>``, serve until SIGTERM."""
    from sansio_aio.webrtc import ServerConfig, open_server

    async def main() -> None:
        config = ServerConfig(
            host="127.0.0.1",
            port=0,
            workers=2,
            tokens=(OPERATOR,),
            keys=tuple(KEYS.items()),
            udp_port=UDP_PORT,
            header_timeout=2.0,
            body_timeout=2.0,
            **CONFIGS[kind],
        )
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with open_server(config) as server:
            print("PORT", server.url.rsplit(":", 1)[1], flush=True)
            await stop.wait()

    asyncio.run(main())


def _resources(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_kb": int(fields["VmRSS"].split()[0]),
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


async def _measure_all(rounds: int, scale: Scale) -> dict[str, dict[str, Any]]:
    return {kind: await _measure(kind, rounds, scale) for kind in CONFIGS}


async def _measure(kind: str, rounds: int, scale: Scale) -> dict[str, Any]:
    from sansio_aio import webrtc as client
    from sansio_aio.testing import PrivateNetwork

    net = PrivateNetwork()
    peers = net.loop_thread("abuse")
    proc = net.popen(
        [sys.executable, "-m", "bench.whip_abuse", "serve", kind],
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        base = f"http://127.0.0.1:{int(line.split()[1])}"

        async def connect() -> tuple[list[Any], list[Any], list[str]]:
            pubs, viewers, answers = [], [], []
            for room, key in KEYS.items():
                pub = await client.publish(
                    f"{base}/whip/{room}", [client.PatternTrack()], token=key
                )
                pubs.append(pub)
                answers.append(pub.pc.remoteDescription.sdp)
                viewers += [
                    await client.view(f"{base}/whep/{room}", token=OPERATOR) for _ in range(2)
                ]
            for v in viewers:
                await v.wait_frames(30, 20)
            return pubs, viewers, answers

        pubs, viewers, answers = await peers.run(connect(), 60)
        good = answers[0]  # any SDP passes as the "good" body of the offer variants
        before = _resources(proc.pid)
        samples = [before]
        report = Report()
        host, port = "127.0.0.1", int(base.rsplit(":", 1)[1])
        slow_closed: list[float | None] = []
        held = [0, 0]
        frames_at_start = sum(v.frames for v in viewers)

        async def attack_round() -> None:
            for pub in pubs:
                await http_attacks(
                    base,
                    good,
                    victim=pub.location,
                    victim_etag=pub.etag,
                    token=OPERATOR,
                    scale=scale,
                    report=report,
                )
            slow_closed.extend(await slow_clients(host, port, scale))
            still, refused = await held_connections(host, port, scale)
            held[0] = max(held[0], still)
            held[1] += refused
            for status, n in (await malformed_http(host, port, scale)).items():
                for _ in range(n):
                    report.add("malformed_http", status)
            for answer in answers:
                target = (SERVER_ADDR, answer_port(answer, SERVER_ADDR) or 0)
                sent = await asyncio.to_thread(
                    udp_attacks,
                    target,
                    SERVER_ADDR,
                    server_ufrag=answer_ufrag(answer),
                    scale=scale,
                    seconds=20,
                )
                for name, n in sent.items():
                    report.results.setdefault("udp_sent", Counter())[name] += n

        for _ in range(rounds):
            await peers.run(attack_round(), 300)
            samples.append(_resources(proc.pid))

        async def settle() -> tuple[int, int]:
            frames = sum(v.frames for v in viewers)
            alive = 0
            for v in viewers:
                if await v.wait_frames(v.frames + 30, 10) >= 30:
                    alive += 1
            return alive, sum(v.frames for v in viewers) - frames

        alive, frames_after = await peers.run(settle(), 120)
        after = _resources(proc.pid)

        async def leave() -> None:
            for s in viewers + pubs:
                await s.close()

        await peers.run(leave(), 30)
        return {
            "sessions": len(viewers),
            "viewers_alive": alive,
            "frames_during_attacks": sum(v.frames for v in viewers) - frames_at_start,
            "frames_after": frames_after,
            "before": before,
            "after": after,
            "samples": samples,
            "statuses": {k: dict(sorted(v.items(), key=str)) for k, v in report.results.items()},
            "slow_clients_closed": sum(1 for t in slow_closed if t is not None),
            "slow_clients": len(slow_closed),
            "slow_client_max_s": max((t for t in slow_closed if t is not None), default=None),
            "held_connections_max_open": held[0],
            "held_connections_refused": held[1],
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(Exception):
            peers.stop()
        net.close()


def run(quick: bool = False) -> dict[str, Any]:
    """Measure and write ``bench/results/whip_abuse.json``; return the record."""
    rounds = 1 if quick else 3
    scale = (
        Scale(requests=5, slow_clients=4, held_connections=40, datagrams=5, flood=1000)
        if quick
        else Scale(requests=40, slow_clients=40, held_connections=200, datagrams=200, flood=50_000)
    )
    results = run_pinned("whip_abuse", _measure_all(rounds, scale))
    servers: dict[str, Any] = {}
    for kind, r in results.items():
        before, after = r.pop("before"), r.pop("after")
        servers[kind] = {
            "survived": round(r["viewers_alive"] / r["sessions"], 3),
            "rss_growth_kb": after["rss_kb"] - before["rss_kb"],
            "fds_growth": after["fds"] - before["fds"],
            "threads_growth": after["threads"] - before["threads"],
            "resources_before": before,
            "resources_after": after,
            **r,
        }
    ours, open_door = servers["defaults"], servers["no_front_door"]
    return write_result(
        "whip_abuse",
        metric="share of live viewer sessions still decoding after the attacks (defaults)",
        value=ours["survived"],
        baseline="the same server with rate limit and per-address connection cap off",
        baseline_value=open_door["survived"],
        params={"rounds": rounds, "scale": scale.__dict__, "quick": quick},
        servers=servers,
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve_main(sys.argv[2])
    else:
        print(run(quick="--quick" in sys.argv))
