"""One UDP port per worker: with ``udp_port=P`` every session of worker ``i`` uses ``P+i``.

Real aiortc publishers and viewers inside the test's private network namespace: the
answers' candidates carry the port of the room's worker, several publishers share one
port and each viewer decodes its own stream, with worker threads and with worker
processes; a port already in use is a start error that names it; ``public_ip`` stands
for the host address in the candidates.
"""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import pytest

from sansio_aio import webrtc as client
from sansio_aio.testing import LoopThread, PrivateNetwork
from tests.webrtc.support import ServeFactory, free_ports, make_offer

FRAMES = 30
TIMEOUT = 20.0
SERVER = "10.99.0.1"
SDP = {"Content-Type": "application/sdp"}


def candidate_ports(sdp: str) -> set[int]:
    """Ports of every candidate in ``sdp``."""
    return {int(line.split()[5]) for line in sdp.splitlines() if line.startswith("a=candidate:")}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["thread", "process"])
async def test_sessions_share_their_workers_port(
    serve: ServeFactory, peers: LoopThread, netns: PrivateNetwork, mode: str
) -> None:
    port = await free_ports(netns, 2)
    async with serve(workers=2, mode=mode, udp_port=port) as s:
        base = s.inner
        rooms = ("a", "b", "c")  # three rooms on two workers: two of them share a port

        async def scenario() -> tuple[list[str], list[str], list[int]]:
            pubs = [
                await client.publish(f"{base}/whip/{r}", [client.PatternTrack()]) for r in rooms
            ]
            viewers = [await client.view(f"{base}/whep/{r}") for r in rooms]
            counts = [await v.wait_frames(FRAMES, TIMEOUT) for v in viewers]
            answers = [p.pc.remoteDescription.sdp for p in pubs]
            views = [v.pc.remoteDescription.sdp for v in viewers]
            for session in viewers + pubs:
                await session.delete()
                await session.close()
            return answers, views, counts

        answers, views, counts = await peers.run(scenario(), 90)
        assert min(counts) >= FRAMES, counts
        workers = [s.server.rooms[r].worker for r in rooms]
        assert set(workers) == {0, 1}  # and two of the three rooms share a worker's port
        for room, worker, answer, view in zip(rooms, workers, answers, views, strict=True):
            assert candidate_ports(answer) == {port + worker}, (room, answer)
            assert candidate_ports(view) == {port + worker}, (room, view)
        if mode == "thread":
            stats: list[dict[str, Any]] = [
                await s.server.rt.run_on_worker(w, lambda c: dict(c.drivers[0].stats()))
                for w in (0, 1)
            ]
            assert all(st["webrtc_udp_sockets"] >= 1 for st in stats)
            assert sum(st["webrtc_udp_accepted"] for st in stats) > 0


@pytest.mark.parametrize("mode", ["thread", "process"])
async def test_port_in_use_is_a_clear_error(
    serve: ServeFactory, netns: PrivateNetwork, mode: str
) -> None:
    port = await free_ports(netns, 2)

    def hold() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((SERVER, port + 1))  # worker 1's port
        return sock

    taken = netns.run_inside(hold)
    try:
        with pytest.raises(Exception, match=rf"UDP port {port + 1}\b.*worker 1") as info:
            async with serve(workers=2, mode=mode, udp_port=port):
                pass
        assert "in use" in str(info.value)
    finally:
        taken.close()


@pytest.mark.parametrize("shared", [False, True], ids=["per_session", "one_port"])
async def test_public_ip_is_advertised(
    serve: ServeFactory, peers: LoopThread, netns: PrivateNetwork, shared: bool
) -> None:
    port = await free_ports(netns, 1) if shared else 0
    public = "203.0.113.7"
    async with (
        serve(workers=1, udp_port=port, public_ip=public) as s,
        aiohttp.ClientSession() as http,
    ):
        offer = await make_offer(peers, "whip")
        async with http.post(f"{s.url}/whip/live", data=offer, headers=SDP) as r:
            answer = await r.text()
            assert r.status == 201, answer
    hosts = {line.split()[4] for line in answer.splitlines() if line.startswith("a=candidate:")}
    assert hosts == {public}
    if shared:
        assert candidate_ports(answer) == {port}
