"""Several WHIP/WHEP nodes acting as one, with a real Redis, each node in its own namespace.

A :class:`~sansio_aio.testing.PrivateLan` puts node A, node B, Redis and the clients on
four private network namespaces joined by one bridge (10.98.0.0/24); nothing can leave
it. Each node is ``examples/whip_whep.py --cluster redis://... --node-url ...`` as a
process of its own, with an operator token and short cluster timings (heartbeat 0.2 s,
node TTL 1 s, lease 1.5 s). Real aiortc publishers and viewers (the bundled client,
which follows 307 redirects with its token) count decoded frames:

* publish on A, view on B with ``--cascade off``: 307 to A, frames, the session URL is
  A's, PATCH and DELETE through it; a second publisher for the room on B is sent to A
  (and refused there: 409); ``/stats`` and ``/metrics`` show the cluster;
* with ``--cascade on``: B pulls the room once and serves its own viewers; SIGKILL A: the
  viewer on B is ended, A leaves B's view within the node TTL, and a publisher of the
  room on B gets it;
* Redis stopped: what runs keeps running, new rooms get 503 + Retry-After; Redis back:
  new rooms work again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sansio_aio import webrtc as client
from sansio_aio.testing import LanMember, LoopThread, PrivateLan
from tests.webrtc.redis_server import RedisServer, need_redis
from tests.webrtc.support import ServeFactory, need_netns

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "cluster-operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FRAMES = 30
TIMINGS = [
    "--cluster-heartbeat",
    "0.2",
    "--cluster-node-ttl",
    "1.0",
    "--cluster-lease-ttl",
    "1.5",
    "--disconnected-timeout",
    "3",
    "--edge-idle-timeout",
    "5",
]

pytestmark = pytest.mark.slow


class Node:
    """One node: ``examples/whip_whep.py`` in its own namespace, its output drained."""

    def __init__(
        self,
        member: LanMember,
        name: str,
        redis_url: str,
        cascade: bool,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.url = f"http://{member.address}:8080"
        args = [
            *_python(),
            "examples/whip_whep.py",
            "--host",
            member.address,
            "--port",
            "8080",
            "--workers",
            "1",
            "--cluster",
            redis_url,
            "--node-url",
            self.url,
            "--node-id",
            name,
            "--cascade",
            "on" if cascade else "off",
            "--log-level",
            "INFO",
            *TIMINGS,
            *extra,
        ]
        env = {**os.environ, "WHIP_TOKENS": TOKEN, "PYTHONPATH": str(ROOT)}
        self.proc = member.popen(
            args, cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._drainer = threading.Thread(target=self._drain, name=f"node-{name}", daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:  # closed at the end of the output (the node exited)
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip()
                self.lines.append(line)
                if line.startswith("WHIP/WHEP server on"):
                    self._ready.set()

    async def ready(self, timeout: float = 60.0) -> None:
        """Wait for the node's start line (bounded)."""
        if not await asyncio.to_thread(self._ready.wait, timeout):
            raise AssertionError(f"node {self.name} did not start:\n" + "\n".join(self.lines))

    def kill(self) -> None:
        """SIGKILL the node (its whole process group)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._drainer.join(10)

    def stop(self) -> None:
        """SIGTERM, bounded wait, then SIGKILL."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._drainer.join(10)


def _python() -> list[str]:
    """Run nodes under coverage when the tests are (``make test``)."""
    if "coverage" in sys.modules:
        import coverage

        if coverage.Coverage.current() is not None:
            return [
                sys.executable,
                "-m",
                "coverage",
                "run",
                "--rcfile",
                str(ROOT / "pyproject.toml"),
            ]
    return [sys.executable]


@pytest.fixture
def lan() -> Iterator[PrivateLan]:
    """Nodes A and B, Redis, clients: four namespaces on one bridge."""
    need_netns()
    need_redis()
    with PrivateLan(["a", "b", "redis", "clients"]) as net:
        yield net


@pytest.fixture
def redis(lan: PrivateLan) -> Iterator[RedisServer]:
    """A Redis server in its own namespace on the LAN."""
    member = lan["redis"]
    # a fixed port: the namespace is fresh, and a free port can't be picked from here
    with RedisServer(member.address, 6379, popen=member.popen) as server:
        yield server


@pytest.fixture
def clients(lan: PrivateLan) -> Iterator[LoopThread]:
    """The clients' loop, in their own namespace."""
    lt = lan["clients"].loop_thread("cluster-clients")
    yield lt
    lt.stop()


async def start_nodes(
    lan: PrivateLan, redis: RedisServer, cascade: bool, extra: tuple[str, ...] = ()
) -> list[Node]:
    nodes = [Node(lan[name], name, redis.url, cascade, extra) for name in ("a", "b")]
    try:
        for node in nodes:
            await node.ready()
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url, headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def until(check: Any, timeout: float, step: float = 0.1) -> Any:
    """Re-run the coroutine function ``check`` until it returns a truthy value (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(step)


async def test_redirects_without_cascade(
    lan: PrivateLan, redis: RedisServer, clients: LoopThread
) -> None:
    a, b = await start_nodes(lan, redis, cascade=False)
    try:

        async def scenario() -> dict[str, Any]:
            out: dict[str, Any] = {}
            pub = await client.publish(f"{a.url}/whip/live", [client.PatternTrack()], token=TOKEN)
            viewer = await client.view(f"{b.url}/whep/live", token=TOKEN)
            out["frames"] = await viewer.wait_frames(FRAMES, 20)
            out["viewer_location"] = viewer.location
            out["viewer_url"] = viewer.url
            # a second publisher of the room, on B: sent to A, which refuses it
            try:
                await client.publish(f"{b.url}/whip/live", [client.PatternTrack()], token=TOKEN)
                out["second"] = 201
            except client.WhipError as exc:
                out["second"] = exc.status
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    f"{b.url}/whep/live",
                    data="v=0\r\n",
                    headers={**AUTH, "Content-Type": "application/sdp"},
                    allow_redirects=False,
                ) as resp:
                    out["bad_offer_on_b"] = resp.status  # checked before routing: 400
                frag = "a=end-of-candidates\r\n"
                headers = {
                    **AUTH,
                    "Content-Type": "application/trickle-ice-sdpfrag",
                    "If-Match": viewer.etag or "*",
                }
                async with http.patch(viewer.location, data=frag, headers=headers) as resp:
                    out["patch"] = resp.status
                out["stats_b"] = await get_json(f"{b.url}/stats")
                async with http.get(f"{b.url}/metrics", headers=AUTH) as resp:
                    out["metrics_b"] = await resp.text()
            out["delete"] = await viewer.delete()
            out["delete_pub"] = await pub.delete()
            await viewer.close()
            await pub.close()
            return out

        out = await clients.run(scenario(), 90)
        assert out["frames"] >= FRAMES
        assert out["viewer_url"] == f"{a.url}/whep/live"  # followed the 307 to A
        assert out["viewer_location"].startswith(f"{a.url}/session/")  # absolute, on A
        assert out["second"] == 409
        assert out["bad_offer_on_b"] == 400
        assert out["patch"] == 204
        assert out["delete"] == 200 and out["delete_pub"] == 200
        cluster = out["stats_b"]["cluster"]
        assert cluster["up"] is True
        assert {n["id"] for n in cluster["nodes"]} == {"a", "b"}
        assert cluster["rooms"].get("live") == "a"
        assert cluster["routing"]["redirects"] >= 2
        assert "whip_cluster_nodes 2" in out["metrics_b"]
        # the publisher's DELETE gave the room back: it leaves the directory
        gone = await clients.run(until(lambda: _room_gone(b.url, "live"), 5.0), 10)
        assert gone, "room still held after its publisher left"
    finally:
        a.stop()
        b.stop()


async def _room_gone(url: str, room: str) -> bool:
    stats = await get_json(f"{url}/stats")
    return room not in stats["cluster"]["rooms"]


async def test_cascade_and_a_node_killed(
    lan: PrivateLan, redis: RedisServer, clients: LoopThread
) -> None:
    a, b = await start_nodes(lan, redis, cascade=True)
    try:

        async def watch() -> tuple[Any, Any, int, int, str]:
            pub = await client.publish(f"{a.url}/whip/live", [client.PatternTrack()], token=TOKEN)
            v1 = await client.view(f"{b.url}/whep/live", token=TOKEN)
            v2 = await client.view(f"{b.url}/whep/live", token=TOKEN)
            f1 = await v1.wait_frames(FRAMES, 20)
            f2 = await v2.wait_frames(FRAMES, 20)
            return pub, v1, f1, f2, v2.location

        pub, v1, f1, f2, location = await clients.run(watch(), 90)
        assert f1 >= FRAMES and f2 >= FRAMES
        assert location.startswith(f"{b.url}/session/")  # served by B, from its edge
        stats_b = await clients.run(get_json(f"{b.url}/stats"), 10)
        edges = stats_b["cluster"]["edges"]
        assert [e["room"] for e in edges] == ["live"] and edges[0]["origin"] == "a"
        stats_a = await clients.run(get_json(f"{a.url}/stats"), 10)
        viewers_on_a = [s for s in stats_a["rooms"]["live"]["sessions"] if s["role"] == "whep"]
        assert len(viewers_on_a) == 1  # one copy to B, whatever B's viewer count

        killed = time.monotonic()
        a.kill()

        async def after_kill() -> dict[str, float]:
            out: dict[str, float] = {}

            async def a_gone() -> bool:
                stats = await get_json(f"{b.url}/stats")
                return "a" not in {n["id"] for n in stats["cluster"]["nodes"]}

            assert await until(a_gone, 10.0)
            out["node_gone"] = time.monotonic() - killed

            async def viewers_ended() -> bool:
                stats = await get_json(f"{b.url}/stats")
                return bool(stats["sessions"] == 0)

            assert await until(viewers_ended, 15.0)
            out["viewers_ended"] = time.monotonic() - killed

            async def reclaim() -> Any:
                try:
                    return await client.publish(
                        f"{b.url}/whip/live", [client.PatternTrack()], token=TOKEN
                    )
                except client.WhipError:
                    return None

            again = await until(reclaim, 10.0, step=0.2)
            assert again is not None, "the room could not be claimed on B"
            out["reclaimed"] = time.monotonic() - killed
            assert again.location.startswith(f"{b.url}/session/")
            await again.delete()
            await again.close()
            for session in (v1, pub):
                await session.close()
            return out

        timings = await clients.run(after_kill(), 60)
        print(f"after SIGKILL of the origin: {timings}")  # docs/cluster.md quotes these
        # node TTL 1 s + a heartbeat; the edge ends on silence (3 s) or a failed
        # connection; the room can be claimed once A's node entry expired
        assert timings["node_gone"] < 5.0, timings
        assert timings["viewers_ended"] < 10.0, timings
        assert timings["reclaimed"] < 6.0, timings
    finally:
        a.stop()
        b.stop()


async def test_redis_outage(lan: PrivateLan, redis: RedisServer, clients: LoopThread) -> None:
    a, b = await start_nodes(lan, redis, cascade=False)
    try:
        pub = await clients.run(
            client.publish(f"{a.url}/whip/kept", [client.PatternTrack()], token=TOKEN), 30
        )
        redis.stop()

        async def during() -> tuple[int, str | None, int, int]:
            try:
                await client.publish(f"{b.url}/whip/new", [client.PatternTrack()], token=TOKEN)
                status, retry = 201, None
            except client.WhipError as exc:
                status, retry = exc.status, "n/a"
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{b.url}/whip/other",
                    data=await _offer(),
                    headers={**AUTH, "Content-Type": "application/sdp"},
                ) as resp,
            ):
                retry = resp.headers.get("Retry-After")
                status2 = resp.status
            viewer = await client.view(f"{a.url}/whep/kept", token=TOKEN)  # local: works
            frames = await viewer.wait_frames(FRAMES, 20)
            await viewer.close()
            return status, retry, status2, frames

        status, retry, status2, frames = await clients.run(during(), 60)
        assert status == 503 and status2 == 503 and retry is not None
        assert frames >= FRAMES  # what A holds keeps working without Redis
        stats = await clients.run(get_json(f"{b.url}/stats"), 10)
        assert stats["cluster"]["up"] is False

        redis.start()

        async def recovered() -> Any:
            try:
                return await client.publish(
                    f"{b.url}/whip/new", [client.PatternTrack()], token=TOKEN
                )
            except client.WhipError:
                return None

        again = await clients.run(until(recovered, 10.0, step=0.2), 30)
        assert again is not None, "new rooms still refused after Redis came back"

        async def a_recovered() -> bool:
            cluster = (await get_json(f"{a.url}/stats"))["cluster"]
            # up again, and its room re-claimed in the (empty) restarted Redis
            return bool(cluster["up"] and cluster["rooms"].get("kept") == "a")

        assert await clients.run(until(a_recovered, 10.0), 20)

        async def leave() -> None:
            await again.close()
            await pub.close()

        await clients.run(leave(), 20)
        for node in (a, b):
            assert sum("unreachable" in line for line in node.lines) <= 1, node.lines
    finally:
        a.stop()
        b.stop()


async def _offer() -> str:
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_a_room_taken_over_elsewhere_ends_here(
    serve: ServeFactory, peers: LoopThread
) -> None:
    """Fault injection: another node holds our room's lease in Redis (as after a stall
    past the node TTL): at its next beat the node ends its own publisher of that room."""
    need_redis()
    import redis.asyncio as aioredis

    with RedisServer() as server:
        config = {
            "cluster": server.url,
            "node_url": "http://127.0.0.1:1",
            "node_id": "here",
            "cluster_heartbeat": 0.2,
            "cluster_node_ttl": 1.0,
            "cluster_lease_ttl": 1.5,
            "tokens": (TOKEN,),
        }
        async with serve(workers=1, **config) as s:
            pub = await peers.run(
                client.publish(f"{s.inner}/whip/r", [client.PatternTrack()], token=TOKEN), 30
            )
            sid = pub.location.rsplit("/", 1)[1]
            assert sid in s.server.sessions
            r = aioredis.from_url(server.url)
            try:  # another live node, holding our room
                await r.hset("whip:node:other", mapping={"url": "http://10.0.0.9:8080"})
                await r.pexpire("whip:node:other", 60_000)
                await r.set("whip:room:r", "other", px=60_000)
            finally:
                await r.aclose()
            assert await s.server.wait_until(lambda: sid not in s.server.sessions, 10)
            assert "r" not in s.server.router.directory.held()
            await peers.run(pub.close(), 10)


async def test_full_nodes_send_publishers_elsewhere_then_503(
    lan: PrivateLan, redis: RedisServer, clients: LoopThread
) -> None:
    """One session per node: a full node redirects a new room's publisher to the node
    with room left; when every node is full, 503 + Retry-After."""
    a, b = await start_nodes(lan, redis, cascade=False, extra=("--max-sessions", "1"))
    try:

        async def scenario() -> tuple[Any, Any, int, str | None]:
            first = await client.publish(f"{a.url}/whip/one", [client.PatternTrack()], token=TOKEN)

            async def a_seen_full() -> bool:  # B's view of A's load, one beat later
                nodes = (await get_json(f"{b.url}/stats"))["cluster"]["nodes"]
                return any(n["id"] == "a" and n["sessions"] == 1 for n in nodes)

            assert await until(a_seen_full, 5.0)

            async def b_known() -> bool:  # and A's view of B (empty)
                nodes = (await get_json(f"{a.url}/stats"))["cluster"]["nodes"]
                return any(n["id"] == "b" and n["sessions"] == 0 for n in nodes)

            assert await until(b_known, 5.0)
            second = await client.publish(f"{a.url}/whip/two", [client.PatternTrack()], token=TOKEN)

            async def b_seen_full() -> bool:
                nodes = (await get_json(f"{a.url}/stats"))["cluster"]["nodes"]
                return any(n["id"] == "b" and n["sessions"] == 1 for n in nodes)

            assert await until(b_seen_full, 5.0)
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{a.url}/whip/three",
                    data=await _offer(),
                    headers={**AUTH, "Content-Type": "application/sdp"},
                    allow_redirects=False,
                ) as resp,
            ):
                status, retry = resp.status, resp.headers.get("Retry-After")
            return first, second, status, retry

        first, second, status, retry = await clients.run(scenario(), 60)
        assert first.location.startswith(f"{a.url}/session/")
        assert second.url == f"{b.url}/whip/two"  # redirected from the full A to B
        assert second.location.startswith(f"{b.url}/session/")
        assert status == 503 and retry is not None

        async def leave() -> None:
            for session in (first, second):
                await session.close()

        await clients.run(leave(), 20)
    finally:
        a.stop()
        b.stop()
